"""Full-mode input derivatives (nnderiv/derivatives.py, nnderiv/modes/full.py) against oracles.

Oracles (tests/oracles.py, no nnderiv code): finite differences with Richardson extrapolation on
random networks, exact SymPy derivatives on tiny ones, an independent NumPy forward pass; plus
properties of derivatives themselves (symmetry of mixed partials, the chain rule under scaling
``x -> c x``) and of the API (views agree, chunks do not change results, float32 follows float64).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, reject
from hypothesis import strategies as st
from oracles import (
    assert_relative_close,
    multi_indices,
    numpy_forward,
    relative_error,
    richardson_partial,
    sympy_partials,
)
from strategies import (
    FD_SMOOTH,
    SMOOTH,
    build_model,
    networks,
    points,
    random_spec,
    spec_inputs,
    spec_outputs,
)

import nnderiv as nd

#: Finite differences vs the engine, float64, for random networks of ``networks()``: allowed
#: ``|engine - FD|`` over ``max(|k-th derivatives|, |f|, 1)`` (FD rounding grows with |f|). 20x to
#: 150x the worst FD error measured on 900 random networks, 3 multi-indices per order (orders 1..5:
#: 3e-13, 5e-11, 4e-9, 2e-7, 7e-6; medians 1.5e-14, 7e-13, 3e-11, 8e-10, 1e-8), among those the FD
#: error estimate trusts (0.2% rejected). The engine's own error (~1e-15, see the SymPy tests) is
#: negligible: these bound the oracle, not the engine.
FD_RTOL = {0: 1e-13, 1: 1e-11, 2: 1e-9, 3: 1e-7, 4: 1e-5, 5: 1e-3}

#: Exact SymPy partials (rounded to float64) vs the engine, relative to the largest exact partial of
#: the same order: the engine's float64 error measured ~1e-15 (a few ulp per layer and per Faa di
#: Bruno sum); 1e-12 leaves a 1000x margin, yet is far below any formula error (O(1)) or a weight
#: off by 1e-10 (see test_sympy_oracle_detects_a_tiny_change).
SYMPY_RTOL = 1e-12

#: Same computation, different evaluation order (other stack size or chunk): a few ulp of the
#: terms summed (see term_sizes)
SAME_RTOL = 1e-14

#: float32 engine vs float64 engine on the same (float32-rounded) network: measured <= 4e-6 for
#: orders <= 4 on 200 random networks (float32 eps is 1.2e-7; errors grow with depth and order)
FLOAT32_RTOL = 1e-4


def term_sizes(spec, x, order) -> list[float]:
    """``max |H_k| @ |W| (+ max |b| for k = 0)`` per order ``k``: the size of the terms that the
    last affine layer ``out_k = H_k @ W (+ b)`` adds up, ``H_k`` the ``k``-th derivatives of its
    input. Rounding errors scale with these, not with a result that cancels (``0.3036 - 0.3035``),
    so comparisons of two computations that round differently are relative to them."""
    W, b, _ = spec[-1]
    n, d = x.shape
    if len(spec) == 1:  # the input itself: x, the identity, then zeros
        inputs = [x, np.broadcast_to(np.eye(d), (n, d, d))] + [np.zeros((n, d) + (d,) * k) for k in range(2, order + 1)]
    else:
        D = nd.derivatives(build_model(spec[:-1]), x, order=order)
        inputs = [D.tensor(k) for k in range(order + 1)]
    sizes = [float(np.max(np.einsum("nh...,ho->no...", np.abs(H), np.abs(W)))) for H in inputs]
    sizes[0] += float(np.max(np.abs(b)))
    return sizes


def assert_same(actual, expected, rtol, size, what):
    """``max |actual - expected| <= rtol * max(max |expected|, size)`` (``size`` from term_sizes)."""
    scale = max(float(np.max(np.abs(expected), initial=0.0)), size)
    error = float(np.max(np.abs(np.asarray(actual, dtype=np.float64) - expected), initial=0.0))
    assert error <= rtol * scale, f"{what}: error {error:.3g} > {rtol:.0e} x {scale:.3g}"


def assert_matches_finite_differences(D, f, x, alphas, rtol, *, untrusted=None):
    """Each partial ``alpha`` of ``D`` (via ``D.partial`` and the matching ``D.tensor`` entry)
    equals Richardson finite differences of ``f`` at ``x`` within ``rtol[|alpha|]``.

    Where the differences' own error estimate exceeds a third of the tolerance (a rare steep
    network: steps of ~0.2 k reach past where the Taylor series converges) the oracle cannot
    decide: ``untrusted()`` is called (e.g. ``hypothesis.reject``), or the check fails."""
    for alpha in alphas:
        k = sum(alpha)
        scale = max(np.abs(D.tensor(k)).max(), np.abs(D.value).max(), 1.0)
        expected, estimate = richardson_partial(f, x, alpha, return_error=True)
        if estimate.max() > rtol[k] * scale / 3:
            if untrusted is None:
                raise AssertionError(f"finite differences of d^{alpha} f are too inaccurate here: {estimate.max():.3g}")
            untrusted()
        indices = [i for i, count in enumerate(alpha) for _ in range(count)][::-1]  # any order will do
        for got, how in ((D.partial(multi_index=alpha), "partial"), (D.tensor(k)[(..., *indices)], "tensor")):
            error = np.abs(got - expected).max() / scale
            assert error <= rtol[k], (
                f"d^{alpha} f via D.{how}: error {error:.3g} (relative to {scale:.3g}) > {rtol[k]:.0e}\n"
                f"engine {got.tolist()}\nFD     {expected.tolist()}"
            )


def fixed_model():
    """``MLP([2, 8, 8, 1], tanh, seed=0)`` with random (non-zero) biases."""
    model = nd.MLP([2, 8, 8, 1], activation="tanh", seed=0)
    rng = np.random.default_rng(0)
    biases = {name: rng.normal(scale=0.5, size=p.shape) for name, p in model.params.items() if name.endswith("b")}
    model.set_params(biases)
    return model


FIXED_POINTS = np.array([[0.3, -0.4], [-0.9, 0.8], [0.0, 0.0]])

#: For fixed_model at FIXED_POINTS: 17x to 38x the FD errors measured there (2.6e-14, 5.7e-12,
#: 4.8e-10, 4.8e-8, 2.8e-7, 3.8e-6 for orders 1..6); deterministic, so tighter than FD_RTOL.
FIXED_FD_RTOL = {0: 1e-14, 1: 1e-12, 2: 1e-10, 3: 1e-8, 4: 1e-6, 5: 1e-5, 6: 1e-4}


# --------------------------------------------------------------------------------------------
# against finite differences


@pytest.mark.parametrize("order", range(7))
def test_every_partial_of_a_fixed_network(order):
    model = fixed_model()
    D = nd.derivatives(model, FIXED_POINTS, order=order)
    assert D.order == order
    assert D.tensor(order).shape == (3, 1) + (2,) * order
    assert D.tensor(order).dtype == np.float64
    alphas = [alpha for k in range(order + 1) for alpha in multi_indices(2, k)]
    assert_matches_finite_differences(D, model, FIXED_POINTS, alphas, FIXED_FD_RTOL)


@pytest.mark.property
@given(spec=networks(max_depth=4, max_d=5, max_m=3, activations=FD_SMOOTH), data=st.data())
def test_partials_match_finite_differences(spec, data):
    d = spec_inputs(spec)
    x = data.draw(points(d), label="x")
    order = data.draw(st.integers(0, 5), label="order")
    D = nd.derivatives(build_model(spec), x, order=order)
    # a few multi-indices per order, so an example costs milliseconds even for d = 5, order 5
    alphas = [
        alpha
        for k in range(order + 1)
        for alpha in data.draw(st.lists(st.sampled_from(multi_indices(d, k)), min_size=1, max_size=3, unique=True))
    ]
    assert_matches_finite_differences(D, lambda X: numpy_forward(spec, X), x, alphas, FD_RTOL, untrusted=reject)


def test_finite_difference_check_detects_a_wrong_partial():
    """The FD comparison can fail: perturb the function by ``1e-6 x0^2 x1`` (d^(2,1) f changes by
    2e-6, above FD_RTOL[3] = 1e-7), or by ``1e-9 x1`` (first derivative, above 1e-11)."""
    model = fixed_model()
    D = nd.derivatives(model, FIXED_POINTS, order=3)
    bumps = {(2, 1): lambda X: 1e-6 * X[:, :1] ** 2 * X[:, 1:], (0, 1): lambda X: 1e-9 * X[:, 1:]}
    for alpha, bump in bumps.items():
        bumped = lambda X, bump=bump: model(X) + bump(X)  # noqa: E731
        with pytest.raises(AssertionError, match="error"):
            assert_matches_finite_differences(D, bumped, FIXED_POINTS, [alpha], FD_RTOL)
    assert_matches_finite_differences(D, model, FIXED_POINTS, [(2, 1), (0, 1)], FD_RTOL)  # unperturbed: passes


# --------------------------------------------------------------------------------------------
# against exact symbolic derivatives


def assert_matches_sympy(spec, x, order):
    """Every partial up to ``order`` (``D.partial`` and all entries of ``D.tensor``) vs SymPy."""
    exact = sympy_partials(spec, x, order)
    D = nd.derivatives(build_model(spec), x, order=order)
    d = spec_inputs(spec)
    for k in range(order + 1):
        scale = max(np.abs(exact[alpha]).max() for alpha in multi_indices(d, k)) or 1.0
        tensor = D.tensor(k)
        for indices in itertools.product(range(d), repeat=k):
            alpha = tuple(indices.count(i) for i in range(d))
            error = np.abs(tensor[(..., *indices)] - exact[alpha]).max() / scale
            assert error <= SYMPY_RTOL, f"tensor({k})[{indices}]: relative error {error:.3g}"
        for alpha in multi_indices(d, k):
            error = np.abs(D.partial(multi_index=alpha) - exact[alpha]).max() / scale
            assert error <= SYMPY_RTOL, f"partial {alpha}: relative error {error:.3g}, exact {exact[alpha]}"


@pytest.mark.parametrize("activation", SMOOTH)
def test_one_hidden_layer_matches_sympy(activation):
    """All partials to order 5 (d = 2, two outputs) and order 6 (d = 1), every smooth activation."""
    rng = np.random.default_rng(sum(map(ord, activation)))
    spec = random_spec(rng, [2, 3, 2], [activation])
    assert_matches_sympy(spec, rng.uniform(-1, 1, (2, 2)), order=5)
    spec = random_spec(rng, [1, 3, 1], [activation])
    assert_matches_sympy(spec, rng.uniform(-1, 1, (2, 1)), order=6)


@pytest.mark.parametrize(
    ("activations", "order"),
    [(("tanh", "sin"), 5), (("softplus", "gaussian"), 4), (("silu", "exp"), 4)],
)
def test_two_hidden_layers_match_sympy(activations, order):
    """Two hidden layers, mixed activations: compositions of activations through Faa di Bruno."""
    rng = np.random.default_rng(7)
    spec = random_spec(rng, [2, 2, 2, 1], list(activations))
    assert_matches_sympy(spec, rng.uniform(-1, 1, (2, 2)), order=order)


def test_sympy_oracle_detects_a_tiny_change():
    """SYMPY_RTOL is tight: moving one weight by 1e-10 (relative) breaks the comparison."""
    rng = np.random.default_rng(3)
    spec = random_spec(rng, [2, 3, 1], ["tanh"])
    x = rng.uniform(-1, 1, (2, 2))
    assert_matches_sympy(spec, x, order=3)
    (W, b, act), rest = spec[0], spec[1:]
    nudged = [(W * (1 + 1e-10), b, act), *rest]
    exact = sympy_partials(nudged, x, 0)
    assert relative_error(nd.value(build_model(spec), x), exact[(0, 0)]) > SYMPY_RTOL


# --------------------------------------------------------------------------------------------
# properties of derivatives


@pytest.mark.property
@given(spec=networks(max_depth=3, max_d=4, max_m=2, activations=SMOOTH), data=st.data())
def test_mixed_partials_are_symmetric(spec, data):
    """``tensor(k)`` is invariant under every permutation of its input axes, and ``partial`` gives
    the same number whatever the order of its indices: exactly, since each is stored once."""
    d = spec_inputs(spec)
    x = data.draw(points(d), label="x")
    order = data.draw(st.integers(2, 4), label="order")
    D = nd.derivatives(build_model(spec), x, order=order)
    for k in range(2, order + 1):
        tensor = D.tensor(k)
        for perm in itertools.permutations(range(2, 2 + k)):
            np.testing.assert_array_equal(tensor.transpose(0, 1, *perm), tensor)
    indices = data.draw(st.lists(st.integers(0, d - 1), min_size=1, max_size=order), label="indices")
    for shuffled in {tuple(p) for p in itertools.permutations(indices)}:
        np.testing.assert_array_equal(D.partial(shuffled), D.tensor(len(indices))[(..., *indices)])


@pytest.mark.property
@given(
    spec=networks(max_depth=3, max_d=4, max_m=2, activations=SMOOTH),
    c=st.sampled_from([2.0, 0.5, 0.7, -1.3]),
    data=st.data(),
)
def test_scaling_the_input_scales_the_kth_derivative_by_c_to_the_k(spec, c, data):
    """Chain rule for ``g(x) = f(c x)``: ``D^k g(x) = c^k (D^k f)(c x)``. The network ``g`` is ``f``
    with its first weight matrix multiplied by ``c`` (``x @ (c W) = (c x) @ W``). For a power of two
    both sides round identically; otherwise they differ by rounding only (SAME_RTOL x 100)."""
    d = spec_inputs(spec)
    x = data.draw(points(d), label="x")
    order = data.draw(st.integers(1, 4), label="order")
    (W, b, act), rest = spec[0], spec[1:]
    scaled = build_model([(c * W, b, act), *rest])
    D_g = nd.derivatives(scaled, x, order=order)
    D_f = nd.derivatives(build_model(spec), c * x, order=order)
    rtol = SAME_RTOL if c in (2.0, 0.5) else 100 * SAME_RTOL
    for k, size in enumerate(term_sizes(spec, c * x, order)):
        assert_same(D_g.tensor(k), c**k * D_f.tensor(k), rtol, abs(c) ** k * size, f"order {k}, c = {c}")


@pytest.mark.property
@given(spec=networks(max_depth=3, max_d=4, max_m=3, activations=SMOOTH), data=st.data())
def test_views_agree(spec, data):
    """``model(x) == D.value == value == numpy_forward``, ``D.jacobian == jacobian``,
    ``D.hessian == hessian``, ``D.tensor(1 or 2)`` is the same array."""
    d = spec_inputs(spec)
    x = data.draw(points(d), label="x")
    order = data.draw(st.integers(2, 4), label="order")
    model = build_model(spec)
    D = nd.derivatives(model, x, order=order)
    assert D.value.shape == (len(x), spec_outputs(spec))
    # independent forward pass: other formulas for sigmoid, softplus, gelu... differ by a few ulp per layer
    sizes = term_sizes(spec, x, 2)
    assert_same(D.value, numpy_forward(spec, x), 1e-13, sizes[0], "value vs numpy_forward")
    assert_same(model(x), D.value, SAME_RTOL, sizes[0], "model(x)")
    assert_same(nd.value(model, x), D.value, SAME_RTOL, sizes[0], "nd.value")
    assert_same(nd.jacobian(model, x), D.jacobian, SAME_RTOL, sizes[1], "nd.jacobian")
    assert_same(nd.hessian(model, x), D.hessian, SAME_RTOL, sizes[2], "nd.hessian")
    np.testing.assert_array_equal(D.jacobian, D.tensor(1))
    np.testing.assert_array_equal(D.hessian, D.tensor(2))
    np.testing.assert_array_equal(D.partial(()), D.value)
    np.testing.assert_array_equal(D.partial(multi_index=(0,) * d), D.value)


# --------------------------------------------------------------------------------------------
# chunks and dtypes


@pytest.mark.property
@given(
    spec=networks(max_depth=3, max_d=3, max_m=2, activations=SMOOTH),
    n=st.integers(1, 7),
    chunk_size=st.integers(1, 8),
    data=st.data(),
)
def test_chunk_size_does_not_change_results(spec, n, chunk_size, data):
    """Chunks of rows of ``x`` give the same arrays, up to rounding: BLAS may block GEMMs of other
    shapes differently, so sums come out in another order."""
    x = data.draw(points(spec_inputs(spec), n), label="x")
    model = build_model(spec)
    whole = nd.derivatives(model, x, order=3)
    chunked = nd.derivatives(model, x, order=3, chunk_size=chunk_size)
    sizes = term_sizes(spec, x, 3)
    for k in range(4):
        assert_same(chunked.tensor(k), whole.tensor(k), SAME_RTOL, sizes[k], f"tensor({k})")
    for k, view in enumerate((nd.value, nd.jacobian, nd.hessian)):
        assert_same(view(model, x, chunk_size=chunk_size), view(model, x), SAME_RTOL, sizes[k], view.__name__)


@pytest.mark.property
@given(spec=networks(max_depth=4, max_d=4, max_m=2, activations=SMOOTH, dtype="float32"), data=st.data())
def test_float32_follows_float64(spec, data):
    """A float32 model gives float32 arrays within FLOAT32_RTOL of the float64 computation of the
    same network (its weights are float32 numbers, so only arithmetic differs), relative to the
    size of the terms summed last (see term_sizes)."""
    x = data.draw(points(spec_inputs(spec)), label="x").astype(np.float32).astype(np.float64)
    order = data.draw(st.integers(0, 4), label="order")
    D32 = nd.derivatives(build_model(spec, "float32"), x.astype(np.float32), order=order)
    D64 = nd.derivatives(build_model(spec), x, order=order)
    for k, size in enumerate(term_sizes(spec, x, order)):
        assert D32.tensor(k).dtype == np.float32
        assert_same(D32.tensor(k), D64.tensor(k), FLOAT32_RTOL, size, f"float32 tensor({k})")
    assert nd.hessian(build_model(spec, "float32"), x).dtype == np.float32


# --------------------------------------------------------------------------------------------
# non-smooth activations


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_second_derivatives_through_a_kink_warn_and_vanish(activation, rng):
    """relu-like networks are piecewise affine: order >= 2 warns, and is 0 away from the kinks."""
    spec = random_spec(rng, [3, 5, 5, 2], [activation])
    model, x = build_model(spec), rng.uniform(-1, 1, (4, 3))
    jac = nd.jacobian(model, x)  # order 1 is meaningful: no warning (warnings are errors here)
    assert_relative_close(jac[..., 0], richardson_partial(model, x, (1, 0, 0), h=1e-6, levels=1), 1e-8, "relu jacobian")
    with pytest.warns(nd.NnderivWarning, match=activation):
        hessian = nd.hessian(model, x)
    np.testing.assert_array_equal(hessian, 0.0)
    with pytest.warns(nd.NnderivWarning):
        nd.derivatives(model, x, order=3)
