"""Backends against each other: the same workloads on numpy and numba, in one process, results checked.

Network [d, 64, 64, 64, 1] tanh, float64, N points (default 4096). Every workload runs on every
backend in turn (interleaved, so drifting machine load hits them alike); the results must agree to
1e-12 (relative to the largest entry) before any time is printed. Times in ms are the minimum over
`--repeats` runs after a warm-up, both in CPU time of the process (`time.process_time`: robust when
other processes share the machine, but with several threads it is the SUM over threads) and in
wall time (`time.perf_counter`: what a user waits, and the only one that shows a parallel speed-up).

    OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 python benchmarks/bench_backends.py
    OPENBLAS_NUM_THREADS=2 NUMBA_NUM_THREADS=2 python benchmarks/bench_backends.py --dims 2 8
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numba
import numpy as np

import nnderiv as nd


def cpu_info() -> str:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                    model = line.split(":", 1)[1].strip()
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    simd = "avx512f" if "avx512f" in flags else "avx2" if "avx2" in flags else "no avx2"
    return f"{model}, {os.cpu_count()} CPUs, {simd}"


def workloads(model, x):
    """name -> function returning one array (the thing compared between backends)."""

    def laplacian_vjp():
        out, pullback = nd.vjp(nd.laplacian, model, x)
        grads = pullback(np.ones_like(out))
        return np.concatenate([g.ravel() for g in grads.values()])

    return {
        "value": lambda: model(x),
        "jacobian": lambda: nd.jacobian(model, x),
        "hessian (order 2)": lambda: nd.derivatives(model, x, order=2).coefficients,
        "laplacian": lambda: nd.laplacian(model, x),
        "pure order 3": lambda: nd.pure_derivatives(model, x, order=3),
        "pure order 4": lambda: nd.pure_derivatives(model, x, order=4),
        "vjp laplacian": laplacian_vjp,
    }


def best_times(fn, backend: str) -> tuple[float, float]:
    with nd.use_backend(backend):
        cpu, wall = time.process_time(), time.perf_counter()
        fn()
        return 1e3 * (time.process_time() - cpu), 1e3 * (time.perf_counter() - wall)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dims", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--points", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--backends", nargs="+", default=["numpy", "numba"])
    args = parser.parse_args()
    threads = {k: os.environ.get(k, "unset") for k in ("OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")}
    print(f"nnderiv {nd.__version__}, numpy {np.__version__}, numba {numba.__version__}, {cpu_info()}")
    print(f"threads: {threads}, numba threading layer after the first call below")
    names = " ".join(f"{b + ' cpu':>11} {b + ' wall':>11}" for b in args.backends)
    print(f"{'d':>3} {'workload':<18} {names} {'speed-up cpu':>13} {'wall':>6}")
    for d in args.dims:
        model = nd.MLP([d, 64, 64, 64, 1], activation="tanh", seed=0)
        x = np.random.default_rng(0).uniform(-1, 1, (args.points, d))
        for name, fn in workloads(model, x).items():
            results = {}
            for backend in args.backends:
                with nd.use_backend(backend):
                    results[backend] = fn()  # warm-up (and compilation) + result
            reference = results[args.backends[0]]
            for backend, result in results.items():
                error = np.abs(result - reference).max() / np.abs(reference).max()
                if error > 1e-12:
                    raise SystemExit(f"{name}, d={d}: {backend} differs from {args.backends[0]} by {error:.2e}")
            times = {backend: [] for backend in args.backends}
            for _ in range(args.repeats):
                for backend in args.backends:
                    times[backend].append(best_times(fn, backend))
            best = {b: (min(t[0] for t in ts), min(t[1] for t in ts)) for b, ts in times.items()}
            cells = " ".join(f"{best[b][0]:>11.1f} {best[b][1]:>11.1f}" for b in args.backends)
            first, last = best[args.backends[0]], best[args.backends[-1]]
            print(f"{d:>3} {name:<18} {cells} {first[0] / last[0]:>13.2f} {first[1] / last[1]:>6.2f}", flush=True)
    print(f"numba threading layer: {numba.threading_layer()}, threads {numba.get_num_threads()}")


if __name__ == "__main__":
    main()
