r"""Taylor mode: derivatives of order ``0..K`` along chosen directions, and mixed partials from them.

Convention: for each direction ``v_r`` (a row of ``V``, shape ``(n_dir, d)``) the stack holds the
univariate Taylor coefficients of ``t -> h(x + t v_r)``,

.. math::  c_{r,k} = \frac{1}{k!} \frac{d^k}{dt^k} h(x + t v_r) \Big|_{t=0}, \qquad k = 1..K,

in row ``1 + (k - 1) n_dir + r``; row 0 is the value, shared by all directions
(:func:`nnderiv.combinatorics.directional_table`). ``1 + n_dir K`` rows in all, against
``C(d + K, K)`` for every partial: ``pure_derivatives`` (``V`` the identity) costs ``1 + d K``.
Coefficients of different directions never multiply, so the activation step is a univariate
Faà di Bruno per direction, ``O(K^2)`` products per power. Nested ``jvp`` would instead
differentiate the whole program ``K`` times, ``2^K`` terms.

**Mixed partials by interpolation.** A partial ``d^alpha f`` with ``|alpha| = k`` in ``n``
distinct inputs is a linear combination of ``k``-th derivatives along the ``C(n + k - 1, k)``
directions ``j`` with non-negative integer entries summing to ``k`` (Griewank, Utke and Walther,
2000): the ``k``-th coefficient along ``j`` is ``sum_{|beta| = k} c_beta j^beta``, a square
system ``M w = e_alpha`` with ``M[j, beta] = j^beta`` whose exact rational solution is cached.
"""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from functools import cache
from math import factorial, prod

import numpy as np

from .. import _validation as check
from ..combinatorics import _compositions, directional_table, multi_index_table, n_coefficients
from ..errors import ConfigError, ShapeError
from ..operators import Plan, register, run
from .reverse import Strategy
from .series import SeriesMode


def _directions(directions, model, n_points: int) -> np.ndarray:
    """``V`` as ``(n_dir, d)``, or ``(n_dir, N, d)`` when given per point as ``(N, n_dir, d)``."""
    V = check.real_array(directions, "directions", model.dtype)
    d = model.n_inputs
    if V.ndim == 2 and V.shape[1] == d and len(V) >= 1:
        return V
    if V.ndim == 3 and V.shape[0] == n_points and V.shape[2] == d and V.shape[1] >= 1:
        return np.ascontiguousarray(V.transpose(1, 0, 2))
    raise ShapeError(f"directions must have shape (n_dir, {d}) or, per point, ({n_points}, n_dir, {d}); got {V.shape}")


def _plan_taylor(model, x, *, for_vjp, directions, order=2) -> Plan:
    order = check.order(order)
    V = _directions(directions, model, len(x))
    n_dir = len(V)
    mode = SeriesMode(directional_table(n_dir, order), V, for_vjp=for_vjp)
    factorials = np.array([factorial(k) for k in range(1, order + 1)], dtype=model.dtype)

    def readout(out_stack):  # (1 + n_dir K, N, m) -> (N, m, n_dir, K + 1)
        n, m = out_stack.shape[1:]
        result = np.empty((n, m, n_dir, order + 1), dtype=out_stack.dtype)
        result[..., 0] = out_stack[0][:, :, None]
        coefs = out_stack[1:].reshape(order, n_dir, n, m)
        result[..., 1:] = coefs.transpose(2, 3, 1, 0) * factorials
        return result

    def readout_vjp(cot, out_stack):
        out_bar = np.empty_like(out_stack)
        out_bar[0] = cot[..., 0].sum(axis=-1)
        out_bar[1:] = (cot[..., 1:] * factorials).transpose(3, 2, 0, 1).reshape(order * n_dir, *cot.shape[:2])
        return out_bar

    return Plan(mode, readout, readout_vjp)


def taylor(model, x, directions, order: int = 2, *, chunk_size: int | None = None) -> np.ndarray:
    """Derivatives of order ``0..order`` of ``model`` along each direction: ``(N, m, n_dir, order + 1)``.

    ``result[n, i, r, k] = d^k/dt^k f_i(x_n + t v_r)`` at ``t = 0``, for ``directions`` ``V`` of
    shape ``(n_dir, d)`` (or per point ``(N, n_dir, d)``). Costs ``1 + n_dir * order`` stacked rows.

    >>> import numpy as np, nnderiv as nd
    >>> model = nd.MLP([2, 8, 1], activation="sin", seed=0)
    >>> x = np.zeros((3, 2))
    >>> T = nd.taylor(model, x, directions=[[1.0, 1.0]], order=4)
    >>> T.shape
    (3, 1, 1, 5)
    >>> H = nd.hessian(model, x)   # second derivative along (1, 1) is the sum of the Hessian entries
    >>> bool(np.allclose(T[:, 0, 0, 2], H[:, 0].sum(axis=(1, 2))))
    True
    """
    return run(_plan_taylor, model, x, chunk_size, directions=directions, order=order)


def pure_derivatives(model, x, order: int = 2, *, chunk_size: int | None = None) -> np.ndarray:
    """``d^k f / dx_i^k`` for every input ``i`` and ``k = 0..order``: shape ``(N, m, d, order + 1)``.

    Taylor mode along the coordinate axes: ``1 + d * order`` stacked rows.

    >>> import numpy as np, nnderiv as nd
    >>> model = nd.MLP([2, 8, 1], activation="tanh", seed=0)
    >>> P = nd.pure_derivatives(model, np.zeros((3, 2)), order=5)
    >>> P.shape
    (3, 1, 2, 6)
    """
    return run(_plan_pure, model, x, chunk_size, order=order)


def _plan_pure(model, x, *, for_vjp, order=2) -> Plan:
    return _plan_taylor(model, x, for_vjp=for_vjp, directions=np.eye(model.n_inputs), order=order)


# --- mixed partials --------------------------------------------------------------------------


def _multi_index(model, indices, multi_index) -> tuple[int, ...]:
    d = model.n_inputs
    if multi_index is None:
        indices = tuple(int(i) for i in indices)
        if any(not 0 <= i < d for i in indices):
            raise ShapeError(f"input indices must be in [0, {d}), got {indices}")
        multi_index = np.bincount(np.array(indices, dtype=np.intp), minlength=d)
    alpha = tuple(int(a) for a in multi_index)
    if len(alpha) != d or min(alpha) < 0:
        raise ShapeError(f"multi_index must be {d} non-negative counts, got {alpha}")
    check.order(sum(alpha), "the order of the partial")
    return alpha


@cache
def interpolation_weights(alpha: tuple[int, ...]) -> tuple[tuple[tuple[int, ...], ...], tuple[Fraction, ...]]:
    """Directions ``j`` (over the inputs where ``alpha > 0``) and exact weights ``w_j`` with
    ``c_alpha = sum_j w_j * (k-th Taylor coefficient along j)``, ``k = |alpha|``."""
    k, n = sum(alpha), len(alpha)
    js = list(_compositions(k, n))  # directions, and also the monomials beta of degree k
    M = [[Fraction(prod(ji**bi for ji, bi in zip(j, beta))) for j in js] for beta in js]  # M^T
    rhs = [Fraction(int(beta == alpha)) for beta in js]
    return tuple(js), tuple(_solve_exact(M, rhs))


def _solve_exact(A: list, b: list) -> list:
    """Gauss-Jordan elimination in exact rational arithmetic (the systems are small)."""
    n = len(b)
    rows = [list(A[i]) + [b[i]] for i in range(n)]
    for col in range(n):
        pivot = next(r for r in range(col, n) if rows[r][col] != 0)
        rows[col], rows[pivot] = rows[pivot], rows[col]
        for r in range(n):
            if r != col and rows[r][col] != 0:
                factor = rows[r][col] / rows[col][col]
                rows[r] = [a - factor * p for a, p in zip(rows[r], rows[col])]
    return [rows[i][n] / rows[i][i] for i in range(n)]


def _taylor_rows(alpha) -> int:
    """Stacked rows of the Taylor route: ``1 + k C(n + k - 1, k)`` for ``n`` inputs involved."""
    involved = sum(1 for a in alpha if a)
    return 1 + n_coefficients(involved - 1, sum(alpha)) * sum(alpha) if involved else 1


def _plan_mixed(model, x, *, for_vjp, alpha, strategy="auto") -> Plan:
    if strategy not in ("auto", "full", "taylor"):
        raise ConfigError(f"strategy must be 'auto', 'full' or 'taylor', got {strategy!r}")
    k, d = sum(alpha), len(alpha)
    full_rows = n_coefficients(d, k)
    options = (
        Strategy("full", full_rows, f"full mode to order {k}, read one coefficient"),
        Strategy("taylor", _taylor_rows(alpha), "Taylor mode along interpolation directions, exact weights"),
    )
    if k == 0 or strategy == "full" or (strategy == "auto" and full_rows <= _taylor_rows(alpha)):
        return replace(_plan_mixed_full(model, x, for_vjp, alpha), strategy="full", options=options)
    involved = [i for i, a in enumerate(alpha) if a]
    js, weights = interpolation_weights(tuple(alpha[i] for i in involved))
    V = np.zeros((len(js), d), dtype=model.dtype)
    V[:, involved] = np.array(js, dtype=model.dtype)
    # c_alpha = sum_j w_j (k-th coefficient along j); the partial is alpha! c_alpha
    w = np.array([float(wj) for wj in weights]) * (prod(map(factorial, alpha)) / factorial(k))
    return replace(_plan_combination(model, x, for_vjp, V, k, w), strategy="taylor", options=options)


def _plan_combination(model, x, for_vjp, V, k: int, w) -> Plan:
    """``sum_r w_r d^k/dt^k f(x + t v_r)``: a weighted sum of order-``k`` derivatives along directions."""
    plan = _plan_taylor(model, x, for_vjp=for_vjp, directions=V, order=k)
    w = np.asarray(w, dtype=model.dtype)

    def readout(out_stack):
        return plan.readout(out_stack)[..., k] @ w

    def readout_vjp(cot, out_stack):
        taylor_cot = np.zeros((*cot.shape, len(w), k + 1), dtype=cot.dtype)
        taylor_cot[..., k] = cot[..., None] * w
        return plan.readout_vjp(taylor_cot, out_stack)

    return Plan(plan.mode, readout, readout_vjp)


def _plan_mixed_full(model, x, for_vjp, alpha) -> Plan:
    table = multi_index_table(len(alpha), sum(alpha))
    row = table.position[alpha]
    scale = float(table.factorials[row])  # a Python float: keeps the dtype of the stack
    mode = SeriesMode(table, np.eye(len(alpha)), for_vjp=for_vjp)

    def readout_vjp(cot, out_stack):
        out_bar = np.zeros_like(out_stack)
        out_bar[row] = scale * cot
        return out_bar

    return Plan(mode, lambda out_stack: out_stack[row] * scale, readout_vjp)


def mixed_partial(
    model, x, indices=(), *, multi_index=None, strategy: str = "auto", chunk_size: int | None = None
) -> np.ndarray:
    """One partial derivative ``d^alpha f``, shape ``(N, m)``, by the cheaper of two strategies.

    ``indices`` lists the inputs to differentiate by (``(0, 0, 1)`` is ``d^3 f / dx_0^2 dx_1``),
    or ``multi_index`` gives the counts. ``strategy="full"`` propagates all ``C(d + k, k)``
    partials of order ``<= k``; ``"taylor"`` propagates order-``k`` series along the
    ``C(n + k - 1, k)`` interpolation directions in the ``n`` inputs involved and combines them;
    ``"auto"`` picks the one with fewer stacked rows. Both agree to rounding.

    >>> import numpy as np, nnderiv as nd
    >>> model = nd.MLP([6, 16, 1], activation="tanh", seed=0)
    >>> x = np.random.default_rng(0).uniform(-1, 1, (4, 6))
    >>> a = nd.mixed_partial(model, x, (0, 0, 1, 1), strategy="taylor")
    >>> b = nd.derivatives(model, x, order=4).partial((0, 0, 1, 1))
    >>> bool(np.allclose(a, b, rtol=1e-12, atol=1e-14))
    True
    """
    alpha = _multi_index(model, indices, multi_index)
    return run(_plan_mixed, model, x, chunk_size, alpha=alpha, strategy=strategy)


def _plan_mixed_public(model, x, *, for_vjp, indices=(), multi_index=None, strategy="auto") -> Plan:
    return _plan_mixed(model, x, for_vjp=for_vjp, alpha=_multi_index(model, indices, multi_index), strategy=strategy)


register(taylor, _plan_taylor)
register(pure_derivatives, _plan_pure)
register(mixed_partial, _plan_mixed_public)


# --- the biharmonic operator ----------------------------------------------------------------


def _plan_biharmonic(model, x, *, for_vjp) -> Plan:
    d = model.n_inputs
    eye = np.eye(d)
    pairs = [(i, j) for i in range(d) for j in range(i + 1, d)]
    V = np.array([*eye, *(eye[i] + eye[j] for i, j in pairs), *(eye[i] - eye[j] for i, j in pairs)])
    w = np.concatenate([np.full(d, 1.0 - (d - 1) / 3.0), np.full(2 * len(pairs), 1.0 / 6.0)])
    return _plan_combination(model, x, for_vjp, V.astype(model.dtype), 4, w)


def biharmonic(model, x, *, chunk_size: int | None = None) -> np.ndarray:
    r"""``Delta^2 f = sum_ij d_i^2 d_j^2 f`` at every point, shape ``(N, m)``.

    Fourth derivatives along ``e_i`` and ``e_i +- e_j`` (``d^2`` directions, Taylor mode) combine
    by polarization: ``d^4_{e_i+e_j} + d^4_{e_i-e_j} = 2 d_i^4 + 12 d_i^2 d_j^2 + 2 d_j^4``, so
    ``Delta^2 f = (1 - (d - 1)/3) sum_i d_i^4 f + (1/6) sum_{i<j} (d^4_{e_i+e_j} + d^4_{e_i-e_j}) f``.
    Why the collapsed Laplacian trick does not extend to it: :mod:`nnderiv.modes.laplacian`.

    >>> import numpy as np, nnderiv as nd
    >>> model = nd.MLP([2, 8, 1], activation="tanh", seed=0)
    >>> x = np.random.default_rng(0).uniform(-1, 1, (3, 2))
    >>> T = nd.derivatives(model, x, order=4).tensor(4)
    >>> bool(np.allclose(nd.biharmonic(model, x), np.einsum("nmiijj->nm", T)))
    True
    """
    return run(_plan_biharmonic, model, x, chunk_size)


register(biharmonic, _plan_biharmonic)
