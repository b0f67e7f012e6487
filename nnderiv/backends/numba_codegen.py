r"""Straight-line kernels for the activation step of one series table, written once per table.

The generic kernels of :mod:`~nnderiv.backends.numba_backend` read the table at run time: every
product of the series composition ``sum_j a_j delta^j`` is a short loop over a block of points in
cache-sized buffers, one load and one store per element and product. For a table of a few dozen
rows the whole composition of one element fits in registers. This module writes, for one table,
the loop whose body is the composition spelled out row by row, from the same runs of products
(:meth:`~nnderiv.combinatorics.SeriesTable.series_product`), summed in the same order (so the
results are those of the reference, bit for bit). For full mode with ``d = 2, K = 2`` (rows ``1,
t_0, t_1, t_0^2, t_0 t_1, t_1^2``; ``A_j`` the coefficients ``a_j``, ``Z`` the input stack)
``print(forward_source(multi_index_table(2, 2), 2))`` shows::

    @numba.njit(pipeline_class=NoAliasCompiler, **OPTIONS)
    def _forward_rows(n, A_0, A_1, A_2, Z_1, Z_2, Z_3, Z_4, Z_5, OUT_0, OUT_1, OUT_2, OUT_3, OUT_4, OUT_5):
        for i in range(n):
            a_1 = A_1[i]
            a_2 = A_2[i]
            d_1 = Z_1[i]
            d_2 = Z_2[i]
            d_3 = Z_3[i]
            d_4 = Z_4[i]
            d_5 = Z_5[i]
            p2_3 = d_1 * d_1
            p2_4 = d_1 * d_2 + d_2 * d_1
            p2_5 = d_2 * d_2
            OUT_0[i] = A_0[i]
            OUT_1[i] = a_1 * d_1
            OUT_2[i] = a_1 * d_2
            OUT_3[i] = a_1 * d_3 + a_2 * p2_3
            OUT_4[i] = a_1 * d_4 + a_2 * p2_4
            OUT_5[i] = a_1 * d_5 + a_2 * p2_5

Every input row is read once and every output row written once; LLVM vectorizes the loop over
the points. Each row is its own argument of a function compiled with ``noalias`` arguments: a
loop over dozens of rows of one array would need a run-time overlap check for every pair of
them, and LLVM gives up vectorizing beyond a few. The kernels run on the calling thread (the
points are spread over threads by :mod:`nnderiv.parallel`). The pullback is the same loop run
backwards (the adjoints of each product, :func:`backward_source`), recomputing the powers
``delta^j`` in registers instead of reading them from memory: nothing but the Taylor
coefficients is kept for it.

The source of each table's kernels goes to a file in the cache directory (``NNDERIV_CACHE_DIR``,
else ``$XDG_CACHE_HOME/nnderiv`` or ``~/.cache/nnderiv``, else the temporary directory), named by
its hash, and is imported from there, so Numba caches the compiled code like any other
(``cache=True``): a table's kernels compile once per machine (0.5 s for 3 rows to 10 s for 66,
``docs/backends.md``), then load in milliseconds. Tables beyond :data:`MAX_ROWS` rows or
:data:`MAX_PRODUCTS` products (compile time grows with them) use the generic kernels.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import sys
import tempfile
import threading
from functools import cache
from pathlib import Path

import numpy as np
from numba.core.compiler import Compiler

#: tables up to this many rows get straight-line kernels (the Laplacian up to d = 70, Taylor mode
#: of order 4 in 17 directions, full mode of order 2 in 10 inputs)
MAX_ROWS = 72
#: ... and up to this many products in their composition
MAX_PRODUCTS = 1500
_lock = threading.Lock()


class NoAliasCompiler(Compiler):
    """Numba's pipeline with every pointer argument marked ``noalias``: the rows passed to a
    generated kernel are distinct (read-only inputs, or outputs written once each)."""

    def define_pipelines(self):
        self.state.flags.noalias = True
        return super().define_pipelines()


def products(table, order: int) -> dict[int, dict[int, list[tuple[int, int]]]]:
    """``{j: {target row: [(left row, right row), ...]}}``: ``delta^j[t] = sum delta[l] delta^{j-1}[r]``
    for ``j = 2..order``, in the order the generic kernels add them (run by run)."""
    terms = {}
    for j in range(2, order + 1):
        targets: dict[int, list[tuple[int, int]]] = {}
        for left, right, target, length in table.series_product(j - 1).runs.tolist():
            for k in range(length):
                targets.setdefault(target + k, []).append((left + k, right + k))
        terms[j] = targets
    return terms


def supports(table, order: int) -> bool:
    """Whether ``table`` is small enough for straight-line kernels."""
    n_products = sum(len(pairs) for targets in products(table, order).values() for pairs in targets.values())
    return 1 <= order and table.n_coef <= MAX_ROWS and n_products <= MAX_PRODUCTS


def _power(j: int, row: int) -> str:
    """The variable holding ``delta^j`` at ``row`` (``delta`` itself for ``j = 1``)."""
    return f"d_{row}" if j == 1 else f"p{j}_{row}"


def _powers(table, order: int) -> list[str]:
    """Lines computing ``delta^2 .. delta^order`` of one element from the ``d_r``."""
    lines = []
    for j, targets in products(table, order).items():
        for target, pairs in sorted(targets.items()):
            terms = [f"d_{left} * {_power(j - 1, right)}" for left, right in pairs]
            lines.append(f"p{j}_{target} = " + " + ".join(terms))
    return lines


def _loads(names: list[str], arrays: list[str]) -> list[str]:
    return [f"{name} = {array}[i]" for name, array in zip(names, arrays)]


def forward_source(table, order: int) -> str:
    """The loop of :func:`forward`: ``OUT_0 = A_0``, ``OUT_r = sum_j a_j delta^j[r]``."""
    rows, powers = range(1, table.n_coef), products(table, order)
    lines = _loads([f"a_{j}" for j in range(1, order + 1)], [f"A_{j}" for j in range(1, order + 1)])
    lines += _loads([f"d_{r}" for r in rows], [f"Z_{r}" for r in rows])
    lines += _powers(table, order)
    lines.append("OUT_0[i] = A_0[i]")
    for r in rows:
        terms = [f"a_1 * d_{r}"] + [f"a_{j} * p{j}_{r}" for j in range(2, order + 1) if r in powers[j]]
        lines.append(f"OUT_{r}[i] = " + " + ".join(terms))
    arguments = [f"A_{j}" for j in range(order + 1)] + [f"Z_{r}" for r in rows]
    arguments += [f"OUT_{r}" for r in range(table.n_coef)]
    return _loop("_forward_rows", arguments, lines)


def backward_source(table, order: int) -> str:
    """The loop of :func:`backward`: the cotangent ``S`` of the input stack from the output's ``B``.

    With ``q_j = d out / d delta^j`` (``q_K = a_K b``), each product ``delta^j[t] += delta[l]
    delta^{j-1}[r]`` sends ``q_j[t] delta^{j-1}[r]`` to ``delta``'s cotangent at ``l`` and
    ``q_j[t] delta[l]`` to ``q_{j-1}[r]``; ``q_{j-1} = a_{j-1} b + (those)``. The value row
    reaches the output through every ``a_j``: ``S_0 = b_0 a_1 + sum_j <b, delta^j> (j + 1) a_{j+1}``.
    Sums are grouped and ordered as in the generic kernels (the adjoint tables' runs).
    """
    n_rows, powers = table.n_coef, products(table, order)
    rows = range(1, n_rows)
    first = [table.degree_slice(j).start for j in range(order + 1)]
    lines = _loads([f"a_{j}" for j in range(1, order + 2)], [f"A_{j}" for j in range(1, order + 2)])
    lines += _loads([f"d_{r}" for r in rows], [f"Z_{r}" for r in rows])
    lines += _loads([f"b_{r}" for r in range(n_rows)], [f"B_{r}" for r in range(n_rows)])
    lines += _powers(table, order)
    lines.append("c_0 = b_0 * a_1")  # the value row: through a_0 (whose derivative is a_1) and the a_j
    for j in range(1, order + 1):
        kept = [r for r in range(first[j], n_rows) if j == 1 or r in powers[j]]
        if kept:
            inner = " + ".join(f"b_{r} * {_power(j, r)}" for r in kept)
            lines.append(f"c_0 = c_0 + (({inner}) * counts[{j + 1}]) * a_{j + 1}")  # counts[k] = k, in the dtype
    for r in range(first[order], n_rows):
        lines.append(f"q{order}_{r} = a_{order} * b_{r}")
    cotangent: dict[int, list[str]] = {r: [] for r in rows}  # delta's, one sum per power
    for j in range(order, 1, -1):
        product = table.series_product(j - 1)
        for r, total in _adjoint_sums(product.adjoint_left, f"q{j}", lambda r, j=j: _power(j - 1, r)).items():
            cotangent[r].append(f"({total})")
        to_previous = _adjoint_sums(product.adjoint_right, f"q{j}", lambda r: f"d_{r}")
        for r in range(first[j - 1], n_rows):
            lines.append(f"q{j - 1}_{r} = a_{j - 1} * b_{r}" + (f" + ({to_previous[r]})" if r in to_previous else ""))
    lines.append("S_0[i] = c_0")
    for r in rows:
        lines.append(f"S_{r}[i] = " + " + ".join([*cotangent[r], f"q1_{r}"]))
    arguments = ["counts"] + [f"A_{j}" for j in range(1, order + 2)] + [f"Z_{r}" for r in rows]
    arguments += [f"B_{r}" for r in range(n_rows)] + [f"S_{r}" for r in range(n_rows)]
    return _loop("_backward_rows", arguments, lines)


def _adjoint_sums(adjoint, cotangent: str, factor) -> dict[int, str]:
    """``{row: "q[t] * factor(r) + ..."}`` of an adjoint map ``out[target] += a[left] * b[right]``
    (``a`` the cotangent ``q``), in the order of its runs."""
    sums: dict[int, list[str]] = {}
    for left, right, target, length in adjoint.runs.tolist():
        for k in range(length):
            sums.setdefault(target + k, []).append(f"{cotangent}_{left + k} * {factor(right + k)}")
    return {row: " + ".join(terms) for row, terms in sums.items()}


def _loop(name: str, arguments: list[str], body: list[str]) -> str:
    header = f"@numba.njit(pipeline_class=NoAliasCompiler, **OPTIONS)\ndef {name}(n, {', '.join(arguments)}):"
    return "\n".join([header, "    for i in range(n):", *(f"        {line}" for line in body)]) + "\n"


def module_source(table, order: int) -> str:
    """The generated module: the two loops (called with one array per row, see :func:`forward`)."""
    return f'''"""Kernels of {table.description}, order {order}: written by nnderiv.backends.numba_codegen."""

import numba

from nnderiv.backends.numba_codegen import NoAliasCompiler

OPTIONS = dict(fastmath=False, cache=True, nogil=True, error_model="numpy")


{forward_source(table, order)}

{backward_source(table, order)}'''


def forward(table, order: int, a, z, out) -> None:
    """``out = a_0`` on row 0 and ``sum_j a_j delta^j`` elsewhere, for ``z`` ``(rows, M)`` and its
    coefficients ``a`` ``(>= order + 1, M)``, all C-contiguous (on the calling thread)."""
    kernels(table, order)._forward_rows(z.shape[1], *a[: order + 1], *z[1:], *out)


def backward(table, order: int, out_bar, z, a, stack_bar) -> None:
    """The pullback of :func:`forward` into ``stack_bar``; ``a`` holds orders ``0 .. order + 1``."""
    counts = np.arange(order + 2).astype(z.dtype)  # (j + 1) in the dtype of the stack
    kernels(table, order)._backward_rows(z.shape[1], counts, *a[1 : order + 2], *z[1:], *out_bar, *stack_bar)


def cache_directory() -> Path:
    """Where generated sources (and, beside them, Numba's compiled code) are kept."""
    if os.environ.get("NNDERIV_CACHE_DIR"):
        return Path(os.environ["NNDERIV_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nnderiv"


@cache
def kernels(table, order: int):
    """The generated module of ``table`` at ``order`` (written and imported on first use)."""
    source = module_source(table, order)
    name = "nnderiv_kernel_" + hashlib.sha256(source.encode()).hexdigest()[:20]
    with _lock:
        if name in sys.modules:
            return sys.modules[name]
        path = _write(name, source)
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # Numba's cache finds a function's module by name
        spec.loader.exec_module(module)
        return module


def _user() -> str:
    return str(os.getuid()) if hasattr(os, "getuid") else "user"


def _write(name: str, source: str) -> Path:
    """``source`` as ``name.py`` in the cache directory (atomically), or a temporary one if that is not writable."""
    for directory in (cache_directory() / "kernels", Path(tempfile.gettempdir()) / f"nnderiv-kernels-{_user()}"):
        path = directory / f"{name}.py"
        try:
            if not path.exists() or path.read_text() != source:
                directory.mkdir(parents=True, exist_ok=True)
                partial = directory / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
                partial.write_text(source)
                os.replace(partial, path)  # a concurrent process writes the same text
            return path
        except OSError:
            continue
    raise OSError("nnderiv: no writable directory for generated kernels; set NNDERIV_CACHE_DIR")
