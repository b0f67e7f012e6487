r"""Full mode: every partial derivative up to order ``K``, mixed ones included.

Convention (stated once, used everywhere): row ``r`` of a stack holds the **Taylor coefficient**

.. math::  c_\alpha = \frac{\partial^\alpha h}{\alpha!}, \qquad
           \alpha = \texttt{table.alphas[r]}, \quad \alpha! = \prod_i \alpha_i!,

of the layer output ``h`` (shape ``(N, width)``) with respect to the network input ``x``, for all
multi-indices ``|alpha| <= K`` in graded order (:mod:`nnderiv.combinatorics`). Row 0 is the value.
So ``h(x + t) = sum_alpha c_alpha t^alpha + O(|t|^{K+1})``: the stack is a truncated multivariate
Taylor series, and the two primitives are operations on series.

**Affine step** (:class:`~nnderiv.modes.StackMode`): series are added and scaled linearly, so every
coefficient goes through ``W`` and only the value gets ``b``.

**Activation step** (multivariate Faà di Bruno as series composition). Split ``z = c_0 + delta``
with ``delta`` the series without constant term. Then

.. math::  g(z) = \sum_{j=0}^{K} a_j\, \delta^j, \qquad a_j = \frac{g^{(j)}(c_0)}{j!},

because ``delta^j`` starts at degree ``j`` (every term of higher ``j`` is beyond order ``K``). The
powers ``delta^j = delta * delta^{j-1}`` are truncated series products, one sparse bilinear map
from a cached table of index pairs ``(l, r)`` with ``l + r = t``. Gathering the product terms by
``j`` is exactly the sum over set partitions in Faà di Bruno's formula.

**Pullback**: the powers are kept; with ``h_bar`` the output cotangent,
``a_j_bar = <h_bar, delta^j>`` over the rows, ``c_0_bar = sum_j a_j_bar * (j + 1) a_{j+1}``
(since ``d a_j / d c_0 = (j + 1) a_{j+1}``; hence the activation's derivative of order ``K + 1``),
and the products are walked back from ``j = K`` down to ``1`` with the two adjoint tables.
"""

from __future__ import annotations

from math import factorial

import numpy as np

from .. import kernels
from ..combinatorics import multi_index_table
from . import StackMode


def taylor_coefficients(activation, z: np.ndarray, order: int) -> np.ndarray:
    """``a_j = g^(j)(z) / j!`` for ``j = 0..order``: shape ``(order + 1, *z.shape)``."""
    coefs = activation.derivatives(z, order)
    for j in range(2, order + 1):
        coefs[j] *= 1.0 / factorial(j)
    return coefs


class FullMode(StackMode):
    """All partials of order ``<= order`` of a network with ``d`` inputs; see the module docstring."""

    def __init__(self, d: int, order: int, *, for_vjp: bool = False):
        self.d, self.order, self.for_vjp = d, order, for_vjp
        self.table = multi_index_table(d, order)
        self.n_rows = self.table.n_coef

    def elementwise_rows(self) -> int:
        """Rows of ``(N, width)`` arrays alive during one activation step (memory estimate)."""
        pairs = self.table.series_product(1).target.size if self.order >= 2 else 0
        return (self.order + 1) * self.n_rows + self.order + 2 + 2 * pairs

    def elementwise_saved_rows(self) -> int:
        """Rows kept by one activation step for the pullback: the powers and the ``a_j``."""
        return self.order * self.n_rows + self.order + 2

    def seed(self, x: np.ndarray) -> np.ndarray:
        """The series of the input itself: value ``x``, coefficient 1 of ``x_i`` along ``e_i``."""
        stack = np.zeros((self.n_rows, *x.shape), dtype=x.dtype)
        stack[0] = x
        if self.order >= 1:
            stack[1 : 1 + self.d, :, :] = np.eye(self.d, dtype=x.dtype)[:, None, :]
        return stack

    def _powers(self, delta: np.ndarray) -> list[np.ndarray]:
        """``[delta^1, ..., delta^K]`` (index 0 unused); row 0 of ``delta`` is never read."""
        powers = [None, delta]
        for j in range(2, self.order + 1):
            powers.append(kernels.bilinear(delta, powers[-1], self.table.series_product(j - 1)))
        return powers

    def elementwise(self, stack: np.ndarray, activation):
        """``act`` applied to the series ``stack``; returns ``(out, saved for the pullback)``."""
        K = self.order
        a = taylor_coefficients(activation, stack[0], K + 1 if self.for_vjp else K)
        powers = self._powers(stack)
        out = np.empty_like(stack)
        out[0] = a[0]
        if K >= 1:
            np.multiply(a[1], stack[1:], out=out[1:])
        for j in range(2, K + 1):
            first = self.table.degree_slice(j).start  # delta^j vanishes below degree j
            out[first:] += a[j] * powers[j][first:]
        return out, ((a, powers) if self.for_vjp else None)

    def elementwise_vjp(self, saved, activation, out_bar: np.ndarray) -> np.ndarray:
        """Pullback of :meth:`elementwise`: the cotangent of the input stack."""
        a, powers = saved
        K = self.order
        stack_bar = np.zeros_like(out_bar)
        # value row: d out / d c_0 through every a_j
        c0_bar = out_bar[0] * a[1]
        for j in range(1, K + 1):
            first = self.table.degree_slice(j).start
            a_j_bar = np.einsum("rnw,rnw->nw", out_bar[first:], powers[j][first:])
            c0_bar += a_j_bar * (j + 1) * a[j + 1]
        # coefficient rows: walk the products delta^j = delta * delta^{j-1} backwards
        power_bar = a[K] * out_bar
        for j in range(K, 1, -1):
            product = self.table.series_product(j - 1)
            stack_bar += kernels.bilinear(power_bar, powers[j - 1], product.adjoint_left)
            power_bar = a[j - 1] * out_bar + kernels.bilinear(power_bar, powers[1], product.adjoint_right)
        if K >= 1:
            stack_bar += power_bar
        stack_bar[0] = c0_bar
        return stack_bar
