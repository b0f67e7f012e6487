r"""Few outputs, many inputs: the Jacobian by reverse mode, the Hessian by forward-over-reverse.

Forward mode pays for every input direction: the Jacobian of ``m`` outputs over ``d`` inputs
propagates ``1 + d`` rows, the full Hessian ``1 + d + d(d + 1)/2``. A reverse sweep pays per output
instead, which wins when ``m`` is small and ``d`` is not (a scalar PDE solution of 8 inputs: 45
rows forward, 19 this way).

**Reverse mode (Jacobian).** Sweep the value forward, keeping ``g'(z)`` of every activation; then
carry the adjoint ``u_bar = d f_k / d u`` of each layer's input back, ``m`` rows at once (row
``k``: output ``k``):

.. math::  \bar z = \bar h \odot g'(z), \qquad \bar h_{\text{in}} = \bar z\, W^\top .

At the input, row ``k`` is ``grad f_k``.

**Forward-over-reverse (Hessian).** Differentiate that reverse sweep in forward mode: every
quantity ``q`` becomes ``q + sum_i t_i q_i``, ``d`` tangent rows beside it. The forward sweep is
the first-order series (value and the ``d`` tangents ``z_i = dz/dx_i``, :mod:`~nnderiv.modes.full`,
order 1); the reverse sweep carries ``h_bar`` and its tangents ``h_bar_i``, and the product rule on
``z_bar = h_bar g'(z)`` gives

.. math::  \bar z = \bar h\, g'(z), \qquad \bar z_i = \bar h_i\, g'(z) + \bar h\, g''(z)\, z_i,

while the affine step stays one matrix product on all ``(1 + d) m`` rows. At the input,
``x_bar = grad f_k`` and ``x_bar_i = d (grad f_k) / dx_i``, row ``i`` of the Hessian: ``(1 + d)(1 + m)``
rows in all. The result is symmetrized, ``(H + H^T) / 2``, which also averages the rounding.

These strategies give values, not pullbacks: :func:`nnderiv.vjp` uses the forward mode, whose
every rule has its pullback. :func:`choose` compares their costs: the row counts, a Hessian's
reverse rows weighted by what the backend measured one to cost (``nnderiv.explain`` shows it).
"""

from __future__ import annotations

from dataclasses import dataclass
from math import comb

import numpy as np

from .. import engine, kernels
from ..combinatorics import multi_index_table
from ..parallel import map_chunks
from .full import FullMode

#: stacked rows a second sweep costs beyond its own rows: none measured (an adjoint row, one product
#: and one multiplication per layer, costs no more than a forward row; docs/strategies.md)
SWEEP_OVERHEAD_ROWS = 0


@dataclass(frozen=True)
class Strategy:
    """One way to compute a quantity: a name, its stacked rows, what it does, and its cost in
    forward rows (``rows`` times what one of its rows costs on the backend; ``None``: ``rows``)."""

    name: str
    rows: int
    description: str
    cost: float | None = None

    def __post_init__(self):
        if self.cost is None:
            object.__setattr__(self, "cost", float(self.rows))


def strategies(d: int, m: int, order: int, reverse_row_cost: float = 1.0) -> list[Strategy]:
    """The ways to get every derivative up to ``order`` (1 or 2) of ``m`` outputs over ``d`` inputs;
    a row of the forward-over-reverse Hessian costs ``reverse_row_cost`` forward rows
    (:func:`nnderiv.kernels.reverse_row_cost`: the backend's measured figure)."""
    forward = Strategy("forward", comb(d + order, order), f"full forward mode, every partial to order {order}")
    if order == 1:
        rows = 1 + m + SWEEP_OVERHEAD_ROWS
        return [forward, Strategy("reverse", rows, "value forward, then m adjoint rows back")]
    if order == 2:
        rows = (1 + d) * (1 + m) + SWEEP_OVERHEAD_ROWS
        description = "forward-over-reverse: (1 + d) rows forward, (1 + d) m back"
        return [forward, Strategy("reverse", rows, description, rows * reverse_row_cost)]
    return [forward]


def choose(d: int, m: int, order: int, strategy: str = "auto", reverse_row_cost: float = 1.0) -> Strategy:
    """The named strategy, or for ``"auto"`` the cheapest (forward on ties)."""
    options = strategies(d, m, order, reverse_row_cost)
    if strategy == "auto":
        return min(options, key=lambda s: s.cost)  # min keeps the first of equals: forward
    return next(s for s in options if s.name == strategy)


@dataclass(frozen=True)
class Result:
    """What a reverse sweep found: values ``(N, m)``, Jacobian ``(N, m, d)``, Hessian or None."""

    value: np.ndarray
    jacobian: np.ndarray
    hessian: np.ndarray | None


def evaluate(model, x: np.ndarray, order: int, chunk_size=None) -> Result:
    """Value, Jacobian and (``order == 2``) Hessian of ``model`` at ``x`` by the sweeps above."""
    value, adjoint = sweep(model, FullMode(model.n_inputs, order - 1, for_vjp=True), x, chunk_size)
    jacobian = np.moveaxis(adjoint[0], 0, 1)  # (N, m, d)
    if order == 1:
        return Result(value, jacobian, None)
    hessian = np.transpose(adjoint[1:], (2, 1, 0, 3))  # (N, m, d_i, d_j) from (d_i, m, N, d_j)
    return Result(value, jacobian, 0.5 * (hessian + np.swapaxes(hessian, -1, -2)))


def sweep(model, mode, x: np.ndarray, chunk_size=None) -> tuple[np.ndarray, np.ndarray]:
    """The forward sweep of ``mode`` (order 0, or a first-order series of ``T - 1`` tangents, with
    ``for_vjp``), then the reverse sweep of its ``T`` rows for each output, chunk by chunk.

    Returns ``(value (N, m), adjoint (T, m, N, d))`` on the host: ``adjoint[0, k]`` is
    ``grad f_k``, ``adjoint[t, k]`` its derivative along the series' tangent ``t``.
    """
    extra_rows = model.n_outputs * mode.n_rows
    size = engine.forward_chunk_size(model, mode, len(x), chunk_size, extra_rows=extra_rows)
    compiled = kernels.dense_sweep(model, x.dtype)  # one compiled call where the backend has one for the model
    if compiled is not None:
        if mode.n_rows == 1:  # the Jacobian
            return compiled.jacobian(x, size)
        found = compiled.forward_over_reverse(x, mode.directions, size)  # None where switched off
        if found is not None:
            return found
    parts = engine.chunks(len(x), size)
    value = adjoint = None
    sweeps = map_chunks(lambda part: _sweep(model, mode, x[part], part), parts)
    for part, (chunk_value, chunk_adjoint) in zip(parts, sweeps):
        if part == slice(0, len(x)):
            return chunk_value, chunk_adjoint
        if value is None:  # each chunk goes into its place: no list of chunks beside the result
            value = np.empty((len(x), *chunk_value.shape[1:]), dtype=chunk_value.dtype)
            adjoint = np.empty((*chunk_adjoint.shape[:2], len(x), chunk_adjoint.shape[3]), dtype=chunk_adjoint.dtype)
        value[part], adjoint[:, :, part] = chunk_value, chunk_adjoint
    return value, adjoint


def _sweep(model, mode, x, part) -> tuple[np.ndarray, np.ndarray]:
    layers = [layer for layer, _ in engine.leaf_layers(model)]
    stack, saved = mode.seed(x, part), []
    for layer in layers:
        stack, layer_saved = layer.forward(mode, stack)
        saved.append(layer_saved)
    n, m, tangents = len(x), model.n_outputs, mode.n_rows
    # adjoint stack (T rows, m outputs, N, width): row 0 of output k seeded with e_k
    adjoint = np.zeros((tangents, m, n, m), dtype=model.dtype)
    adjoint[0, np.arange(m), :, np.arange(m)] = 1.0
    adjoint = kernels.asarray(adjoint)
    for layer, layer_saved in zip(reversed(layers), reversed(saved)):
        if hasattr(layer, "activation"):
            a, z, _ = layer_saved  # Taylor coefficients (to order 2) and the input series
            adjoint = kernels.activation_adjoint(adjoint, a, z)
        else:
            W = layer.params["W"]
            flat = kernels.affine(adjoint.reshape(tangents * m, n, W.shape[1]), W.T)
            adjoint = flat.reshape(tangents, m, n, W.shape[0])
    return kernels.host(stack[0]), kernels.host(adjoint)  # small now: read out on the host


def coefficients(result: Result, order: int) -> np.ndarray:
    """The full-mode stack ``(C(d + order, order), N, m)`` of Taylor coefficients of ``result``
    (the layout of :class:`nnderiv.Derivatives`): ``d^alpha f / alpha!``."""
    n, m, d = result.jacobian.shape
    table = multi_index_table(d, order)
    out = np.empty((table.n_coef, n, m), dtype=result.value.dtype)
    out[0] = result.value
    out[table.degree_slice(1)] = np.moveaxis(result.jacobian, 2, 0)
    if order == 2:
        rows = table.degree_slice(2)
        alphas = np.asarray(table.alphas[rows])  # e_i + e_j, i <= j
        i, j = alphas.argmax(axis=1), d - 1 - alphas[:, ::-1].argmax(axis=1)
        entries = np.moveaxis(result.hessian[:, :, i, j], 2, 0)  # (rows, N, m)
        out[rows] = entries / np.asarray(table.factorials[rows], dtype=out.dtype)[:, None, None]
    return out
