r"""Third-order physics-informed networks: pure derivatives of any order, and mixed ones.

network_derivs (PhIMaL) computes, in its forward pass, the pure derivatives of orders 1 to 3 of a
tanh network of one input, for PINNs; it has no mixed derivatives and no order above 3. Two
third-order problems on ``[-1, 1]`` and ``[-1, 1]^2``, each trained on a sum of
:class:`~nnderiv.losses.OperatorMSE` terms, show both sides.

**1. ``ode`` — the setting of network_derivs:**

    u'''(x) = f(x) = -8 cos(2 x)   on [-1, 1],     u(0) = 0, u'(0) = 2, u''(0) = 0,

exact solution ``u = sin(2 x)``. The residual reads the third derivative off ONE Taylor-mode sweep
(``nd.pure_derivatives``, ``1 + d K = 4`` stacked rows), and the three initial conditions are one
term on the derivatives of orders 0..2 at ``x = 0``:

    OperatorMSE(nd.pure_derivatives, "f", order=3, select=(..., 3))
    + OperatorMSE(nd.pure_derivatives, "jet0", points="x0", order=2)

After training, one sweep of order 5 gives ``u`` and its derivatives up to the fifth, and their
errors are printed: any order, not only 1 to 3.

**2. ``goursat`` — a mixed third derivative:**

    d^3 u / dx^2 dy = f(x, y) = sin(x) sin(y)   on [-1, 1]^2,
    u(x, 0) = sin(x),     u(0, y) = 0,     du/dx (0, y) = cos(y),

exact solution ``u = sin(x) cos(y)``. (The data on the two axes determine ``u``: the solutions of
``u_xxy = 0`` are ``A(x) + x q(y) + r(y)``, and the three conditions force ``A(x) = A(0) + x
A'(0)``, ``q = -A'(0)``, ``r = -A(0)``, so ``u = 0``.) The residual uses ``nd.mixed_partial``; the
data on the axes are pure derivatives along ``x`` — on ``y = 0`` of orders 0..2 (``u_x`` and
``u_xx`` follow from ``u(x, 0)`` and make the fit better conditioned), on ``x = 0`` of orders 0..1:

    along_x = (..., 0, slice(None))      # output 0, input x, every order
    OperatorMSE(nd.mixed_partial, "f", indices=(0, 0, 1))
    + 10.0 * OperatorMSE(nd.pure_derivatives, "jet_axis_x", points="x_axis_x", order=2, select=along_x)
    + 10.0 * OperatorMSE(nd.pure_derivatives, "jet_axis_y", points="x_axis_y", order=1, select=along_x)

The derivatives in ``y`` (``u_y``, ``u_yy``, ...) come out the least accurate: an error ``e`` of
the fit satisfies ``e_y(x, y) = b'(y) + x c'(y) + (the residual integrated twice in x)``, with ``b``
and ``c`` the errors left in ``u(0, y)`` and ``u_x(0, y)``; the loss keeps ``b`` and ``c`` small,
not their slopes.

Both are trained like ``examples/pinn_ode.py``: Adam with a decaying learning rate, then L-BFGS.
Targets: max error of ``u`` below 1e-4 (``ode``), relative L2 error of ``u`` below 1e-3
(``goursat``), on fine grids.

    OPENBLAS_NUM_THREADS=1 python examples/pinn_third_order.py [--problem both] [--epochs 1000] [--lbfgs 2000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from pinn_ode import exponential_decay  # the sibling example (run from examples/ or with it on the path)

import nnderiv as nd
from nnderiv.losses import OperatorMSE

TARGETS = {"ode": 1e-4, "goursat": 1e-3}  # max |u - u_exact|; relative L2 error of u


# --- 1. u''' = f in one dimension ---------------------------------------------------------------


def ode_derivative(x: np.ndarray, k: int) -> np.ndarray:
    """``d^k/dx^k sin(2 x) = 2^k sin(2 x + k pi / 2)``."""
    return 2.0**k * np.sin(2.0 * x + k * np.pi / 2)


def ode_data(n_points: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Collocation points with ``f = u'''``, and ``x = 0`` with ``(u, u', u'')`` there, one row per point."""
    x = rng.uniform(-1.0, 1.0, (n_points, 1))
    x0 = np.zeros((n_points, 1))
    jet0 = np.stack([ode_derivative(x0, k) for k in range(3)], -1)[:, :, None, :]  # (N, m=1, d=1, 3)
    return {"x": x, "f": ode_derivative(x, 3)[:, :, None], "x0": x0, "jet0": jet0}


def ode_loss() -> nd.losses.Loss:
    residual = OperatorMSE(nd.pure_derivatives, "f", order=3, select=(..., 3))  # u''' - f, (N, 1, 1)
    initial = OperatorMSE(nd.pure_derivatives, "jet0", points="x0", order=2)  # (u, u', u'')(0)
    return residual + initial


def ode_errors(model, n: int = 2001, order: int = 5) -> dict[str, float]:
    """``max |d^k u - d^k u_exact|`` on ``n`` points for ``k = 0..order``, from ONE Taylor-mode sweep."""
    x = np.linspace(-1.0, 1.0, n)[:, None]
    pure = nd.pure_derivatives(model, x, order=order)[:, 0, 0, :]  # (n, order + 1)
    return {f"d{k}u": float(np.abs(pure[:, k] - ode_derivative(x[:, 0], k)).max()) for k in range(order + 1)}


# --- 2. u_xxy = f in two dimensions, Goursat data on the axes --------------------------------------


def goursat_exact(x: np.ndarray) -> np.ndarray:
    """``u = sin(x) cos(y)``, shape ``(N, 1)``."""
    return (np.sin(x[:, 0]) * np.cos(x[:, 1]))[:, None]


def goursat_data(n_points: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Interior points with ``f``; points on ``y = 0`` with ``(u, u_x, u_xx)``, on ``x = 0`` with ``(u, u_x)``."""
    x = rng.uniform(-1.0, 1.0, (n_points, 2))
    s, t = rng.uniform(-1.0, 1.0, n_points), rng.uniform(-1.0, 1.0, n_points)
    return {
        "x": x,
        "f": (np.sin(x[:, 0]) * np.sin(x[:, 1]))[:, None],
        "x_axis_x": np.stack([s, 0.0 * s], 1),
        "jet_axis_x": np.stack([np.sin(s), np.cos(s), -np.sin(s)], -1)[:, None, :],  # (N, m=1, 3)
        "x_axis_y": np.stack([0.0 * t, t], 1),
        "jet_axis_y": np.stack([0.0 * t, np.cos(t)], -1)[:, None, :],  # (N, m=1, 2)
    }


def goursat_loss() -> nd.losses.Loss:
    """The residual of ``u_xxy = f`` and the data on both axes, as pure derivatives along ``x``.

    ``u(x, 0) = sin(x)`` alone would determine the residual's ``u_xx(x, 0)`` only through two
    derivatives of a fitted function; giving ``u_x`` and ``u_xx`` along the axis too (known from
    the data) conditions the problem better, at the cost of 2 more stacked rows.
    """
    along_x = (..., 0, slice(None))  # output 0, input x, every order
    residual = OperatorMSE(nd.mixed_partial, "f", indices=(0, 0, 1))  # u_xxy - f, (N, 1)
    on_x_axis = OperatorMSE(nd.pure_derivatives, "jet_axis_x", points="x_axis_x", order=2, select=along_x)
    on_y_axis = OperatorMSE(nd.pure_derivatives, "jet_axis_y", points="x_axis_y", order=1, select=along_x)
    return residual + 10.0 * (on_x_axis + on_y_axis)  # the data weigh more: errors there spread everywhere


def goursat_errors(model, n: int = 101) -> dict[str, float]:
    """Relative L2 errors on an ``n x n`` grid of ``u``, its pure derivatives up to order 3, and two mixed ones."""
    s = np.linspace(-1.0, 1.0, n)
    x = np.stack(np.meshgrid(s, s, indexing="ij"), -1).reshape(-1, 2)
    sx, cx, sy, cy = np.sin(x[:, 0]), np.cos(x[:, 0]), np.sin(x[:, 1]), np.cos(x[:, 1])
    trig_x, trig_y = [sx, cx, -sx, -cx], [cy, -sy, -cy, sy]  # d^k sin(x), d^k cos(y), k = 0..3
    pure = nd.pure_derivatives(model, x, order=3)[:, 0]  # (n^2, 2, 4): one sweep, 1 + 2 * 3 rows
    exact = {"u": trig_x[0] * cy}
    computed = {"u": pure[:, 0, 0]}
    for k in (1, 2, 3):
        exact[f"d{k}u/dx{k}"], computed[f"d{k}u/dx{k}"] = trig_x[k] * cy, pure[:, 0, k]
        exact[f"d{k}u/dy{k}"], computed[f"d{k}u/dy{k}"] = sx * trig_y[k], pure[:, 1, k]
    for indices, name in (((0, 0, 1), "d3u/dx2dy"), ((0, 1, 1), "d3u/dxdy2")):
        computed[name] = nd.mixed_partial(model, x, indices)[:, 0]
        exact[name] = trig_x[indices.count(0)] * trig_y[indices.count(1)]
    return {name: float(np.linalg.norm(computed[name] - exact[name]) / np.linalg.norm(exact[name])) for name in exact}


# --- training and reporting ----------------------------------------------------------------------

PROBLEMS = {  # name: (widths, data, loss, points)
    "ode": ((1, 32, 32, 1), ode_data, ode_loss, 256),
    "goursat": ((2, 32, 32, 1), goursat_data, goursat_loss, 400),
}


def train(problem: str, epochs: int = 1000, seed: int = 0, *, lbfgs_iterations: int = 2000, progress: bool = True):
    """Adam (learning rate 1e-2 -> 1e-3), then L-BFGS; returns ``(model, losses, seconds)``."""
    widths, make_data, make_loss, n_points = PROBLEMS[problem]
    rng = np.random.default_rng(seed)
    model = nd.MLP(list(widths), activation="tanh", seed=seed)
    data, loss = make_data(n_points, rng), make_loss()
    optimizer = nd.Adam(1e-2)
    decay = exponential_decay(optimizer, 1e-2, 1e-3, epochs)
    start = time.perf_counter()
    history = nd.fit(
        model, loss, data, optimizer=optimizer, epochs=epochs, seed=seed, callbacks=[decay], progress=progress
    )
    losses = history.loss + nd.optim.lbfgs(model, loss, data, lbfgs_iterations)
    return model, losses, time.perf_counter() - start


def report(problem: str, model, losses, seconds: float, epochs: int) -> float:
    """Print the errors and the metric against its target; returns the metric."""
    print(f"[{problem}] loss {losses[0]:.3e} -> {losses[-1]:.3e} ({epochs} Adam steps, then L-BFGS) in {seconds:.1f} s")
    if problem == "ode":
        errors = ode_errors(model)
        print("  max error of d^k u / dx^k, k = 0..5 (one pure_derivatives sweep of order 5):")
        metric, what = errors["d0u"], "max |u - sin(2x)|"
    else:
        errors = goursat_errors(model)
        print("  relative L2 errors (pure_derivatives of order 3, mixed_partial):")
        metric, what = errors["u"], "relative L2 error of u"
    for name, error in errors.items():
        print(f"    {name:>10s}  {error:.2e}")
    verdict = "reached" if metric < TARGETS[problem] else "NOT reached"
    print(f"  {what}: {metric:.2e} (target {TARGETS[problem]:.0e}: {verdict})")
    return metric


def main(argv=None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", choices=["ode", "goursat", "both"], default="both")
    parser.add_argument("--epochs", type=int, default=1000, help="full-batch Adam steps")
    parser.add_argument("--lbfgs", type=int, default=2000, help="L-BFGS iterations after Adam (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    metrics = {}
    for problem in ("ode", "goursat") if args.problem == "both" else (args.problem,):
        model, losses, seconds = train(
            problem, args.epochs, args.seed, lbfgs_iterations=args.lbfgs, progress=not args.quiet
        )
        metrics[problem] = report(problem, model, losses, seconds, args.epochs)
    return metrics


if __name__ == "__main__":
    main()
