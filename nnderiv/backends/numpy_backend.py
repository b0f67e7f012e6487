r"""The reference backend: every kernel in plain array operations, the oracle of the others.

The code is written against the namespace of its input arrays (NumPy, or CuPy when the
:mod:`~nnderiv.backends.cupy_backend` reuses it), and reads as the math of
:mod:`nnderiv.modes.series`: with ``z = c_0 + delta`` and ``a_j = g^{(j)}(c_0) / j!``,

.. math::  g(z) = \sum_{j=0}^{K} a_j\, \delta^j, \qquad \delta^j = \delta * \delta^{j-1},

each power one sparse bilinear map (:class:`~nnderiv.combinatorics.SparseBilinear`) evaluated run by
run: ``out[t0 : t0 + n] += a[l0 : l0 + n] * b[r0 : r0 + n]``.
"""

from __future__ import annotations

import sys
from math import factorial

import numpy as np

from ..combinatorics import SparseBilinear
from . import is_device_array

ON_DEVICE = False


def check_available() -> None:
    """Always available."""


def workers() -> int:
    """Chunks of points that run at once (:mod:`nnderiv.parallel`): one, the reference stays serial."""
    return 1


#: a row of the forward-over-reverse Hessian against a forward row here: the forward series
#: products run as one array operation per run of terms, the reverse sweep's as a few per layer
#: (measured 0.25-0.4 on the benchmark's network, d = 2-8, N = 4096: docs/strategies.md)
REVERSE_ROW_COST = 0.3


def reverse_row_cost(model, order: int) -> float:
    """What a reverse-sweep row costs in forward rows (:func:`nnderiv.kernels.reverse_row_cost`)."""
    return REVERSE_ROW_COST if order == 2 else 1.0


def namespace(array):
    """``numpy``, or ``cupy`` for a CuPy array (already imported then: never imported here)."""
    return sys.modules["cupy"] if is_device_array(array) else np


def asarray(array) -> np.ndarray:
    """``array`` in host memory: a NumPy array (a CuPy array is copied back from the GPU)."""
    return array.get() if namespace(array) is not np else np.asarray(array)


def activation_derivatives(activation, z, k: int):
    """``[g(z), g'(z), ..., g^(k)(z)]``, shape ``(k + 1, *z.shape)``: the activation's closed forms."""
    return activation.derivatives(z, k)


def taylor_coefficients(activation, z, order: int):
    """``a_j = g^(j)(z) / j!`` for ``j = 0..order``: shape ``(order + 1, *z.shape)``."""
    return divide_by_factorials(activation_derivatives(activation, z, order))


def divide_by_factorials(derivatives):
    """``[g, g', g'', ...]`` -> ``[g, g', g''/2!, ...]``, in place."""
    for j in range(2, len(derivatives)):
        derivatives[j] *= 1.0 / factorial(j)
    return derivatives


# --- matrix products -----------------------------------------------------------------------------


#: NumPy's floating-point checks around a BLAS call: on finite operands an "invalid" flag can only
#: come from inside the library (OpenBLAS's SIMD kernels have raised it on lanes they discard:
#: numpy/numpy#24067, #13173; seen here once, in float32, not reproducible), so it is not reported.
#: A NaN or infinity in the result itself is still there to see.
BLAS_ERRSTATE = {"invalid": "ignore"}


def affine(stack, W):
    """``stack @ W`` over the last axis as ONE matrix product on ``(rows * N, n_in)``."""
    rows, n, n_in = stack.shape
    if n_in == 1:  # an outer product: each entry one multiplication, the same numbers as BLAS's,
        return stack * W[0]  # 2.5x faster than a GEMM of inner size 1 (one input, or one output's adjoint)
    with np.errstate(**BLAS_ERRSTATE):
        return (stack.reshape(rows * n, n_in) @ W).reshape(rows, n, W.shape[1])


def add_bias(z, b):
    """``z += b`` in place, ``b`` ``(width,)`` added to every point of ``z`` ``(N, width)``: the
    value row of an affine step; returns ``z``."""
    z += b
    return z


def affine_weight_grad(stack, z_bar):
    """``sum over rows and points of stack^T @ z_bar``: the weight cotangent, ONE product."""
    n_in, n_out = stack.shape[-1], z_bar.shape[-1]
    with np.errstate(**BLAS_ERRSTATE):
        return stack.reshape(-1, n_in).T @ z_bar.reshape(-1, n_out)


# --- sparse products of stacks -------------------------------------------------------------------


def _bilinear_into(a, b, table: SparseBilinear, out):
    """``out[table.target[p]] += a[table.left[p]] * b[table.right[p]]``, one run at a time, into a
    reused buffer: no gather, no temporary the size of all pairs."""
    runs = table.runs
    if len(runs):
        xp = namespace(a)
        buffer = xp.empty((int(runs[:, 3].max()), *a.shape[1:]), dtype=a.dtype)
        for l0, r0, t0, n in runs.tolist():
            product = xp.multiply(a[l0 : l0 + n], b[r0 : r0 + n], out=buffer[:n])
            out[t0 : t0 + n] += product
    return out


def bilinear(a, b, table: SparseBilinear):
    """``out[table.target[p]] += a[table.left[p]] * b[table.right[p]]`` for every pair ``p``.

    ``a`` and ``b`` are stacks ``(rows, N, width)``; returns ``(table.n_out, N, width)``.
    """
    return _bilinear_into(a, b, table, namespace(a).zeros((table.n_out, *a.shape[1:]), dtype=a.dtype))


# --- the activation step: series composition and its pullback ------------------------------------


def series_powers(delta, table, order: int):
    """``delta^2, ..., delta^order`` as one array ``(order - 1, *delta.shape)`` (row 0 of ``delta``,
    the value, is never read by the tables)."""
    powers = namespace(delta).zeros((max(order - 1, 0), *delta.shape), dtype=delta.dtype)
    previous = delta
    for j in range(2, order + 1):
        previous = _bilinear_into(delta, previous, table.series_product(j - 1), powers[j - 2])
    return powers


def _accumulate(stack, a, table, order: int, powers):
    """``out = a_0`` on row 0, ``sum_j a_j delta^j`` on the others."""
    if order == 0:  # the value alone: a_0 is the output (a view; stacks are never written in place)
        return a[:1]
    xp = namespace(stack)
    out = xp.empty_like(stack)
    out[0] = a[0]
    if order >= 1:
        xp.multiply(a[1], stack[1:], out=out[1:])
    for j in range(2, order + 1):
        first = table.degree_slice(j).start  # delta^j vanishes below degree j
        out[first:] += a[j] * powers[j - 2][first:]
    return out


def compose(stack, a, table, order: int):
    """``g`` applied to the series ``stack`` given its Taylor coefficients ``a`` ``(>= order + 1, N, width)``."""
    return _accumulate(stack, a, table, order, series_powers(stack, table, order))


def compose_saving(stack, a, table, order: int):
    """:func:`compose` and the powers ``delta^2 .. delta^K`` its pullback needs: ``(out, powers)``."""
    powers = series_powers(stack, table, order)
    return _accumulate(stack, a, table, order, powers), powers


def activate(stack, activation, table, order: int):
    """The activation step: ``g`` applied to the series ``stack`` (:func:`compose` of its coefficients)."""
    return compose(stack, taylor_coefficients(activation, stack[0], order), table, order)


def activate_saving(stack, activation, table, order: int):
    """:func:`activate` and what its pullback needs: ``(out, a, powers)``, ``a`` to order ``order + 1``."""
    a = taylor_coefficients(activation, stack[0], order + 1)
    out, powers = compose_saving(stack, a, table, order)
    return out, a, powers


def activation_adjoint(adjoint, a, stack):
    """One activation step of a reverse sweep (:mod:`nnderiv.modes.reverse`): ``adjoint``
    ``(T, m, N, width)`` holds ``h_bar`` and, for ``T > 1``, its ``T - 1`` tangents; ``a`` the
    activation's Taylor coefficients at the value row of ``stack`` (the layer's input series).

    ``z_bar = h_bar g'`` and ``z_bar_i = h_bar_i g' + h_bar g'' z_i`` with ``g' = a_1``, ``g'' = 2 a_2``.
    """
    out = adjoint * a[1]
    if len(adjoint) > 1:
        curvature = (2.0 * a[2]) * stack[1 : len(adjoint)]  # g'' z_i, (T - 1, N, width)
        out[1:] += curvature[:, None] * adjoint[0]
    return out


def compose_vjp(out_bar, stack, powers, a, table, order: int):
    """Pullback of :func:`compose` to its input stack; ``a`` must hold orders ``0 .. order + 1``.

    ``a_j_bar = <out_bar, delta^j>`` over the rows, ``c_0_bar = sum_j a_j_bar (j + 1) a_{j+1}``, and
    the products are walked back from ``delta^K`` to ``delta`` with the adjoints of each power.
    """
    xp = namespace(stack)

    def power(j):
        return stack if j == 1 else powers[j - 2]

    c0_bar = out_bar[0] * a[1]  # the value row reaches the output through every a_j
    for j in range(1, order + 1):
        first = table.degree_slice(j).start
        a_j_bar = xp.einsum("rnw,rnw->nw", out_bar[first:], power(j)[first:])
        c0_bar += a_j_bar * (j + 1) * a[j + 1]
    stack_bar = xp.zeros_like(out_bar)
    power_bar = a[order] * out_bar  # walk delta^j = delta * delta^{j-1} backwards
    for j in range(order, 1, -1):
        product = table.series_product(j - 1)
        stack_bar += bilinear(power_bar, power(j - 1), product.adjoint_left)
        power_bar = a[j - 1] * out_bar + bilinear(power_bar, stack, product.adjoint_right)
    if order >= 1:
        stack_bar += power_bar
    stack_bar[0] = c0_bar
    return stack_bar
