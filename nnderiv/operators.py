"""Operators: a mode, a read-out of its output stack, and the read-out's pullback.

Every public derivative function (``derivatives``, ``laplacian``, ``taylor``, ...) is a *plan*:
which series to propagate (a :class:`~nnderiv.modes.series.SeriesMode`), how to read the result
off the network's output stack, and the adjoint of that read-out. :func:`run` evaluates a plan;
:func:`vjp` evaluates it and returns the pullback, by hand, through the same sweep.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _validation as check
from . import engine
from .errors import ConfigError, NnderivWarning


@dataclass(frozen=True)
class Plan:
    """``readout(out_stack)`` is the result; ``readout_vjp(cotangent, out_stack)`` the stack cotangent."""

    mode: Any
    readout: Callable[[np.ndarray], Any]
    readout_vjp: Callable[[Any, np.ndarray], np.ndarray]


#: public function -> planner(model, x, *, for_vjp, **kwargs) -> Plan
PLANNERS: dict[Callable, Callable] = {}


def register(fn: Callable, planner: Callable) -> None:
    """Make ``vjp(fn, ...)`` available, through ``planner(model, x, for_vjp=..., **kwargs) -> Plan``."""
    PLANNERS[fn] = planner


def _warn_if_nonsmooth(model, order: int) -> None:
    activations = [layer.activation for layer, _ in engine.leaf_layers(model) if hasattr(layer, "activation")]
    rough = sorted({activation.name for activation in activations if not activation.smooth})
    if order >= 2 and rough:
        warnings.warn(
            f"derivatives of order >= 2 through {', '.join(rough)} are zero almost everywhere: "
            "they carry no information, and a loss on them cannot train the network; use a smooth "
            "activation (softplus, tanh, gelu, silu) for derivative losses",
            NnderivWarning,
            stacklevel=4,
        )


def run(planner: Callable, model, x, chunk_size=None, **kwargs):
    """Validate ``x``, plan, propagate, read out: the body of every public derivative function."""
    x = check.points(x, model)
    plan = planner(model, x, for_vjp=False, **kwargs)
    _warn_if_nonsmooth(model, plan.mode.order)
    return plan.readout(engine.evaluate(model, plan.mode, x, chunk_size))


def vjp(fn, model, x, *, wrt: str = "params", chunk_size=None, **kwargs):
    """``(fn(model, x, **kwargs), pullback)``: the reverse-mode derivative, written by hand.

    ``pullback(cotangent)`` returns, for ``wrt="params"``, ``{param name: gradient}`` with the
    shapes of ``model.params``; for ``wrt="x"`` the gradient with respect to ``x``, ``(N, d)``;
    for ``wrt="both"`` the pair. The cotangent has exactly the shape of the output (for
    ``nd.derivatives``, a dict ``{order or "value"/"jacobian"/"hessian": array}``, missing orders
    counting as zero). ``fn`` is any public derivative function of nnderiv (``nd.value`` or the
    model itself, ``nd.jacobian``, ``nd.hessian``, ``nd.derivatives``, ...); ``vjp.supported()``
    lists them.

    >>> import numpy as np, nnderiv as nd
    >>> model = nd.MLP([2, 8, 1], seed=0)
    >>> out, pullback = nd.vjp(nd.hessian, model, np.ones((4, 2)))
    >>> grads = pullback(np.ones_like(out))
    >>> {name: g.shape for name, g in grads.items()}
    {'0.W': (2, 8), '0.b': (8,), '2.W': (8, 1), '2.b': (1,)}
    """
    from .derivatives import value

    planner = PLANNERS.get(value if fn is model else fn)
    if planner is None:
        raise ConfigError(f"no pullback rule for {fn!r}; vjp supports {', '.join(supported())} and the model itself")
    if wrt not in ("params", "x", "both"):
        raise ConfigError(f"wrt must be 'params', 'x' or 'both', got {wrt!r}")
    x = check.points(x, model)
    plan = planner(model, x, for_vjp=True, **kwargs)
    _warn_if_nonsmooth(model, plan.mode.order)
    out_stack, stack_pullback = engine.evaluate_with_pullback(model, plan.mode, x, chunk_size)
    out = plan.readout(out_stack)

    def pullback(cotangent):
        if isinstance(out, np.ndarray):  # nothing silently broadcast
            cotangent = check.real_array(cotangent, "cotangent", model.dtype)
            check.same_shape(cotangent, out.shape, "the cotangent (the shape of the output)")
        grads, x_bar = stack_pullback(plan.readout_vjp(cotangent, out_stack))
        return {"params": grads, "x": x_bar, "both": (grads, x_bar)}[wrt]

    return out, pullback


def supported() -> list[str]:
    """Names of the functions :func:`vjp` accepts."""
    return [f"nd.{fn.__name__}" for fn in PLANNERS]


vjp.supported = supported
