"""Strategy by cost: reverse mode (Jacobian) and forward-over-reverse (Hessian) against full forward
mode and exact SymPy derivatives; the choice itself, ``nd.explain``, and the errors.

Oracles: SymPy's exact derivatives of tiny networks (independent of nnderiv), and the full forward
mode (:mod:`nnderiv.modes.full`), itself checked against SymPy, finite differences and JAX elsewhere.
The two strategies share no propagation rule, only the matrix products: agreement to 1e-12
(float64) is the bar of issue 6.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from oracles import assert_relative_close, sympy_partials
from strategies import SMOOTH, build_model, networks, random_spec

import nnderiv as nd
from nnderiv import kernels
from nnderiv.modes import reverse


def _points(model, n, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, model.n_inputs))


@given(
    spec=networks(max_depth=3, max_d=6, max_m=3, max_width=6, activations=SMOOTH),
    backend=st.sampled_from(["numpy", "numba"]),
    seed=st.integers(0, 2**32 - 1),
)
def test_reverse_strategies_agree_with_forward_mode(spec, backend, seed):
    model = build_model(spec)
    x = _points(model, 9, seed)
    with nd.use_backend(backend):
        for fn in (nd.jacobian, nd.hessian):
            want = fn(model, x, strategy="forward")
            assert_relative_close(fn(model, x, strategy="reverse"), want, 1e-12, f"{fn.__name__} reverse")
        for order in (1, 2):
            forward = nd.derivatives(model, x, order=order, strategy="forward")
            swept = nd.derivatives(model, x, order=order, strategy="reverse")
            for k in range(order + 1):
                assert_relative_close(swept.tensor(k), forward.tensor(k), 1e-12, f"order {order}, tensor {k}")


@given(
    spec=networks(max_depth=3, max_d=6, max_m=3, max_width=6, activations=SMOOTH),
    per_point=st.booleans(),
    chunk_size=st.sampled_from([None, 4]),
    seed=st.integers(0, 2**32 - 1),
)
def test_hessian_vector_products_by_forward_over_reverse(spec, per_point, chunk_size, seed):
    model = build_model(spec)
    rng = np.random.default_rng(seed)
    x = rng.uniform(-1, 1, (9, model.n_inputs))
    v = rng.normal(size=(9, model.n_inputs) if per_point else model.n_inputs)
    want = nd.hvp(model, x, v, strategy="forward")
    got = nd.hvp(model, x, v, strategy="reverse", chunk_size=chunk_size)
    assert_relative_close(got, want, 1e-12, "H v")
    H = nd.hessian(model, x)
    assert_relative_close(got, np.einsum("nmij,nj->nmi", H, np.broadcast_to(v, x.shape)), 1e-12, "H @ v")


def test_forward_over_reverse_hessian_is_exact_against_sympy():
    spec = random_spec(np.random.default_rng(3), [2, 3, 3, 2], ["tanh", "sigmoid"])
    model, x = build_model(spec), np.array([[0.3, -0.7], [-1.0, 0.5]])
    exact = sympy_partials(spec, x, 2)
    H = nd.hessian(model, x, strategy="reverse")
    J = nd.jacobian(model, x, strategy="reverse")
    for i in range(2):
        e_i = tuple(int(k == i) for k in range(2))
        assert_relative_close(J[:, :, i], exact[e_i], 1e-14, f"d/dx{i}")
        for j in range(2):
            alpha = tuple(int(k == i) + int(k == j) for k in range(2))
            assert_relative_close(H[:, :, i, j], exact[alpha], 1e-14, f"d2/dx{i}dx{j}")


def test_reverse_hessian_is_symmetric_and_chunks_change_nothing():
    model = nd.MLP([5, 16, 16, 2], activation="tanh", seed=1)
    x = _points(model, 23)
    H = nd.hessian(model, x, strategy="reverse")
    np.testing.assert_array_equal(H, np.swapaxes(H, -1, -2))
    chunked = nd.hessian(model, x, strategy="reverse", chunk_size=5)
    assert_relative_close(chunked, H, 1e-15, "chunked")
    D = nd.derivatives(model, x, order=2, strategy="reverse", chunk_size=4)
    assert_relative_close(D.hessian, H, 1e-15, "chunked derivatives")


def test_reverse_strategies_in_float32():
    model = nd.MLP([6, 12, 1], activation="sigmoid", seed=2, dtype="float32")
    x = _points(model, 11).astype(np.float32)
    for fn in (nd.jacobian, nd.hessian):
        got, want = fn(model, x, strategy="reverse"), fn(model, x, strategy="forward")
        assert got.dtype == np.float32
        assert_relative_close(got, want, 1e-5, fn.__name__)


@pytest.mark.parametrize(
    ("d", "m", "order", "expected"),
    [
        (8, 1, 2, "reverse"),
        (2, 1, 2, "forward"),
        (3, 2, 2, "forward"),
        (8, 1, 1, "reverse"),
        (2, 1, 1, "reverse"),
        (1, 1, 1, "forward"),
    ],  # fmt: skip
)
def test_auto_takes_the_strategy_with_fewer_rows(d, m, order, expected):
    options = {s.name: s.rows for s in reverse.strategies(d, m, order)}
    assert options["forward"] == {1: 1 + d, 2: 1 + d + d * (d + 1) // 2}[order]
    assert reverse.choose(d, m, order).name == expected
    model = nd.MLP([d, 4, m], seed=0)
    fn = {1: nd.jacobian, 2: nd.hessian}[order]
    assert nd.explain(fn, model, np.zeros((3, d))).strategy == expected


def test_explain_lists_the_options_and_honours_an_override():
    model, x = nd.MLP([8, 16, 1], seed=0), np.zeros((4, 8))
    text = str(nd.explain(nd.hessian, model, x))
    assert "* reverse" in text and "45 stacked rows" in text and "full forward" in text and "18 stacked rows" in text
    assert nd.explain(nd.hessian, model, x, strategy="forward").strategy == "forward"
    assert nd.explain(nd.laplacian, model, x).options[0].rows == 8 + 2
    assert nd.explain(model, model, x).function == "nd.value"


def test_strategy_errors_say_what_to_do():
    model, x = nd.MLP([3, 4, 1], seed=0), np.zeros((2, 3))
    with pytest.raises(nd.ConfigError, match="strategy must be one of"):
        nd.hessian(model, x, strategy="sideways")
    with pytest.raises(nd.ConfigError, match="orders 1 and 2"):
        nd.derivatives(model, x, order=3, strategy="reverse")
    with pytest.raises(nd.ConfigError, match="strategy='forward'"):
        nd.vjp(nd.hessian, model, x, strategy="reverse")
    with pytest.raises(nd.ConfigError, match="strategy='forward'"):
        nd.vjp(nd.hvp, model, x, v=np.ones(3), strategy="reverse")
    with pytest.raises(nd.ConfigError, match="strategy must be one of"):
        nd.hvp(model, x, np.ones(3), strategy="backwards")
    with pytest.raises(nd.ConfigError, match="cannot explain"):
        nd.explain(print, model, x)


def test_vjp_with_auto_uses_the_forward_rules_even_where_reverse_is_cheaper():
    model = nd.MLP([8, 6, 1], activation="tanh", seed=0)
    x = _points(model, 5)
    out, pullback = nd.vjp(nd.hessian, model, x)
    assert_relative_close(out, nd.hessian(model, x, strategy="reverse"), 1e-12, "value of the vjp")
    grads = pullback(np.ones_like(out))
    assert set(grads) == set(model.params)


def test_reverse_sweeps_respect_the_memory_limit():
    model = nd.MLP([8, 64, 1], seed=0)
    x = _points(model, 20_000)
    with nd.memory_limit(2**26):  # chunks itself to fit
        assert_relative_close(nd.hessian(model, x, strategy="reverse"), nd.hessian(model, x), 1e-12, "chunked")
        with pytest.raises(nd.MemoryLimitError, match="chunk_size <="):
            nd.hessian(model, x, strategy="reverse", chunk_size=20_000)


def test_explain_shows_mixed_partial_strategies_and_every_mode_describes_itself():
    model, x = nd.MLP([3, 8, 1], seed=0), np.zeros((2, 3))
    mixed = nd.explain(nd.mixed_partial, model, x, indices=(0, 0, 0, 1))
    assert {option.name for option in mixed.options} == {"full", "taylor"}
    chosen = min(mixed.options, key=lambda option: option.rows).name
    assert mixed.strategy == chosen
    assert nd.explain(nd.mixed_partial, model, x, indices=(0, 0, 0, 1), strategy="taylor").strategy == "taylor"
    for fn, kwargs, words in [
        (nd.laplacian, {}, "forward Laplacian"),
        (nd.pure_derivatives, {"order": 3}, "Taylor mode"),
        (nd.hvp, {"v": np.ones(3)}, "Hessian-vector"),
    ]:
        assert words in str(nd.explain(fn, model, x, **kwargs))


@pytest.mark.parametrize(
    ("backend", "activation", "d", "expected", "weight"),
    [
        ("numba", "tanh", 2, "forward", 1.2),  # both sweeps compiled: 6 rows against 6 * 1.2
        ("numba", "tanh", 3, "reverse", 1.2),  # 10 against 8 * 1.2
        ("numba", "sigmoid", 2, "reverse", 0.8),  # the reverse sweep compiled: 6 against 6 * 0.8
        ("numba", "sin", 3, "reverse", 1.0),  # both layer by layer: rows alone
        ("numpy", "tanh", 2, "reverse", 0.3),  # 6 against 1.8
    ],  # fmt: skip
)
def test_a_hessians_reverse_rows_are_weighted_by_what_the_backend_measured(backend, activation, d, expected, weight):
    model = nd.MLP([d, 8, 8, 1], activation=activation, seed=0)
    x = np.zeros((3, d))
    with nd.use_backend(backend):
        assert kernels.reverse_row_cost(model, 2) == weight and kernels.reverse_row_cost(model, 1) == 1.0
        explained = nd.explain(nd.hessian, model, x)
        assert explained.strategy == expected
        costs = {option.name: option.cost for option in explained.options}
        assert costs == {"forward": (d + 1) * (d + 2) // 2, "reverse": 2 * (d + 1) * weight}
        assert ("(cost " in str(explained)) == (weight != 1.0)
        forced = nd.hessian(model, x + 0.1, strategy="forward")
        np.testing.assert_allclose(nd.hessian(model, x + 0.1), forced, rtol=0, atol=1e-12 * np.abs(forced).max())


def test_a_backend_without_a_measured_weight_counts_rows(monkeypatch):
    from nnderiv.backends import numba_backend

    monkeypatch.delattr(numba_backend, "reverse_row_cost")  # as the cupy backend has none
    with nd.use_backend("numba"):
        assert kernels.reverse_row_cost(nd.MLP([3, 8, 1], seed=0), 2) == 1.0
    assert reverse.choose(3, 1, 2).name == "reverse"  # 10 rows against 8


@pytest.mark.parametrize(
    ("backend", "d", "expected"), [("numba", 1, "forward"), ("numba", 2, "reverse"), ("numpy", 1, "reverse")]
)
def test_the_hvp_weighs_its_reverse_rows_like_the_hessian(backend, d, expected):
    """numba tanh, d = 1: 4 forward rows against 4 * 1.2; d = 2: 6 against 4.8; numpy, d = 1: 4 against 4 * 0.3."""
    model, v = nd.MLP([d, 8, 1], activation="tanh", seed=0), np.linspace(-1.0, 1.0, d)
    x = np.full((3, d), 0.2)
    with nd.use_backend(backend):
        assert nd.explain(nd.hvp, model, x, v=v).strategy == expected
        want = nd.hvp(model, x, v, strategy="forward")
        np.testing.assert_allclose(nd.hvp(model, x, v), want, rtol=0, atol=1e-12 * np.abs(want).max())
