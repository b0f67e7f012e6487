"""The nnbma derivatives notebook with nnderiv: a [2, 100, 100, 3] GELU network's derivatives against the truth.

The nnbma examples (einigl/ism-model-nn-approximation, ``examples/functions.py``: ``Fexample``; trained
in ``training.ipynb``, differentiated with ``torch.func`` in ``derivatives.ipynb``) approximate

    f(t1, t2) = (t1 + 2 t2,  t1^2,  t1 t2^2)     on  t1 in [-2, 2],  t2 in [-1, 1],

whose Jacobian and Hessian are known in closed form, with a fully connected [2, 100, 100, 3] network
with GELU activations, then plot its first and second derivatives along profiles through the default
point (1, 1) and over the whole box, and their errors. Here the same network is built and trained
with nnderiv (a Sobolev loss: MSE of the value plus MSE of the Jacobian, both backpropagated by hand;
the notebook trains on the value only, with its own data set and schedule, so the errors differ), and
its derivatives come from nnderiv instead of ``torch.func``. It saves, under ``--out-dir``:

- ``nnbma_profiles.png``: f, df/dt, d2f/dt2 of output ``--output`` (the notebook's third, ``t1 t2^2``)
  along x_0, along x_1 and along the diagonal (1, 1), network against truth;
- ``nnbma_jacobian_error.png``, ``nnbma_hessian_error.png``: absolute error of every Jacobian and
  Hessian entry of that output over a 100 x 100 grid of the box;

and prints the RMS and maximum errors of the value, Jacobian and Hessian on that grid.
Indices are 0-based (the notebook counts from 1).

    python examples/nnbma.py [--epochs 600] [--out-dir .]
"""

import os

# Small matrix products (100 x 100 layers): BLAS threads cost more than they save, and contend with
# anything else running. Set before NumPy is imported; an explicit setting in the environment wins.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import matplotlib.pyplot as plt  # noqa: E402  (the 'plot' extra: pip install 'nnderiv[plot]')
import numpy as np  # noqa: E402

import nnderiv as nd  # noqa: E402
from nnderiv.plot import error_maps, profiles  # noqa: E402

RANGES = np.array([[-2.0, 2.0], [-1.0, 1.0]])  # the notebook's input box
DEFAULT_POINT = np.array([1.0, 1.0])  # the notebook's default values of the inputs


def f(x):
    """``(t1 + 2 t2, t1^2, t1 t2^2)``: ``(N, 2) -> (N, 3)``."""
    t1, t2 = x[:, 0], x[:, 1]
    return np.stack([t1 + 2 * t2, t1**2, t1 * t2**2], axis=-1)


def jacobian(x):
    """``J[n, i, j] = d f_i / d t_j``: ``(N, 3, 2)``."""
    t1, t2 = x[:, 0], x[:, 1]
    one, zero = np.ones_like(t1), np.zeros_like(t1)
    rows = [(one, 2 * one), (2 * t1, zero), (t2**2, 2 * t1 * t2)]
    return np.stack([np.stack(row, axis=-1) for row in rows], axis=1)


def hessian(x):
    """``H[n, i, j, k] = d^2 f_i / d t_j d t_k``: ``(N, 3, 2, 2)``."""
    t1, t2 = x[:, 0], x[:, 1]
    H = np.zeros((len(x), 3, 2, 2))
    H[:, 1, 0, 0] = 2.0
    H[:, 2, 0, 1] = H[:, 2, 1, 0] = 2 * t2
    H[:, 2, 1, 1] = 2 * t1
    return H


def along(v):
    """The truth's derivatives of order 0..2 along ``v``, laid out like ``nd.taylor``: ``(N, 3, 1, 3)``."""
    v = np.asarray(v, dtype=float)

    def derivatives_along_v(x):
        orders = [f(x), jacobian(x) @ v, np.einsum("nijk,j,k->ni", hessian(x), v, v)]
        return np.stack(orders, axis=-1)[:, :, None, :]

    return derivatives_along_v


def train(n_points, epochs, batch_size, lr, seed, progress):
    """A [2, 100, 100, 3] GELU network trained on value + Jacobian at uniform random points of the box."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(RANGES[:, 0], RANGES[:, 1], (n_points, 2))
    data = {"x": x, "y": f(x), "dy": jacobian(x)}
    model = nd.MLP([2, 100, 100, 3], activation="gelu", seed=seed)
    loss = nd.MSE("value", "y") + nd.MSE("jacobian", "dy")
    optimizer = nd.Adam(lr)

    def decay(epoch, logs, model):  # geometric learning-rate decay, lr -> lr / 100 at the end
        optimizer.lr = lr * 0.01 ** ((epoch + 1) / epochs)

    history = nd.fit(
        model, loss, data, optimizer=optimizer, epochs=epochs, batch_size=batch_size, seed=seed,
        callbacks=[decay], progress=progress,
    )  # fmt: skip
    return model, history


def grid(n_per_axis=100):
    """The notebook's 100 x 100 grid of the box: axes ``(100,)``, ``(100,)`` and points ``(10000, 2)``."""
    gx, gy = (np.linspace(lo, hi, n_per_axis) for lo, hi in RANGES)
    X, Y = np.meshgrid(gx, gy)
    return gx, gy, np.stack([X.ravel(), Y.ravel()], axis=-1)


def report_errors(model, x):
    """Print the RMS and maximum absolute errors of the value, Jacobian and Hessian, per output."""
    D = nd.derivatives(model, x, order=2)
    print(f"errors on the {len(x)}-point grid (RMS / max absolute), per output:")
    print(f"{'':10s}" + "".join(f"{'f_' + str(i):>22s}" for i in range(3)))
    for name, net, exact in [
        ("value", D.value, f(x)),
        ("jacobian", D.jacobian, jacobian(x)),
        ("hessian", D.hessian, hessian(x)),
    ]:
        err = np.abs(net - exact).reshape(len(x), 3, -1)
        cells = [f"{np.sqrt(np.mean(err[:, i] ** 2)):.2e} / {err[:, i].max():.2e}" for i in range(3)]
        print(f"{name:10s}" + "".join(f"{cell:>22s}" for cell in cells))


def plot_profiles(model, output, path):
    """f, df/dt and d2f/dt2 of ``f_output`` along x_0, x_1 (through the default point) and the diagonal."""
    lines = [  # (x0, v, t range, name): the notebook's profiles vary one input, the others at their default
        (np.array([0.0, DEFAULT_POINT[1]]), np.array([1.0, 0.0]), RANGES[0], f"$x_0$ ($x_1$ = {DEFAULT_POINT[1]:g})"),
        (np.array([DEFAULT_POINT[0], 0.0]), np.array([0.0, 1.0]), RANGES[1], f"$x_1$ ($x_0$ = {DEFAULT_POINT[0]:g})"),
        (np.zeros(2), np.array([1.0, 1.0]), RANGES[1], "the diagonal $x_0 = x_1 = t$"),
    ]
    fig, axes = plt.subplots(len(lines), 3, figsize=(12.6, 3.3 * len(lines)), constrained_layout=True)
    for row, (x0, v, (lo, hi), name) in zip(axes, lines):
        profiles(model, x0, v, truth=along(v), output=output, t=np.linspace(lo, hi, 200), ax=row)
        row[0].set_ylabel(f"along {name}")
    fig.suptitle(f"network (nnderiv, Taylor mode) against the truth: $f_{{{output}}}$ and its derivatives along lines")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_error_maps(model, output, out_dir):
    gx, gy, _ = grid()
    paths = []
    for quantity, truth in [("jacobian", jacobian), ("hessian", hessian)]:
        fig = error_maps(model, gx, gy, truth, quantity=quantity, output=output)
        paths.append(out_dir / f"nnbma_{quantity}_error.png")
        fig.savefig(paths[-1], dpi=110)
        plt.close(fig)
    return paths


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=600)
    parser.add_argument("--points", type=int, default=2000, help="training points")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--lr", type=float, default=2e-3, help="initial Adam learning rate (decays to lr / 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", type=int, default=2, help="which output to plot (0-based; 2 is t1 t2^2)")
    parser.add_argument("--out-dir", type=Path, default=Path("."))
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args()
    args.out_dir.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    model, history = train(args.points, args.epochs, args.batch_size, args.lr, args.seed, not args.quiet)
    print(f"trained a [2, 100, 100, 3] GELU network: {history}, {time.perf_counter() - start:.1f} s")
    report_errors(model, grid()[2])
    start = time.perf_counter()
    plot_profiles(model, args.output, args.out_dir / "nnbma_profiles.png")
    paths = [args.out_dir / "nnbma_profiles.png", *plot_error_maps(model, args.output, args.out_dir)]
    print(f"saved {', '.join(str(p) for p in paths)} ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
