r"""Collapsed second order: the Laplacian and any weighted sum of second derivatives, in O(d).

Convention: for directions ``v_1..v_n`` the stack holds the value (row 0), the first-order
Taylor coefficients along each direction (rows ``1..n``), and ONE row with the sum of the
second-order coefficients ``sum_r (1/2) d^2/dt^2 h(x + t v_r)`` — two rows when some directions
carry a negative sign (:func:`nnderiv.combinatorics.collapsed_second_order_table`).

Why the sum can be propagated without its terms (the "forward Laplacian"): through ``g(z)`` the
second-order coefficient along ``v_r`` becomes ``a_1 z_rr + a_2 z_r^2``, linear in ``z_rr``, so

.. math::  \sum_r h_{rr} = a_1 \sum_r z_{rr} + a_2 \sum_r z_r^2,

and through an affine layer the sum is mapped like any row. ``n + 2`` rows instead of the
``1 + d + d (d + 1) / 2`` of a full Hessian: the cost grows with ``d``, not ``d^2``.

With ``A = V^T V`` (``V`` the directions as rows) the sum is ``(1/2) sum_ij A_ij d_i d_j f``;
``laplacian(weights=A)`` factors a symmetric ``A`` once by its eigen-decomposition,
``A = sum_r lambda_r q_r q_r^T``, into directions ``sqrt(|lambda_r|) q_r`` with the sign of
``lambda_r``. The plain Laplacian uses ``V = I``.

**Why not the biharmonic this way.** ``Delta^2 f = sum_ij d_i^2 d_j^2 f`` needs fourth-order
coefficients, and the fourth-order coefficient of ``g(z)`` along ``v_r`` contains
``a_2 z_rr^2``, which is not a function of ``sum_r z_rr``: products of second-order coefficients
of the same direction do not collapse. :func:`nnderiv.biharmonic` instead combines fourth
derivatives along ``e_i`` and ``e_i +- e_j`` in Taylor mode (``O(d^2)`` directions).
"""

from __future__ import annotations

import numpy as np

from .. import _validation as check
from ..combinatorics import collapsed_second_order_table
from ..errors import ShapeError
from ..operators import Plan, register, run
from .series import SeriesMode


def _symmetric_weights(weights, model, n_points: int) -> np.ndarray:
    A = check.real_array(weights, "weights", model.dtype)
    d = model.n_inputs
    if A.shape not in ((d, d), (n_points, d, d)):
        raise ShapeError(f"weights must have shape ({d}, {d}) or, per point, ({n_points}, {d}, {d}); got {A.shape}")
    asymmetry = np.abs(A - np.swapaxes(A, -1, -2)).max(initial=0.0)
    if asymmetry > 100 * np.finfo(A.dtype).eps * max(np.abs(A).max(initial=0.0), 1.0):
        raise ShapeError(f"weights must be symmetric (A == A.T); max |A - A.T| = {asymmetry:.3g}")
    return A


def _factor(A: np.ndarray):
    """Directions and the number of negative ones: ``A = sum_r sign_r v_r v_r^T``."""
    lam, Q = np.linalg.eigh(A)  # ascending eigenvalues; columns of Q are eigenvectors
    scaled = np.sqrt(np.abs(lam))[..., None, :] * Q  # column r: sqrt(|lam_r|) q_r
    if A.ndim == 2:
        tol = A.shape[0] * np.finfo(A.dtype).eps * np.abs(lam).max(initial=0.0)
        pos, neg = lam > tol, lam < -tol
        directions = np.concatenate([scaled[:, pos].T, scaled[:, neg].T])
        return (directions if len(directions) else np.zeros((1, A.shape[0]), A.dtype)), int(neg.sum())
    # per point: positive parts first, then (if any point needs them) negative parts; eigenvalues
    # within rounding of zero count as zero, so a PSD A stays on the cheaper positive-only path
    tol = A.shape[-1] * np.finfo(A.dtype).eps * np.abs(lam).max(axis=-1, keepdims=True)
    negative_mask = lam < -tol
    positive = np.where(negative_mask, 0.0, 1.0)[:, None, :] * scaled
    negative = np.where(negative_mask, 1.0, 0.0)[:, None, :] * scaled
    parts = [positive] + ([negative] if negative_mask.any() else [])
    directions = np.concatenate([p.transpose(2, 0, 1) for p in parts])  # (n_dir, N, d)
    return np.ascontiguousarray(directions), (A.shape[-1] if len(parts) == 2 else 0)


def _plan_laplacian(model, x, *, for_vjp, weights=None) -> Plan:
    if weights is None:
        directions, n_negative = np.eye(model.n_inputs, dtype=model.dtype), 0
    else:
        directions, n_negative = _factor(_symmetric_weights(weights, model, len(x)))
    n_dir = len(directions)
    mode = SeriesMode(collapsed_second_order_table(n_dir, n_negative), directions, for_vjp=for_vjp)
    positive, negative = n_dir + 1, n_dir + 2  # rows of the summed second-order coefficients

    def readout(out_stack):  # 2 (sum of second-order coefficients), with signs
        total = 2.0 * out_stack[positive]
        return total - 2.0 * out_stack[negative] if n_negative else total

    def readout_vjp(cot, out_stack):
        out_bar = np.zeros_like(out_stack)
        out_bar[positive] = 2.0 * cot
        if n_negative:
            out_bar[negative] = -2.0 * cot
        return out_bar

    return Plan(mode, readout, readout_vjp)


def laplacian(model, x, weights=None, *, chunk_size: int | None = None) -> np.ndarray:
    """``sum_i d^2 f / dx_i^2`` at every point, shape ``(N, m)``, in ``d + 2`` stacked rows.

    With ``weights=A`` (symmetric ``(d, d)``, or per point ``(N, d, d)``), returns
    ``sum_ij A_ij d^2 f / dx_i dx_j`` instead, from ``rank(A) + 2`` rows for one shared ``A``
    (``+1`` if it is indefinite), ``d + 2`` rows per-point (``2 d + 3`` if some ``A`` is indefinite).

    >>> import numpy as np, nnderiv as nd
    >>> model = nd.MLP([3, 16, 1], activation="tanh", seed=0)
    >>> x = np.random.default_rng(0).uniform(-1, 1, (5, 3))
    >>> H = nd.hessian(model, x)
    >>> bool(np.allclose(nd.laplacian(model, x), np.trace(H, axis1=2, axis2=3)))
    True
    >>> A = np.array([[2.0, 1.0, 0.0], [1.0, 2.0, 0.0], [0.0, 0.0, -1.0]])
    >>> bool(np.allclose(nd.laplacian(model, x, weights=A), np.einsum("ij,nmij->nm", A, H)))
    True
    """
    return run(_plan_laplacian, model, x, chunk_size, weights=weights)


register(laplacian, _plan_laplacian)
