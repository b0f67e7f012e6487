"""The memory guard and chunked processing."""

import tracemalloc

import numpy as np
import pytest

import nnderiv as nd


@pytest.fixture
def model():
    return nd.MLP([3, 16, 16, 2], activation="tanh", seed=0)


def test_memory_guard_raises_before_allocating_and_names_the_way_out(model):
    x = np.zeros((100_000, 3))
    with nd.memory_limit(2**28), pytest.raises(nd.MemoryLimitError) as info:
        nd.vjp(nd.derivatives, model, x, order=3)  # a pullback keeps every intermediate
    message = str(info.value)
    assert "MiB" in message and "chunk_size=" in message
    suggested = int(message.split("chunk_size=")[1].split()[0])
    with nd.memory_limit(2**28):
        out, pullback = nd.vjp(nd.derivatives, model, x[:5000], order=3, chunk_size=suggested)
        grads = pullback({3: np.ones_like(out.tensor(3))})
    assert out.tensor(3).shape == (5000, 2, 3, 3, 3) and set(grads) == set(model.params)


@pytest.mark.usefixtures("at_most_two_threads")
@pytest.mark.parametrize(("fn", "kwargs"), [(nd.laplacian, {}), (nd.pure_derivatives, {"order": 3})])
def test_the_suggested_chunk_size_keeps_the_traced_peak_under_the_limit(model, fn, kwargs):
    """The chunk_size the guard suggests runs the same request under the same limit, and the traced
    peak (every NumPy array nnderiv allocates, the results for all points included) stays under it."""
    x = np.random.default_rng(0).uniform(-1, 1, (20_000, 3))
    limit = 32 * 2**20
    with nd.memory_limit(limit), pytest.raises(nd.MemoryLimitError) as info:
        nd.vjp(fn, model, x, **kwargs)
    suggested = int(str(info.value).split("chunk_size=")[1].split()[0])
    assert 1 < suggested < len(x)
    cotangent = np.ones_like(fn(model, x, **kwargs))
    with nd.memory_limit(limit):
        tracemalloc.start()
        try:
            out, pullback = nd.vjp(fn, model, x, chunk_size=suggested, **kwargs)
            grads = pullback(cotangent)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert out.shape == cotangent.shape and set(grads) == set(model.params)
    assert peak <= limit, f"traced peak {peak / 2**20:.1f} MiB over the limit of {limit / 2**20:.0f} MiB"


def test_results_over_the_limit_by_themselves_are_refused_whatever_the_chunks(model):
    x = np.zeros((100_000, 3))
    for chunk_size in (None, 10):
        with nd.memory_limit(2**20), pytest.raises(nd.MemoryLimitError, match="results at all 100000 points"):
            nd.vjp(nd.derivatives, model, x, order=3, chunk_size=chunk_size)
    with nd.memory_limit(2**20), pytest.raises(nd.MemoryLimitError, match="split x"):
        nd.derivatives(model, x, order=3)  # the forward sweep chunks itself, but its result is 100000 x 40 floats


@pytest.mark.usefixtures("at_most_two_threads")
def test_forward_sweeps_chunk_themselves_to_fit_the_limit(model, monkeypatch):
    from nnderiv import engine
    from nnderiv.modes.full import FullMode

    x = np.random.default_rng(0).uniform(-1, 1, (20_000, 3))
    sizes, chosen = [], engine.forward_chunk_size

    def recording(*args, **kwargs):
        sizes.append(chosen(*args, **kwargs))
        return sizes[-1]

    monkeypatch.setattr(engine, "forward_chunk_size", recording)
    limit = 32 * 2**20  # the result alone is 20000 x 20 x 2 floats: 6.1 MiB
    nd.derivatives(model, x[:4096], order=3)  # compiled before memory is traced
    tracemalloc.start()
    try:
        with nd.memory_limit(limit):
            D = nd.derivatives(model, x, order=3)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    mode = FullMode(3, 3)
    per_point, kept = engine.bytes_per_point(model, mode), engine.kept_bytes_per_point(model, mode)
    assert sizes and sizes[-1] * per_point + kept * len(x) <= limit
    assert peak <= limit  # NumPy's arrays, traced: the estimate holds for whichever sweep ran
    np.testing.assert_allclose(D.coefficients, nd.derivatives(model, x, order=3, chunk_size=20_000).coefficients,
                               rtol=1e-14, atol=1e-15)  # fmt: skip


def test_forward_chunks_are_cache_sized_by_default():
    from nnderiv import engine

    wide = nd.MLP([8, 64, 64, 1], seed=0)
    rows = 25
    size = engine.cache_chunk_size(wide, rows)
    assert engine.MIN_CACHE_CHUNK <= size and rows * size * 64 * 8 <= engine.CACHE_STACK_BYTES


def test_on_a_gpu_every_point_is_one_chunk_while_it_fits(monkeypatch):
    """A GPU has no cache to fit and each chunk costs the same launches: the memory limit alone cuts."""
    from nnderiv import engine
    from nnderiv.backends import numpy_backend
    from nnderiv.modes.full import FullMode

    wide, mode, n = nd.MLP([8, 64, 64, 1], seed=0), FullMode(8, 2), 20_000
    on_host = engine.forward_chunk_size(wide, mode, n, None)
    monkeypatch.setattr(numpy_backend, "ON_DEVICE", True)  # the numpy backend standing in for cupy
    with nd.use_backend("numpy"), nd.memory_limit(2**34):
        assert on_host < engine.forward_chunk_size(wide, mode, n, None) == n
        kept = FullMode(8, 2, for_vjp=True)
        per_point = engine.bytes_per_point(wide, kept) + engine.kept_bytes_per_point(wide, kept)
        assert engine.pullback_chunk_size(wide, kept) * per_point > 100 * engine.PULLBACK_CACHE_BYTES
    with nd.use_backend("numpy"), nd.memory_limit(2**26):  # the limit still cuts
        per_point = engine.bytes_per_point(wide, mode)
        size = engine.forward_chunk_size(wide, mode, n, None)
        assert size < n and size * per_point <= 2**26


@pytest.mark.usefixtures("at_most_two_threads")
def test_chunk_size_over_limit_is_refused(model):
    x = np.zeros((50_000, 3))
    with nd.memory_limit(2**25), pytest.raises(nd.MemoryLimitError, match="chunk_size <="):
        nd.hessian(model, x, chunk_size=50_000)
    with nd.memory_limit(2**25):  # a chunk larger than the points is just all the points
        assert nd.hessian(model, x[:100], chunk_size=100_000).shape == (100, 2, 3, 3)


@pytest.mark.parametrize("chunk_size", [1, 7, 64, 1000])
def test_chunks_give_identical_results(model, chunk_size):
    x = np.random.default_rng(0).uniform(-1, 1, (64, 3))
    whole = nd.derivatives(model, x, order=3).coefficients
    np.testing.assert_array_equal(nd.derivatives(model, x, order=3, chunk_size=chunk_size).coefficients, whole)


def test_chunked_pullback_matches_whole(model):
    x = np.random.default_rng(0).uniform(-1, 1, (50, 3))
    cot = np.random.default_rng(1).normal(size=(50, 2, 3, 3))
    out, pullback = nd.vjp(nd.hessian, model, x, wrt="both")
    out_c, pullback_c = nd.vjp(nd.hessian, model, x, wrt="both", chunk_size=16)
    np.testing.assert_array_equal(out, out_c)
    (grads, x_bar), (grads_c, x_bar_c) = pullback(cot), pullback_c(cot)
    for name in grads:  # sums over chunks differ from one sum only by rounding
        np.testing.assert_allclose(grads_c[name], grads[name], rtol=1e-13, atol=1e-13)
    np.testing.assert_array_equal(x_bar_c, x_bar)


@pytest.mark.parametrize("strategy", ["auto", "forward", "reverse"])
def test_empty_batch(model, strategy):
    assert nd.jacobian(model, np.zeros((0, 3)), strategy=strategy).shape == (0, 2, 3)
    assert nd.hessian(model, np.zeros((0, 3)), strategy=strategy).shape == (0, 2, 3, 3)


def test_bad_chunk_size(model):
    with pytest.raises(nd.ShapeError, match="chunk_size"):
        nd.jacobian(model, np.zeros((4, 3)), chunk_size=0)


def test_memory_limit_setting():
    default = nd.get_memory_limit()
    with nd.memory_limit(12345):
        assert nd.get_memory_limit() == 12345
    assert nd.get_memory_limit() == default
    with pytest.raises(ValueError):
        nd.set_memory_limit(-1)
