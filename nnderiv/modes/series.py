r"""Truncated Taylor series through a network: the one engine behind every mode.

A stack ``(n_rows, N, width)`` holds, for each of ``N`` points, the coefficients of a truncated
Taylor series of a layer's output in some displacement variables; which monomials are kept is the
mode's *table* (:mod:`nnderiv.combinatorics`): all ``t^alpha`` with ``|alpha| <= K`` (full mode),
``t_r^k`` along each direction (Taylor mode), the first order plus summed second-order terms
(collapsed Laplacian), or ``1, t_i, s, t_i s`` (Hessian-vector products). Row 0 is the value.
Coefficients are Taylor coefficients, ``d^alpha h / alpha!``. Because the kept monomials are
closed under taking divisors, truncation commutes with sums and products, and two rules suffice:

**Affine step** ``z = h W + b``: expansion is linear, so every row goes through ``W`` — ONE matrix
product on the stack reshaped to ``(n_rows * N, n_in)`` — and only the value row gets ``b``.

**Activation step** (Faà di Bruno as series composition). With ``z = c_0 + delta``, ``delta`` the
series without constant term,

.. math::  g(z) = \sum_{j=0}^{K} a_j\, \delta^j, \qquad a_j = \frac{g^{(j)}(c_0)}{j!},

since ``delta^j`` starts at degree ``j``. The powers ``delta^j = delta * delta^{j-1}`` are sparse
bilinear maps from the table's list of row pairs; expanding them is the sum over set partitions in
the multivariate Faà di Bruno formula.

**Pullbacks**, beside each rule: ``h_bar = z_bar W^T``, ``W_bar = h^T z_bar`` and
``b_bar = sum z_bar_0`` (one matrix product each); for the activation, ``a_j_bar = <h_bar,
delta^j>`` over the rows, ``c_0_bar = sum_j a_j_bar (j + 1) a_{j+1}`` (``d a_j / d c_0 = (j + 1)
a_{j+1}``: the pullback of order ``K`` needs ``g^{(K+1)}``), and the products are walked back from
``delta^K`` to ``delta`` with the two adjoints of each bilinear map.
"""

from __future__ import annotations

import numpy as np

from .. import kernels


class SeriesMode:
    """Propagate truncated series with rows given by ``table``; see the module docstring.

    ``directions`` ``(n_first, d)`` or, per point, ``(n_first, N, d)``: the input's first-order
    coefficients, one per first-order row of the table (the identity for all partials).
    """

    def __init__(self, table, directions, *, for_vjp: bool = False):
        self.table, self.directions, self.for_vjp = table, directions, for_vjp
        self.order, self.n_rows = table.order, table.n_coef

    # --- seeding: the series of the input x + (displacement) -----------------------------------

    def seed(self, x: np.ndarray, part: slice = slice(None)) -> np.ndarray:
        """Value ``x``; first-order rows the directions (at the points ``part`` if per point)."""
        stack = np.zeros((self.n_rows, *x.shape), dtype=x.dtype)
        stack[0] = x
        if self.order >= 1:
            per_point = self.directions.ndim == 3
            stack[self.table.degree_slice(1)] = self.directions[:, part] if per_point else self.directions[:, None]
        return kernels.asarray(stack)  # onto the backend's device (a no-op on the CPU)

    def seed_vjp(self, stack_bar: np.ndarray) -> np.ndarray:
        """Cotangent of ``x``: only the value row of the seed depends on ``x``."""
        return stack_bar[0]

    # --- affine step ----------------------------------------------------------------------------

    def linear(self, stack: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``z = stack @ W`` row by row, plus ``b`` on the value row only."""
        z = kernels.affine(stack, W)
        kernels.add_bias(z[0], b)
        return z

    def linear_vjp(self, stack: np.ndarray, W: np.ndarray, z_bar: np.ndarray):
        """Pullback of :meth:`linear`: ``(stack_bar, W_bar, b_bar)``."""
        return kernels.affine(z_bar, W.T), kernels.affine_weight_grad(stack, z_bar), z_bar[0].sum(axis=0)

    # --- activation step ------------------------------------------------------------------------

    def elementwise(self, stack: np.ndarray, activation):
        """``act`` applied to the series ``stack``; returns ``(out, saved for the pullback)``.

        ``out = a_0`` on row 0 and ``sum_j a_j delta^j`` elsewhere, one fused kernel
        (:func:`nnderiv.kernels.activate`); for a pullback it also keeps the ``a_j`` (to order
        ``K + 1``) and the powers ``delta^j``.
        """
        if not self.for_vjp:
            return kernels.activate(stack, activation, self.table, self.order), None
        out, a, powers = kernels.activate_saving(stack, activation, self.table, self.order)
        return out, (a, stack, powers)

    def elementwise_vjp(self, saved, activation, out_bar: np.ndarray) -> np.ndarray:
        """Pullback of :meth:`elementwise`: the cotangent of the input stack (see the module docstring)."""
        a, stack, powers = saved
        return kernels.compose_vjp(out_bar, stack, powers, a, self.table, self.order)

    # --- memory estimate ------------------------------------------------------------------------

    def elementwise_rows(self) -> int:
        """Rows of ``(N, width)`` arrays alive during one activation step: input, output, powers,
        one product buffer (at most a stack), and the ``a_j``."""
        return (self.order + 2) * self.n_rows + self.order + 2

    def elementwise_saved_rows(self) -> int:
        """Rows kept by one activation step for the pullback: the powers and the ``a_j``."""
        return self.order * self.n_rows + self.order + 2
