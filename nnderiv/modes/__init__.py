"""Modes: what a stack of coefficients means.

Every mode carries, through the network, a *stack* of shape ``(n_rows, N, width)``: row 0 is the
value of the layer's output at the ``N`` points, the other rows are derivative coefficients whose
meaning the mode defines (all partials in :mod:`~nnderiv.modes.full`). A mode provides two
primitives and their pullbacks, side by side:

- ``linear(stack, W, b)``: the affine map is linear, so every row is multiplied by ``W`` (ONE
  matrix product on the stack reshaped to ``(n_rows * N, n_in)``) and only the value row gets ``b``;
- ``elementwise(stack, activation)``: the chain rule for ``act(z)``, specific to each mode.

Layers call only these; they never look at what the rows mean.
"""

from __future__ import annotations

import numpy as np

from .. import kernels


class StackMode:
    """Rules shared by every mode: the affine step and its pullback."""

    #: number of rows of the stack; set by each mode
    n_rows: int

    def linear(self, stack: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
        """``z = stack @ W`` row by row, plus ``b`` on the value row only."""
        z = kernels.affine(stack, W)
        z[0] += b
        return z

    def linear_vjp(self, stack: np.ndarray, W: np.ndarray, z_bar: np.ndarray):
        """Pullback of :meth:`linear`: ``(stack_bar, W_bar, b_bar)``."""
        return kernels.affine(z_bar, W.T), kernels.affine_weight_grad(stack, z_bar), z_bar[0].sum(axis=0)

    def seed_vjp(self, stack_bar: np.ndarray) -> np.ndarray:
        """Cotangent of the points ``x`` from that of the seed stack: only row 0 depends on ``x``."""
        return stack_bar[0]
