"""Smoke tests of the benchmark (nnderiv/benchmark.py): its checking logic, its JSON, ``nnderiv bench``.

Tiny problems, one repeat, no sweep; no assertion on any time (timings belong to the benchmark,
never to the tests). Peers are used only where installed.
"""

import importlib.util
import json

import numpy as np
import pytest

import nnderiv as nd
from nnderiv import backends
from nnderiv import benchmark as bench
from nnderiv.cli import main as cli_main

TINY = ["--tiny", "--backends", "numpy"]


@pytest.fixture(scope="module")
def problem():
    return bench.make_problem(d=2, n=64)


def fake_peer(name, fn):
    return bench.Method(name, "fake peer", fn, bench.flatten)


def test_a_wrong_or_failing_peer_is_reported_and_not_timed(problem):
    workload = bench.WORKLOADS["W3"]
    exact = bench.nnderiv_call(workload, problem)()

    def broken():
        raise RuntimeError("no Laplacian today")

    methods = [
        bench.nnderiv_method(workload, problem, "numpy"),
        fake_peer("right", lambda: exact.copy()),
        fake_peer("wrong", lambda: exact * (1 + 1e-8)),  # 1e-8 relative: over the 1e-10 tolerance
        fake_peer("wrong shape", lambda: exact[:-1]),
        fake_peer("broken", broken),
    ]
    bench.check_then_time(methods, repeats=1, warmup=0, max_call_s=60.0)
    status = {m.name: m.result["status"] for m in methods}
    assert status == {
        "nnderiv numpy": "ok",
        "right": "ok",
        "wrong": "mismatch",
        "wrong shape": "mismatch",
        "broken": "error",
    }
    results = {m.name: m.result for m in methods}
    assert "median_ms" in results["right"] and "median_ms" not in results["wrong"]
    assert results["wrong"]["rel_error"] == pytest.approx(1e-8, rel=1e-3)
    assert "no Laplacian today" in results["broken"]["error"]
    summary = bench.summarize(workload, [m.result for m in methods])
    assert summary["best_peer"] == "right"  # the wrong one never competes


def test_the_sweep_stops_a_method_by_its_call_time_not_its_compilation():
    """A method whose first call compiled for seconds but whose calls are quick runs at the next
    ``d`` or ``K`` (nnderiv's new kernels, JAX's jit); one whose calls are slow, or that was timed by
    its first call only, or skipped already, does not."""
    methods = [
        {"name": "compiled", "status": "ok", "first_call_ms": 6000.0, "median_ms": 60.0},
        {"name": "slow calls", "status": "ok", "first_call_ms": 7000.0, "median_ms": 6000.0},
        {"name": "one call", "status": "slow", "first_call_ms": 30000.0},
        {"name": "gone", "status": "skipped", "error": "not run above K=4: one call took 9 s"},
        {"name": "wrong", "status": "mismatch", "first_call_ms": 10.0},
    ]
    skip = bench._too_slow_to_grow({"methods": methods}, "K", 5, max_call_s=20.0)
    assert sorted(skip) == ["gone", "one call", "slow calls"]
    assert skip["slow calls"] == "not run above K=5: one call took 6 s"
    assert skip["gone"] == "not run above K=4: one call took 9 s"


def test_relative_error_is_scaled_by_the_reference():
    reference = np.array([[1e3, -2e3], [0.0, 5.0]])
    assert bench.relative_error(reference + 2e-7, reference) == pytest.approx(1e-10)
    assert bench.relative_error(reference, reference[:1]) == np.inf


def test_gemm_count_of_the_value_is_one_stacked_row(problem):
    method = bench.nnderiv_method(bench.WORKLOADS["W0"], problem, "numpy")
    bench.check_then_time([method], repeats=1, warmup=0, max_call_s=60.0)
    gemm = bench.gemm_profile(method, problem, runs=1)
    assert gemm["flops"] == 2 * 64 * (2 * 64 + 64 * 64 * 2 + 64 * 1)  # rows x N x n_in x n_out x 2
    assert gemm["rows"] == pytest.approx(1.0)
    assert backends.load("numpy").affine.__name__ == "affine"  # the counting wrapper is removed


def test_gemm_count_sees_the_products_of_the_compiled_sweeps(problem):
    """numba's value and Jacobian call BLAS from compiled code: counted on the layer-by-layer path
    (the same calls), which is switched back on for the count only."""
    numba_backend = backends.load("numba")
    for key, rows in (("W0", 1.0), ("W1", 2.0)):
        method = bench.nnderiv_method(bench.WORKLOADS[key], problem, "numba")
        bench.check_then_time([method], repeats=1, warmup=0, max_call_s=60.0)
        assert bench.gemm_profile(method, problem, runs=1)["rows"] == pytest.approx(rows)
        assert numba_backend.COMPILED_SWEEPS is True


def test_gemm_time_is_the_threads_cpu_time_not_its_waits(monkeypatch):
    """A product that waits (for the GIL, say) is not multiplying: only CPU time counts."""
    import time

    module = backends.load("numpy")
    waiting = lambda a, b: (time.sleep(0.05), a @ b)[1]  # noqa: E731
    monkeypatch.setattr(module, "affine", waiting)
    with bench.counting_gemms("numpy") as tally:
        module.affine(np.ones((4, 3)), np.ones((3, 2)))
    assert tally["calls"] == 1 and tally["flops"] == 2 * 12 * 2 and tally["seconds"] < 0.02


@pytest.mark.parametrize("key", ["W3", "W6"])
def test_chunked_run_picks_the_largest_chunk_the_memory_guard_accepts(key):
    limit, n = 2**18, 1024
    settings = bench.Settings(memory_limit=limit, sweep_repeats=1)
    row = bench.chunked_run(bench.WORKLOADS[key], d=2, n=n, backend="numpy", settings=settings)
    assert row["memory_limit"] == limit and row["n"] == n
    if row["chunk_size"] is not None:  # None: nnderiv accepted all points and chunks them itself
        problem = bench.make_problem(2, n)
        with nd.memory_limit(limit), pytest.raises(nd.MemoryLimitError):
            bench.nnderiv_call(bench.WORKLOADS[key], problem, chunk_size=2 * row["chunk_size"])()


def test_json_is_written_and_parses(tmp_path):
    path = tmp_path / "bench-out.json"
    assert bench.main([*TINY, "--workloads", "W0", "W6", "--peers", "none", "--json", str(path)]) == 0
    results = json.loads(path.read_text())
    assert {"machine", "versions", "threads", "blas", "table", "settings"} <= set(results)
    assert [(e["workload"], e["d"], e["n"]) for e in results["table"]] == [("W0", 2, 64), ("W6", 2, 64)]
    assert all(m["status"] == "ok" for e in results["table"] for m in e["methods"])
    assert results["machine"]["avx512f"] in (True, False)


def test_blas_without_avx512_kernels_on_an_avx512_cpu_is_pointed_out():
    """The report says when OpenBLAS runs older kernels than the CPU allows (half-speed products)."""
    assert "OPENBLAS_CORETYPE=SkylakeX" in bench.blas_hint(True, "Haswell")
    assert bench.blas_hint(True, "SkylakeX") is None and bench.blas_hint(True, "SapphireRapids") is None
    assert bench.blas_hint(False, "Haswell") is None and bench.blas_hint(True, "unknown") is None
    assert bench.versions()["blas_kernels"]  # threadpoolctl's name for what runs here, or "unknown"


def test_the_peers_matrix_library_is_timed_on_the_stacked_layers_shape():
    """A peer's own product on the tall shape (here NumPy's, behind a peer's adapter), reported
    beside BLAS's; the GEMM table gives each backend's throughput against both."""
    from types import SimpleNamespace

    calls = []
    peer = SimpleNamespace(family="fake", asarray=np.asarray, compile=lambda fn: fn, ready=calls.append)
    found = bench.peer_gemm_throughput([peer, SimpleNamespace(family="folx")], tall_rows=256, width=8)
    assert list(found) == ["fake"] and found["fake"] > 0 and len(calls) == 21
    blas = {"square_size": 8, "square_gflops": 10.0, "square_gflops_one_thread": 5.0, "tall_shape": [256, 8],
            "tall_gflops": 4.0, "tall_gflops_one_thread": 2.0, "peer_tall_gflops": {"fake": 8.0}}  # fmt: skip
    gemm = {"rows": 1.0, "flops": 1e9, "gemm_ms": 1.0, "threads": 2, "gemm_gflops": 1.0, "overall_gflops": 1.0,
            "gemm_share": 0.5}  # fmt: skip
    entry = {"workload": "W0", "d": 2, "methods": [{"backend": "numba", "gemm": gemm}], "strategy": None}
    report = bench.format_gemm([entry], blas)
    assert "(256, 8) x (8, 8) (2.0 on one thread); under fake: 8.0." in report
    assert report.splitlines()[-1].split()[8:10] == ["20%", "50%"]  # of one thread's square, of its tall


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax not installed")
def test_peers_agree_with_nnderiv_on_the_laplacian(tmp_path):
    path = tmp_path / "bench-peers.json"
    assert bench.main([*TINY, "--workloads", "W3", "--json", str(path)]) == 0
    (entry,) = json.loads(path.read_text())["table"]
    peers = [m for m in entry["methods"] if m["family"] != "nnderiv"]
    assert peers and all(m["status"] == "ok" and m["rel_error"] <= bench.TOLERANCE for m in peers)


def test_nnderiv_bench_runs(tmp_path, capsys):
    path = tmp_path / "bench-cli.json"
    assert cli_main(["bench", *TINY, "--workloads", "W1", "--peers", "none", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "W1 Jacobian" in out and "GFLOP/s" in out
    assert json.loads(path.read_text())["settings"]["points"] == 64


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="torch not installed")
def test_peers_asked_onto_a_gpu_that_is_not_there_say_so(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU for torch")
    assert bench.main([*TINY, "--workloads", "W0", "--peers", "torch", "--peer-device", "gpu"]) == 2
    assert "--peer-device gpu: torch sees no CUDA device" in capsys.readouterr().err
    assert importlib.util.find_spec("cupy") is not None or bench.gpu() is None  # no GPU to report


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax not installed")
def test_jax_peer_arrays_are_put_on_the_device_asked_for():
    import jax

    ad = bench.jax_adapter(threads=1, device="cpu")
    x = ad.asarray(np.ones((3, 2)))
    assert x.devices() == {jax.devices("cpu")[0]} and ad.device == str(jax.devices("cpu")[0])
    assert float(ad.ready(ad.compile(lambda a: a.sum())(x))) == 6.0


def _profile_script():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "profile_kernels.py"
    spec = importlib.util.spec_from_file_location("profile_kernels", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_kernel_profile_counts_every_kernel_call_and_puts_them_back(capsys):
    from nnderiv import kernels

    script, before = _profile_script(), {name: getattr(kernels, name) for name in ("affine", "compose_vjp")}
    previous = nd.get_backend()
    try:
        argv = ["--backend", "numpy", "--workloads", "W0", "W6", "--dims", "2", "--points", "64", "--repeats", "1"]
        assert script.main(argv) == 0
    finally:
        nd.set_backend(previous)
    out = capsys.readouterr().out
    w0, w6 = out.split("W6 d=2")
    assert "W0 d=2 N=64 numpy" in w0 and " 4 calls" in w0.split("affine")[1].splitlines()[0]  # one per layer
    assert "affine_weight_grad" in w6 and "compose_vjp" in w6 and "outside them" in w6
    assert {name: getattr(kernels, name) for name in before} == before


@pytest.mark.skipif(importlib.util.find_spec("cupy") is not None, reason="CuPy is installed here")
def test_the_kernel_profile_says_when_the_backend_cannot_run(capsys):
    assert _profile_script().main(["--backend", "cupy"]) == 2
    assert "the cupy backend needs CuPy" in capsys.readouterr().err
