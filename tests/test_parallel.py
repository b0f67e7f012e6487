"""Chunks of points on worker threads (:mod:`nnderiv.parallel`).

Oracle: the same calls with one worker (Numba on one thread), and the NumPy reference backend.
Chunking changes only which points share a matrix product, so values agree to rounding (the
products of one point's row do not depend on the other rows: measured bit for bit); sums over
chunks (parameter gradients) are added in another grouping, so they agree to ~1e-15 relative,
and we allow 1e-12. Results must not depend on the scheduling: two runs are bitwise equal.
"""

from __future__ import annotations

import os
import threading
import time
from unittest.mock import patch

import numba
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from threadpoolctl import threadpool_info

import nnderiv as nd
from nnderiv import engine, parallel

RTOL = 1e-12
N = 3000  # points: several chunks for every mode below, for two workers


@pytest.fixture
def two_workers(monkeypatch):
    """Numba (and so the pool) on two threads, whatever the machine has; chunks of this test's
    small network are worth a worker from a few hundred points on."""
    monkeypatch.setattr(engine, "PARALLEL_MIN_STACK_BYTES", 2**14)
    before = numba.get_num_threads()
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() < 2:
        pytest.skip("Numba has a single thread here (NUMBA_NUM_THREADS=1)")
    yield
    numba.set_num_threads(before)


@pytest.fixture
def one_worker():
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    yield
    numba.set_num_threads(before)


def _close(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.shape == want.shape, what
    scale = max(float(np.abs(want).max(initial=0.0)), 1e-300)
    error = float(np.abs(got - want).max(initial=0.0)) / scale
    assert error <= RTOL, f"{what}: relative error {error:.3g}"


def _model():
    return nd.MLP([3, 24, 24, 2], activation="tanh", seed=1)


def _calls(model, x):
    """Public calls that chunk their points, with their pullbacks where there is one."""
    rng = np.random.default_rng(3)
    v = rng.normal(size=3)
    yield "value", lambda: nd.value(model, x)
    yield "jacobian (reverse)", lambda: nd.jacobian(model, x, strategy="reverse")
    yield "hessian (forward)", lambda: nd.hessian(model, x, strategy="forward")
    yield "hessian (reverse)", lambda: nd.hessian(model, x, strategy="reverse")
    yield "laplacian", lambda: nd.laplacian(model, x)
    yield "pure derivatives", lambda: nd.pure_derivatives(model, x, order=3)
    yield "hvp", lambda: nd.hvp(model, x, v)
    for name, fn, kwargs in [("laplacian", nd.laplacian, {}), ("taylor", nd.taylor, {"directions": [v], "order": 3})]:
        for chunk_size in (None, 700):

            def pulled(fn=fn, kwargs=kwargs, chunk_size=chunk_size):
                out, pullback = nd.vjp(fn, model, x, wrt="both", chunk_size=chunk_size, **kwargs)
                grads, x_bar = pullback(np.cos(out))
                return [out, x_bar, *grads.values()]

            yield f"vjp {name}, chunk_size={chunk_size}", pulled
    loss = nd.OperatorMSE(nd.laplacian, "f") + 0.5 * nd.OperatorMSE(nd.value, None)
    batch = {"x": x, "f": np.ones((len(x), 2))}
    yield "OperatorMSE", lambda: (lambda value, grads: [value, *grads.values()])(*loss.value_and_grad(model, batch))


def _results(call):
    result = call()
    return [np.asarray(r) for r in result] if isinstance(result, list) else [np.asarray(result)]


def test_every_call_runs_several_chunks_on_two_workers(two_workers, monkeypatch):
    model, x = _model(), np.random.default_rng(0).uniform(-1, 1, (N, 3))
    seen = []
    original = parallel._pool

    def counting_pool(n_workers):
        seen.append(n_workers)
        return original(n_workers)

    monkeypatch.setattr(parallel, "_pool", counting_pool)
    for name, call in _calls(model, x):
        seen.clear()
        call()
        assert seen and set(seen) == {1}, f"{name} did not run on two workers (the caller and one helper)"


@pytest.mark.parametrize("oracle", ["one worker", "numpy reference"])
def test_two_workers_agree_with_the_serial_oracles(two_workers, oracle):
    model, x = _model(), np.random.default_rng(0).uniform(-1, 1, (N, 3))
    parallel_results = {name: _results(call) for name, call in _calls(model, x)}
    numba.set_num_threads(1)  # one worker (the numpy backend has one anyway)
    with nd.use_backend("numba" if oracle == "one worker" else "numpy"):
        for name, call in _calls(model, x):
            for got, want in zip(parallel_results[name], _results(call)):
                _close(got, want, f"{name} against {oracle}")


def test_results_do_not_depend_on_the_scheduling(two_workers):
    model, x = _model(), np.random.default_rng(2).uniform(-1, 1, (N, 3))
    first = {name: _results(call) for name, call in _calls(model, x)}
    for name, call in _calls(model, x):
        for got, want in zip(_results(call), first[name]):
            np.testing.assert_array_equal(got, want, err_msg=name)


def test_map_chunks_keeps_the_order_and_bounds_the_chunks_in_flight(two_workers):
    in_flight, most = [0], [0]
    lock = threading.Lock()

    def work(item):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.002 * (item % 3))  # out-of-order finishing
        with lock:
            in_flight[0] -= 1
        return item * item

    assert list(parallel.map_chunks(work, range(20))) == [i * i for i in range(20)]
    assert most[0] <= 2


def _blas_threads() -> list[int]:
    return [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]


def test_blas_runs_on_one_thread_inside_and_is_restored_after(two_workers):
    before = _blas_threads()
    inside = list(parallel.map_chunks(lambda _: _blas_threads(), [0, 1]))
    assert all(n == 1 for threads in inside for n in threads)
    assert _blas_threads() == before


def test_an_error_in_a_worker_reaches_the_caller_and_restores_blas(two_workers):
    """... and the caller's CPUs (pinned while the workers ran, where the workers are as many)."""
    before, cpus = _blas_threads(), os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None

    def fail_on_three(item):
        if item == 3:
            raise ValueError("chunk 3 failed")
        return item

    with pytest.raises(ValueError, match="chunk 3 failed"):
        list(parallel.map_chunks(fail_on_three, range(8)))
    assert _blas_threads() == before
    assert cpus is None or os.sched_getaffinity(0) == cpus
    assert list(parallel.map_chunks(lambda i: i, range(4))) == [0, 1, 2, 3]  # the pool still works


def test_an_abandoned_iteration_stops_the_helpers_and_restores_blas(two_workers):
    before = _blas_threads()
    for item in parallel.map_chunks(lambda i: i, range(50)):
        if item == 3:
            break
    import gc

    gc.collect()  # closes the abandoned generator: its cleanup waits for the helpers
    assert _blas_threads() == before
    assert list(parallel.map_chunks(lambda i: -i, range(5))) == [0, -1, -2, -3, -4]


def test_the_caller_runs_parts_as_a_worker_and_is_restored(two_workers):
    seen = list(
        parallel.map_chunks(lambda _: (threading.get_ident(), numba.get_num_threads(), parallel.workers()), range(6))
    )
    assert all(threads == 1 and inner == 1 for _, threads, inner in seen)
    assert numba.get_num_threads() == 2 and parallel.workers() == 2


def test_calls_inside_a_worker_do_not_nest(two_workers):
    model, x = _model(), np.random.default_rng(4).uniform(-1, 1, (N, 3))
    inner_workers = list(parallel.map_chunks(lambda _: parallel.workers(), [0, 1]))
    assert inner_workers == [1, 1]
    inside = list(parallel.map_chunks(lambda part: nd.laplacian(model, x[part]), [slice(0, N // 2), slice(N // 2, N)]))
    _close(np.concatenate(inside), nd.laplacian(model, x), "laplacian inside workers")


def test_small_batches_stay_on_the_calling_thread(two_workers, monkeypatch):
    monkeypatch.setattr(engine, "PARALLEL_MIN_STACK_BYTES", 2**20)
    model = _model()  # 24 wide: 2^20 bytes of one row are 5461 points
    assert engine.spread_chunk_size(model, 1, 5000) == 5000  # too little work to split
    assert engine.spread_chunk_size(model, 1, 20000) == 10000  # one share per worker
    assert engine.spread_chunk_size(model, 4, 5000) == 2500  # more rows: more work per point


@given(n_points=st.integers(1, 10**6), size=st.integers(1, 10**6), n_workers=st.integers(1, 8))
def test_balanced_chunks_give_every_worker_as_many(n_points, size, n_workers):
    with patch.object(engine, "workers", lambda: n_workers):
        balanced = engine.balanced_chunk_size(n_points, size)
    before, after = engine.chunks(n_points, size), engine.chunks(n_points, balanced)
    assert balanced <= size and len(after) >= len(before)
    assert sum(part.stop - part.start for part in after) == n_points
    if len(before) > 1 and n_points > len(after) * (len(after) - 1):  # else chunks of 1-2 points
        assert len(after) % n_workers == 0 and len(after) < len(before) + n_workers
        assert max(p.stop - p.start for p in after) - min(p.stop - p.start for p in after) < len(after)


def test_default_chunks_are_balanced_over_the_workers(two_workers):
    from nnderiv.modes.full import FullMode

    model, mode = _model(), FullMode(3, 2)  # 10 rows: chunks of 2^19 * 5 / (10 * 24 * 8) = 1365 points
    for n_points in (1366, 4096, 5000, 20_001):
        parts = engine.chunks(n_points, engine.forward_chunk_size(model, mode, n_points, None))
        sizes = [part.stop - part.start for part in parts]
        assert len(parts) % 2 == 0 and max(sizes) - min(sizes) < len(parts), (n_points, sizes)
        assert max(sizes) <= engine.cache_chunk_size(model, mode.n_rows)


def test_operator_loss_chunks_are_balanced_over_the_workers(two_workers, monkeypatch):
    model, x = _model(), np.random.default_rng(8).uniform(-1, 1, (N, 3))
    monkeypatch.setattr(engine, "pullback_chunk_size", lambda model, mode: 700)  # 5 chunks, the last of 200
    recorded, chunks = [], engine.chunks
    monkeypatch.setattr(engine, "chunks", lambda n, size: recorded.append(chunks(n, size)) or recorded[-1])
    nd.OperatorMSE(nd.laplacian, "f").value_and_grad(model, {"x": x, "f": np.ones((N, 2))})
    sizes = [part.stop - part.start for part in recorded[0]]
    assert len(sizes) == 6 and max(sizes) - min(sizes) <= 1 and max(sizes) <= 700


def test_one_worker_never_starts_the_pool(one_worker, monkeypatch):
    monkeypatch.setattr(parallel, "_pool", lambda n: pytest.fail("the pool was started with one worker"))
    model, x = _model(), np.random.default_rng(5).uniform(-1, 1, (N, 3))
    for _, call in _calls(model, x):
        call()


def test_the_numpy_reference_stays_serial(monkeypatch):
    monkeypatch.setattr(parallel, "_pool", lambda n: pytest.fail("the numpy backend started the pool"))
    model, x = _model(), np.random.default_rng(6).uniform(-1, 1, (N, 3))
    with nd.use_backend("numpy"):
        assert parallel.workers() == 1
        nd.laplacian(model, x)


def test_the_memory_guard_counts_one_chunk_per_worker(two_workers):
    model, x = _model(), np.random.default_rng(7).uniform(-1, 1, (N, 3))
    mode = nd.modes.full.FullMode(3, 2, for_vjp=True)
    per_point = engine.bytes_per_point(model, mode)
    kept = engine.kept_bytes_per_point(model, mode) * N + engine._workspace(model, mode)
    # room for one chunk of 1000 points, not for two at once
    with nd.memory_limit(int(kept + 1.5 * 1000 * per_point)):
        with pytest.raises(nd.MemoryLimitError, match="chunk_size=1000"):
            nd.vjp(nd.hessian, model, x, chunk_size=1000)
        numba.set_num_threads(1)
        nd.vjp(nd.hessian, model, x, chunk_size=1000)  # one worker: one chunk at a time fits


# ---- where the workers run (Linux: each on a CPU of its own, the caller's affinity restored) ----


@pytest.fixture
def two_cpus(two_workers):
    """The test's thread allowed on two CPUs (as many as the workers), and back after."""
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs Linux and two CPUs")
    before = os.sched_getaffinity(0)
    cpus = set(sorted(before)[:2])
    os.sched_setaffinity(0, cpus)
    yield sorted(cpus)
    os.sched_setaffinity(0, before)


def _where(parts):
    """``{thread: affinity}`` of the threads that ran ``parts`` (each part waits a little, so both
    workers take some)."""
    seen = {}

    def record(part):
        time.sleep(0.002)
        seen.setdefault(threading.get_ident(), set()).add(frozenset(os.sched_getaffinity(0)))
        return part

    assert list(parallel.map_chunks(record, parts)) == list(parts)
    return seen


def test_workers_are_pinned_one_per_cpu_and_the_caller_restored(two_cpus, monkeypatch):
    monkeypatch.setattr(parallel, "PIN_WORKERS", True)
    seen = _where(range(8))
    caller = threading.get_ident()
    assert seen.pop(caller) == {frozenset({two_cpus[0]})}
    assert len(seen) == 1 and next(iter(seen.values())) == {frozenset({two_cpus[1]})}
    assert os.sched_getaffinity(0) == set(two_cpus)


def test_pinning_off_leaves_every_worker_on_every_cpu(two_cpus, monkeypatch):
    monkeypatch.setattr(parallel, "PIN_WORKERS", True)
    _where(range(4))  # the helper pinned by a call before...
    monkeypatch.setattr(parallel, "PIN_WORKERS", False)
    seen = _where(range(8))  # ... is given every CPU again
    assert all(masks == {frozenset(two_cpus)} for masks in seen.values())


def test_fewer_workers_than_cpus_pins_nothing(two_workers):
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 3:
        pytest.skip("needs Linux and three CPUs")
    allowed = frozenset(os.sched_getaffinity(0))
    assert all(masks == {allowed} for masks in _where(range(6)).values())


def test_a_concurrent_call_leaves_its_caller_unpinned(two_cpus, monkeypatch):
    monkeypatch.setattr(parallel, "PIN_WORKERS", True)
    seen, go = {}, threading.Event()

    def second_caller():  # a thread of the user's, started before the first call
        go.wait(10)
        with parallel._placed(2) as helper_masks:
            seen.update(caller=os.sched_getaffinity(0), helpers=helper_masks)

    thread = threading.Thread(target=second_caller)
    thread.start()
    with parallel._placed(2) as helper_masks:
        assert os.sched_getaffinity(0) == {two_cpus[0]} and helper_masks == [{two_cpus[1]}]
        go.set()
        thread.join(10)
    assert seen == {"caller": set(two_cpus), "helpers": [set(two_cpus)]}
    assert os.sched_getaffinity(0) == set(two_cpus)


def test_where_affinity_is_not_permitted_the_workers_still_run(two_cpus, monkeypatch):
    def refused(pid, mask):
        raise PermissionError("sched_setaffinity is not permitted here")

    monkeypatch.setattr(parallel, "PIN_WORKERS", True)
    with monkeypatch.context() as patched:  # undone before two_cpus restores the test's CPUs
        patched.setattr(os, "sched_setaffinity", refused)
        assert list(parallel.map_chunks(lambda part: 2 * part, range(8))) == [2 * part for part in range(8)]
    assert os.sched_getaffinity(0) == set(two_cpus)
