"""Where one call's time goes: every kernel nnderiv's modes call (``nnderiv.kernels``), counted and
timed, and what is left outside them (validation, seeding, read-outs, the engine's Python).

    python benchmarks/profile_kernels.py                          # numba, W0 W2 W3 W6 at d = 8
    python benchmarks/profile_kernels.py --backend cupy --workloads W0 W6 --dims 2 8

On the cupy backend each kernel call is timed from an idle GPU to its end (the device is
synchronized before and after it), so the kernels' times add up to the serialized call; the
unprofiled call's own time is printed beside it. Compiled sweeps (numba's value, Jacobian and tanh
series) run their kernels inside one call, which shows as time outside the kernels: pass
``--layer-by-layer`` to see those calls' kernels. Measurement only, never in the unit tests'
timing assertions (there are none).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import statistics
import sys
import time

import nnderiv as nd
from nnderiv import benchmark as bench
from nnderiv import kernels
from nnderiv.parallel import workers

#: the kernels of nnderiv.kernels that run on stacks (the rest are look-ups)
KERNELS = (
    "affine", "add_bias", "affine_weight_grad", "bilinear", "activation_derivatives", "taylor_coefficients",
    "activate", "activate_saving", "activation_adjoint", "compose", "compose_saving", "compose_vjp", "asarray", "host",
)  # fmt: skip


def _synchronizer(backend: str):
    if backend != "cupy":
        return lambda: None
    import cupy

    return cupy.cuda.get_current_stream().synchronize


@contextlib.contextmanager
def profiled(backend: str):
    """Every kernel of :data:`KERNELS` wrapped: ``{name: [calls, seconds]}`` filled while inside."""
    sync, tally = _synchronizer(backend), collections.defaultdict(lambda: [0, 0.0])
    originals = {name: getattr(kernels, name) for name in KERNELS}

    def timed(name, fn):
        def kernel(*args, **kwargs):
            sync()
            start = time.perf_counter()
            out = fn(*args, **kwargs)
            sync()
            tally[name][0] += 1
            tally[name][1] += time.perf_counter() - start
            return out

        return kernel

    for name, fn in originals.items():
        setattr(kernels, name, timed(name, fn))
    try:
        yield tally
    finally:
        for name, fn in originals.items():
            setattr(kernels, name, fn)


def profile(workload: str, d: int, n: int, backend: str, repeats: int, layer_by_layer: bool) -> str:
    """The report of one workload: the unprofiled median, then kernel by kernel for one call."""
    problem = bench.make_problem(d, n)
    method = bench.nnderiv_method(bench.WORKLOADS[workload], problem, backend)
    sweeps = contextlib.nullcontext()
    if layer_by_layer and backend == "numba":
        from nnderiv.backends import numba_backend

        sweeps = _switched(numba_backend, "COMPILED_SWEEPS", False)
    with sweeps:
        method.run()  # compiled, warm
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            method.run()
            times.append(time.perf_counter() - start)
        with profiled(backend) as tally:
            start = time.perf_counter()
            method.run()
            total = time.perf_counter() - start
    inside, calls, n_workers = sum(s for _, s in tally.values()), sum(c for c, _ in tally.values()), workers()
    where = (
        f"{1e3 * (total - inside):.3f} outside them"
        if n_workers == 1
        else f"kernel times summed over {n_workers} workers' threads"
    )
    lines = [
        f"{workload} d={d} N={n} {backend}: {1e3 * statistics.median(times):.3f} ms a call (median of {repeats});"
        f" profiled call {1e3 * total:.3f} ms, {1e3 * inside:.3f} in {calls} kernel calls, {where}"
    ]
    for name, (count, seconds) in sorted(tally.items(), key=lambda item: -item[1][1]):
        lines.append(
            f"    {name:<24} {count:5d} calls {1e3 * seconds:9.3f} ms {100 * seconds / total:6.1f}% of the call"
        )
    return "\n".join(lines)


@contextlib.contextmanager
def _switched(module, name, value):
    saved = getattr(module, name)
    setattr(module, name, value)
    try:
        yield
    finally:
        setattr(module, name, saved)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", default="numba", choices=["numpy", "numba", "cupy"])
    parser.add_argument("--workloads", nargs="+", default=["W0", "W2", "W3", "W6"], choices=list(bench.WORKLOADS))
    parser.add_argument("--dims", type=int, nargs="+", default=[8])
    parser.add_argument("--points", type=int, default=4096)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--layer-by-layer", action="store_true", help="numba: compiled sweeps off")
    args = parser.parse_args(argv)
    try:
        nd.set_backend(args.backend)
    except nd.BackendError as exc:
        print(f"profile_kernels: {exc}", file=sys.stderr)
        return 2
    for d in args.dims:
        for workload in args.workloads:
            print(profile(workload, d, args.points, args.backend, args.repeats, args.layer_by_layer), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
