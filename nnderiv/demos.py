"""The Deep Differential Network experiments (seed paper: Lutter et al., ICLR 2019), with nnderiv.

A network is trained on samples of a known function with a *type 1* loss (MSE of the value) or a
*type 2* loss (MSE of the value plus MSE of the Jacobian), and the errors of its value, Jacobian and
Hessian are measured on a test grid against the exact ones. ``examples/ddn_1d.py`` and
``examples/ddn_2d.py`` run the full experiments; ``nnderiv demo`` a short one.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import numpy as np

from .derivatives import derivatives
from .errors import NnderivWarning
from .layers import MLP
from .losses import MSE
from .optim import Adam
from .training import fit

#: activations of the original paper's tables, with their column names
DDN_ACTIVATIONS = {"ReLu": "relu", "SoftPlus": "softplus", "TanH": "tanh", "Cos": "cos"}


@dataclass(frozen=True)
class Problem:
    """A target function with its exact Jacobian and Hessian on ``[-pi, pi]^d``."""

    name: str
    d: int
    f: object  # (N, d) -> (N, 1)
    jacobian: object  # (N, d) -> (N, 1, d)
    hessian: object  # (N, d) -> (N, 1, d, d)


def _sin_1d() -> Problem:
    return Problem(
        "f(x) = sin(x)",
        1,
        lambda x: np.sin(x),
        lambda x: np.cos(x)[:, :, None],
        lambda x: -np.sin(x)[:, :, None, None],
    )


def _cos_sin_2d() -> Problem:
    def hessian(x):
        cx, sx, cy, sy = np.cos(x[:, 0]), np.sin(x[:, 0]), np.cos(x[:, 1]), np.sin(x[:, 1])
        return np.stack([np.stack([-cx * sy, -sx * cy], -1), np.stack([-sx * cy, -cx * sy], -1)], -2)[:, None]

    return Problem(
        "f(x, y) = cos(x) sin(y)",
        2,
        lambda x: (np.cos(x[:, 0]) * np.sin(x[:, 1]))[:, None],
        lambda x: np.stack([-np.sin(x[:, 0]) * np.sin(x[:, 1]), np.cos(x[:, 0]) * np.cos(x[:, 1])], -1)[:, None],
        hessian,
    )


PROBLEMS = {"1d": _sin_1d(), "2d": _cos_sin_2d()}


@dataclass
class Result:
    """Test errors of one trained network."""

    loss_type: int
    activation: str
    mse: dict = field(default_factory=dict)  # "value" / "jacobian" / "hessian" -> float
    seconds: float = 0.0
    model: object = None


def _grid(problem: Problem, n_per_axis: int) -> np.ndarray:
    axis = np.linspace(-np.pi, np.pi, n_per_axis)
    return np.stack(np.meshgrid(*[axis] * problem.d, indexing="ij"), -1).reshape(-1, problem.d)


def train_and_measure(problem, activation, loss_type, *, n_train, epochs, width=64, lr=3e-3, seed=0, progress=False):
    """Train one network with a type 1 or 2 loss and return its test :class:`Result`."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(-np.pi, np.pi, (n_train, problem.d))
    data = {"x": x, "y": problem.f(x), "dy": problem.jacobian(x)}
    loss = MSE("value", "y") if loss_type == 1 else MSE("value", "y") + MSE("jacobian", "dy")
    model = MLP([problem.d, width, width, 1], activation=activation, seed=seed)
    start = time.perf_counter()
    fit(model, loss, data, optimizer=Adam(lr), epochs=epochs, progress=progress, seed=seed)
    x_test = _grid(problem, 2000 if problem.d == 1 else 50)
    with warnings.catch_warnings():  # the ReLU Hessian is zero a.e.: measuring that is the point
        warnings.simplefilter("ignore", NnderivWarning)
        D = derivatives(model, x_test, order=2)
    truth = {"value": problem.f(x_test), "jacobian": problem.jacobian(x_test), "hessian": problem.hessian(x_test)}
    # the paper's convention: squared error summed over the entries of f, its gradient or its
    # Hessian, averaged over the test points (in 1-d the same as the plain mean)
    mse = {
        name: float(np.mean(np.sum((getattr(D, name) - exact) ** 2, axis=tuple(range(1, exact.ndim)))))
        for name, exact in truth.items()
    }
    return Result(loss_type, activation, mse, time.perf_counter() - start, model)


def run(problem="1d", *, n_train=1000, epochs=3000, activations=DDN_ACTIVATIONS, progress=False, **kwargs):
    """Train every (loss type, activation) pair of the paper's table; returns the results in table order."""
    problem = PROBLEMS[problem] if isinstance(problem, str) else problem
    return [
        train_and_measure(problem, act, loss_type, n_train=n_train, epochs=epochs, progress=progress, **kwargs)
        for loss_type in (1, 2)
        for act in activations.values()
    ]


def format_table(results) -> str:
    """The results as a Markdown table laid out like the Deep Differential Network README."""
    names = {v: k for k, v in DDN_ACTIVATIONS.items()}
    header = ["", *(f"Type {r.loss_type} Loss / {names.get(r.activation, r.activation)}" for r in results)]
    rows = [("MSE f(x)", "value"), ("MSE ∂f(x)/∂x", "jacobian"), ("MSE ∂²f(x)/∂²x", "hessian")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for label, key in rows:
        lines.append("| " + " | ".join([label, *(f"{r.mse[key]:.3e}" for r in results)]) + " |")
    return "\n".join(lines)


def plot_profiles(results, problem="1d", path="ddn_profiles.png") -> str:
    """Plot f, df/dx_0 and d²f/dx_0² of each trained network along x_0 (the other inputs at 0)
    against the truth, with :func:`nnderiv.plot.profiles`; returns the path (needs matplotlib)."""
    from .errors import ConfigError
    from .plot import _pyplot, profiles

    plt = _pyplot()  # raises the ImportError naming the 'plot' extra when matplotlib is missing
    if not results:
        raise ConfigError("plot_profiles needs at least one trained Result")
    problem = PROBLEMS[problem] if isinstance(problem, str) else problem
    line = {"x0": np.zeros(problem.d), "direction": np.eye(problem.d)[0], "t": np.linspace(-np.pi, np.pi, 400)}
    truth = {  # along x_0: the value, the first Jacobian column, the (0, 0) Hessian entry
        0: problem.f,
        1: lambda x: problem.jacobian(x)[:, :, 0],
        2: lambda x: problem.hessian(x)[:, :, 0, 0],
    }
    with warnings.catch_warnings():  # the ReLU second derivative is zero a.e.: showing that is the point
        warnings.simplefilter("ignore", NnderivWarning)
        fig = profiles(results[0].model, **line, truth=truth, label=_label(results[0]))
        for r in results[1:]:
            profiles(r.model, **line, ax=fig.axes, label=_label(r))
    fig.suptitle(f"{problem.name}: networks against the exact derivatives", fontsize=10)
    for panel, title in zip(fig.axes, ["$f$", "$\\partial f / \\partial x_0$", "$\\partial^2 f / \\partial x_0^2$"]):
        panel.set_title(title)
        panel.set_xlabel("$x_0$")
    fig.axes[0].legend(fontsize=7)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return str(path)


def _label(result: Result) -> str:
    return f"type {result.loss_type} / {result.activation}"
