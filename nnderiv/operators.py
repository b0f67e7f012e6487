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
from . import engine, kernels
from .errors import ConfigError, NnderivWarning


@dataclass(frozen=True)
class Plan:
    """``readout(out_stack)`` is the result; ``readout_vjp(cotangent, out_stack)`` the stack cotangent.

    ``options`` are the strategies the planner weighed (:class:`~nnderiv.modes.reverse.Strategy`,
    empty when there is one way), ``strategy`` the one it took; a strategy other than propagating
    ``mode`` comes with ``evaluate(x, chunk_size) -> result``, used by :func:`run` (never by
    :func:`vjp`, which needs the mode's pullbacks).
    """

    mode: Any
    readout: Callable[[np.ndarray], Any]
    readout_vjp: Callable[[Any, np.ndarray], np.ndarray]
    strategy: str = "forward"
    options: tuple = ()
    evaluate: Callable[[np.ndarray, Any], Any] | None = None


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
    if plan.evaluate is not None:
        return plan.evaluate(x, chunk_size)
    return plan.readout(kernels.host(engine.evaluate(model, plan.mode, x, chunk_size)))


@dataclass(frozen=True)
class Explanation:
    """How :func:`explain` found ``fn`` would be computed: the options and the one chosen."""

    function: str
    strategy: str
    options: tuple

    def __str__(self):
        lines = [f"{self.function}: strategy {self.strategy!r}"]
        for option in self.options:
            mark = "*" if option.name == self.strategy else " "
            cost = "" if option.cost == option.rows else f" (cost {option.cost:g})"
            lines.append(f"  {mark} {option.name:<10} {option.rows:>6} stacked rows   {option.description}{cost}")
        return "\n".join(lines)


def explain(fn, model, x, **kwargs) -> Explanation:
    """How ``fn(model, x, **kwargs)`` would be computed, without computing it.

    Lists the strategies considered with their cost in stacked coefficient rows (each row is one
    ``(N, width)`` slab through every matrix product; see ``docs/performance.md``), a reverse
    sweep's rows weighted by what one costs on the active backend (``docs/strategies.md``), and
    marks the one chosen; pass ``strategy=...`` to ``fn`` to override it.

    >>> import numpy as np, nnderiv as nd
    >>> print(nd.explain(nd.hessian, nd.MLP([8, 32, 1], seed=0), np.zeros((10, 8))))
    nd.hessian: strategy 'reverse'
        forward        45 stacked rows   full forward mode, every partial to order 2
      * reverse        18 stacked rows   forward-over-reverse: (1 + d) rows forward, (1 + d) m back (cost 21.6)
    """
    from .derivatives import value
    from .modes.reverse import Strategy

    planner = PLANNERS.get(value if fn is model else fn)
    if planner is None:
        raise ConfigError(f"cannot explain {fn!r}; known: {', '.join(supported())}")
    plan = planner(model, check.points(x, model), for_vjp=False, **kwargs)
    mode = plan.mode
    options = plan.options or (Strategy(plan.strategy, mode.n_rows, mode.table.description),)
    name = "value" if fn is model else fn.__name__
    return Explanation(f"nd.{name}", plan.strategy, tuple(options))


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
    out_stack = kernels.host(out_stack)  # read-outs and their adjoints run on the host: small arrays
    out = plan.readout(out_stack)

    def pullback(cotangent):
        if isinstance(out, np.ndarray):  # nothing silently broadcast
            cotangent = check.real_array(cotangent, "cotangent", model.dtype)
            check.same_shape(cotangent, out.shape, "the cotangent (the shape of the output)")
        grads, x_bar = stack_pullback(kernels.asarray(plan.readout_vjp(cotangent, out_stack)))
        x_bar = kernels.host(x_bar)  # like x; the gradients stay beside the parameters
        return {"params": grads, "x": x_bar, "both": (grads, x_bar)}[wrt]

    return out, pullback


def supported() -> list[str]:
    """Names of the functions :func:`vjp` accepts."""
    return [f"nd.{fn.__name__}" for fn in PLANNERS]


vjp.supported = supported
