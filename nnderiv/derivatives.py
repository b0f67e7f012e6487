"""Input derivatives of a model in full mode, and their pullbacks to the parameters.

``derivatives`` is the one computation; ``value``, ``jacobian`` and ``hessian`` are views of it,
and :func:`nnderiv.vjp` turns any of them into ``(output, pullback)``. Arrays put the batch first, then the
output, then the input axes: ``jacobian (N, m, d)``, ``hessian (N, m, d, d)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial

import numpy as np

from . import _validation as check
from . import kernels
from .combinatorics import MultiIndexTable
from .errors import ConfigError, OrderError, ShapeError
from .modes import reverse
from .modes.full import FullMode
from .operators import Plan, register, run


class Derivatives:
    """All partial derivatives of a model's outputs up to ``order``, at ``N`` points.

    Stored once per symmetric multi-index as Taylor coefficients (see :mod:`nnderiv.modes.full`);
    the properties expand them.

    >>> import nnderiv as nd
    >>> model = nd.MLP([2, 8, 1], activation="tanh", seed=0)
    >>> D = nd.derivatives(model, np.zeros((3, 2)), order=3)
    >>> D.value.shape, D.jacobian.shape, D.hessian.shape, D.tensor(3).shape, D.partial((0, 0, 1)).shape
    ((3, 1), (3, 1, 2), (3, 1, 2, 2), (3, 1, 2, 2, 2), (3, 1))
    """

    def __init__(self, coefficients: np.ndarray, table: MultiIndexTable):
        self.coefficients = coefficients  # (n_coef, N, m) Taylor coefficients
        self.table = table

    @property
    def order(self) -> int:
        return self.table.order

    @property
    def n_inputs(self) -> int:
        return self.table.d

    @property
    def value(self) -> np.ndarray:
        """``f(x)``, shape ``(N, m)``."""
        return self.coefficients[0].copy()

    @property
    def jacobian(self) -> np.ndarray:
        """``J[n, i, j] = d f_i / d x_j``, shape ``(N, m, d)``."""
        return self.tensor(1)

    @property
    def hessian(self) -> np.ndarray:
        """``H[n, i, j, k] = d^2 f_i / d x_j d x_k``, shape ``(N, m, d, d)``."""
        return self.tensor(2)

    def tensor(self, k: int) -> np.ndarray:
        """The symmetric tensor of all ``k``-th partials, shape ``(N, m) + (d,) * k``."""
        k = self._check_order(k)
        rows, factors = self.table.tensor_layout(k)
        entries = self.coefficients[rows] * factors.astype(self.coefficients.dtype)[..., None, None]
        return np.moveaxis(entries, (-2, -1), (0, 1))

    def partial(self, indices=(), *, multi_index=None) -> np.ndarray:
        """One partial derivative, shape ``(N, m)``.

        ``partial((0, 0, 1))`` is ``d^3 f / dx_0^2 dx_1`` (the inputs to differentiate by, in any
        order); ``partial(multi_index=(2, 1))`` is the same, given as counts per input.
        """
        if multi_index is None:
            indices = tuple(int(i) for i in indices)
            if any(not 0 <= i < self.n_inputs for i in indices):
                raise ShapeError(f"input indices must be in [0, {self.n_inputs}), got {indices}")
            multi_index = np.bincount(np.array(indices, dtype=np.intp), minlength=self.n_inputs)
        alpha = tuple(int(a) for a in multi_index)
        if len(alpha) != self.n_inputs or min(alpha) < 0:
            raise ShapeError(f"multi_index must be {self.n_inputs} non-negative counts, got {alpha}")
        self._check_order(sum(alpha))
        row = self.table.position[alpha]
        return self.coefficients[row] * self.coefficients.dtype.type(self.table.factorials[row])

    def _check_order(self, k) -> int:
        k = check.order(k, "k")
        if k > self.order:
            raise OrderError(f"derivatives of order {k} were not computed; call derivatives(..., order={k})")
        return k

    def __repr__(self):
        n, m = self.coefficients.shape[1:]
        return f"Derivatives(order={self.order}, N={n}, m={m}, d={self.n_inputs})"


def _plan_full(model, x, *, for_vjp, order=2, view=None, cotangent_orders=None, strategy="auto") -> Plan:
    """Every derivative up to ``order``; the result is ``view(Derivatives)`` (the Derivatives by
    default). Full forward mode, or for orders 1 and 2 the reverse sweeps of
    :mod:`nnderiv.modes.reverse` when they cost fewer rows (``strategy``)."""
    order = check.order(order)
    chosen, options = _choose_strategy(model, order, strategy, for_vjp)
    mode = FullMode(model.n_inputs, order, for_vjp=for_vjp)
    view = view or (lambda D: D)
    as_orders = cotangent_orders or _cotangent_orders

    def readout(out_stack):
        return view(Derivatives(out_stack, mode.table))

    def readout_vjp(cotangent, out_stack):
        return _stack_cotangent(as_orders(cotangent), mode.table, *out_stack.shape[1:], model.dtype)

    def by_reverse_sweep(x, chunk_size):
        return readout(reverse.coefficients(reverse.evaluate(model, x, order, chunk_size), order))

    evaluate = by_reverse_sweep if chosen == "reverse" else None
    return Plan(mode, readout, readout_vjp, strategy=chosen, options=options, evaluate=evaluate)


def _choose_strategy(model, order: int, strategy, for_vjp: bool) -> tuple[str, tuple]:
    """``(name, options)``: the strategy to use and those weighed."""
    names = ("auto", "forward", "reverse")
    if strategy not in names:
        raise ConfigError(f"strategy must be one of {', '.join(map(repr, names))}, got {strategy!r}")
    weight = kernels.reverse_row_cost(model, order)
    options = tuple(reverse.strategies(model.n_inputs, model.n_outputs, order, weight))
    if strategy == "reverse" and len(options) == 1:
        raise ConfigError(f"the reverse strategy computes orders 1 and 2, not {order}: use strategy='forward'")
    if for_vjp:  # pullbacks exist for the forward rules
        if strategy == "reverse":
            raise ConfigError("vjp needs strategy='forward' (or 'auto'): the reverse sweeps have no pullback")
        return "forward", options
    return reverse.choose(model.n_inputs, model.n_outputs, order, strategy, weight).name, options


def _plan_view(order: int, view: Callable):
    """Planner of ``view(derivatives of order)``: the cotangent of the view is that of ``tensor(order)``."""
    return partial(_plan_full, order=order, view=view, cotangent_orders=lambda cot: {order: cot})


def derivatives(model, x, order: int = 2, *, strategy: str = "auto", chunk_size: int | None = None) -> Derivatives:
    """Every partial derivative of ``model`` at ``x`` up to ``order``, mixed ones included.

    One forward sweep of stacked Taylor coefficients (``C(d + order, order)`` rows): see
    :mod:`nnderiv.modes.full`. ``x`` has shape ``(N, d)``. For orders 1 and 2, ``strategy="auto"``
    takes a reverse sweep instead when it costs fewer rows (few outputs, many inputs:
    :mod:`nnderiv.modes.reverse`; a Hessian's reverse rows weighted by the backend's
    :func:`~nnderiv.kernels.reverse_row_cost`); ``"forward"`` or ``"reverse"`` force one, and
    :func:`nnderiv.explain` shows the choice. All agree to rounding.

    >>> import nnderiv as nd
    >>> model = nd.MLP([1, 1], activation="tanh", seed=0)   # f(x) = w x + b: second derivative 0
    >>> float(nd.derivatives(model, np.ones((1, 1)), order=2).hessian[0, 0, 0, 0])
    0.0
    """
    return run(_plan_full, model, x, chunk_size, order=order, strategy=strategy)


def value(model, x, *, chunk_size: int | None = None) -> np.ndarray:
    """``model(x)``: shape ``(N, m)``."""
    return run(_plan_value, model, x, chunk_size)


def jacobian(model, x, *, strategy: str = "auto", chunk_size: int | None = None) -> np.ndarray:
    """``d f_i / d x_j`` at every point: shape ``(N, m, d)``.

    Forward mode (``1 + d`` rows) or reverse mode (``1 + m``), whichever is cheaper: ``strategy``
    as in :func:`derivatives`.

    >>> import nnderiv as nd
    >>> nd.jacobian(nd.MLP([3, 4, 2], seed=0), np.zeros((5, 3))).shape
    (5, 2, 3)
    """
    return run(_plan_jacobian, model, x, chunk_size, strategy=strategy)


def hessian(model, x, *, strategy: str = "auto", chunk_size: int | None = None) -> np.ndarray:
    """``d^2 f_i / d x_j d x_k`` at every point: shape ``(N, m, d, d)``.

    Full forward mode (``C(d + 2, 2)`` rows) or forward-over-reverse (``(1 + d)(1 + m)`` rows),
    whichever is cheaper: ``strategy`` as in :func:`derivatives`.

    >>> import nnderiv as nd
    >>> H = nd.hessian(nd.MLP([3, 4, 2], seed=0), np.ones((5, 3)))
    >>> H.shape, bool(np.allclose(H, H.transpose(0, 1, 3, 2)))
    ((5, 2, 3, 3), True)
    """
    return run(_plan_hessian, model, x, chunk_size, strategy=strategy)


def divergence(model, x, *, chunk_size: int | None = None) -> np.ndarray:
    """``sum_i d f_i / d x_i`` for a vector field (``m == d``): shape ``(N,)``; the Jacobian's trace.

    >>> import nnderiv as nd
    >>> field = nd.MLP([3, 8, 3], activation="tanh", seed=0)
    >>> x = np.ones((4, 3))
    >>> bool(np.allclose(nd.divergence(field, x), np.trace(nd.jacobian(field, x), axis1=1, axis2=2)))
    True
    """
    return run(_plan_divergence, model, x, chunk_size)


def _plan_divergence(model, x, *, for_vjp) -> Plan:
    d = model.n_inputs
    if model.n_outputs != d:
        raise ShapeError(f"divergence needs as many outputs as inputs; the model maps {d} inputs to {model.n_outputs}")
    mode = FullMode(d, 1, for_vjp=for_vjp)
    rows, outputs = np.arange(1, d + 1), np.arange(d)  # d f_i / d x_i: row 1 + i, output i

    def readout_vjp(cot, out_stack):
        out_bar = np.zeros_like(out_stack)
        out_bar[rows, :, outputs] = cot
        return out_bar

    return Plan(mode, lambda out_stack: out_stack[rows, :, outputs].sum(axis=0), readout_vjp)


_plan_value = _plan_view(0, lambda D: D.coefficients[0])
_plan_jacobian = _plan_view(1, lambda D: D.jacobian)
_plan_hessian = _plan_view(2, lambda D: D.hessian)


# --------------------------------------------------------------------------------------------
# pullbacks of the read-outs


_TENSOR_NAMES = {"value": 0, "jacobian": 1, "hessian": 2}


def _cotangent_orders(cotangent) -> dict[int, np.ndarray]:
    """``{k: cotangent of tensor(k)}`` from a dict (orders or names) or a :class:`Derivatives`."""
    if isinstance(cotangent, Derivatives):
        return {k: cotangent.tensor(k) for k in range(cotangent.order + 1)}
    if not isinstance(cotangent, Mapping):
        raise ConfigError(
            "the cotangent of derivatives() must be a dict {order or 'value'/'jacobian'/'hessian': "
            f"array}} or a Derivatives, got {type(cotangent).__name__}"
        )
    orders = {}
    for key, array in cotangent.items():
        k = _TENSOR_NAMES.get(key, key)
        if k in orders:
            raise ConfigError(f"the cotangent names order {k} twice")
        orders[check.order(k, f"cotangent key {key!r}")] = array
    return orders


def _stack_cotangent(orders: dict, table: MultiIndexTable, n: int, m: int, dtype) -> np.ndarray:
    """The stack cotangent ``(n_coef, N, m)`` of the tensors' cotangents (adjoint of ``tensor``)."""
    out_bar = np.zeros((table.n_coef, n, m), dtype=dtype)
    for k, cot in orders.items():
        if k > table.order:
            raise OrderError(f"cotangent of order {k} given, but only orders <= {table.order} were computed")
        shape = (n, m) + (table.d,) * k
        cot = check.real_array(cot, f"cotangent of order {k}", dtype)
        check.same_shape(cot, shape, f"cotangent of order {k}")
        rows, factors = table.tensor_layout(k)
        weighted = np.moveaxis(cot.reshape(n, m, -1), 2, 0) * factors.reshape(-1, 1, 1).astype(dtype)
        np.add.at(out_bar, rows.ravel(), weighted)
    return out_bar


register(derivatives, _plan_full)
register(value, _plan_value)
register(jacobian, _plan_jacobian)
register(hessian, _plan_hessian)
register(divergence, _plan_divergence)
