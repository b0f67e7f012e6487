"""Optimisers: new parameters from parameters and their gradients, and full-batch L-BFGS.

``optimizer.step(params, grads) -> new_params`` is a function of its inputs and the optimiser's
state (keyed by parameter name): it returns NEW arrays, never writes into ``params`` or ``grads``,
and updates its own state only once every new array has been computed, so a step that fails
leaves the optimiser as it was. Committing the result to a model is the caller's business
(``model.set_params(new_params)``; :func:`nnderiv.fit` does it atomically). New parameters keep
each parameter's dtype: a float32 model stays float32.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping

import numpy as np

from . import _validation as check
from .errors import ArchitectureError, ConfigError, DTypeError, ShapeError


class Optimizer:
    """Base class: validates ``params`` and ``grads``, then applies :meth:`update` per parameter.

    A subclass implements ``update(theta, grad, state) -> (new theta, new state)`` for one
    parameter; ``state`` is ``None`` at the parameter's first step.

    >>> import numpy as np
    >>> class SignDescent(Optimizer):
    ...     def update(self, theta, grad, state):
    ...         return theta - 0.5 * np.sign(grad), {}
    >>> SignDescent().step({"w": np.array([1.0, 1.0])}, {"w": np.array([3.0, -1.0])})
    {'w': array([0.5, 1.5])}
    """

    def __init__(self):
        self.state: dict[str, dict] = {}

    def step(self, params: Mapping[str, np.ndarray], grads: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """New parameters ``{name: array}`` after one step; the inputs are left untouched."""
        grads = _checked_grads(params, grads)
        new_params, new_state = {}, {}
        for name, theta in params.items():
            state = _checked_state(self.state.get(name), name, theta)
            new_params[name], new_state[name] = self.update(np.asarray(theta), grads[name], state)
        self.state.update(new_state)  # commit only once every parameter's step has been computed
        return new_params

    def update(self, theta: np.ndarray, grad: np.ndarray, state: dict | None) -> tuple[np.ndarray, dict]:
        """``(new theta, new state)`` for one parameter; ``state`` is ``None`` at its first step."""
        raise NotImplementedError  # pragma: no cover - abstract

    def reset(self) -> None:
        """Forget all state (momenta, step counts)."""
        self.state = {}


class SGD(Optimizer):
    """Stochastic gradient descent, with optional (heavy-ball) momentum.

    ``v <- momentum * v + g``,  ``theta <- theta - lr * v``  (``v`` starts at 0; without momentum
    this is ``theta - lr * g``).

    >>> import numpy as np
    >>> SGD(lr=0.1).step({"w": np.array([1.0, 2.0])}, {"w": np.array([1.0, -1.0])})
    {'w': array([0.9, 2.1])}
    """

    def __init__(self, lr: float, momentum: float = 0.0):
        super().__init__()
        self.lr = _positive_real(lr, "lr")
        self.momentum = _fraction(momentum, "momentum")

    def update(self, theta, grad, state):
        velocity = grad.copy() if state is None else self.momentum * state["velocity"] + grad
        return _cast(theta - self.lr * velocity, theta), {"velocity": _cast(velocity, theta)}

    def __repr__(self):
        return f"SGD(lr={self.lr!r}, momentum={self.momentum!r})"


class Adam(Optimizer):
    """Adam (Kingma and Ba, 2015), with bias-corrected moment estimates.

    At step ``t = 1, 2, ...`` of a parameter:
    ``m <- b1 m + (1 - b1) g``,  ``v <- b2 v + (1 - b2) g^2``,
    ``theta <- theta - lr * m_hat / (sqrt(v_hat) + eps)`` with ``m_hat = m / (1 - b1^t)`` and
    ``v_hat = v / (1 - b2^t)``. The first step moves every entry by ``lr * |g| / (|g| + eps)``,
    i.e. by almost exactly ``lr``.

    >>> import numpy as np
    >>> Adam(lr=0.1).step({"w": np.array([1.0, 2.0])}, {"w": np.array([3.0, -0.5])})
    {'w': array([0.9, 2.1])}
    """

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__()
        self.lr = _positive_real(lr, "lr")
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ConfigError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (_fraction(betas[0], "betas[0]"), _fraction(betas[1], "betas[1]"))
        self.eps = _positive_real(eps, "eps")

    def update(self, theta, grad, state):
        beta1, beta2 = self.betas
        t, m, v = (0, 0.0, 0.0) if state is None else (state["t"], state["m"], state["v"])
        t, m, v = t + 1, beta1 * m + (1 - beta1) * grad, beta2 * v + (1 - beta2) * grad**2
        m_hat, v_hat = m / (1 - beta1**t), v / (1 - beta2**t)
        new_theta = theta - self.lr * m_hat / (np.sqrt(v_hat) + self.eps)
        return _cast(new_theta, theta), {"t": t, "m": _cast(m, theta), "v": _cast(v, theta)}

    def __repr__(self):
        return f"Adam(lr={self.lr!r}, betas={self.betas!r}, eps={self.eps!r})"


def lbfgs(model, loss, batch, iterations: int, *, memory: int = 20) -> list[float]:
    """Minimise ``loss`` over ``model``'s parameters by L-BFGS on one full batch; returns the loss
    after every iteration and leaves ``model`` at the last accepted point.

    The two-loop recursion (Nocedal and Wright, *Numerical Optimization*, Algorithm 7.4) over the
    last ``memory`` curvature pairs, keeping only pairs of positive curvature, with a backtracking
    line search (sufficient decrease, ``c = 1e-4``); the loss and its gradient come from
    ``loss.value_and_grad(model, batch)`` (any :class:`nnderiv.Loss`). Stops early at a
    stationary point or when no step decreases the loss. Adam finds the basin of a
    physics-informed loss, L-BFGS polishes it (``examples/pinn_poisson.py``: 5e-4 -> 1e-4).

    >>> import numpy as np, nnderiv as nd
    >>> model = nd.MLP([1, 8, 1], activation="tanh", seed=0)
    >>> x = np.linspace(-1, 1, 32)[:, None]
    >>> losses = lbfgs(model, nd.MSE("value", "y"), {"x": x, "y": np.sin(2 * x)}, 200)
    >>> bool(losses[-1] < 1e-4 and all(b <= a for a, b in zip(losses, losses[1:])))
    True
    """
    for name, value, least in (("iterations", iterations, 0), ("memory", memory, 1)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < least:
            raise ConfigError(f"{name} must be an integer >= {least}, got {value!r}")
    names = list(model.params)
    shapes = [model.params[name].shape for name in names]
    splits = np.cumsum([int(np.prod(shape)) for shape in shapes])[:-1]

    def value_and_grad(theta):
        model.set_params(
            {name: part.reshape(shape) for name, part, shape in zip(names, np.split(theta, splits), shapes)}
        )
        value, grads = loss.value_and_grad(model, batch)
        return value, np.concatenate([grads[name].ravel() for name in names])

    theta = np.concatenate([model.params[name].ravel() for name in names])
    value, grad = value_and_grad(theta)
    steps, changes, history = [], [], []  # s_k = theta_{k+1} - theta_k, y_k = grad_{k+1} - grad_k
    for _ in range(iterations):
        if not grad.any():  # a stationary point: nothing to do
            break
        direction = -_inverse_hessian_times(grad, steps, changes)
        slope = grad @ direction
        if slope >= 0:  # not a descent direction: forget the curvature pairs
            steps, changes, direction, slope = [], [], -grad, -(grad @ grad)
        step = 1.0 if steps else min(1.0, 1e-2 / np.abs(grad).max())  # first step: move by ~1e-2
        while step > 1e-12:
            new_value, new_grad = value_and_grad(theta + step * direction)
            if new_value <= value + 1e-4 * step * slope:
                break
            step *= 0.5
        else:
            break
        s, y = step * direction, new_grad - grad
        if s @ y > 1e-12 * (y @ y):  # keep only pairs with positive curvature
            steps, changes = (steps + [s])[-memory:], (changes + [y])[-memory:]
        theta, value, grad = theta + s, new_value, new_grad
        history.append(float(value))
    value_and_grad(theta)  # leave the model at the accepted point, not at a rejected trial
    return history


def _inverse_hessian_times(grad, steps, changes):
    """The L-BFGS approximation of ``H^-1 grad``: the two-loop recursion."""
    q, alphas = grad.copy(), []
    for s, y in zip(reversed(steps), reversed(changes)):
        alphas.append(s @ q / (y @ s))
        q -= alphas[-1] * y
    if steps:
        q *= (steps[-1] @ changes[-1]) / (changes[-1] @ changes[-1])
    for s, y, alpha in zip(steps, changes, reversed(alphas)):
        q += (alpha - y @ q / (y @ s)) * s
    return q


def _checked_grads(params, grads) -> dict[str, np.ndarray]:
    """``grads`` as finite arrays of their parameters' shapes and dtypes, one per parameter."""
    if not isinstance(params, Mapping) or not isinstance(grads, Mapping):
        raise ConfigError(
            f"params and grads must be dicts {{name: array}}, got {type(params).__name__} and {type(grads).__name__}"
        )
    unknown, missing = sorted(set(grads) - set(params)), sorted(set(params) - set(grads))
    if unknown or missing:
        raise ArchitectureError(
            f"grads must name exactly the parameters {sorted(params)}; "
            f"unknown names: {unknown}, missing names: {missing}"
        )
    checked = {}
    for name, theta in params.items():
        dtype = np.asarray(theta).dtype
        if dtype not in check.SUPPORTED_DTYPES:
            raise DTypeError(f"parameter {name!r} must be float32 or float64, got dtype {dtype}")
        grad = check.real_array(grads[name], f"gradient of {name!r}", dtype)
        check.same_shape(grad, np.shape(theta), f"gradient of {name!r}")
        checked[name] = grad
    return checked


def _checked_state(state: dict | None, name: str, theta) -> dict | None:
    """The optimiser's state of one parameter, refused when it belongs to a parameter of another shape."""
    for moment in (state or {}).values():
        if isinstance(moment, np.ndarray) and moment.shape != np.shape(theta):
            raise ShapeError(
                f"the optimiser's state for {name!r} has shape {moment.shape} but the parameter has shape "
                f"{np.shape(theta)}; use a fresh optimiser (or optimizer.reset()) for a new model"
            )
    return state


def _cast(array, like: np.ndarray) -> np.ndarray:
    return np.asarray(array).astype(like.dtype, copy=False)


def _real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not np.isfinite(value):
        raise ConfigError(f"{name} must be a finite real number, got {value!r}")
    return float(value)


def _positive_real(value, name: str) -> float:
    if _real(value, name) <= 0:
        raise ConfigError(f"{name} must be positive, got {value!r}")
    return float(value)


def _fraction(value, name: str) -> float:
    if not 0 <= _real(value, name) < 1:
        raise ConfigError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)
