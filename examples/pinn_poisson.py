r"""Physics-informed network for the Poisson equation on the unit square, trained through the Laplacian mode.

Problem: find ``u`` on ``[0, 1]^2`` with

    -Delta u = f   in the square,        u = 0   on its boundary,
    f(x, y) = 2 pi^2 sin(pi x) sin(pi y),  exact solution u(x, y) = sin(pi x) sin(pi y).

A tanh network ``u_theta`` is trained on the physics-informed loss

    L(theta) = mean_i (-Delta u_theta(x_i) - f(x_i))^2  +  w mean_j u_theta(b_j)^2

over collocation points ``x_i`` inside the square and ``b_j`` on its edges: two
:class:`~nnderiv.losses.OperatorMSE` terms,

    OperatorMSE(nd.laplacian, "f", scale=-4.0) + w * OperatorMSE(nd.value, "g", points="x_boundary").

``nd.laplacian`` propagates the value, the gradient and ONE summed second-order row through the
network (``d + 2 = 4`` stacked rows), not the full Hessian, and its hand-written pullback gives
the gradient of the residual with respect to the weights.

Two details matter for accuracy:

- the network reads centred coordinates ``xi = 2 x - 1`` in ``[-1, 1]^2`` (with zero initial
  biases every tanh unit starts with its transition through ``xi = 0``, the middle of the square,
  rather than through a corner), so ``u(x) = net(2 x - 1)`` and ``Delta_x u = 4 Delta_xi net``:
  hence ``scale=-4.0``;
- Adam (1000 steps, learning rate decaying from 1e-2 to 1e-3) finds the basin, then L-BFGS
  (:func:`nnderiv.optim.lbfgs`, on the same ``loss.value_and_grad``) polishes: Adam
  alone plateaus near a relative error of 7e-4 after 8000 steps; the two together reach about
  1e-4 in a fraction of the time. The boundary term weighs ``w = 1000``: the error left at the
  end sits mostly along the edges.

The printed metric is the relative L2 error ``||u_theta - u|| / ||u||`` on a 101 x 101 grid of the
closed square; the target is 1e-3.

    OPENBLAS_NUM_THREADS=1 python examples/pinn_poisson.py [--epochs 1000] [--lbfgs 2000] [--plot poisson.png]

(one BLAS thread: the matrices are small, and threads fighting over two cores slow them down).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from pinn_ode import exponential_decay  # the sibling example (run from examples/ or with it on the path)

import nnderiv as nd
from nnderiv.losses import OperatorMSE

TARGET = 1e-3  # relative L2 error on the grid


def exact_solution(x: np.ndarray) -> np.ndarray:
    """``u(x, y) = sin(pi x) sin(pi y)``, shape ``(N, 1)``."""
    return (np.sin(np.pi * x[:, 0]) * np.sin(np.pi * x[:, 1]))[:, None]


def source(x: np.ndarray) -> np.ndarray:
    """``f = -Delta u = 2 pi^2 u``, shape ``(N, 1)``."""
    return 2.0 * np.pi**2 * exact_solution(x)


def centred(x: np.ndarray) -> np.ndarray:
    """The network's coordinates ``xi = 2 x - 1``: the unit square onto ``[-1, 1]^2``."""
    return 2.0 * x - 1.0


def solution(model, x: np.ndarray) -> np.ndarray:
    """``u_theta(x) = net(2 x - 1)`` at points ``x`` of the unit square, shape ``(N, 1)``."""
    return model(centred(x))


def collocation_data(n_points: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Uniform points inside (``x``, with ``f``) and on the four edges (``x_boundary``, ``g = 0``), centred.

    As many boundary points as interior ones: :func:`nnderiv.fit` slices every array of the data
    by the same rows.
    """
    x = rng.uniform(0.0, 1.0, (n_points, 2))
    along, edge = rng.uniform(0.0, 1.0, n_points), rng.integers(0, 4, n_points)
    fixed = (edge % 2).astype(float)  # edges 0, 1: x = 0, 1; edges 2, 3: y = 0, 1
    x_boundary = np.where((edge < 2)[:, None], np.stack([fixed, along], 1), np.stack([along, fixed], 1))
    return {"x": centred(x), "f": source(x), "x_boundary": centred(x_boundary), "g": np.zeros((n_points, 1))}


def poisson_loss(boundary_weight: float) -> nd.losses.Loss:
    """``mean(-Delta_x u - f)^2 + boundary_weight * mean(u - g)^2``, in the centred coordinates."""
    residual = OperatorMSE(nd.laplacian, "f", scale=-4.0)  # Delta_x = 4 Delta_xi
    boundary = OperatorMSE(nd.value, "g", points="x_boundary")
    return residual + boundary_weight * boundary


def train(
    epochs: int = 1000,
    seed: int = 0,
    *,
    lbfgs_iterations: int = 2000,
    n_points: int = 1000,
    widths=(2, 32, 32, 1),
    lr: tuple[float, float] = (1e-2, 1e-3),
    boundary_weight: float = 1000.0,
    progress: bool = True,
):
    """Adam for ``epochs`` full-batch steps, then L-BFGS; returns ``(model, losses, seconds)``.

    ``losses`` lists the loss after every Adam step and every L-BFGS iteration.
    """
    rng = np.random.default_rng(seed)
    model = nd.MLP(list(widths), activation="tanh", seed=seed)
    data = collocation_data(n_points, rng)
    loss = poisson_loss(boundary_weight)
    optimizer = nd.Adam(lr[0])
    decay = exponential_decay(optimizer, *lr, epochs)
    start = time.perf_counter()
    history = nd.fit(
        model, loss, data, optimizer=optimizer, epochs=epochs, seed=seed, callbacks=[decay], progress=progress
    )
    losses = history.loss + nd.optim.lbfgs(model, loss, data, lbfgs_iterations)
    return model, losses, time.perf_counter() - start


def grid(n: int = 101) -> np.ndarray:
    """The ``n x n`` grid on the closed unit square, shape ``(n * n, 2)``."""
    s = np.linspace(0.0, 1.0, n)
    return np.stack(np.meshgrid(s, s, indexing="ij"), -1).reshape(-1, 2)


def relative_l2_error(model, n: int = 101) -> float:
    """``||u_theta - u|| / ||u||`` over the grid points."""
    x = grid(n)
    u = exact_solution(x)
    return float(np.linalg.norm(solution(model, x) - u) / np.linalg.norm(u))


def plot(model, path: str, n: int = 101) -> None:
    """Save the network's ``u``, the exact ``u`` and their difference side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = grid(n)
    u_net, u_exact = solution(model, x).reshape(n, n), exact_solution(x).reshape(n, n)
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
    error = u_net - u_exact
    bound = np.abs(error).max()
    panels = [
        (u_net, "network u", {"cmap": "viridis"}),
        (u_exact, "exact sin(pi x) sin(pi y)", {"cmap": "viridis"}),
        (error, "network - exact", {"cmap": "RdBu_r", "vmin": -bound, "vmax": bound}),
    ]
    for ax, (values, title, style) in zip(axes, panels):
        image = ax.imshow(values.T, origin="lower", extent=(0, 1, 0, 1), **style)
        ax.set(title=title, xlabel="x", ylabel="y")
        fig.colorbar(image, ax=ax)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> float:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=1000, help="full-batch Adam steps")
    parser.add_argument("--lbfgs", type=int, default=2000, help="L-BFGS iterations after Adam (0: none)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--points", type=int, default=1000, help="interior (and boundary) collocation points")
    parser.add_argument("--plot", default=None, help="save u, the exact u and the error to this PNG")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    model, losses, seconds = train(
        args.epochs, args.seed, lbfgs_iterations=args.lbfgs, n_points=args.points, progress=not args.quiet
    )
    error = relative_l2_error(model)
    print(f"loss {losses[0]:.3e} -> {losses[-1]:.3e} ({args.epochs} Adam steps, then L-BFGS) in {seconds:.1f} s")
    verdict = "reached" if error < TARGET else "NOT reached"
    print(f"relative L2 error on a 101 x 101 grid: {error:.2e} (target {TARGET:.0e}: {verdict})")
    if args.plot:
        try:
            plot(model, args.plot)
            print(f"plot saved to {args.plot}")
        except ImportError:
            print("matplotlib is not installed: no plot (pip install nnderiv[plot])")
    return error


if __name__ == "__main__":
    main()
