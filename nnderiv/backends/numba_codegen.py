r"""Straight-line Numba kernels for the activation step of one series table, written once per table.

The generic kernels of :mod:`~nnderiv.backends.numba_backend` read the table at run time: every
product of the series composition ``sum_j a_j delta^j`` is a short loop over a block of points in
cache-sized buffers, one load and one store per element and product. For a table of a few dozen
rows the whole composition of one element fits in registers. :mod:`~nnderiv.backends.codegen`
writes one element's work as statements, from the same runs of products summed in the same order
(so the results are those of the reference, bit for bit); this module renders them as the body of
a loop over the points. For full mode with ``d = 2, K = 2`` (rows ``1, t_0, t_1, t_0^2, t_0 t_1,
t_1^2``; ``A_j`` the coefficients ``a_j``, ``Z`` the input stack)
``print(forward_source(multi_index_table(2, 2), 2))`` shows::

    @numba.njit(pipeline_class=NoAliasCompiler, **OPTIONS)
    def _forward_rows(n, A_0, A_1, A_2, Z_1, Z_2, Z_3, Z_4, Z_5, OUT_0, OUT_1, OUT_2, OUT_3, OUT_4, OUT_5):
        wide_vectors()
        for i in range(n):
            a_0 = A_0[i]
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
            OUT_0[i] = a_0
            OUT_1[i] = a_1 * d_1
            OUT_2[i] = a_1 * d_2
            OUT_3[i] = a_1 * d_3 + a_2 * p2_3
            OUT_4[i] = a_1 * d_4 + a_2 * p2_4
            OUT_5[i] = a_1 * d_5 + a_2 * p2_5

Every input row is read once and every output row written once; LLVM vectorizes the loop over the
points, with the CPU's widest vectors (:func:`~nnderiv.backends.numba_activations.wide_vectors`).
Each row is its own argument of a function compiled with ``noalias`` arguments: a loop over dozens
of rows of one array would need a run-time overlap check for every pair of them, and LLVM gives up
vectorizing beyond a few. The kernels run on the calling thread (the points are spread over threads
by :mod:`nnderiv.parallel`). The pullback is the same loop run backwards (the adjoints of each
product, :func:`backward_source`), recomputing the powers ``delta^j`` in registers instead of
reading them from memory: nothing but the Taylor coefficients is kept for it. For tanh the
coefficients too are computed in the loop (:func:`tanh_forward_source`), from the value row, by the
Numba fill's formulas: the whole activation step is one pass over the stack, and the coefficients
are written out only for a pullback. Those kernels are compiled as the fills are, with contracted
multiply-adds (one rounding where there were two; 1.2-1.4x faster on tables of up to 7 rows,
``docs/performance.md``), so their output is the composition of their own coefficients to rounding,
not bit for bit.

Taylor mode's tables (``1 + R K`` rows for ``R`` directions) grow past what one loop body keeps in
registers (dozens of row pointers and partial sums spill to the stack), but their directions never
mix: :func:`direction_kernel` composes one direction (``K`` rows, compiled once per order), and
the drivers of :func:`taylor_driver_source` call it for every direction over blocks of
:data:`DIRECTION_BLOCK` columns, forward, fused with tanh's coefficients, and backward (each
direction adding its ``<b, delta^j>`` to accumulators, from which the value row's cotangent is
formed once). :mod:`~nnderiv.backends.numba_backend` runs them from ``DIRECTIONS_MIN_ROWS`` rows on.

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
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from numba.core.compiler import Compiler

from ..combinatorics import directional_table
from . import codegen
from .codegen import MAX_PRODUCTS, MAX_ROWS, supports  # noqa: F401 (this backend's limits)

_lock = threading.Lock()
FLOATS = (np.float64, np.float32)


class NoAliasCompiler(Compiler):
    """Numba's pipeline with every pointer argument marked ``noalias``: the rows passed to a
    generated kernel are distinct (read-only inputs, or outputs written once each)."""

    def define_pipelines(self):
        self.state.flags.noalias = True
        return super().define_pipelines()


#: each statement of :mod:`~nnderiv.backends.codegen` as a line of Python, a row per argument
#: (``count``: ``counts = arange(K + 2)`` in the dtype of the stack)
LINES = {
    "load": "{0} = {1}_{2}[i]",
    "store": "{0}_{1}[i] = {2}",
    "count": "{0} = counts[{1}]",
    "let": "{0} = {1}",
    "set": "{0} = {1}",
}


def render(kernel: codegen.Kernel, name: str, options: str = "OPTIONS") -> str:
    """The Numba loop over the points running ``kernel``'s statements, an argument per row, compiled
    with the module's jit ``options`` (``OPTIONS``: exact IEEE arithmetic; ``FUSED_OPTIONS``: with
    contracted multiply-adds)."""
    counts = ["counts"] if any(statement[0] == "count" for statement in kernel.body) else []
    arrays = {**kernel.inputs, **kernel.outputs}
    arguments = counts + [f"{array}_{row}" for array, rows in arrays.items() for row in rows]
    header = f"@numba.njit(pipeline_class=NoAliasCompiler, **{options})\ndef {name}(n, {', '.join(arguments)}):"
    body = [f"        {codegen.line(statement, LINES)}" for statement in kernel.body]
    return "\n".join([header, "    wide_vectors()", "    for i in range(n):", *body]) + "\n"


def forward_source(table, order: int) -> str:
    """The loop of :func:`forward`: ``OUT_0 = A_0``, ``OUT_r = sum_j a_j delta^j[r]``."""
    return render(codegen.composition(table, order), "_forward_rows")


def backward_source(table, order: int) -> str:
    """The loop of :func:`backward` (:func:`nnderiv.backends.codegen.pullback`)."""
    return render(codegen.pullback(table, order), "_backward_rows")


def tanh_coefficients(order: int, dtype) -> list[tuple]:
    """Statements for tanh's ``a_0 .. a_order`` at ``z_0``, as the Numba fill computes them
    (:func:`~nnderiv.backends.numba_activations.fill_block`): ``tanh`` and ``sech^2`` by the
    vectorizable :func:`~nnderiv.backends.numba_activations.tanh_sech2`, then the Riccati
    recurrence ``(m + 1) a_{m+1} = -(2 a_0 a_m + sum_{0<j<m} a_j a_{m-j})`` in float64, each
    coefficient rounded once to ``dtype``."""
    lines = [("let", "g_0, g_1", "tanh_sech2(z_0)")]
    for m in range(1, order):
        terms = [f"2.0 * g_0 * g_{m}"] + [f"2.0 * (g_{j} * g_{m - j})" for j in range(1, (m + 1) // 2)]
        if m % 2 == 0:
            terms.append(f"g_{m // 2} * g_{m // 2}")
        lines.append(("let", f"g_{m + 1}", f"({' + '.join(terms)}) * {-1.0 / (m + 1)!r}"))
    cast = "" if np.dtype(dtype) == np.float64 else f"np.{np.dtype(dtype).name}"
    return lines + [("let", f"a_{j}", f"{cast}(g_{j})") for j in range(order + 1)]


def tanh_forward_source(table, order: int, dtype, saving: bool = False) -> str:
    """The loop of :func:`tanh_forward`: tanh's coefficients computed per element (to ``order + 1``
    and stored, ``saving``), then the composition."""
    kernel = codegen.composition(table, order, tanh_coefficients(order + saving, dtype))
    if saving:
        kernel = codegen.saving(kernel, order + 1)
    return render(kernel, f"_tanh_forward{'_saving' * saving}_rows_{np.dtype(dtype).name}", "FUSED_OPTIONS")


def direction_kernel(order: int) -> codegen.Kernel:
    """The composition of ONE direction of Taylor mode, rows ``1 .. order``, without the value row
    (written once for all directions by :func:`taylor_driver_source`'s first direction)."""
    kernel = codegen.composition(directional_table(1, order), order)
    body = [statement for statement in kernel.body if statement[:3] != ("store", "OUT", 0)]
    return kernel._replace(body=body, outputs={"OUT": range(1, order + 1)})


def _direction_rows(array: str, order: int) -> str:
    """Arguments: the rows of orders ``1 .. order`` along direction ``r`` of ``array``, columns ``s:e``."""
    return ", ".join(f"{array}[1 + {k} * n_dir + r, s:e]" for k in range(order))


def taylor_driver_source(order: int) -> str:
    """Taylor mode along any number of directions, from the kernels of one direction (the module
    of ``directional_table(1, order)``), block by block of ``block`` columns.

    ``_tanh_taylor_rows_<dtype>``: the first direction by the fused tanh kernel, which also stores
    the coefficients ``a_0 .. a_{order+1}`` (into ``a``'s own columns if ``keep``, else into its
    first ``block`` columns, as scratch), then the other directions by :func:`direction_kernel`
    reading them (contracted, as the fused kernel). ``_taylor_rows``: the coefficients ``a`` given
    (any activation), exact IEEE arithmetic, the value row copied."""
    z, out = _direction_rows("z", order), _direction_rows("out", order)
    coefficients = ", ".join(f"a[{j}, t:u]" for j in range(order + 1))
    first = f"z[0, s:e], {z}, out[0, s:e], {out}, {coefficients}, a[{order + 1}, t:u]"
    drivers = [
        f"""@numba.njit(**FUSED_OPTIONS)
def _tanh_taylor_rows_{name}(z, out, a, keep, n_dir, block):
    wide_vectors()
    for s in range(0, z.shape[1], block):
        e = min(s + block, z.shape[1])
        t = s if keep else 0
        u = t + e - s
        r = 0
        _tanh_forward_saving_rows_{name}(e - s, {first})
        for r in range(1, n_dir):
            _direction_rows_fused(e - s, {coefficients}, {z}, {out})
"""
        for name in (np.dtype(dtype).name for dtype in FLOATS)
    ]
    given = coefficients.replace("t:u", "s:e")
    pulled = ", ".join(f"a[{j}, s:e]" for j in range(1, order + 2))
    accumulators = ", ".join(f"acc[{j}, :n]" for j in range(order))
    b, stack_bar = _direction_rows("b", order), _direction_rows("stack_bar", order)
    drivers.append(f"""@numba.njit(**OPTIONS)
def _taylor_backward_rows(counts, a, z, b, stack_bar, acc, n_dir, block):
    wide_vectors()
    for s in range(0, z.shape[1], block):
        e = min(s + block, z.shape[1])
        n = e - s
        acc[:, :n] = 0
        for r in range(n_dir):
            _direction_backward_rows(n, {pulled}, {z}, {b}, {accumulators}, {stack_bar})
        for i in range(n):
            stack_bar[0, s + i] = b[0, s + i] * a[1, s + i]
        for j in range(1, {order + 1}):
            for i in range(n):
                stack_bar[0, s + i] = stack_bar[0, s + i] + (acc[j - 1, i] * counts[j + 1]) * a[j + 1, s + i]
""")
    drivers.append(f"""@numba.njit(**OPTIONS)
def _taylor_rows(a, z, out, n_dir, block):
    wide_vectors()
    for s in range(0, z.shape[1], block):
        e = min(s + block, z.shape[1])
        for r in range(n_dir):
            _direction_rows(e - s, {given}, {z}, {out})
    out[0, :] = a[0, :]
""")
    return "\n".join(drivers)


#: the loop of :func:`series_share_source` over a worker's chunks, ``{name}`` the dtype; the
#: activation step (``{activation}``) reads the product ``z`` and writes into the other stack ``h``
SERIES_SHARE = """@numba.njit(**OPTIONS)
def _tanh_{kernel}_share_{name}(
    blas, ints, x, directions, params, layout, blocks, out, rows, buffers, chunk, worker, n_workers
):
    d, m = layout[0, 1], layout[len(layout) - 1, 2]
    size = series_workspace(layout, rows, chunk)
    work = buffers[worker]
    stacks, scratch = work[: 2 * size].reshape((2, size)), work[2 * size :]
    for s in range(worker * chunk, len(x) // d, n_workers * chunk):
        e = min(len(x) // d, s + chunk)
        n, last = e - s, 1 if e - s < chunk else 0  # a shorter last chunk has its own blocks of rows
        series_seed(x, directions, s, e, rows, stacks[0])
        h, current = stacks[0], 0
        for layer in range(len(layout)):
            z = stacks[1 - current]
            series_affine(blas, ints, params, layout, layer, h, z, rows, n, blocks[last, layer])
            if layout[layer, 4] == 0:
                h, current = z, 1 - current
                continue
            M = n * layout[layer, 2]
            h = stacks[current]
            {activation}
        series_place(h, out, s, e, rows, m)
"""


def series_share_source(table, order: int) -> str:
    """A worker's chunks of a series mode through a tanh chain, every layer in one compiled call
    (:meth:`~nnderiv.backends.numba_sweeps.DenseSweep.series`), per dtype: ``_tanh_rows_share``
    with the table's straight-line tanh kernel (:func:`tanh_forward`), and for the module of one
    direction ``_tanh_directions_share`` with Taylor mode's driver of any number of directions
    (:func:`tanh_taylor_forward`, its coefficients in ``scratch``: ``(order + 2, DIRECTION_BLOCK)``).
    The kernels are those the layer-by-layer path calls, with the same arguments: the same numbers."""
    z, h = (", ".join(f"{a}[{r} * M : {r + 1} * M]" for r in range(table.n_coef)) for a in "zh")
    calls = {"rows": f"_tanh_forward_rows_{{name}}(M, {z}, {h})"}
    if table.n_directions == 1:
        z, h = (f"{a}[: rows * M].reshape((rows, M))" for a in "zh")
        a = f"scratch[: {(order + 2) * DIRECTION_BLOCK}].reshape(({order + 2}, {DIRECTION_BLOCK}))"
        n_dir = f"(rows - 1) // {order}"
        calls["directions"] = f"_tanh_taylor_rows_{{name}}({z}, {h}, {a}, False, {n_dir}, {DIRECTION_BLOCK})"
    sources = []
    for kernel, call in calls.items():
        for name in (np.dtype(dtype).name for dtype in FLOATS):
            sources.append(SERIES_SHARE.format(kernel=kernel, name=name, activation=call.format(name=name)))
    return "\n\n".join(sources)


def tanh_series_share(table, order: int, kernel: str, dtype):
    """``(share, scratch elements per worker)``: the compiled loop of :func:`series_share_source`
    whose activation steps run ``kernel`` (``"rows"`` or ``"directions"``) in ``dtype``."""
    if kernel == "directions":
        module, scratch = kernels(directional_table(1, order), order), (order + 2) * DIRECTION_BLOCK
    else:
        module, scratch = kernels(table, order), 0
    return getattr(module, f"_tanh_{kernel}_share_{np.dtype(dtype).name}"), scratch


def module_source(table, order: int) -> str:
    """The generated module: the loops (called with one array per row, see :func:`forward`)."""
    tanh = [tanh_forward_source(table, order, dtype, saving) for dtype in FLOATS for saving in (False, True)]
    if table.n_directions == 1:  # Taylor mode's building block: the kernels of one direction and their drivers
        tanh += [render(direction_kernel(order), "_direction_rows_fused", "FUSED_OPTIONS")]
        tanh += [render(direction_kernel(order), "_direction_rows")]
        tanh += [render(codegen.pullback(table, order, accumulate=True), "_direction_backward_rows")]
        tanh += [taylor_driver_source(order)]
    return f'''"""Kernels of {table.description}, order {order}: written by nnderiv.backends.numba_codegen."""

# compiled with the helpers of source {helpers_fingerprint()}

import numba
import numpy as np

from nnderiv.backends.numba_activations import tanh_sech2, wide_vectors
from nnderiv.backends.numba_codegen import NoAliasCompiler
from nnderiv.backends.numba_sweeps import series_affine, series_place, series_seed, series_workspace

OPTIONS = dict(fastmath=False, cache=True, nogil=True, error_model="numpy")
FUSED_OPTIONS = dict(OPTIONS, fastmath={{"contract"}})


{forward_source(table, order)}

{backward_source(table, order)}

''' + "\n\n".join(tanh + [series_share_source(table, order)])


@cache
def helpers_fingerprint() -> str:
    """A hash of the sources whose compiled functions the generated kernels call (and Numba
    compiles into them): part of each generated module's source, so of its name. Numba's cache of
    a function does not notice a change in another file's functions it calls; a changed helper
    (a new nnderiv) thus gets new modules, compiled afresh, not the old machine code."""
    from . import numba_activations, numba_sweeps, numba_tiles

    digest = hashlib.sha256()
    for module in (numba_activations, numba_sweeps, numba_tiles):
        digest.update(Path(module.__file__).read_bytes())
    return digest.hexdigest()[:16]


def forward(table, order: int, a, z, out) -> None:
    """``out = a_0`` on row 0 and ``sum_j a_j delta^j`` elsewhere, for ``z`` ``(rows, M)`` and its
    coefficients ``a`` ``(>= order + 1, M)``, all C-contiguous (on the calling thread)."""
    kernels(table, order)._forward_rows(z.shape[1], *a[: order + 1], *z[1:], *out)


def tanh_forward(table, order: int, z, out, a=None) -> None:
    """The tanh activation step of ``z`` ``(rows, M)`` into ``out``, its coefficients computed per
    element and never stored, or stored into ``a`` ``(order + 2, M)`` if given (for the pullback)."""
    module, dtype = kernels(table, order), z.dtype.name
    if a is None:
        getattr(module, f"_tanh_forward_rows_{dtype}")(z.shape[1], *z, *out)
    else:
        getattr(module, f"_tanh_forward_saving_rows_{dtype}")(z.shape[1], *z, *out, *a)


#: columns per block of the Taylor-mode drivers (:func:`taylor_driver_source`): the coefficients of
#: a block, read by every direction, stay in the L1/L2 cache
DIRECTION_BLOCK = 2048


def _directional(order: int, z):
    """The module of one direction at ``order``, and the directions of the stack ``z``."""
    return kernels(directional_table(1, order), order), (len(z) - 1) // order


def taylor_forward(order: int, a, z, out) -> None:
    """:func:`forward` for Taylor mode (``directional_table(n_dir, order)``, ``order >= 1``), one
    direction at a time: one compiled kernel per order, whatever the number of directions."""
    module, n_dir = _directional(order, z)
    module._taylor_rows(a, z, out, n_dir, DIRECTION_BLOCK)


def tanh_taylor_forward(order: int, z, out, a=None) -> None:
    """:func:`tanh_forward` for Taylor mode (``order >= 1``), one direction at a time; the
    coefficients are stored into ``a`` ``(order + 2, M)`` if given."""
    module, n_dir = _directional(order, z)
    keep = a is not None
    if not keep:
        a = np.empty((order + 2, min(DIRECTION_BLOCK, z.shape[1])), dtype=z.dtype)
    getattr(module, f"_tanh_taylor_rows_{z.dtype.name}")(z, out, a, keep, n_dir, DIRECTION_BLOCK)


def taylor_backward(order: int, out_bar, z, a, stack_bar) -> None:
    """:func:`backward` for Taylor mode (``order >= 1``), one direction at a time: each adds its
    ``<b, delta^j>`` to a block of accumulators, from which the value row's cotangent is formed
    (sums over the directions in another order than the reference's: equal to rounding)."""
    module, n_dir = _directional(order, z)
    counts = np.arange(order + 2).astype(z.dtype)
    acc = np.empty((order, min(DIRECTION_BLOCK, z.shape[1])), dtype=z.dtype)
    module._taylor_backward_rows(counts, a, z, out_bar, stack_bar, acc, n_dir, DIRECTION_BLOCK)


def backward(table, order: int, out_bar, z, a, stack_bar) -> None:
    """The pullback of :func:`forward` into ``stack_bar``; ``a`` holds orders ``0 .. order + 1``."""
    counts = [np.arange(order + 2).astype(z.dtype)] if order else []  # (j + 1) in the dtype of the stack
    kernels(table, order)._backward_rows(z.shape[1], *counts, *a[1 : order + 2], *z[1:], *out_bar, *stack_bar)


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
    """``source`` as ``name.py`` in the cache directory (atomically), or a temporary one if that is
    not writable. A module already there is marked as used (its time stamp); writing a new one
    prunes the least recently used beyond :func:`cache_limit`."""
    for directory in (cache_directory() / "kernels", Path(tempfile.gettempdir()) / f"nnderiv-kernels-{_user()}"):
        path = directory / f"{name}.py"
        try:
            if path.exists() and path.read_text() == source:
                os.utime(path)
                return path
            directory.mkdir(parents=True, exist_ok=True)
            partial = directory / f".{name}.{os.getpid()}.{threading.get_ident()}.tmp"
            partial.write_text(source)
            os.replace(partial, path)  # a concurrent process writes the same text
        except OSError:
            continue
        prune(directory, cache_limit())
        return path
    raise OSError("nnderiv: no writable directory for generated kernels; set NNDERIV_CACHE_DIR")


#: bytes of generated modules (sources and Numba's machine code) kept in the cache directory;
#: ``NNDERIV_CACHE_MAX_MB`` overrides. Every release of nnderiv names its kernels anew
#: (:func:`helpers_fingerprint`), so without a limit the old ones would stay forever.
CACHE_MAX_BYTES = 1024 * 2**20
#: a module used within this many seconds is never pruned: another process may be importing it
CACHE_GRACE_S = 600.0


def cache_limit() -> int:
    """The cache's size limit in bytes: ``NNDERIV_CACHE_MAX_MB`` (MiB) if set, else :data:`CACHE_MAX_BYTES`."""
    setting = os.environ.get("NNDERIV_CACHE_MAX_MB")
    if not setting:
        return CACHE_MAX_BYTES
    try:
        megabytes = float(setting)
    except ValueError:
        megabytes = -1.0
    if not megabytes >= 0:
        from ..errors import ConfigError

        raise ConfigError(f"NNDERIV_CACHE_MAX_MB must be a number of MiB >= 0, got {setting!r}")
    return int(megabytes * 2**20)


@dataclass(frozen=True)
class CachedModule:
    """One generated module in the cache: its name, when it was last used, and its files."""

    name: str
    used: float
    files: tuple[Path, ...]

    @property
    def size(self) -> int:
        return sum(_size(path) for path in self.files)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:  # deleted meanwhile by another process
        return 0


def cached_modules(directory: Path | None = None) -> list[CachedModule]:
    """The generated modules in ``directory`` (default: the cache's), most recently used first."""
    directory = cache_directory() / "kernels" if directory is None else directory
    compiled = {}
    for path in (directory / "__pycache__").glob("nnderiv_kernel_*"):
        compiled.setdefault(path.name.split(".", 1)[0], []).append(path)
    sources = {path.stem: path for path in directory.glob("nnderiv_kernel_*.py")}
    modules = []
    for name in sources.keys() | compiled.keys():  # machine code without its source too
        files = ((sources[name],) if name in sources else ()) + tuple(compiled.get(name, ()))
        used = _mtime(sources[name]) if name in sources else max(map(_mtime, files))
        modules.append(CachedModule(name, used, files))
    return sorted(modules, key=lambda module: module.used, reverse=True)


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def prune(directory: Path, max_bytes: int, grace_s: float = CACHE_GRACE_S) -> list[str]:
    """Delete the least recently used modules of ``directory`` (with their machine code) until the
    rest fit in ``max_bytes``, sparing those used within ``grace_s`` seconds; returns their names.
    Best effort: a file that cannot be deleted (another user's, a read-only directory) stays."""
    kept, removed, now = 0, [], time.time()
    for module in cached_modules(directory):
        kept += module.size
        if kept <= max_bytes or now - module.used < grace_s:
            continue
        for path in module.files:
            try:
                path.unlink(missing_ok=True)
            except OSError:
                continue
        removed.append(module.name)
    return removed


def clear_cache() -> list[str]:
    """Delete every generated module and its machine code from the cache (they are rebuilt on use)."""
    return prune(cache_directory() / "kernels", 0, grace_s=0.0)
