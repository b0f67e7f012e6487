"""Cost of each mode: stacked coefficient rows and wall time, nnderiv against JAX in the same run.

Network [d, 64, 64, 64, 1] tanh, float64, N points (default 4096). For every workload the script
prints the number of stacked rows nnderiv propagates (the cost contract: the Laplacian d + 2 rows,
pure derivatives of order K 1 + d K rows, the full mode C(d + K, K)), the median and minimum time
of `--repeats` runs after a warm-up, and — when JAX is installed — the time of the usual JAX
formulation (jit + vmap of nested jacfwd/jacrev/jvp), after checking that both agree to 1e-10.

    OPENBLAS_NUM_THREADS=1 python benchmarks/bench_modes.py [--dims 2 8 32] [--orders 2 3 4 5 6] [--json out.json]

Never run timings while other processes load the machine: on 2 cores OpenBLAS threads then spin
and small matrix products slow down 50-fold.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import numpy as np

import nnderiv as nd
from nnderiv.modes.laplacian import _plan_laplacian
from nnderiv.modes.taylor import _plan_pure


def timed(fn, repeats: int) -> tuple[float, float]:
    """(median, min) in milliseconds after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * float(np.median(times)), 1e3 * min(times)


def jax_workloads(model, x):
    """JAX formulations of the same quantities, or {} when JAX is missing."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return {}
    jax.config.update("jax_enable_x64", True)
    params = [(jnp.asarray(layer.params["W"]), jnp.asarray(layer.params["b"])) for layer in model.layers[::2]]

    def f(xi):  # one point (d,) -> scalar
        h = xi
        for W, b in params[:-1]:
            h = jnp.tanh(h @ W + b)
        return (h @ params[-1][0] + params[-1][1])[0]

    def pure(order):
        def along(xi, e):
            g = f
            for _ in range(order):
                g = (lambda inner: lambda y: jax.jvp(inner, (y,), (e,))[1])(g)
            return g(xi)

        eye = jnp.eye(x.shape[1])
        return jax.jit(jax.vmap(lambda xi: jax.vmap(lambda e: along(xi, e))(eye)))

    xs = jnp.asarray(x)
    work = {
        "value": jax.jit(jax.vmap(f)),
        "laplacian": jax.jit(jax.vmap(lambda xi: jnp.trace(jax.jacfwd(jax.jacrev(f))(xi)))),
    }
    work.update({f"pure {k}": pure(k) for k in range(2, 7)})
    return {name: (lambda fn=fn: np.asarray(fn(xs).block_until_ready())) for name, fn in work.items()}


def nnderiv_workloads(model, x, orders):
    """name -> (function, stacked rows, comparable array from its result: shaped like JAX's)."""
    work = {"value": (lambda: model(x), 1, lambda out: out[:, 0])}
    d = x.shape[1]
    if math.comb(d + 2, 2) <= 100:
        work["full order 2"] = (lambda: nd.derivatives(model, x, order=2).coefficients, math.comb(d + 2, 2), None)
    lap_rows = _plan_laplacian(model, x, for_vjp=False).mode.n_rows
    work["laplacian"] = (lambda: nd.laplacian(model, x), lap_rows, lambda out: out[:, 0])
    for k in orders:
        rows = _plan_pure(model, x, for_vjp=False, order=k).mode.n_rows
        work[f"pure {k}"] = (lambda k=k: nd.pure_derivatives(model, x, order=k), rows, lambda out, k=k: out[:, 0, :, k])
    return work


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 8, 32])
    parser.add_argument("--orders", type=int, nargs="+", default=[2, 3, 4, 5, 6])
    parser.add_argument("--points", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    print(f"nnderiv {nd.__version__}, numpy {np.__version__}, {platform.processor() or platform.machine()}")
    results = []
    header = f"{'d':>3} {'workload':<14} {'rows':>6} {'nnderiv ms':>11} {'min':>8} {'JAX ms':>8} {'ratio':>6}"
    print(header)
    for d in args.dims:
        model = nd.MLP([d, 64, 64, 64, 1], activation="tanh", seed=0)
        x = np.random.default_rng(0).uniform(-1, 1, (args.points, d))
        peers = jax_workloads(model, x)
        for name, (fn, rows, comparable) in nnderiv_workloads(model, x, args.orders).items():
            median, best = timed(fn, args.repeats)
            peer_ms = ratio = float("nan")
            if name in peers:
                ours, theirs = comparable(fn()), peers[name]()
                error = np.abs(ours - theirs).max() / np.abs(theirs).max()
                if error > 1e-10:
                    raise SystemExit(f"{name}, d={d}: nnderiv and JAX differ by {error:.2e} (relative)")
                peer_ms, _ = timed(peers[name], args.repeats)
                ratio = median / peer_ms
            print(f"{d:>3} {name:<14} {rows:>6} {median:>11.2f} {best:>8.2f} {peer_ms:>8.2f} {ratio:>6.2f}")
            results.append(
                dict(d=d, workload=name, rows=rows, median_ms=median, min_ms=best, jax_ms=peer_ms, ratio=ratio)
            )
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)


if __name__ == "__main__":
    main()
