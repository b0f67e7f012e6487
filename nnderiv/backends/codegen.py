r"""The activation step of one series table spelled out element by element, for code generators.

For a table of a few dozen rows the whole series composition ``sum_j a_j delta^j`` of one element
(:mod:`nnderiv.modes.series`) fits in registers: read each input row once, form the powers
``delta^j`` from the runs of products (:meth:`~nnderiv.combinatorics.SeriesTable.series_product`),
write each output row once. This module writes that element's work as a list of statements, in
the order the reference (:mod:`~nnderiv.backends.numpy_backend`) adds the same products, so that
a kernel running them with IEEE arithmetic and no contraction returns the reference's numbers bit
for bit. Two backends render the statements: :mod:`~nnderiv.backends.numba_codegen` as a Numba
loop over the points, :mod:`~nnderiv.backends.cuda_codegen` as a CUDA kernel with a thread per
element.

A statement is a tuple, its first item saying what it does:

- ``("load", name, array, row)``: ``name = array[row][i]``;
- ``("let", name, expr)``: a new variable; ``("set", name, expr)``: an existing one updated;
- ``("count", name, k)``: the integer ``k`` in the working precision;
- ``("store", array, row, expr)``: ``array[row][i] = expr``.

Expressions use the variables, ``+``, ``*``, ``/``, unary ``-`` and parentheses, the same in
Python and C. A :class:`Kernel` is the statements with the arrays they read and write.
"""

from __future__ import annotations

from functools import cache
from math import comb, factorial
from typing import NamedTuple

#: tables up to this many rows get straight-line kernels (the Laplacian up to d = 70, Taylor mode
#: of order 4 in 17 directions, full mode of order 2 in 10 inputs)
MAX_ROWS = 72
#: ... and up to this many products in their composition
MAX_PRODUCTS = 1500


class Kernel(NamedTuple):
    """The work of one element: ``inputs`` and ``outputs`` map each array to the rows it has."""

    name: str
    inputs: dict[str, range]
    outputs: dict[str, range]
    body: list[tuple]


def line(statement: tuple, templates: dict[str, str]) -> str:
    """``statement`` written out by a renderer's ``templates`` (one format string per kind, its
    fields the statement's items after the kind)."""
    kind, *items = statement
    return templates[kind].format(*items)


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


@cache
def supports(table, order: int) -> bool:
    """Whether ``table`` is small enough for straight-line kernels (once per table and order)."""
    n_products = sum(len(pairs) for targets in products(table, order).values() for pairs in targets.values())
    return 0 <= order and table.n_coef <= MAX_ROWS and n_products <= MAX_PRODUCTS


def _power(j: int, row: int) -> str:
    """The variable holding ``delta^j`` at ``row`` (``delta`` itself for ``j = 1``)."""
    return f"d_{row}" if j == 1 else f"p{j}_{row}"


def _powers(table, order: int) -> list[tuple]:
    """Statements computing ``delta^2 .. delta^order`` of one element from the ``d_r``."""
    lines = []
    for j, targets in products(table, order).items():
        for target, pairs in sorted(targets.items()):
            terms = [f"d_{left} * {_power(j - 1, right)}" for left, right in pairs]
            lines.append(("let", f"p{j}_{target}", " + ".join(terms)))
    return lines


def _loads(names, array: str, rows) -> list[tuple]:
    return [("load", name, array, row) for name, row in zip(names, rows)]


def composition(table, order: int, coefficients: list[tuple] | None = None) -> Kernel:
    """``OUT_0 = a_0``, ``OUT_r = sum_j a_j delta^j[r]`` for the input stack ``Z``.

    The coefficients ``a_j`` are read from ``A`` or, given ``coefficients`` (statements defining
    ``a_0 .. a_order`` from ``z_0``, the value row, e.g. :func:`tanh_coefficients`), computed in place.
    """
    rows, powers = range(1, table.n_coef), products(table, order)
    if coefficients is None:
        inputs = {"A": range(order + 1), "Z": rows}
        lines = _loads([f"a_{j}" for j in range(order + 1)], "A", range(order + 1))
    else:
        inputs = {"Z": range(table.n_coef)}
        lines = [("load", "z_0", "Z", 0), *coefficients]
    lines += _loads([f"d_{r}" for r in rows], "Z", rows)
    lines += _powers(table, order)
    lines.append(("store", "OUT", 0, "a_0"))
    for r in rows:
        terms = [f"a_1 * d_{r}"] + [f"a_{j} * p{j}_{r}" for j in range(2, order + 1) if r in powers[j]]
        lines.append(("store", "OUT", r, " + ".join(terms)))
    return Kernel("forward", inputs, {"OUT": range(table.n_coef)}, lines)


def pullback(table, order: int, *, accumulate: bool = False) -> Kernel:
    """The cotangent ``S`` of the input stack ``Z`` from the output's ``B`` (``A``: ``a_1 .. a_{K+1}``).

    With ``q_j = d out / d delta^j`` (``q_K = a_K b``), each product ``delta^j[t] += delta[l]
    delta^{j-1}[r]`` sends ``q_j[t] delta^{j-1}[r]`` to ``delta``'s cotangent at ``l`` and
    ``q_j[t] delta[l]`` to ``q_{j-1}[r]``; ``q_{j-1} = a_{j-1} b + (those)``. The value row
    reaches the output through every ``a_j``: ``S_0 = b_0 a_1 + sum_j <b, delta^j> (j + 1) a_{j+1}``.
    Sums are grouped and ordered as in the generic kernels (the adjoint tables' runs). The powers
    are recomputed from ``Z``: the forward pass keeps none.

    ``accumulate``: instead of ``S_0``, add each ``<b, delta^j>`` to row ``j - 1`` of ``ACC`` (one
    direction of Taylor mode at a time; the value row's cotangent is formed after the last).
    """
    n_rows, powers = table.n_coef, products(table, order)
    rows = range(1, n_rows)
    first = [table.degree_slice(j).start for j in range(order + 1)]
    lines = _loads([f"a_{j}" for j in range(1, order + 2)], "A", range(1, order + 2))
    lines += _loads([f"d_{r}" for r in rows], "Z", rows)
    cotangent_rows = rows if accumulate else range(n_rows)
    lines += _loads([f"b_{r}" for r in cotangent_rows], "B", cotangent_rows)
    lines += _powers(table, order)
    if not accumulate:
        lines.append(("let", "c_0", "b_0 * a_1"))  # the value row: through a_0 (whose derivative is a_1) and the a_j
    for j in range(1, order + 1):
        kept = [r for r in range(first[j], n_rows) if j == 1 or r in powers[j]]
        if kept:
            inner = " + ".join(f"b_{r} * {_power(j, r)}" for r in kept)
            if accumulate:
                lines += [("load", f"s_{j}", "ACC", j - 1), ("store", "ACC", j - 1, f"s_{j} + ({inner})")]
            else:
                lines.append(("count", f"k_{j + 1}", j + 1))
                lines.append(("set", "c_0", f"c_0 + (({inner}) * k_{j + 1}) * a_{j + 1}"))
    for r in range(first[order], n_rows if order else 0):  # order 0: the value row alone, done
        lines.append(("let", f"q{order}_{r}", f"a_{order} * b_{r}"))
    cotangent: dict[int, list[str]] = {r: [] for r in rows}  # delta's, one sum per power
    for j in range(order, 1, -1):
        product = table.series_product(j - 1)
        for r, total in _adjoint_sums(product.adjoint_left, f"q{j}", lambda r, j=j: _power(j - 1, r)).items():
            cotangent[r].append(f"({total})")
        to_previous = _adjoint_sums(product.adjoint_right, f"q{j}", lambda r: f"d_{r}")
        for r in range(first[j - 1], n_rows):
            sent = f" + ({to_previous[r]})" if r in to_previous else ""
            lines.append(("let", f"q{j - 1}_{r}", f"a_{j - 1} * b_{r}" + sent))
    if not accumulate:
        lines.append(("store", "S", 0, "c_0"))
    for r in rows:
        lines.append(("store", "S", r, " + ".join([*cotangent[r], f"q1_{r}"])))
    inputs = {"A": range(1, order + 2), "Z": rows, "B": cotangent_rows}
    outputs = {"S": rows if accumulate else range(n_rows)}
    if accumulate:
        inputs["ACC"] = outputs["ACC"] = range(order)  # read and written in place: one argument per row
    return Kernel("backward", inputs, outputs, lines)


def _adjoint_sums(adjoint, cotangent: str, factor) -> dict[int, str]:
    """``{row: "q[t] * factor(r) + ..."}`` of an adjoint map ``out[target] += a[left] * b[right]``
    (``a`` the cotangent ``q``), in the order of its runs."""
    sums: dict[int, list[str]] = {}
    for left, right, target, length in adjoint.runs.tolist():
        for k in range(length):
            sums.setdefault(target + k, []).append(f"{cotangent}_{left + k} * {factor(right + k)}")
    return {row: " + ".join(terms) for row, terms in sums.items()}


def tanh_coefficients(order: int, cutoff: float) -> list[tuple]:
    """Statements for ``a_j = tanh^(j)(z_0) / j!``, ``j = 0..order``, the way the reference fills
    them (:func:`nnderiv.activations._fill_tanh`, then the division by ``j!``): ``g_0 = tanh z``,
    ``g_1 = 4e/(1 + e)^2`` with ``e = exp(-2 min(|z|, cutoff))``, then the Riccati recurrence
    ``g_{n+1} = -sum_j C(n, j) g_j g_{n-j}`` (symmetric pairs once, doubled). ``TANH``, ``EXP``,
    ``FABS``, ``FMIN`` and ``REAL(x)`` (a constant in the working precision) are the renderer's."""
    lines = [("let", "g_0", "TANH(z_0)")]
    if order >= 1:
        lines.append(("let", "e", f"EXP(REAL(-2.0) * FMIN(FABS(z_0), REAL({float(cutoff)!r})))"))
        lines.append(("let", "g_1", "(REAL(4.0) * e) / ((REAL(1.0) + e) * (REAL(1.0) + e))"))
    for n in range(1, order):
        terms = [f"REAL(2.0) * g_0 * g_{n}"]
        for j in range(1, n // 2 + 1):
            terms.append(f"REAL({float(comb(n, j) * (1 if 2 * j == n else 2))!r}) * (g_{j} * g_{n - j})")
        lines.append(("let", f"g_{n + 1}", "-(" + " + ".join(terms) + ")"))
    lines += [("let", f"a_{j}", f"g_{j}") for j in range(min(order, 1) + 1)]
    lines += [("let", f"a_{j}", f"g_{j} * REAL({1.0 / factorial(j)!r})") for j in range(2, order + 1)]
    return lines


def saving(kernel: Kernel, order: int) -> Kernel:
    """``kernel`` (a :func:`composition` computing its coefficients) that also stores ``a_0 ..
    a_order`` into ``A``, for the pullback."""
    stores = [("store", "A", j, f"a_{j}") for j in range(order + 1)]
    return Kernel(
        kernel.name + "_saving", kernel.inputs, {**kernel.outputs, "A": range(order + 1)}, kernel.body + stores
    )
