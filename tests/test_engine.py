"""The memory guard and chunked processing."""

import numpy as np
import pytest

import nnderiv as nd


@pytest.fixture
def model():
    return nd.MLP([3, 16, 16, 2], activation="tanh", seed=0)


def test_memory_guard_raises_before_allocating_and_names_the_way_out(model):
    x = np.zeros((100_000, 3))
    with nd.memory_limit(2**20), pytest.raises(nd.MemoryLimitError) as info:
        nd.vjp(nd.derivatives, model, x, order=3)  # a pullback keeps every intermediate
    message = str(info.value)
    assert "MiB" in message and "chunk_size=" in message
    suggested = int(message.split("chunk_size=")[1].split()[0])
    with nd.memory_limit(2**20):
        out, pullback = nd.vjp(nd.derivatives, model, x[:5000], order=3, chunk_size=suggested)
        grads = pullback({3: np.ones_like(out.tensor(3))})
    assert out.tensor(3).shape == (5000, 2, 3, 3, 3) and set(grads) == set(model.params)


def test_forward_sweeps_chunk_themselves_to_fit_the_limit(model, monkeypatch):
    from nnderiv import engine
    from nnderiv.modes.full import FullMode

    x = np.random.default_rng(0).uniform(-1, 1, (20_000, 3))
    sizes, chunks = [], engine.chunks

    def recording_chunks(n_points, size):
        sizes.append(size)
        return chunks(n_points, size)

    monkeypatch.setattr(engine, "chunks", recording_chunks)
    with nd.memory_limit(2**20):
        D = nd.derivatives(model, x, order=3)
    per_point = engine.bytes_per_point(model, FullMode(3, 3))
    assert sizes and sizes[-1] * per_point <= 2**20
    np.testing.assert_allclose(D.coefficients, nd.derivatives(model, x, order=3, chunk_size=20_000).coefficients,
                               rtol=1e-14, atol=1e-15)  # fmt: skip


def test_forward_chunks_are_cache_sized_by_default():
    from nnderiv import engine

    wide = nd.MLP([8, 64, 64, 1], seed=0)
    rows = 25
    size = engine.cache_chunk_size(wide, rows)
    assert engine.MIN_CACHE_CHUNK <= size and rows * size * 64 * 8 <= engine.CACHE_STACK_BYTES


def test_chunk_size_over_limit_is_refused(model):
    with nd.memory_limit(2**16), pytest.raises(nd.MemoryLimitError, match="chunk_size <="):
        nd.hessian(model, np.zeros((10, 3)), chunk_size=10_000)


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


def test_empty_batch(model):
    assert nd.jacobian(model, np.zeros((0, 3))).shape == (0, 2, 3)


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
