"""The speed benchmark: nnderiv against torch.func, JAX and folx on the same networks, in one run.

Network ``[d, 64, 64, 64, 1]``, tanh, float64 (:class:`nnderiv.MLP`, seed 0), ``N`` points drawn
uniformly in ``[-1, 1]^d``. Workloads (:data:`WORKLOADS`):

- ``W0`` value ``u(x)``; ``W1`` Jacobian; ``W2`` full Hessian; ``W3`` Laplacian ``Delta u``;
- ``W4`` / ``W5`` pure third / fourth derivatives ``d^k u / dx_i^k`` for every input ``i``;
- ``W6`` one PINN step: ``L = mean((Delta u - 1)^2)`` and its gradient w.r.t. every weight.

nnderiv runs through its public functions only (``nd.value``, ``nd.jacobian``, ``nd.hessian``,
``nd.laplacian``, ``nd.pure_derivatives``, ``nd.OperatorMSE(nd.laplacian).value_and_grad``), so
whatever strategy those pick is what is timed, once per backend. Peers, each skipped when not
installed: torch.func (``vmap`` of ``jacrev``/``jacfwd``, nested ``jvp``, ``grad``), JAX (the same
under ``jit``, plus ``jax.experimental.jet``) and folx (the forward Laplacian, under ``jax.grad``
for W6).

Every method's result is first compared with nnderiv's (:func:`relative_error` <= 1e-10); one
that disagrees or fails is reported with its error and never timed. Timing: warm-up calls (the
checked one included), then ``repeats`` calls back to back; median and min in ms. Memory:
nnderiv's peak of traced allocations (``tracemalloc``: NumPy arrays, not Numba-internal ones),
JAX's compiled buffer plan (arguments + outputs + temporaries), and with ``--rss`` the peak RSS
growth of a fresh process running the method, for every method (torch included). GEMM
throughput: the matrix products nnderiv runs are counted and timed one by one (rows x N x n_in x
n_out x 2 flops each) and compared with a large GEMM on the same machine. The sweep grows ``d``
(Laplacian), the order ``K`` (pure derivatives) and ``N`` (chunked, under a memory limit).

``python benchmarks/bench.py`` runs it all; ``nnderiv bench`` a short version. See
``docs/performance.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import importlib
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
import tracemalloc
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

import nnderiv as nd
from nnderiv import parallel

TOLERANCE = 1e-10  # relative to the largest entry of nnderiv's result, float64
#: seconds of rest before each method's timed block: the worker threads of the block before
#: (OpenBLAS's spin for about 0.1 s after a multithreaded product, XLA's pool) go to sleep first;
#: measured: the numba backend right after the numpy one was 1.6x slower for its first 10 calls
SETTLE_S = 0.3
WIDTHS = (64, 64, 64)
PEERS = ("torch", "jax", "folx")


@dataclass(frozen=True)
class Workload:
    """What is computed: ``kind`` in value, jacobian, hessian, laplacian, pure, pinn; ``order`` for pure."""

    key: str
    label: str
    kind: str
    order: int = 0
    target: float = 1.0  # ratio nnderiv (numba) / best peer to reach


WORKLOADS = {
    "W0": Workload("W0", "value", "value"),
    "W1": Workload("W1", "Jacobian", "jacobian"),
    "W2": Workload("W2", "full Hessian", "hessian"),
    "W3": Workload("W3", "Laplacian", "laplacian"),
    "W4": Workload("W4", "pure 3rd derivatives", "pure", 3, target=0.5),
    "W5": Workload("W5", "pure 4th derivatives", "pure", 4, target=0.5),
    "W6": Workload("W6", "PINN step", "pinn"),
}


@dataclass
class Method:
    """One way to compute a workload: ``run()`` returns the raw result, ``readout`` makes it an array
    comparable with nnderiv's; ``memory()`` returns bytes or None."""

    name: str
    family: str  # nnderiv, torch.func, JAX, folx
    run: Callable
    readout: Callable = np.asarray
    backend: str | None = None
    memory: Callable | None = None
    memory_how: str = "n/a"
    result: dict = field(default_factory=dict)


def relative_error(result, reference) -> float:
    """``max |result - reference| / max |reference|`` (inf for a shape mismatch).

    >>> relative_error(np.array([1.0, 2.0]), np.array([1.0, 2.0 + 2e-12]))
    1e-12
    >>> relative_error(np.zeros(3), np.zeros(2))
    inf
    """
    result, reference = np.asarray(result), np.asarray(reference)
    if result.shape != reference.shape:
        return math.inf
    scale = max(float(np.abs(reference).max(initial=0.0)), np.finfo(np.float64).tiny)
    return float(np.abs(result - reference).max(initial=0.0)) / scale


def flatten(out) -> np.ndarray:
    """One float64 array from a result: arrays as they are; a (loss, gradients) pair as one vector."""
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (tuple, list)):
        return np.concatenate([np.ravel(flatten(part)) for part in out])
    if hasattr(out, "detach"):  # a torch tensor
        out = out.detach().cpu().numpy()
    if hasattr(out, "get") and not isinstance(out, np.ndarray):  # a CuPy array
        out = out.get()
    return np.asarray(out, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# the problem and nnderiv's methods


@dataclass
class Problem:
    d: int
    n: int
    model: nd.MLP
    x: np.ndarray

    @property
    def params(self) -> list[np.ndarray]:
        """Weights and biases in layer order: ``[W_0, b_0, W_1, b_1, ...]`` (nnderiv's names' order)."""
        return list(self.model.params.values())

    def gemm_flops_per_row(self) -> int:
        """Flops of one stacked row through every affine layer: ``2 N sum n_in n_out``."""
        widths = (self.d, *WIDTHS, 1)
        return 2 * self.n * sum(a * b for a, b in zip(widths[:-1], widths[1:]))


def make_problem(d: int, n: int, seed: int = 0) -> Problem:
    model = nd.MLP([d, *WIDTHS, 1], activation="tanh", seed=seed, dtype="float64")
    return Problem(d, n, model, np.random.default_rng(seed).uniform(-1.0, 1.0, (n, d)))


def nnderiv_call(workload: Workload, problem: Problem, chunk_size=None) -> Callable:
    """The public nnderiv call of ``workload``, returning the result in the comparable layout."""
    model, x, kw = problem.model, problem.x, {"chunk_size": chunk_size}
    if workload.kind == "pinn":
        loss = nd.OperatorMSE(nd.laplacian, "f", **kw)
        batch = {"x": x, "f": np.ones((problem.n, 1))}
        return lambda: loss.value_and_grad(model, batch)
    calls = {
        "value": lambda: nd.value(model, x, **kw)[:, 0],
        "jacobian": lambda: nd.jacobian(model, x, **kw)[:, 0],
        "hessian": lambda: nd.hessian(model, x, **kw)[:, 0],
        "laplacian": lambda: nd.laplacian(model, x, **kw)[:, 0],
        "pure": lambda: nd.pure_derivatives(model, x, order=workload.order, **kw)[:, 0, :, workload.order],
    }
    return calls[workload.kind]


def nnderiv_strategy(workload: Workload, problem: Problem) -> str | None:
    """What ``nd.explain`` says nnderiv will do for ``workload`` (``None`` where it has no answer)."""
    fn, kwargs = {
        "value": (nd.value, {}),
        "jacobian": (nd.jacobian, {}),
        "hessian": (nd.hessian, {}),
        "laplacian": (nd.laplacian, {}),
        "pinn": (nd.laplacian, {}),
        "pure": (nd.pure_derivatives, {"order": workload.order}),
    }[workload.kind]
    try:
        return str(nd.explain(fn, problem.model, problem.x, **kwargs))
    except Exception:  # no nd.explain, or none for this function
        return None


def nnderiv_method(workload: Workload, problem: Problem, backend: str, chunk_size=None) -> Method:
    """nnderiv on ``backend``; for cupy, on a copy of the model whose weights live on the GPU."""
    if backend == "cupy":
        problem = dataclasses.replace(problem, model=make_problem(problem.d, problem.n).model.to("cupy"))
    call = nnderiv_call(workload, problem, chunk_size)
    finish = _device_synchronize if backend == "cupy" else (lambda: None)

    def run():  # on the GPU: until its kernels have finished, not only been queued
        with nd.use_backend(backend):
            out = call()
        finish()
        return out

    memory = None if backend == "cupy" else (lambda: traced_peak(run))  # tracemalloc sees host memory only
    return Method(f"nnderiv {backend}", "nnderiv", run, flatten, backend, memory, "tracemalloc")


def _device_synchronize() -> None:
    import cupy

    cupy.cuda.get_current_stream().synchronize()


def traced_peak(fn: Callable) -> int:
    """Peak bytes of traced (Python and NumPy) allocations during one call of ``fn``."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --------------------------------------------------------------------------------------------
# peers: torch.func and JAX through one adapter, folx and jet on top of JAX


def torch_adapter(threads: int, device: str = "cpu"):
    """torch.func behind the names the method builders use, on ``device`` ("cpu" or "gpu");
    ``None`` when torch is missing (an error when it sees no GPU it is asked to use)."""
    try:
        import torch
        import torch.func as tf
    except ImportError:
        return None
    torch.set_num_threads(threads)
    if device == "gpu" and not torch.cuda.is_available():
        raise nd.BackendError("--peer-device gpu: torch sees no CUDA device (torch.cuda.is_available() is False)")
    where = torch.device("cuda" if device == "gpu" else "cpu")
    synchronize = torch.cuda.synchronize if device == "gpu" else (lambda: None)

    def ready(out):
        synchronize()
        return out

    def value_and_grad(fn):
        return lambda p: tuple(reversed(tf.grad_and_value(fn)(p)))

    return SimpleNamespace(
        family="torch.func",
        np=SimpleNamespace(tanh=torch.tanh, trace=torch.trace, mean=torch.mean, sum=torch.sum),
        vmap=tf.vmap,
        jacrev=tf.jacrev,
        jacfwd=tf.jacfwd,
        jvp=tf.jvp,
        value_and_grad=value_and_grad,
        eye=lambda d: torch.eye(d, dtype=torch.float64, device=where),
        asarray=lambda a: torch.from_numpy(np.array(a, dtype=np.float64)).to(where),
        compile=lambda fn: fn,
        ready=ready,
        memory=None,
        device=str(where),
    )


def jax_adapter(threads: int, device: str = "cpu"):
    """JAX (float64 through ``jax_enable_x64``, set by :func:`run_benchmark`) on ``device`` ("cpu" or
    "gpu": its arrays are put there, so its compiled functions run there) or ``None``."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None
    try:
        where = jax.devices("gpu" if device == "gpu" else "cpu")[0]
    except RuntimeError as exc:
        raise nd.BackendError(f"--peer-device {device}: JAX has no such device ({exc})") from None

    def memory(fn, *args):  # XLA's buffer plan of the compiled function
        stats = fn.lower(*args).compile().memory_analysis()
        return stats.argument_size_in_bytes + stats.output_size_in_bytes + stats.temp_size_in_bytes

    return SimpleNamespace(
        family="JAX",
        np=SimpleNamespace(tanh=jnp.tanh, trace=jnp.trace, mean=jnp.mean, sum=jnp.sum),
        vmap=jax.vmap,
        jacrev=jax.jacrev,
        jacfwd=jax.jacfwd,
        jvp=jax.jvp,
        value_and_grad=jax.value_and_grad,
        eye=lambda d: jnp.eye(d, dtype=jnp.float64),
        asarray=lambda a: jax.device_put(np.asarray(a, dtype=np.float64), where),
        compile=jax.jit,
        ready=jax.block_until_ready,
        memory=memory,
        device=str(where),
    )


def mlp(ad, params, h):
    """The network on ``h`` (one point ``(d,)`` or a batch ``(N, d)``), output axis last."""
    for W, b in zip(params[0:-2:2], params[1:-2:2]):
        h = ad.np.tanh(h @ W + b)
    return h @ params[-2] + params[-1]


def nested_jvp(ad, f, order: int):
    """``(y, v) -> d^order/dt^order f(y + t v)`` at ``t = 0``: ``order`` nested jvps (``2^order`` terms)."""

    def derivative(inner):
        return lambda y, v: ad.jvp(lambda z: inner(z, v), (y,), (v,))[1]

    g = lambda y, v: f(y)  # noqa: E731
    for _ in range(order):
        g = derivative(g)
    return g


def jet_along(f, order: int):
    """``(y, v) -> d^order/dt^order f(y + t v)`` by ``jax.experimental.jet`` (series of derivatives)."""
    from jax.experimental.jet import jet

    def along(y, v):
        _, series = jet(f, (y,), ([v] + [v * 0.0] * (order - 1),))
        return series[order - 1]

    return along


def laplacians(ad) -> dict[str, Callable]:
    """Per-point Laplacians ``(f, y) -> Delta f(y)`` the peer can build, by name."""
    found = {
        "trace(jacfwd(jacrev))": lambda f, y: ad.np.trace(ad.jacfwd(ad.jacrev(f))(y)),
        "sum of nested jvp": lambda f, y: ad.np.sum(ad.vmap(lambda v: nested_jvp(ad, f, 2)(y, v))(ad.eye(y.shape[0]))),
    }
    if ad.family == "folx":
        from folx import forward_laplacian

        found = {"forward_laplacian": lambda f, y: forward_laplacian(f)(y).laplacian}
    return found


def along_axes(ad, per_direction):
    """``(f, y) -> [per_direction(f)(y, e_i) for every axis e_i]``."""
    return lambda f, y: ad.vmap(lambda v: per_direction(f)(y, v))(ad.eye(y.shape[0]))


def per_point_builders(ad, workload: Workload) -> dict[str, Callable]:
    """name -> ``(f, y) -> quantity at one point``, for a peer adapter ``ad`` (folx: its own)."""
    kind, K = workload.kind, workload.order
    if ad.family == "folx":
        return {"vmap(forward_laplacian)": laplacians(ad)["forward_laplacian"]} if kind == "laplacian" else {}
    builders = {
        "jacobian": {"vmap(jacrev)": lambda f, y: ad.jacrev(f)(y), "vmap(jacfwd)": lambda f, y: ad.jacfwd(f)(y)},
        "hessian": {
            "vmap(jacfwd(jacrev))": lambda f, y: ad.jacfwd(ad.jacrev(f))(y),
            "vmap(jacrev(jacrev))": lambda f, y: ad.jacrev(ad.jacrev(f))(y),
        },
        "laplacian": {f"vmap({name})": fn for name, fn in laplacians(ad).items()},
        "pure": {"vmap(nested jvp)": along_axes(ad, lambda f: nested_jvp(ad, f, K))},
    }.get(kind, {})
    if ad.family == "JAX" and kind in ("laplacian", "pure"):
        order = 2 if kind == "laplacian" else K
        jets = along_axes(ad, lambda f: jet_along(f, order))
        builders["vmap(jet)"] = (lambda f, y: ad.np.sum(jets(f, y))) if kind == "laplacian" else jets
    return builders


def batched_functions(ad, workload: Workload) -> dict[str, Callable]:
    """name -> ``(params, xs) -> result`` for the whole batch."""
    point = lambda params: lambda y: mlp(ad, params, y)[0]  # noqa: E731 - the scalar network at one point
    if workload.kind == "value":
        return {} if ad.family == "folx" else {"batched forward": lambda params, xs: mlp(ad, params, xs)[:, 0]}
    if workload.kind == "pinn":
        functions = {}
        for name, lap in laplacians(ad).items():

            def loss(params, xs, lap=lap):
                return ad.np.mean((ad.vmap(lambda y: lap(point(params), y))(xs) - 1.0) ** 2)

            functions[f"value_and_grad({name})"] = lambda params, xs, loss=loss: ad.value_and_grad(
                lambda p: loss(p, xs)
            )(params)
        return functions
    return {
        name: (lambda params, xs, build=build: ad.vmap(lambda y: build(point(params), y))(xs))
        for name, build in per_point_builders(ad, workload).items()
    }


def peer_methods(ad, workload: Workload, problem: Problem) -> list[Method]:
    params, xs = [ad.asarray(p) for p in problem.params], ad.asarray(problem.x)
    methods = []
    for name, fn in batched_functions(ad, workload).items():
        compiled = ad.compile(fn)
        memory = (lambda compiled=compiled: ad.memory(compiled, params, xs)) if ad.memory else None
        how = "XLA buffers" if ad.memory else "n/a"
        run = lambda compiled=compiled: ad.ready(compiled(params, xs))  # noqa: E731
        methods.append(Method(f"{ad.family} {name}", ad.family, run, flatten, memory=memory, memory_how=how))
    return methods


def peer_adapters(peers, threads: int, device: str = "cpu") -> tuple[list, dict[str, str]]:
    """The adapters of the requested peers that import, and why each other one is skipped."""
    adapters, notes = [], {}
    if "torch" in peers:
        ad = torch_adapter(threads, device)
        adapters += [ad] if ad else []
        where = f"{threads} threads (torch.set_num_threads)" if device == "cpu" else "eager on the GPU"
        notes["torch.func"] = f"{where}, {ad.device}" if ad else "skipped: torch not installed"
    if "jax" in peers or "folx" in peers:
        ad = jax_adapter(threads, device)
        if ad is None:
            notes["JAX"] = "skipped: jax not installed"
        elif "jax" in peers:
            adapters.append(ad)
            where = f"own thread pool (XLA_FLAGS={os.environ.get('XLA_FLAGS', 'unset')})" if device == "cpu" else ""
            notes["JAX"] = f"jit on {ad.device}; {where}".rstrip("; ")
        if ad is not None and "folx" in peers:
            try:
                import folx  # noqa: F401
            except Exception as exc:  # ImportError, or a folx that does not work with this JAX
                notes["folx"] = f"skipped: folx does not import ({type(exc).__name__}: {exc})"
            else:
                adapters.append(SimpleNamespace(**{**vars(ad), "family": "folx"}))
                notes["folx"] = "forward_laplacian under jit"
    return adapters, notes


# --------------------------------------------------------------------------------------------
# checking and timing


def check_then_time(methods: list[Method], *, repeats: int, warmup: int, max_call_s: float, skip=None) -> None:
    """Fill every ``method.result``: checked against the first nnderiv result, then timed.

    Status ``ok`` (agrees to :data:`TOLERANCE`, timed: median and min in ms of ``repeats`` calls run
    back to back after a rest of :data:`SETTLE_S` and ``warmup`` calls of its own — not interleaved
    with other methods: on a 2-core machine the worker threads one framework leaves spinning after
    a call land on the next method's time), ``mismatch`` or ``error`` (not timed), ``slow``
    (agrees, but its first call took over ``max_call_s`` seconds: that call's time only, compilation
    included), ``skipped`` (named in ``skip``, ``{name: reason}``: not run at all).
    """
    reference, skip = None, skip or {}
    for method in methods:
        result = method.result = {"name": method.name, "family": method.family, "backend": method.backend}
        if method.name in skip:
            result.update(status="skipped", error=skip[method.name])
            continue
        try:
            start = time.perf_counter()
            out = method.readout(method.run())
            first = time.perf_counter() - start
        except Exception as exc:  # a failing method is reported, the others go on
            result.update(status="error", error=f"{type(exc).__name__}: {exc}"[:400])
            continue
        if reference is None and method.family == "nnderiv":
            reference, result["reference"] = out, True
        if reference is None:
            result.update(status="error", error="no nnderiv result to check against")
            continue
        error = relative_error(out, reference)
        result.update(first_call_ms=1e3 * first, rel_error=error)
        if not error <= TOLERANCE:
            result.update(status="mismatch", error=f"differs from nnderiv by {error:.2e} (relative), not timed")
        else:
            result["status"] = "ok" if first <= max_call_s else "slow"
    for method in (m for m in methods if m.result["status"] == "ok"):
        time.sleep(SETTLE_S)
        for _ in range(warmup):
            method.run()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            method.run()
            times.append(1e3 * (time.perf_counter() - start))
        method.result.update(median_ms=float(np.median(times)), min_ms=float(min(times)), repeats=repeats)


def measure_memory(methods: list[Method]) -> None:
    """Each checked method's own memory measure (tracemalloc for nnderiv, XLA's plan for JAX)."""
    for method in methods:
        if method.result["status"] not in ("ok", "slow") or method.memory is None:
            method.result.update(peak_bytes=None, memory_how="n/a")
            continue
        try:
            method.result.update(peak_bytes=int(method.memory()), memory_how=method.memory_how)
        except Exception as exc:  # memory analysis is optional for a peer
            method.result.update(peak_bytes=None, memory_how=f"failed: {type(exc).__name__}")


@contextlib.contextmanager
def counting_gemms(backend: str):
    """Count and time every matrix product of nnderiv's backend (``affine``, ``affine_weight_grad``),
    on whichever worker thread it runs (:mod:`nnderiv.parallel`), and which threads ran them.

    Measurement only: the backend module's two functions are wrapped for the block and restored.
    The numba backend's compiled sweeps (value, Jacobian, series modes) multiply in compiled code,
    out of reach of a Python wrapper, so they are off for the block: the layer-by-layer path
    computes the same products the same way (register tiles, or BLAS calls on the same blocks of
    rows). A strategy that multiplies matrices elsewhere is not counted (the count then reads low).
    A product's time is its thread's CPU time (``time.thread_time``), not the wall clock: a worker
    that finished its product and waits for the GIL (the other worker's Python runs) is not
    multiplying, and counting that wait read as low as 24 GFLOP/s for products that ran at 48.
    """
    from .backends import load

    module, lock = load(backend), threading.Lock()
    compiled = getattr(module, "COMPILED_SWEEPS", None)
    tally = {"flops": 0, "seconds": 0.0, "calls": 0, "threads": set()}

    def counted(fn):
        def product(a, b):
            start = time.thread_time()
            out = fn(a, b)
            seconds = time.thread_time() - start
            with lock:
                tally["seconds"] += seconds
                tally["flops"] += 2 * a.size * b.shape[-1]  # (rows N, n_in) x (n_in, n_out), or its transpose
                tally["calls"] += 1
                tally["threads"].add(threading.get_ident())
            return out

        return product

    originals = {name: getattr(module, name) for name in ("affine", "affine_weight_grad")}
    for name, fn in originals.items():
        setattr(module, name, counted(fn))
    if compiled is not None:
        module.COMPILED_SWEEPS = False
    try:
        yield tally
    finally:
        for name, fn in originals.items():
            setattr(module, name, fn)
        if compiled is not None:
            module.COMPILED_SWEEPS = compiled


def gemm_profile(method: Method, problem: Problem, runs: int = 3) -> dict | None:
    """Flops of nnderiv's GEMMs in one call, their fastest total time and throughput.

    With several workers the products run on several threads at once, each on one BLAS thread:
    ``gemm_gflops`` is then the throughput of one thread's products (flops over the summed product
    time), to be compared with one-thread BLAS, and ``gemm_share`` the share of the workers' time
    (``threads`` x the median call) spent in products."""
    if method.family != "nnderiv" or method.result["status"] != "ok" or method.backend == "cupy":
        return None
    best = None
    for _ in range(runs):
        with counting_gemms(method.backend) as tally:
            method.run()
        best = tally if best is None or tally["seconds"] < best["seconds"] else best
    if not best["flops"]:
        return None
    median_s = method.result["median_ms"] / 1e3
    threads = len(best["threads"])
    return {
        "flops": best["flops"],
        "calls": best["calls"],
        "threads": threads,
        "rows": best["flops"] / problem.gemm_flops_per_row(),  # stacked rows, per affine layer, all sweeps
        "gemm_ms": 1e3 * best["seconds"],
        "gemm_gflops": best["flops"] / best["seconds"] / 1e9,
        "overall_gflops": best["flops"] / median_s / 1e9,
        "gemm_share": best["seconds"] / (threads * median_s),
    }


def summarize(workload: Workload, results: list[dict]) -> dict:
    """Best nnderiv backend, numba, best peer, the two ratios and whether the target is met."""
    ours = {r["backend"]: r["median_ms"] for r in results if r["family"] == "nnderiv" and r["status"] == "ok"}
    peers = [r for r in results if r["family"] != "nnderiv" and r["status"] == "ok"]
    best_peer = min(peers, key=lambda r: r["median_ms"]) if peers else None
    best_backend = min(ours, key=ours.get) if ours else None
    peer_ms = best_peer["median_ms"] if best_peer else None
    ratio = lambda ms: None if ms is None or peer_ms is None else ms / peer_ms  # noqa: E731
    numba_ratio = ratio(ours.get("numba"))
    return {
        "best_backend": best_backend,
        "best_nnderiv_ms": ours.get(best_backend),
        "numba_ms": ours.get("numba"),
        "best_peer": best_peer["name"] if best_peer else None,
        "best_peer_ms": peer_ms,
        "ratio_best": ratio(ours.get(best_backend)),
        "ratio_numba": numba_ratio,
        "target": workload.target,
        "target_met": None if numba_ratio is None else numba_ratio <= workload.target,
    }


@dataclass
class Settings:
    """Everything a run is configured by (the CLI's options)."""

    dims: tuple = (2, 8)
    points: int = 4096
    repeats: int = 7
    warmup: int = 1
    workloads: tuple = tuple(WORKLOADS)
    backends: tuple = ()  # default: numpy, numba, and cupy when it runs
    peers: tuple = PEERS
    peer_device: str = "cpu"  # where torch and JAX run: "cpu" or "gpu"
    max_call_s: float = 20.0
    sweep: bool = True
    sweep_repeats: int = 3
    sweep_dims: tuple = (2, 8, 16, 32, 64)
    sweep_orders: tuple = (1, 2, 3, 4, 5, 6)
    sweep_points: tuple = (4096, 65536, 10**6)
    sweep_pinn_points_max: int = 65536
    memory_limit: int = 256 * 2**20
    threads: int = 0  # peers' threads; 0: as nnderiv's BLAS
    blas_size: int = 2048  # of the square GEMM that measures the machine's BLAS
    rss: bool = True  # peak RSS of every method of the table, one child process each


def measure_workload(workload: Workload, problem: Problem, settings: Settings, adapters, repeats=None, skip=None):
    """Every method on one workload and problem: results, memory, GEMM profile and summary."""
    methods = [nnderiv_method(workload, problem, backend) for backend in settings.backends]
    for ad in adapters:
        try:
            methods += peer_methods(ad, workload, problem)
        except Exception as exc:  # a peer that cannot even build its functions
            methods.append(Method(f"{ad.family} (build)", ad.family, _raise(exc)))
    repeats = repeats or settings.repeats
    check_then_time(methods, repeats=repeats, warmup=settings.warmup, max_call_s=settings.max_call_s, skip=skip)
    measure_memory(methods)
    for method in methods:
        method.result["gemm"] = gemm_profile(method, problem)
    results = [m.result for m in methods]
    entry = {"workload": workload.key, "label": workload.label, "order": workload.order, "d": problem.d}
    entry.update(n=problem.n, strategy=nnderiv_strategy(workload, problem))
    return {**entry, "methods": results, "summary": summarize(workload, results)}


def _raise(exc):
    def run():
        raise exc

    return run


# --------------------------------------------------------------------------------------------
# peak resident memory of every method, one child process each (--rss)

_PEER_KEYS = {"torch.func": "torch", "JAX": "jax", "folx": "folx"}


def rss_growth(workload: Workload, d: int, n: int, result: dict, threads: int, timeout: float = 600) -> int | None:
    """Peak RSS of a fresh process running the method of ``result`` twice, less its RSS just before
    (imports, model and inputs excluded; compilation and every buffer of the run included)."""
    spec = {"workload": vars(workload), "d": d, "n": n, "threads": threads, **result}
    code = "from nnderiv.benchmark import rss_probe; rss_probe()"
    try:
        child = subprocess.run(
            [sys.executable, "-c", code, json.dumps(spec, default=str)], capture_output=True, timeout=timeout
        )
        return int(json.loads(child.stdout.decode().strip().splitlines()[-1])["rss_growth"])
    except (subprocess.SubprocessError, OSError, ValueError, IndexError, KeyError):
        return None


def _memory_status(key: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (its peak) of this process, in bytes (Linux)."""
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith(key + ":"))


def rss_probe() -> None:
    """The child of :func:`rss_growth`: prints ``{"rss_growth": bytes}``.

    The peak is the process's ``VmHWM``, reset to the current RSS just before the runs (writing 5 to
    ``/proc/self/clear_refs``); not ``ru_maxrss``, which a child inherits from its parent across exec.
    """
    spec = json.loads(sys.argv[-1])
    workload, problem = Workload(**spec["workload"]), make_problem(spec["d"], spec["n"])
    settings = Settings(peers=(_PEER_KEYS.get(spec["family"], "none"),), threads=spec["threads"])
    with peer_environment(settings):
        if spec["family"] == "nnderiv":
            methods = [nnderiv_method(workload, problem, spec["backend"])]
        else:
            found = peer_adapters(settings.peers, settings.threads, settings.peer_device)[0]
            adapters = [ad for ad in found if ad.family == spec["family"]]
            methods = [m for ad in adapters for m in peer_methods(ad, workload, problem)]
        (method,) = [m for m in methods if m.name == spec["name"]]
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        before = _memory_status("VmRSS")
        method.run()
        method.run()
        peak = _memory_status("VmHWM")
    print(json.dumps({"rss_growth": max(0, peak - before)}))


# --------------------------------------------------------------------------------------------
# the sweep: d, K and N


def chunked_run(workload: Workload, d: int, n: int, backend: str, settings: Settings) -> dict:
    """nnderiv at ``n`` points under ``settings.memory_limit``: the largest power-of-two chunk the
    memory guard accepts (``None`` where it accepts all points: nnderiv then chunks by itself, or
    needs no chunks), its time and traced peak memory."""
    problem = make_problem(d, n)
    sizes = [None] + [2**k for k in range(int(math.log2(max(n, 1))), -1, -1)]
    with nd.memory_limit(settings.memory_limit), nd.use_backend(backend):
        for chunk in sizes:  # the guard raises before allocating; the first accepted call is the warm-up
            call = nnderiv_call(workload, problem, chunk)
            try:
                call()
                break
            except nd.MemoryLimitError:
                continue
        repeats = 1 if n > 100_000 else settings.sweep_repeats
        time.sleep(SETTLE_S)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            call()
            times.append(1e3 * (time.perf_counter() - start))
        peak = traced_peak(call)
    return {
        "workload": workload.key,
        "d": d,
        "n": n,
        "backend": backend,
        "chunk_size": chunk,
        "memory_limit": settings.memory_limit,
        "peak_bytes": peak,
        "within_limit": peak <= settings.memory_limit,
        "median_ms": float(np.median(times)),
        "min_ms": float(min(times)),
        "repeats": repeats,
        "us_per_point": 1e3 * float(min(times)) / n,
    }


def run_sweep(settings: Settings, adapters, progress) -> dict:
    """Laplacian over ``d``, pure derivatives over ``K`` (d = 8), chunked W3 and W6 over ``N`` (d = 8).

    Along ``d`` and ``K`` a method whose one call took over a quarter of ``max_call_s`` (its median,
    compilation not counted: :func:`_too_slow_to_grow`) is not run at the next size: its cost at
    least doubles per order (nested jvp: ``2^K`` terms without a compiler).
    """
    sweep, repeats = {"d": [], "K": [], "N": []}, settings.sweep_repeats
    for axis, values in (("d", settings.sweep_dims), ("K", settings.sweep_orders)):
        skip = {}
        for value in sorted(values):
            if axis == "d":
                workload, problem = WORKLOADS["W3"], make_problem(value, settings.points)
            else:
                workload = Workload(f"pure K={value}", f"pure derivatives, K={value}", "pure", value, target=0.5)
                problem = make_problem(8, settings.points)
            entry = measure_workload(workload, problem, settings, adapters, repeats, skip)
            sweep[axis].append(entry)
            progress(format_rows([entry], settings.backends, adapters))
            skip.update(_too_slow_to_grow(entry, axis, value, settings.max_call_s))
    backend = "numba" if "numba" in settings.backends else settings.backends[0]
    for key, largest in (("W3", max(settings.sweep_points)), ("W6", settings.sweep_pinn_points_max)):
        for n in (n for n in settings.sweep_points if n <= largest):
            sweep["N"].append(chunked_run(WORKLOADS[key], 8, n, backend, settings))
            progress(format_chunked([sweep["N"][-1]]))
    return sweep


def _too_slow_to_grow(entry: dict, axis: str, value: int, max_call_s: float) -> dict:
    """The methods not to run at the next size: those skipped at this one, and those whose call took
    over a quarter of ``max_call_s``, by its median where it was timed (a first call includes the
    compilation, which does not grow like the call: nnderiv's new kernels for a new ``d`` or ``K``),
    else by that first call."""

    def call_ms(r):
        return r["median_ms"] if r["status"] == "ok" else r.get("first_call_ms", 0)

    slow = [r for r in entry["methods"] if r["status"] == "skipped" or call_ms(r) > 250 * max_call_s]
    return {
        r["name"]: r.get("error") or f"not run above {axis}={value}: one call took {call_ms(r) / 1e3:.0f} s"
        for r in slow
    }


# --------------------------------------------------------------------------------------------
# machine, versions, BLAS


def _version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return "not installed"


def machine() -> dict:
    """CPU model, SIMD flags, cores, OS, load average and the date (UTC)."""
    model, flags = platform.processor() or platform.machine(), set()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "avx2": "avx2" in flags,
        "avx512f": "avx512f" in flags,
        "avx512_flags": sorted(f for f in flags if f.startswith("avx512")),
        "platform": platform.platform(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def gpu() -> dict | None:
    """The GPU the cupy backend runs on (name, memory, CUDA runtime, CuPy), ``None`` without one."""
    try:
        import cupy

        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        runtime = cupy.cuda.runtime.runtimeGetVersion()
    except Exception:  # no CuPy, no driver, no device
        return None
    name = props["name"].decode() if isinstance(props["name"], bytes) else str(props["name"])
    return {
        "name": name,
        "memory_gib": round(props["totalGlobalMem"] / 2**30, 1),
        "multiprocessors": props["multiProcessorCount"],
        "cuda_runtime": f"{runtime // 1000}.{runtime % 1000 // 10}",
        "cupy": cupy.__version__,
    }


def versions() -> dict:
    found = {"python": platform.python_version(), "nnderiv": nd.__version__}
    found.update({p: _version(p) for p in ("numpy", "numba", "llvmlite", "torch", "jax", "jaxlib", "folx")})
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        found["blas"] = f"{blas.get('name')} {blas.get('version')} ({blas.get('openblas configuration', '')})".strip()
    except Exception:  # older NumPy: no dict mode
        found["blas"] = "unknown"
    from .backends import numba_backend

    found["blas_kernels"] = numba_backend.blas_kernels()
    found["nnderiv_source"] = _source_revision()
    return found


def blas_hint(avx512f: bool, kernels: str) -> str | None:
    """A note when OpenBLAS runs kernels without AVX-512 on a CPU that has it (a CPU model newer
    than the OpenBLAS build, or ``OPENBLAS_CORETYPE`` set): its products then run at about half speed."""
    from .backends.numba_backend import AVX512_BLAS_KERNELS

    if not avx512f or kernels == "unknown" or kernels.lower() in AVX512_BLAS_KERNELS:
        return None
    return (
        f"note: OpenBLAS runs its {kernels} kernels on this AVX-512 CPU (OPENBLAS_CORETYPE="
        f"{os.environ.get('OPENBLAS_CORETYPE', 'unset')}); OPENBLAS_CORETYPE=SkylakeX, set before NumPy is "
        "imported, selects its AVX-512 ones (docs/backends.md, 'Threads')"
    )


def _source_revision() -> str:
    """The git commit of the nnderiv sources, ``+changes`` when the working tree differs from it."""
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=here, capture_output=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--", here], cwd=here, capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if commit.returncode:
        return "unknown (not a git checkout)"
    return commit.stdout.decode().strip() + (" +changes" if dirty.stdout.strip() else "")


def blas_threads() -> int:
    for key in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        if os.environ.get(key, "").isdigit():
            return int(os.environ[key])
    return os.cpu_count() or 1


def thread_settings(settings: Settings) -> dict:
    keys = ("OPENBLAS_NUM_THREADS", "OPENBLAS_CORETYPE", "OPENBLAS_THREAD_TIMEOUT", "OMP_NUM_THREADS")
    keys += ("NUMBA_NUM_THREADS", "OMP_WAIT_POLICY", "XLA_FLAGS", "NNDERIV_PIN_WORKERS")
    found = {key: os.environ.get(key, "unset") for key in keys}
    found.update(blas_threads=blas_threads(), peer_threads=settings.threads, pin_workers=parallel.PIN_WORKERS)
    with contextlib.suppress(Exception):
        import numba

        found["numba_threads"] = numba.get_num_threads()
        found["numba_threading_layer"] = numba.threading_layer()  # only known after a parallel kernel ran
    with contextlib.suppress(Exception):
        from .backends import numba_backend

        found["malloc_tuned"] = getattr(numba_backend, "MALLOC_TUNED", "n/a")
        found["gemm_block_rows"] = numba_backend._gemm_block_rows(1 << 30, 64, 64)  # per BLAS call, 64 x 64 layers
    return found


def _best_seconds(fn: Callable, runs: int) -> float:
    """The fastest of ``runs`` calls of ``fn``, after one untimed call."""
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def blas_throughput(size: int = 2048, tall_rows: int = 40960, width: int = 64) -> dict:
    """GFLOP/s of a large square float64 GEMM (the machine's BLAS) and of one tall-skinny product
    ``(tall_rows, width) x (width, width)``, the shape of nnderiv's stacked layers (10 rows x 4096),
    with BLAS's own threads and on one thread (what each of nnderiv's workers runs on)."""
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((size, size)), rng.standard_normal((size, size))
    tall, w = rng.standard_normal((tall_rows, width)), rng.standard_normal((width, width))

    def measure():
        square = 2 * size**3 / _best_seconds(lambda: a @ b, 3) / 1e9
        return square, 2 * tall_rows * width * width / _best_seconds(lambda: tall @ w, 20) / 1e9

    square, skinny = measure()
    with threadpool_limits(1, user_api="blas"):
        square_1, skinny_1 = measure()
    return {
        "square_size": size,
        "square_gflops": square,
        "tall_shape": [tall_rows, width],
        "tall_gflops": skinny,
        "square_gflops_one_thread": square_1,
        "tall_gflops_one_thread": skinny_1,
    }


def _peer_product_seconds(ad, a, b) -> float:
    """The fastest of 20 products ``a @ b`` on peer ``ad``'s arrays (compiled where it compiles)."""
    a, b, product = ad.asarray(a), ad.asarray(b), ad.compile(lambda a, b: a @ b)
    return _best_seconds(lambda: ad.ready(product(a, b)), 20)


def peer_gemm_throughput(adapters, tall_rows: int = 40960, width: int = 64) -> dict[str, float]:
    """GFLOP/s of the tall product of :func:`blas_throughput` under each peer (its own threads,
    compiled where it compiles): the matrix library a peer's stacked layers run on, next to
    OpenBLAS's figure for the same shape."""
    rng = np.random.default_rng(0)
    tall, w = rng.standard_normal((tall_rows, width)), rng.standard_normal((width, width))
    found = {}
    for ad in adapters:
        if ad.family in found or ad.family == "folx":  # folx runs on JAX's
            continue
        found[ad.family] = 2 * tall_rows * width * width / _peer_product_seconds(ad, tall, w) / 1e9
    return found


# --------------------------------------------------------------------------------------------
# the report


def _ms(value) -> str:
    return "-" if value is None else f"{value:.1f}" if value >= 100 else f"{value:.2f}"


def _cell(results: list[dict]) -> str:
    """The best median among ``results`` of one column, or why there is none."""
    timed = [r["median_ms"] for r in results if r["status"] == "ok"]
    if timed:
        return _ms(min(timed))
    statuses = {r["status"] for r in results}
    return next(
        (
            label
            for s, label in (("slow", "slow"), ("skipped", "skip"), ("mismatch", "WRONG"), ("error", "error"))
            if s in statuses
        ),
        "-",
    )


def _columns(backends, adapters) -> tuple[list[str], list[str]]:
    return [f"nnderiv {b}" for b in backends], [ad.family for ad in adapters]


def table_header(backends, adapters) -> str:
    ours, peers = _columns(backends, adapters)
    cells = " ".join(f"{b.split()[-1]:>9}" for b in ours) + " |" + " ".join(f"{p:>11}" for p in peers)
    return f"{'workload':<27} {'d':>3} {cells} | {'best/peer':>9} {'numba/peer':>10}  target (best peer)"


def format_rows(entries: list[dict], backends, adapters) -> str:
    """One line per (workload, d): median ms per nnderiv backend and per peer (its best method), ratios."""
    ours, peers = _columns(backends, adapters)
    lines = []
    for e in entries:
        s = e["summary"]
        cells = " ".join(f"{_cell([r for r in e['methods'] if r['name'] == b]):>9}" for b in ours) + " |"
        cells += " ".join(f"{_cell([r for r in e['methods'] if r['family'] == p]):>11}" for p in peers)
        ratios = " ".join(
            f"{'-' if r is None else f'{r:.2f}':>{w}}" for r, w in ((s["ratio_best"], 9), (s["ratio_numba"], 10))
        )
        verdict = {True: "met", False: "MISSED", None: "n/a"}[s["target_met"]]
        label = f"{e['workload']} {e['label']}" if e["workload"].startswith("W") else e["label"]
        best = f"  ({s['best_peer']})" if s["best_peer"] else ""
        lines.append(f"{label[:27]:<27} {e['d']:>3} {cells} | {ratios}  <={s['target']:.1f} {verdict}{best}")
    return "\n".join(lines)


def _mib(n) -> str:
    return "n/a" if n is None else f"{n / 2**20:.1f}"


def format_details(entries: list[dict]) -> str:
    """Every method of every entry: status, median/min ms, error against nnderiv, memory (MiB): its own
    measure (tracemalloc for nnderiv, XLA's buffer plan for JAX) and the child-process RSS growth."""
    lines = [
        f"{'workload':<12} {'d':>3} {'method':<50} {'status':<8} {'median':>8} {'min':>8} {'rel.err':>8} "
        f"{'peak':>7} {'RSS':>7}"
    ]
    for e in entries:
        for r in e["methods"]:
            err = "-" if r.get("rel_error") is None else f"{r['rel_error']:.0e}"
            note = f"  {r['error']}" if r.get("error") else ""
            if r["status"] == "slow":
                note = f"  one call {r['first_call_ms'] / 1e3:.1f} s (compilation included), not repeated"
            lines.append(
                f"{e['workload']:<12} {e['d']:>3} {r['name'][:50]:<50} {r['status']:<8} {_ms(r.get('median_ms')):>8} "
                f"{_ms(r.get('min_ms')):>8} {err:>8} {_mib(r.get('peak_bytes')):>7} {_mib(r.get('rss_bytes')):>7}"
                f"{note}"
            )
    return "\n".join(lines)


def blas_peak(blas: dict, gemm: dict, product: str = "square") -> float:
    """BLAS's throughput on the ``"square"`` GEMM (or the ``"tall"`` product, the shape of the
    stacked layers) to compare ``gemm`` with: on one thread where the products ran on several
    worker threads (each on one BLAS thread), else with BLAS's own threads."""
    one_thread = blas.get(f"{product}_gflops_one_thread")
    return one_thread if one_thread and gemm.get("threads", 1) > 1 else blas[f"{product}_gflops"]


def _peer_gemms(blas: dict) -> str:
    """``"; the same product under JAX: 90.1"`` (each peer's own threads), or nothing."""
    peers = blas.get("peer_tall_gflops") or {}
    return "".join(f"; under {family}: {gflops:.1f}" for family, gflops in peers.items())


def format_gemm(entries: list[dict], blas: dict) -> str:
    """Counted GEMM flops of each nnderiv backend, their throughput against the machine's BLAS."""
    peak, peak_1 = blas["square_gflops"], blas.get("square_gflops_one_thread")
    rows, width = blas["tall_shape"]
    lines = [
        f"BLAS: {peak:.1f} GFLOP/s on a {blas['square_size']}^2 float64 GEMM "
        f"({peak_1 or float('nan'):.1f} on one thread); "
        f"{blas['tall_gflops']:.1f} GFLOP/s on ({rows}, {width}) x ({width}, {width}) "
        f"({blas.get('tall_gflops_one_thread') or float('nan'):.1f} on one thread){_peer_gemms(blas)}. "
        "Target: nnderiv's GEMMs >= 50% of the square figure (of one thread's, for products on several "
        "worker threads: GF/s per thread). numba's compiled sweeps (value, Jacobian, tanh series): products "
        "timed on the layer-by-layer path, whose BLAS calls they make from compiled code (against the "
        "compiled call's time, the GEMM share can exceed 100%).",
        f"{'workload':<12} {'d':>3} {'backend':<8} {'rows':>6} {'GFLOP':>7} {'GEMM ms':>8} {'threads':>7} "
        f"{'GEMM GF/s':>9} {'of BLAS':>7} {'of tall':>7} {'overall GF/s':>12} {'GEMM share':>10}  target  "
        "strategy (nd.explain)",
    ]
    for e in entries:
        for r in e["methods"]:
            g = r.get("gemm")
            if g:
                of_blas = g["gemm_gflops"] / blas_peak(blas, g)
                met = "met" if of_blas >= 0.5 else "MISSED"
                lines.append(
                    f"{e['workload']:<12} {e['d']:>3} {r['backend']:<8} {g['rows']:>6.1f} {g['flops'] / 1e9:>7.3f} "
                    f"{g['gemm_ms']:>8.2f} {g.get('threads', 1):>7} {g['gemm_gflops']:>9.1f} {of_blas:>7.0%} "
                    f"{g['gemm_gflops'] / blas_peak(blas, g, 'tall'):>7.0%} "
                    f"{g['overall_gflops']:>12.1f} {g['gemm_share']:>10.0%}  {met:<6}  {_chosen(e.get('strategy'))}"
                )
    return "\n".join(lines)


def _chosen(explanation: str | None) -> str:
    """``'reverse'`` from ``nd.explain``'s first line ``nd.hessian: strategy 'reverse'``."""
    return explanation.split("\n", 1)[0].rsplit("strategy", 1)[-1].strip(" '") if explanation else "-"


def format_chunked(rows: list[dict]) -> str:
    return "\n".join(
        f"{r['workload']} d={r['d']} N={r['n']:>8} {r['backend']}: chunk_size={r['chunk_size'] or 'auto'}, "
        f"{_ms(r['median_ms'])} ms ({r['us_per_point']:.2f} us/point), traced peak "
        f"{r['peak_bytes'] / 2**20:.1f} MiB of a {r['memory_limit'] / 2**20:.0f} MiB limit: "
        f"{'within' if r['within_limit'] else 'OVER'}"
        for r in rows
    )


def format_report(results: dict, details: bool = True) -> str:
    """The whole report as text: machine, table, per-method details (optional), GEMMs, sweep."""
    m, v, t = results["machine"], results["versions"], results["threads"]
    settings, adapters = results["settings"], [SimpleNamespace(family=f) for f in results["peer_families"]]
    simd = "AVX-512" if m["avx512f"] else "AVX2, no AVX-512" if m["avx2"] else "no AVX2"
    parts = [
        f"{m['date']}  {m['cpu']}, {m['cores']} cores, {simd}; load average {m['load_average']}",
        *(["GPU: " + ", ".join(f"{k} {val}" for k, val in m["gpu"].items())] if m.get("gpu") else []),
        "versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "threads: " + ", ".join(f"{k}={val}" for k, val in t.items()),
        "peers: " + "; ".join(f"{k}: {val}" for k, val in results["peers"].items()),
        *filter(None, [blas_hint(m["avx512f"], v.get("blas_kernels", "unknown"))]),
        f"MLP [d, 64, 64, 64, 1] tanh float64, N = {settings['points']}, median ms of {settings['repeats']} "
        f"(back to back, after {settings['warmup']} warm-up + the checked call); peers checked against nnderiv "
        f"to {TOLERANCE:g} first. Target: numba / best peer <= 1.0 (<= 0.5 on W4, W5).",
        "",
        table_header(settings["backends"], adapters),
        format_rows(results["table"], settings["backends"], adapters),
        *(["", format_details(results["table"])] if details else []),
        "",
        format_gemm(results["table"], results["blas"]),
    ]
    sweep = results.get("sweep")
    if sweep:
        parts += ["", f"sweep (median of {settings['sweep_repeats']}): Laplacian over d, pure derivatives over K (d=8)"]
        parts += [
            table_header(settings["backends"], adapters),
            format_rows(sweep["d"] + sweep["K"], settings["backends"], adapters),
        ]
        parts += ["", format_details(sweep["d"] + sweep["K"])] if details else []
        parts += ["", "chunked runs over N:", format_chunked(sweep["N"])]
    return "\n".join(parts)


def _md_rows(entries: list[dict], backends, families) -> list[str]:
    rows = []
    for e in entries:
        s, cells = e["summary"], [_cell([r for r in e["methods"] if r["name"] == f"nnderiv {b}"]) for b in backends]
        cells += [_cell([r for r in e["methods"] if r["family"] == f]) for f in families]
        ratio = "-" if s["ratio_numba"] is None else f"{s['ratio_numba']:.2f}"
        verdict = {True: "met", False: "**missed**", None: "n/a"}[s["target_met"]]
        label = f"{e['workload']} {e['label']}" if e["workload"].startswith("W") else e["label"]
        rows.append(
            f"| {label} | {e['d']} | {' | '.join(cells)} | {ratio} | <= {s['target']} {verdict} | {s['best_peer']} |"
        )
    return rows


def format_markdown(results: dict) -> str:
    """The tables of ``docs/performance.md``: times, GEMM throughput, sweep, chunked runs."""
    backends, families = results["settings"]["backends"], results["peer_families"]
    head = ["workload", "d", *backends, *families, "numba / best peer", "target", "best peer"]
    table = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    parts = ["\n".join(table + _md_rows(results["table"], backends, families))]
    gemm = [
        "| workload | d | strategy | rows | threads | GEMM GFLOP/s | of BLAS | of BLAS, tall | overall GFLOP/s "
        "| time in GEMMs |",
        "|" + "---|" * 10,
    ]
    for e in results["table"]:
        for r in e["methods"]:
            g = r.get("gemm")
            if g and r["backend"] == "numba":
                of_blas = g["gemm_gflops"] / blas_peak(results["blas"], g)
                gemm.append(
                    f"| {e['workload']} | {e['d']} | {_chosen(e.get('strategy'))} | {g['rows']:.0f} | "
                    f"{g.get('threads', 1)} | {g['gemm_gflops']:.1f} | {of_blas:.0%} | "
                    f"{g['gemm_gflops'] / blas_peak(results['blas'], g, 'tall'):.0%}"
                    f" | {g['overall_gflops']:.1f} | {g['gemm_share']:.0%} |"
                )
    parts.append("\n".join(gemm))
    sweep = results.get("sweep")
    if sweep:
        parts.append("\n".join(table + _md_rows(sweep["d"] + sweep["K"], backends, families)))
        chunked = ["| workload | d | N | chunk_size | ms | us / point | traced peak MiB | limit MiB | within |"]
        chunked.append("|" + "---|" * 9)
        for r in sweep["N"]:
            chunked.append(
                f"| {r['workload']} | {r['d']} | {r['n']} | {r['chunk_size'] or 'auto'} | {_ms(r['median_ms'])} | "
                f"{r['us_per_point']:.2f} | {r['peak_bytes'] / 2**20:.1f} | {r['memory_limit'] / 2**20:.0f} | "
                f"{'yes' if r['within_limit'] else '**no**'} |"
            )
        parts.append("\n".join(chunked))
    return "\n\n".join(parts)


# --------------------------------------------------------------------------------------------
# the run


def default_backends() -> tuple[str, ...]:
    """numpy and numba, and cupy where it runs (a GPU and CuPy)."""
    from .backends import load

    try:
        load("cupy")
    except Exception:  # BackendError, or a broken CUDA install
        return ("numpy", "numba")
    return ("numpy", "numba", "cupy")


@contextlib.contextmanager
def peer_environment(settings: Settings):
    """JAX in float64 for the block; torch's thread count restored after it; the peers' library
    deprecation warnings silenced (they would otherwise count as a peer's error under -W error)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        if {"jax", "folx"} & set(settings.peers):
            with contextlib.suppress(ImportError):
                import jax

                enable_x64 = (
                    jax.enable_x64
                    if hasattr(jax, "enable_x64")
                    else importlib.import_module("jax.experimental").enable_x64
                )
                stack.enter_context(enable_x64(True))
        if "torch" in settings.peers:
            with contextlib.suppress(ImportError):
                import torch

                stack.callback(torch.set_num_threads, torch.get_num_threads())
        yield


def run_benchmark(settings: Settings | None = None, progress: Callable = print) -> dict:
    """Run the benchmark described by ``settings``; returns every result (what the JSON holds)."""
    settings = settings or Settings()
    # Before torch loads its OpenMP runtime, which reads this once: the numba backend sets the same
    # default when it loads, too late if torch came first, and an OpenMP pool spinning beside
    # OpenBLAS's threads makes the numba backend ~10x slower on 2 cores (docs/performance.md).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    settings.backends = tuple(settings.backends) or default_backends()
    settings.threads = settings.threads or blas_threads()
    with peer_environment(settings):
        adapters, notes = peer_adapters(settings.peers, settings.threads, settings.peer_device)
        results = {
            "machine": {**machine(), "gpu": gpu() if "cupy" in settings.backends else None},
            "versions": versions(),
            "peers": notes,
            "blas": blas_throughput(settings.blas_size),
        }
        results["blas"]["peer_tall_gflops"] = peer_gemm_throughput(adapters)
        results.update(settings=vars(settings).copy(), peer_families=[ad.family for ad in adapters])
        progress(f"{results['machine']['cpu']}; peers: {notes}")
        progress(table_header(settings.backends, adapters))
        table = []
        for d in settings.dims:
            problem = make_problem(d, settings.points)
            for key in settings.workloads:
                table.append(measure_workload(WORKLOADS[key], problem, settings, adapters))
                for result in table[-1]["methods"] if settings.rss else []:
                    if result["status"] in ("ok", "slow"):
                        who = {k: result[k] for k in ("name", "family", "backend")}
                        result["rss_bytes"] = rss_growth(WORKLOADS[key], d, settings.points, who, settings.threads)
                progress(format_rows(table[-1:], settings.backends, adapters))
        results["table"] = table
        results["sweep"] = run_sweep(settings, adapters, progress) if settings.sweep else None
    results["threads"] = thread_settings(settings)  # after the runs: numba's threading layer is known
    results["machine"]["load_average_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return results


def add_arguments(parser: argparse.ArgumentParser, short: bool = False) -> None:
    """The options of ``benchmarks/bench.py`` and ``nnderiv bench`` (``short``: the quick defaults)."""
    quick = Settings(points=2048, repeats=3, max_call_s=5.0, sweep=False, rss=False) if short else Settings()
    parser.add_argument("--dims", type=int, nargs="+", default=list(quick.dims), help="input dimensions d")
    parser.add_argument("--points", type=int, default=quick.points, help="N, points per batch")
    parser.add_argument("--repeats", type=int, default=quick.repeats, help="timed runs per method")
    parser.add_argument("--warmup", type=int, default=quick.warmup, help="untimed runs after the checked one")
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS), metavar="W")
    parser.add_argument("--backends", nargs="+", default=None, help="nnderiv backends (default numpy numba [cupy])")
    parser.add_argument("--peers", nargs="+", default=list(PEERS), choices=[*PEERS, "none"], help="none: no peers")
    parser.add_argument(
        "--peer-device", choices=["cpu", "gpu"], default="cpu", help="where torch and JAX run (gpu: beside cupy)"
    )
    parser.add_argument("--max-call-s", type=float, default=quick.max_call_s, help="slower methods run once only")
    json_default = None if short else "bench-results.json"
    parser.add_argument("--json", default=json_default, metavar="PATH", help="write every result to this JSON file")
    parser.add_argument(
        "--tiny", action="store_true", help="smoke test: d=2, N=64, 1 repeat, no sweep (times mean nothing)"
    )
    parser.add_argument("--sweep", action=argparse.BooleanOptionalAction, default=quick.sweep)
    parser.add_argument("--sweep-dims", type=int, nargs="+", default=list(quick.sweep_dims))
    parser.add_argument("--sweep-orders", type=int, nargs="+", default=list(quick.sweep_orders))
    parser.add_argument("--sweep-points", type=int, nargs="+", default=list(quick.sweep_points))
    parser.add_argument("--sweep-repeats", type=int, default=quick.sweep_repeats)
    parser.add_argument("--memory-limit", type=float, default=quick.memory_limit / 2**20, help="MiB, chunked runs")
    parser.add_argument("--details", action=argparse.BooleanOptionalAction, default=True, help="per-method lines")
    parser.add_argument(
        "--rss", action=argparse.BooleanOptionalAction, default=quick.rss, help="peak RSS per method (child processes)"
    )
    parser.add_argument("--markdown", action="store_true", help="also print the tables of docs/performance.md")
    parser.add_argument("--from-json", metavar="PATH", help="report an earlier run's JSON instead of measuring")


def settings_from(args: argparse.Namespace) -> Settings:
    tiny = {"dims": [2], "points": 64, "repeats": 1, "warmup": 0, "sweep": False} if args.tiny else {}
    vars(args).update(tiny)
    return Settings(
        blas_size=256 if tiny else Settings.blas_size,
        dims=tuple(args.dims),
        points=args.points,
        repeats=args.repeats,
        warmup=args.warmup,
        workloads=tuple(args.workloads),
        backends=tuple(args.backends or ()),
        peers=tuple(p for p in args.peers if p != "none"),
        peer_device=args.peer_device,
        max_call_s=args.max_call_s,
        sweep=args.sweep,
        sweep_dims=tuple(args.sweep_dims),
        sweep_orders=tuple(args.sweep_orders),
        sweep_points=tuple(args.sweep_points),
        sweep_pinn_points_max=min(Settings.sweep_pinn_points_max, max(args.sweep_points)),
        sweep_repeats=args.sweep_repeats,
        memory_limit=int(args.memory_limit * 2**20),
        rss=args.rss and not tiny,
    )


def main(argv=None, short: bool = False) -> int:
    """Run from parsed command-line options: print the report, write the JSON."""
    parser = argparse.ArgumentParser(prog="nnderiv bench" if short else "bench.py", description=__doc__.split("\n")[0])
    add_arguments(parser, short)
    return run_from_args(parser.parse_args(argv))


def run_from_args(args: argparse.Namespace) -> int:
    if args.from_json:  # the report of an earlier run, nothing measured
        with open(args.from_json) as fh:
            results = json.load(fh)
    else:
        try:
            results = run_benchmark(settings_from(args), progress=lambda line: print(line, file=sys.stderr, flush=True))
        except nd.BackendError as exc:  # a backend or peer device that is not there
            print(f"bench: {exc}", file=sys.stderr)
            return 2
    print("\n" + format_report(results, args.details))
    if args.markdown:
        print("\n" + format_markdown(results))
    if args.json and not args.from_json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1, default=str)
        print(f"\nresults written to {args.json}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
