r"""Hessian-vector products without the Hessian.

Convention: series in the displacements ``t_1..t_d`` (along the axes) and ``s`` (along ``v``),
truncated to the monomials ``1, t_i, s, t_i s`` (:func:`nnderiv.combinatorics.hessian_vector_table`):
row 0 the value, rows ``1..d`` the gradient, row ``d + 1`` the directional derivative
``grad f . v``, rows ``d + 2 + i`` the coefficient of ``t_i s``, which is ``(H v)_i``
(``alpha! = 1`` for it). Through ``g(z)``: ``h_{is} = a_1 z_{is} + 2 a_2 z_i z_s`` — the only
products are first-order rows with the ``v`` row. ``2 d + 2`` rows instead of ``C(d + 2, 2)``.

With few outputs, forward-over-reverse (:mod:`nnderiv.modes.reverse`) is cheaper still: the value
and its derivative along ``v`` forward (2 rows), the gradient and its derivative along ``v`` back
(``2 m`` rows): ``H v`` without a row per input. ``strategy="auto"`` takes the cheaper: the fewer
rows, the reverse ones weighted as a Hessian's (``docs/strategies.md``).
"""

from __future__ import annotations

import numpy as np

from .. import _validation as check
from .. import kernels
from ..combinatorics import directional_table, hessian_vector_table
from ..errors import ConfigError, ShapeError
from ..operators import Plan, register, run
from . import reverse
from .series import SeriesMode


def _plan_hvp(model, x, *, for_vjp, v, strategy="auto") -> Plan:
    d, m = model.n_inputs, model.n_outputs
    v = check.real_array(v, "v", model.dtype)
    if v.shape == (d,):
        directions = np.concatenate([np.eye(d, dtype=model.dtype), v[None]])
    elif v.shape == (len(x), d):
        directions = np.concatenate([np.broadcast_to(np.eye(d, dtype=model.dtype)[:, None], (d, len(x), d)), v[None]])
    else:
        raise ShapeError(f"v must have shape ({d},) or, per point, ({len(x)}, {d}); got {v.shape}")
    mode = SeriesMode(hessian_vector_table(d), directions, for_vjp=for_vjp)
    rows = slice(d + 2, 2 * d + 2)

    def readout_vjp(cot, out_stack):
        out_bar = np.zeros_like(out_stack)
        out_bar[rows] = cot.transpose(2, 0, 1)
        return out_bar

    back_rows = 2 + 2 * m + reverse.SWEEP_OVERHEAD_ROWS  # weighted as the Hessian's (docs/strategies.md)
    options = (
        reverse.Strategy("forward", 2 * d + 2, "Hessian-vector series: 1, t_i, s, t_i s"),
        reverse.Strategy(
            "reverse", back_rows, "forward-over-reverse along v: 2 rows, 2 m back",
            back_rows * kernels.reverse_row_cost(model, 2),
        ),
    )  # fmt: skip
    if strategy not in ("auto", "forward", "reverse"):
        raise ConfigError(f"strategy must be one of 'auto', 'forward', 'reverse', got {strategy!r}")
    if for_vjp and strategy == "reverse":
        raise ConfigError("vjp needs strategy='forward' (or 'auto'): the reverse sweeps have no pullback")
    chosen = "forward" if for_vjp else (strategy if strategy != "auto" else min(options, key=lambda o: o.cost).name)

    def by_reverse_sweep(x, chunk_size):
        along_v = SeriesMode(directional_table(1, 1), directions[d:], for_vjp=True)
        _, adjoint = reverse.sweep(model, along_v, x, chunk_size)
        return np.ascontiguousarray(adjoint[1].transpose(1, 0, 2))  # (N, m, d)

    def readout(out_stack):
        return out_stack[rows].transpose(1, 2, 0).copy()

    evaluate = by_reverse_sweep if chosen == "reverse" else None
    return Plan(mode, readout, readout_vjp, strategy=chosen, options=options, evaluate=evaluate)


def hvp(model, x, v, *, strategy: str = "auto", chunk_size: int | None = None) -> np.ndarray:
    """Hessian times ``v`` at every point: ``(H v)[n, i, j] = sum_k d^2 f_i / dx_j dx_k v_k``.

    ``v`` has shape ``(d,)`` or, per point, ``(N, d)``; returns ``(N, m, d)`` from ``2 d + 2``
    stacked rows (``strategy="forward"``) or ``2 + 2 m`` (``"reverse"``, forward-over-reverse),
    whichever costs less by default (the reverse rows weighted as a Hessian's:
    :func:`nnderiv.kernels.reverse_row_cost`); never forming the Hessian.

    >>> import numpy as np, nnderiv as nd
    >>> model = nd.MLP([3, 16, 2], activation="tanh", seed=0)
    >>> x, v = np.ones((4, 3)), np.array([1.0, -2.0, 0.5])
    >>> bool(np.allclose(nd.hvp(model, x, v), nd.hessian(model, x) @ v))
    True
    """
    return run(_plan_hvp, model, x, chunk_size, v=v, strategy=strategy)


register(hvp, _plan_hvp)
