"""The cheap modes (nnderiv/modes/taylor.py, laplacian.py, hvp.py; ``divergence``) against the full mode.

Every derivative function pushes one truncated Taylor series through the network; the modes differ
by their table (which coefficients are kept), their seeding and their read-out. Two modes computing
the same quantity therefore check each other's table and read-out, and the full mode itself is
checked against independent oracles (finite differences, SymPy, JAX, PyTorch) in
tests/test_full_mode.py and tests/test_crosscheck*.py. Properties, on random networks:

- ``laplacian == trace(hessian)``, ``laplacian(weights=A) == sum_ij A_ij H_ij`` (A PSD, negative
  definite, indefinite, rank-deficient, zero, per point);
- ``pure_derivatives`` == the diagonals of ``derivatives(...).tensor(k)``;
- ``taylor`` along ``v`` == ``tensor(k)`` contracted with ``v`` k times (directions shared or per point);
- ``hvp == hessian @ v``; ``divergence == trace(jacobian)``; ``biharmonic == einsum('nmiijj->nm', tensor(4))``;
- ``mixed_partial`` by ``"taylor"`` == by ``"full"`` == ``D.partial``;
- the chain rule under ``x -> c x``: ``g(y) = f(c y)`` has ``k``-th derivatives ``c^k f^(k)(c y)``.

Then every pullback (each function, ``wrt`` params and x, chunked or not) against finite
differences of ``<cot, out>`` (:func:`oracles.check_grads`), chunking changes nothing, bad
arguments raise the right nnderiv error, and each mode propagates the number of rows it promises.

**Tolerances.** Both sides of a consistency check are float64 computations of the same quantity by
different sums, so they differ by rounding only. The error is measured against the size of the
*terms* (e.g. ``sum_ij |A_ij| |H_ij|`` for a weighted Laplacian; for a Taylor coefficient, every
product the network's series composition adds up, :func:`oracles.taylor_majorant`), not against the
result, which may cancel to ~0; see :func:`assert_consistent`.
"""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from oracles import assert_relative_close, check_grads, taylor_majorant
from strategies import (
    FD_SMOOTH,
    SMOOTH,
    build_model,
    networks,
    points,
    random_spec,
    spec_inputs,
    spec_outputs,
    spec_params,
    spec_with_params,
)

import nnderiv as nd
from nnderiv import kernels
from nnderiv.derivatives import _plan_divergence
from nnderiv.modes.hvp import _plan_hvp
from nnderiv.modes.laplacian import _plan_laplacian
from nnderiv.modes.taylor import _plan_biharmonic, _plan_mixed, _plan_pure, _plan_taylor

EPS = np.finfo(np.float64).eps

#: Mode vs mode, float64, relative to the size of the terms (see the module docstring). Measured
#: worst cases over 3 x 500 random networks per property (thorough profile): ~50 eps for orders <= 2
#: (Laplacian, weighted Laplacian, HVP, Taylor), ~80 eps for orders 3-6, 37 eps under x -> c x; pure
#: derivatives equal the full tensors' diagonals exactly (along an axis the full mode's extra rows
#: only add exact zeros). The bars leave a margin of 20x and 50x; a wrong coefficient or table entry
#: is off by O(1), and a reference off by 1e-9 relative is caught (test_..._catch_a_small_perturbation).
RTOL = {k: (1000 if k <= 2 else 4000) * EPS for k in range(7)}

#: Relative to the terms the *network* sums (:func:`oracles.taylor_majorant`: the absolute values
#: of every product of its series composition, plus the effect of rounding each pre-activation;
#: :func:`order_terms`, :func:`hessian_terms`): the size of the result's own terms (``|T| . |v|^k``,
#: ``|H|``) misses a cancellation inside the network, e.g. two hidden units' fourth derivatives
#: cancelling at one input (d = 1, x = 0: once 3.3x over RTOL[4]). Used for Taylor coefficients,
#: Laplacians, HVPs, divergence, mixed partials and the x -> c x property. Measured worst over 1500
#: random networks, in eps x these terms: 2.9 for Taylor coefficients (orders 0-6); 1.6 for the
#: Laplacian, the weighted Laplacian (/d) and the HVP; 1.8 for mixed partials by interpolation (whose
#: weights amplify rounding by sum_j |w_j| |j|^k: up to 60 eps of max |tensor(k)|), k <= 5. The bar
#: leaves 22x. The terms are a median 4-120x the result's own (orders 0-6), so where nothing cancels
#: this bar is about as tight as RTOL, and where the network cancels it grows with it.
RTOL_MAJORANT = 64 * EPS

#: check_grads: |<grads, v> - FD| <= GRAD_RTOL (|<grads, v>| + |grads|) + rounding (tests/test_vjp.py
#: measured the FD error below 1e-9 for orders <= 4); a wrong rule is off by O(1)
GRAD_RTOL = 1e-7

#: the same computation in chunks: per-point results are the same sums (a few ulp); parameter
#: gradients add per-chunk sums in another order, bounded by the size of the per-point terms
SAME_RTOL = 1e-13

small_networks = networks(max_depth=3, max_d=5, max_m=3, max_width=6)
seeds = st.integers(0, 2**32 - 1)


def assert_consistent(actual, expected, magnitude, rtol, what):
    """``max |actual - expected| <= rtol * max(magnitude)``: ``magnitude`` is the size of the terms
    summed into ``expected`` (same shape, or anything whose max is meaningful)."""
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape}, expected {expected.shape}"
    error = float(np.max(np.abs(actual - expected), initial=0.0))
    scale = float(np.max(np.abs(magnitude), initial=0.0))
    assert error <= rtol * scale, (
        f"{what}: max error {error:.3g} > {rtol:.2g} x term size {scale:.3g} (ratio {error / max(scale, 1e-300):.3g})"
    )


def contract(T, V, k):
    """``sum_{i_1..i_k} T[n, m, i_1..i_k] V[n, r, i_1] ... V[n, r, i_k]``: ``(N, m, R)`` from
    ``T (N, m, d, ..., d)`` and per-point directions ``V (N, R, d)``."""
    X = np.broadcast_to(T[:, :, None], (T.shape[0], T.shape[1], V.shape[1], *T.shape[2:]))
    for _ in range(k):
        X = np.einsum("nmr...i,nri->nmr...", X, V)
    return X


def order_terms(spec, x, k, along=None):
    """The terms of the ``k``-th derivatives along each row of ``along`` (default ``(1, ..., 1)``,
    whose terms bound those of every ``k``-th partial): ``(N, m, rows)``, or ``(N, m)`` by default."""
    N, d = x.shape
    directions = np.ones((1, d)) if along is None else np.asarray(along, dtype=np.float64)
    terms = taylor_majorant(spec, x, np.broadcast_to(directions, (N, *directions.shape)), k)[..., k]
    return terms[..., 0] if along is None else terms


def hessian_terms(spec, x):
    """``(N, m, d, d)``: a bound on the size of the terms summed into each ``H_ij``, cancellations
    inside the network undone: the absolute composition's series has non-negative coefficients, so
    along ``e_i + e_j`` its second derivative ``M_ii + 2 M_ij + M_jj`` bounds ``2 M_ij`` (and along
    ``e_i`` it is ``M_ii``). See :func:`oracles.taylor_majorant`."""
    N, d = x.shape
    eye = np.eye(d)
    second = order_terms(spec, x, 2, along=(eye[:, None, :] + eye[None, :, :]).reshape(d * d, d))  # e_i + e_j
    second = second.reshape(N, -1, d, d)
    return np.where(np.eye(d, dtype=bool), second / 4, second / 2)  # along 2 e_i: 4 M_ii


def diagonal(T, k):
    """``T[n, m, i, i, ..., i]`` for every ``i``: ``(N, m, d)`` (for ``k = 0``, ``T`` repeated ``d`` times)."""
    return np.einsum("nm" + "i" * k + "->nmi", T) if k else T


def weights_matrix(kind: str, d: int, rng: np.random.Generator) -> np.ndarray:
    """A symmetric ``(d, d)`` matrix of the given kind, exactly symmetric."""
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    magnitudes = rng.uniform(0.2, 2.0, d)
    if kind == "psd":
        lam = magnitudes
    elif kind == "negative_definite":
        lam = -magnitudes
    elif kind == "indefinite":  # both signs whenever d >= 2
        lam = magnitudes * np.where(np.arange(d) % 2, -1.0, 1.0)
    elif kind == "rank_deficient":  # rank r < d (zero for d = 1), eigenvalues of both signs
        r = int(rng.integers(0, d))
        lam = np.where(np.arange(d) < r, magnitudes * rng.choice([-1.0, 1.0], d), 0.0)
    elif kind == "zero":
        lam = np.zeros(d)
    elif kind == "identity":
        return np.eye(d)
    else:  # pragma: no cover
        raise ValueError(kind)
    A = (Q * lam) @ Q.T
    return (A + A.T) / 2


WEIGHT_KINDS = ("psd", "negative_definite", "indefinite", "rank_deficient", "zero", "identity")


def scaled_first_layer(spec, c):
    """The description of ``g(y) = f(c y)``: the first weight matrix times ``c``."""
    (W, b, act), *rest = spec
    return [(c * W, b, act), *rest]


@st.composite
def field_networks(draw, max_d: int = 5, activations=SMOOTH):
    """A vector field ``R^d -> R^d`` (``m == d``): widths ``[d, hidden..., d]``, 1 to 3 hidden layers."""
    d = draw(st.integers(1, max_d))
    widths = [d, *draw(st.lists(st.integers(1, 6), min_size=1, max_size=3)), d]
    activations = draw(st.lists(st.sampled_from(activations), min_size=len(widths) - 2, max_size=len(widths) - 2))
    if activations.count("exp") > 1:  # exp of exp of exp overflows: one exp per network
        activations = [a if a != "exp" else "tanh" for a in activations]
        activations[0] = "exp"
    return random_spec(np.random.default_rng(draw(seeds)), widths, activations)


# --------------------------------------------------------------------------------------------
# consistency between modes


@pytest.mark.property
@given(spec=small_networks, data=st.data())
def test_laplacian_is_the_trace_of_the_hessian(spec, data):
    x = data.draw(points(spec_inputs(spec)), label="x")
    model = build_model(spec)
    H = nd.hessian(model, x)
    terms = hessian_terms(spec, x)
    assert_consistent(nd.laplacian(model, x), np.trace(H, axis1=2, axis2=3), terms, RTOL_MAJORANT, "laplacian")


@pytest.mark.property
@given(spec=small_networks, seed=seeds, data=st.data())
def test_weighted_laplacian_contracts_the_hessian(spec, seed, data):
    """``laplacian(weights=A) == sum_ij A_ij H_ij``, for A shared or per point (a kind per point)."""
    d, rng = spec_inputs(spec), np.random.default_rng(seed)
    x = data.draw(points(d), label="x")
    per_point = data.draw(st.booleans(), label="per point")
    kinds = data.draw(st.lists(st.sampled_from(WEIGHT_KINDS), min_size=len(x), max_size=len(x)), label="kinds")
    scale = rng.uniform(0.1, 10)
    A = scale * (
        np.stack([weights_matrix(k, d, rng) for k in kinds]) if per_point else weights_matrix(kinds[0], d, rng)
    )
    model = build_model(spec)
    H = nd.hessian(model, x)
    A_points = A if per_point else np.broadcast_to(A, (len(x), d, d))
    expected = np.einsum("nij,nmij->nm", A_points, H)
    terms = np.einsum("nij,nmij->nm", np.abs(A_points), hessian_terms(spec, x))
    # the eigen-factorisation of A adds ~d eps |A| |H| to the rounding of the sum
    got = nd.laplacian(model, x, weights=A)
    assert_consistent(got, expected, terms, d * RTOL_MAJORANT, f"weighted laplacian ({kinds}, per point {per_point})")


@pytest.mark.property
@given(spec=small_networks, order=st.integers(0, 6), data=st.data())
def test_pure_derivatives_are_the_diagonals_of_the_full_tensors(spec, order, data):
    x = data.draw(points(spec_inputs(spec)), label="x")
    model = build_model(spec)
    P = nd.pure_derivatives(model, x, order=order)
    assert P.shape == (len(x), spec_outputs(spec), spec_inputs(spec), order + 1)
    D = nd.derivatives(model, x, order=order)
    for k in range(order + 1):
        expected = diagonal(D.tensor(k), k)
        expected = np.broadcast_to(expected[..., None], P.shape[:3]) if k == 0 else expected
        assert_consistent(P[..., k], expected, expected, RTOL[k], f"pure derivative of order {k}")


@pytest.mark.property
@given(spec=small_networks, order=st.integers(0, 6), n_dir=st.integers(1, 3), per_point=st.booleans(), data=st.data())
def test_taylor_contracts_the_full_tensors(spec, order, n_dir, per_point, data):
    """``d^k/dt^k f(x + t v) = sum T_{i_1..i_k} v_{i_1} .. v_{i_k}`` along each direction."""
    d = spec_inputs(spec)
    x = data.draw(points(d), label="x")
    rng = np.random.default_rng(data.draw(seeds, label="seed"))
    V = rng.normal(size=(len(x), n_dir, d) if per_point else (n_dir, d))
    model = build_model(spec)
    T = nd.taylor(model, x, directions=V, order=order)
    assert T.shape == (len(x), spec_outputs(spec), n_dir, order + 1)
    D = nd.derivatives(model, x, order=order)
    V_points = V if per_point else np.broadcast_to(V, (len(x), n_dir, d))
    terms = taylor_majorant(spec, x, V_points, order)  # the terms of the sums, cancellations undone
    for k in range(order + 1):
        expected = contract(D.tensor(k), V_points, k)
        assert_consistent(T[..., k], expected, terms[..., k], RTOL_MAJORANT, f"taylor coefficient of order {k}")


@pytest.mark.property
@given(spec=small_networks, per_point=st.booleans(), seed=seeds, data=st.data())
def test_hvp_is_the_hessian_times_v(spec, per_point, seed, data):
    d = spec_inputs(spec)
    x = data.draw(points(d), label="x")
    rng = np.random.default_rng(seed)
    v = rng.normal(size=(len(x), d) if per_point else d)
    model = build_model(spec)
    H = nd.hessian(model, x)
    v_points = v if per_point else np.broadcast_to(v, (len(x), d))
    expected = np.einsum("nmij,nj->nmi", H, v_points)
    terms = np.einsum("nmij,nj->nmi", hessian_terms(spec, x), np.abs(v_points))
    assert_consistent(nd.hvp(model, x, v), expected, terms, RTOL_MAJORANT, "hvp")


@pytest.mark.property
@given(spec=field_networks(), data=st.data())
def test_divergence_is_the_trace_of_the_jacobian(spec, data):
    x = data.draw(points(spec_inputs(spec)), label="x")
    model = build_model(spec)
    J = nd.jacobian(model, x)
    div = nd.divergence(model, x)
    assert div.shape == (len(x),)
    terms = order_terms(spec, x, 1, along=np.eye(len(J[0])))  # (N, m, d): the terms of each J_mi
    assert_consistent(div, np.trace(J, axis1=1, axis2=2), terms, RTOL_MAJORANT, "divergence")


@pytest.mark.property
@given(spec=st.integers(2, 5).flatmap(lambda d: networks(max_depth=3, max_m=3, max_width=6, d=d)), data=st.data())
def test_biharmonic_is_the_double_trace_of_the_fourth_tensor(spec, data):
    """(d = 1 is an engine bug: see test_biharmonic_of_one_input.)"""
    x = data.draw(points(spec_inputs(spec)), label="x")
    model = build_model(spec)
    T = nd.derivatives(model, x, order=4).tensor(4)
    # polarization: fourth derivatives along e_i +- e_j have terms up to 2^4 |T|
    assert_consistent(
        nd.biharmonic(model, x),
        np.einsum("nmiijj->nm", T),
        16 * np.abs(T).sum(axis=(2, 3, 4, 5)),
        RTOL[4],
        "biharmonic",
    )


@pytest.mark.property
@given(spec=small_networks, data=st.data())
def test_mixed_partial_strategies_agree(spec, data):
    """``"taylor"`` (interpolation) == ``"full"`` == ``"auto"`` == ``D.partial`` for random partials
    of order 1..5; ``indices`` in any order and ``multi_index`` name the same partial."""
    d = spec_inputs(spec)
    x = data.draw(points(d), label="x")
    k = data.draw(st.integers(1, 5), label="order")
    indices = data.draw(st.lists(st.integers(0, d - 1), min_size=k, max_size=k), label="indices")
    model = build_model(spec)
    D = nd.derivatives(model, x, order=k)
    expected = D.partial(indices)
    # the terms of every k-th partial, bounded by those along (1, ..., 1) (measured worst 1.8 eps of
    # them for the interpolation, 0.3 for the full mode, over 1500 random networks, k <= 5)
    terms = order_terms(spec, x, k)
    full = nd.mixed_partial(model, x, indices, strategy="full")
    assert_consistent(full, expected, terms, RTOL_MAJORANT, f"mixed partial {indices} (full)")
    taylor = nd.mixed_partial(model, x, indices[::-1], strategy="taylor")
    assert_consistent(taylor, expected, terms, RTOL_MAJORANT, f"mixed partial {indices} (taylor)")
    auto = nd.mixed_partial(model, x, multi_index=np.bincount(indices, minlength=d))
    assert_consistent(auto, expected, terms, RTOL_MAJORANT, f"mixed partial {indices} (auto)")


@pytest.mark.property
@given(spec=small_networks, data=st.data())
def test_scaling_the_input_scales_the_kth_derivative_by_c_to_the_k(spec, data):
    """``g(y) = f(c y)`` (first weights times ``c``) at ``y = x / c`` has ``d^k g = c^k d^k f(x)``.

    With ``c`` a power of 2 every product is exact, so both sides round identically up to the
    last step; with another ``c`` they are different float computations (RTOL)."""
    d = spec_inputs(spec)
    x = data.draw(points(d), label="x")
    c = data.draw(st.sampled_from([0.5, 2.0, 4.0, 0.3, 1.7, -1.3]), label="c")
    rng = np.random.default_rng(data.draw(seeds, label="seed"))
    f, g, y = build_model(spec), build_model(scaled_first_layer(spec, c)), x / c
    v, A = rng.normal(size=d), weights_matrix("indefinite", d, rng)
    cases = [
        ("laplacian", 2, lambda m, p: nd.laplacian(m, p)),
        ("weighted laplacian", 2, lambda m, p: nd.laplacian(m, p, weights=A)),
        ("hvp", 2, lambda m, p: nd.hvp(m, p, v)),
        ("taylor order 3", 3, lambda m, p: nd.taylor(m, p, directions=v[None], order=3)[..., 3]),
        ("pure order 5", 5, lambda m, p: nd.pure_derivatives(m, p, order=5)[..., 5]),
    ]
    if d >= 2:
        cases.append(("biharmonic", 4, lambda m, p: nd.biharmonic(m, p)))
        cases.append(("mixed (0, 1, 1)", 3, lambda m, p: nd.mixed_partial(m, p, (0, 1, 1), strategy="taylor")))
    # every k-th partial's terms are bounded by those along (1, ..., 1), which add them all up
    # (times multinomials >= 1), and a case weighs the partials by at most max |v|^k or max |A|
    weight = {"weighted laplacian": np.abs(A).max(), "hvp": np.abs(v).max(), "taylor order 3": np.abs(v).max() ** 3}
    for name, k, fn in cases:
        expected = c**k * fn(f, x)
        terms = abs(c) ** k * weight.get(name, 1.0) * order_terms(spec, x, k)
        assert_consistent(fn(g, y), expected, terms, RTOL_MAJORANT, f"{name} under x -> {c} x")


def test_consistency_checks_catch_a_small_perturbation(rng):
    """The bars can fail: a reference off by 1e-9 relative (far below any formula error) is caught."""
    spec = random_spec(rng, [3, 5, 4, 2], ["tanh", "sin"])
    model, x = build_model(spec), rng.uniform(-1, 1, (4, 3))
    H = nd.hessian(model, x)
    trace, terms = np.trace(H, axis1=2, axis2=3), hessian_terms(spec, x)
    assert_consistent(nd.laplacian(model, x), trace, terms, RTOL_MAJORANT, "laplacian")
    with pytest.raises(AssertionError, match="laplacian"):
        assert_consistent(nd.laplacian(model, x), trace * (1 + 1e-9), terms, RTOL_MAJORANT, "laplacian")
    D = nd.derivatives(model, x, order=6)
    P = nd.pure_derivatives(model, x, order=6)
    with pytest.raises(AssertionError, match="order 6"):
        expected = diagonal(D.tensor(6), 6) * (1 + 1e-9)
        assert_consistent(P[..., 6], expected, expected, RTOL[6], "pure derivative of order 6")


def test_taylor_majorant_is_the_derivative_where_nothing_cancels(rng):
    """With positive weights, directions and inputs of exp, every term is positive: the majorant
    (without the rounding-sensitivity part) is the derivative itself; otherwise it bounds the terms."""
    hidden, output = (rng.uniform(0.1, 1, (2, 3)), rng.uniform(0, 1, 3)), (rng.uniform(0.1, 1, (3, 2)), np.zeros(2))
    spec = [(*hidden, "exp"), (*output, None)]
    x, V = rng.uniform(0, 0.3, (2, 2)), rng.uniform(0.1, 1, (2, 3, 2))
    T = nd.taylor(build_model(spec), x, directions=V, order=5)
    assert_relative_close(taylor_majorant(spec, x, V, 5, sensitivity=False), T, 1e-13, "majorant of a positive network")
    spec = random_spec(rng, [3, 4, 3, 2], ["gelu", "sin"])
    x, V = rng.uniform(-1, 1, (3, 3)), rng.normal(size=(3, 2, 3))
    D = nd.derivatives(build_model(spec), x, order=4)
    majorant = taylor_majorant(spec, x, V, 4)
    for k in range(5):
        assert np.all(majorant[..., k] >= contract(np.abs(D.tensor(k)), np.abs(V), k) * (1 - 1e-12))


def test_taylor_check_survives_a_cancellation_inside_the_network(rng):
    """One input, two hidden units whose fourth derivatives cancel in the output: ``|T|`` is ~0 and
    says nothing about the rounding of the sum; the majorant does, and a wrong reference is still caught."""
    spec = random_spec(rng, [1, 3, 4, 1], ["gelu", "gelu"])
    x, V = np.zeros((1, 1)), np.ones((1, 1, 1))
    W, b, _ = spec[-1]
    unit_fourth = []
    for j in range(W.shape[0]):
        unit = np.zeros_like(W)
        unit[j] = 1.0
        unit_fourth.append(nd.taylor(build_model([*spec[:-1], (unit, b, None)]), x, directions=V, order=4)[0, 0, 0, 4])
    W = W.copy()
    W[0, 0] = -(np.array(unit_fourth[1:]) @ W[1:, 0]) / unit_fourth[0]  # the fourth derivative cancels
    spec[-1] = (W, b, None)
    model = build_model(spec)
    T = nd.taylor(model, x, directions=V, order=4)[..., 4]
    expected = contract(nd.derivatives(model, x, order=4).tensor(4), V, 4)
    terms = taylor_majorant(spec, x, V, 4)[..., 4]
    assert np.max(terms) > 1e6 * np.max(np.abs(expected))
    assert_consistent(T, expected, terms, RTOL_MAJORANT, "taylor coefficient of order 4")
    with pytest.raises(AssertionError, match="order 4"):
        assert_consistent(T, expected + 1e-9 * np.max(terms), terms, RTOL_MAJORANT, "taylor coefficient of order 4")


# --------------------------------------------------------------------------------------------
# pullbacks against finite differences


def pullback_case(name: str, d: int, n: int, rng: np.random.Generator, order: int = 3):
    """``(function, kwargs)`` of the pullback case ``name`` for ``d`` inputs and ``n`` points."""
    A = (lambda B: (B + B.T) / 2)(rng.normal(size=(d, d)))
    per_point_A = np.stack([weights_matrix(kind, d, rng) for kind in np.resize(WEIGHT_KINDS, n)])
    indices = tuple(int(i) for i in rng.integers(0, d, size=max(order, 1)))
    return {
        "laplacian": (nd.laplacian, {}),
        "laplacian/psd": (nd.laplacian, {"weights": weights_matrix("psd", d, rng)}),
        "laplacian/indefinite": (nd.laplacian, {"weights": A}),
        "laplacian/per-point": (nd.laplacian, {"weights": per_point_A}),
        "pure_derivatives": (nd.pure_derivatives, {"order": order}),
        "taylor": (nd.taylor, {"directions": rng.normal(size=(2, d)), "order": order}),
        "taylor/per-point": (nd.taylor, {"directions": rng.normal(size=(n, 2, d)), "order": order}),
        "mixed_partial/full": (nd.mixed_partial, {"indices": indices, "strategy": "full"}),
        "mixed_partial/taylor": (nd.mixed_partial, {"indices": indices, "strategy": "taylor"}),
        "mixed_partial/auto": (nd.mixed_partial, {"multi_index": np.bincount(indices, minlength=d)}),
        "hvp": (nd.hvp, {"v": rng.normal(size=d)}),
        "hvp/per-point": (nd.hvp, {"v": rng.normal(size=(n, d))}),
        "divergence": (nd.divergence, {}),
        "biharmonic": (nd.biharmonic, {}),
    }[name]


PULLBACK_CASES = [
    "laplacian",
    "laplacian/psd",
    "laplacian/indefinite",
    "laplacian/per-point",
    "pure_derivatives",
    "taylor",
    "taylor/per-point",
    "mixed_partial/full",
    "mixed_partial/taylor",
    "mixed_partial/auto",
    "hvp",
    "hvp/per-point",
    "divergence",
    "biharmonic",
]


def check_pullbacks(spec, x, fn, kwargs, rng, chunk_size):
    """``vjp(fn)`` wrt params and x (separately and as ``"both"``) against finite differences of
    ``<cot, fn(model, x)>``; the output of ``vjp`` is ``fn``'s."""
    model = build_model(spec)
    out, pullback = nd.vjp(fn, model, x, wrt="both", chunk_size=chunk_size, **kwargs)
    assert_relative_close(out, fn(model, x, **kwargs), SAME_RTOL, "vjp output")
    cot = rng.normal(size=out.shape)
    grads, x_bar = pullback(cot)
    assert list(grads) == list(model.params)
    assert x_bar.shape == x.shape

    def loss_of_params(params):
        return float(np.sum(cot * fn(build_model(spec_with_params(spec, params)), x, **kwargs)))

    check_grads(loss_of_params, spec_params(spec), grads, rtol=GRAD_RTOL)
    check_grads(lambda moved: float(np.sum(cot * fn(model, moved, **kwargs))), x, x_bar, rtol=GRAD_RTOL)
    alone = nd.vjp(fn, model, x, wrt="params", chunk_size=chunk_size, **kwargs)[1](cot)
    for key in grads:
        np.testing.assert_array_equal(alone[key], grads[key])
    np.testing.assert_array_equal(nd.vjp(fn, model, x, wrt="x", chunk_size=chunk_size, **kwargs)[1](cot), x_bar)


@pytest.mark.parametrize("chunk_size", [None, 2], ids=["whole", "chunks-of-2"])
@pytest.mark.parametrize("name", PULLBACK_CASES)
def test_pullback_matches_finite_differences(name, chunk_size):
    """Every function, one fixed network (5 points, so chunks of 2 leave a remainder)."""
    rng = np.random.default_rng(sum(map(ord, name)))
    m = 3 if name == "divergence" else 2
    spec = random_spec(rng, [3, 5, 4, m], ["tanh", "softplus"])
    x = rng.uniform(-1, 1, (5, 3))
    fn, kwargs = pullback_case(name, 3, 5, rng)
    check_pullbacks(spec, x, fn, kwargs, rng, chunk_size)


@pytest.mark.property
@given(name=st.sampled_from(PULLBACK_CASES), data=st.data())
def test_pullbacks_of_random_networks_match_finite_differences(name, data):
    if name == "divergence":
        spec = data.draw(field_networks(max_d=3, activations=FD_SMOOTH), label="field")
    else:
        min_d = 2 if name == "biharmonic" else 1  # d = 1: test_biharmonic_of_one_input
        d = data.draw(st.integers(min_d, 3), label="d")
        spec = data.draw(networks(max_depth=2, max_m=2, activations=FD_SMOOTH, max_width=4, d=d), label="network")
    n = data.draw(st.integers(1, 4), label="n")
    x = data.draw(points(spec_inputs(spec), n), label="x")
    rng = np.random.default_rng(data.draw(seeds, label="seed"))
    order = data.draw(st.integers(0 if name in ("pure_derivatives", "taylor", "taylor/per-point") else 1, 4), "order")
    fn, kwargs = pullback_case(name, spec_inputs(spec), n, rng, order)
    chunk_size = data.draw(st.sampled_from([None, 1, 3]), label="chunk_size")
    check_pullbacks(spec, x, fn, kwargs, rng, chunk_size)


def test_pullback_check_catches_a_wrong_gradient(rng):
    """The finite-difference check can fail: one weight gradient of the Laplacian off by 1e-5."""
    spec = random_spec(rng, [2, 4, 1], ["tanh"])
    model, x = build_model(spec), rng.uniform(-1, 1, (3, 2))
    out, pullback = nd.vjp(nd.laplacian, model, x)
    cot = rng.normal(size=out.shape)
    grads = pullback(cot)

    def loss(params):
        return float(np.sum(cot * nd.laplacian(build_model(spec_with_params(spec, params)), x)))

    check_grads(loss, spec_params(spec), grads, rtol=GRAD_RTOL)
    norm = np.sqrt(sum(np.sum(g**2) for g in grads.values()))
    wrong = {**grads, "0.W": grads["0.W"] + 1e-5 * norm * (np.arange(grads["0.W"].size) == 0).reshape(2, 4)}
    with pytest.raises(AssertionError, match="0.W"):
        check_grads(loss, spec_params(spec), wrong, rtol=GRAD_RTOL)


# --------------------------------------------------------------------------------------------
# chunks change nothing


@pytest.mark.parametrize("name", PULLBACK_CASES)
def test_chunk_size_changes_nothing(name):
    """Outputs and ``x`` cotangents are per point (the same sums: a few ulp); parameter gradients
    are sums over points added chunk by chunk, bounded by ``sum_n |g_n|`` (``g_n``: point n alone)."""
    rng = np.random.default_rng(7 + sum(map(ord, name)))
    d, n = 3, 7
    spec = random_spec(rng, [d, 6, 5, 3 if name == "divergence" else 2], ["gelu", "sin"])
    model, x = build_model(spec), rng.uniform(-1, 1, (n, d))
    fn, kwargs = pullback_case(name, d, n, rng)
    whole, pullback = nd.vjp(fn, model, x, wrt="both", **kwargs)
    cot = rng.normal(size=whole.shape)
    whole_grads, whole_x_bar = pullback(cot)
    per_point = []
    for i in range(n):
        alone = np.zeros_like(cot)
        alone[i] = cot[i]
        per_point.append(pullback(alone)[0])
    for chunk_size in (1, 3, n, n + 5):
        assert_relative_close(
            fn(model, x, chunk_size=chunk_size, **kwargs), whole, SAME_RTOL, f"chunks of {chunk_size}"
        )
        out, pullback = nd.vjp(fn, model, x, wrt="both", chunk_size=chunk_size, **kwargs)
        assert_relative_close(out, whole, SAME_RTOL, f"vjp output in chunks of {chunk_size}")
        grads, x_bar = pullback(cot)
        assert_relative_close(x_bar, whole_x_bar, SAME_RTOL, f"x cotangent in chunks of {chunk_size}")
        for key, g in whole_grads.items():
            bound = SAME_RTOL * sum(np.abs(p[key]) for p in per_point)
            assert np.all(np.abs(grads[key] - g) <= bound), f"{key} in chunks of {chunk_size}: {grads[key]} vs {g}"


# --------------------------------------------------------------------------------------------
# bad arguments


@pytest.fixture
def model():
    """``R^3 -> R^2``."""
    return build_model(random_spec(np.random.default_rng(0), [3, 4, 2], ["tanh"]))


X = np.linspace(-1, 1, 12).reshape(4, 3)  # N = 4 points, d = 3
NAN_V = np.array([0.0, np.nan, 1.0])
ASYMMETRIC = np.array([[1.0, 2.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
ORDER_BOUNDS = f"order must be between 0 and {nd.MAX_ORDER}"

#: case -> (function, keyword arguments, error, regular expression its message must match)
BAD_CALLS = {
    # directions: (n_dir, d) or per point (N, n_dir, d); nothing broadcast
    "directions 1-d": (
        nd.taylor,
        {"directions": np.ones(3)},
        nd.ShapeError,
        r"directions must have shape \(n_dir, 3\).*got \(3,\)",
    ),
    "directions wrong d": (nd.taylor, {"directions": np.ones((2, 4))}, nd.ShapeError, r"\(n_dir, 3\).*got \(2, 4\)"),
    "directions none": (nd.taylor, {"directions": np.ones((0, 3))}, nd.ShapeError, r"got \(0, 3\)"),
    "directions none per point": (nd.taylor, {"directions": np.ones((4, 0, 3))}, nd.ShapeError, r"got \(4, 0, 3\)"),
    "directions wrong N": (
        nd.taylor,
        {"directions": np.ones((5, 2, 3))},
        nd.ShapeError,
        r"per point, \(4, n_dir, 3\); got \(5, 2, 3\)",
    ),
    "directions 1 point for 4": (nd.taylor, {"directions": np.ones((1, 2, 3))}, nd.ShapeError, r"got \(1, 2, 3\)"),
    "directions 4-d": (nd.taylor, {"directions": np.ones((4, 1, 2, 3))}, nd.ShapeError, r"got \(4, 1, 2, 3\)"),
    "directions NaN": (nd.taylor, {"directions": NAN_V[None]}, nd.NonFiniteError, r"directions contains NaN.*\(0, 1\)"),
    "directions complex": (
        nd.taylor,
        {"directions": np.ones((1, 3), complex)},
        nd.DTypeError,
        "directions must be a real",
    ),
    # v: (d,) or per point (N, d)
    "v wrong d": (
        nd.hvp,
        {"v": np.ones(4)},
        nd.ShapeError,
        r"v must have shape \(3,\) or, per point, \(4, 3\); got \(4,\)",
    ),
    "v 1 row for 4 points": (nd.hvp, {"v": np.ones((1, 3))}, nd.ShapeError, r"got \(1, 3\)"),
    "v wrong N": (nd.hvp, {"v": np.ones((5, 3))}, nd.ShapeError, r"got \(5, 3\)"),
    "v column": (nd.hvp, {"v": np.ones((3, 1))}, nd.ShapeError, r"got \(3, 1\)"),
    "v NaN": (nd.hvp, {"v": NAN_V}, nd.NonFiniteError, r"v contains NaN or Inf \(first at index \(1,\)\)"),
    "v Inf per point": (nd.hvp, {"v": np.full((4, 3), np.inf)}, nd.NonFiniteError, "v contains NaN or Inf"),
    # weights: symmetric (d, d) or per point (N, d, d)
    "weights vector": (
        nd.laplacian,
        {"weights": np.ones(3)},
        nd.ShapeError,
        r"weights must have shape \(3, 3\).*got \(3,\)",
    ),
    "weights not square": (nd.laplacian, {"weights": np.ones((3, 2))}, nd.ShapeError, r"got \(3, 2\)"),
    "weights 1 point for 4": (
        nd.laplacian,
        {"weights": np.eye(3)[None]},
        nd.ShapeError,
        r"\(4, 3, 3\); got \(1, 3, 3\)",
    ),
    "weights asymmetric": (
        nd.laplacian,
        {"weights": ASYMMETRIC},
        nd.ShapeError,
        r"symmetric \(A == A.T\); max \|A - A.T\| = 2",
    ),
    "weights asymmetric per point": (
        nd.laplacian,
        {"weights": np.stack([np.eye(3)] * 3 + [ASYMMETRIC])},
        nd.ShapeError,
        "symmetric",
    ),
    "weights NaN": (nd.laplacian, {"weights": np.diag(NAN_V)}, nd.NonFiniteError, r"weights contains NaN.*\(1, 1\)"),
    # orders and strategies
    "order negative": (nd.pure_derivatives, {"order": -1}, nd.OrderError, ORDER_BOUNDS + ", got -1"),
    "order too large": (nd.taylor, {"directions": np.eye(3), "order": nd.MAX_ORDER + 1}, nd.OrderError, ORDER_BOUNDS),
    "order float": (nd.pure_derivatives, {"order": 2.0}, nd.OrderError, "order must be an integer, got 2.0"),
    "order bool": (nd.taylor, {"directions": np.eye(3), "order": True}, nd.OrderError, "must be an integer"),
    "order string": (nd.pure_derivatives, {"order": "3"}, nd.OrderError, "must be an integer"),
    "strategy": (
        nd.mixed_partial,
        {"indices": (0, 1), "strategy": "fastest"},
        nd.ConfigError,
        "'auto', 'full' or 'taylor', got 'fastest'",
    ),
    "index out of range": (nd.mixed_partial, {"indices": (0, 3)}, nd.ShapeError, r"in \[0, 3\), got \(0, 3\)"),
    "index negative": (nd.mixed_partial, {"indices": (-1,)}, nd.ShapeError, r"in \[0, 3\)"),
    "multi_index length": (
        nd.mixed_partial,
        {"multi_index": (1, 1)},
        nd.ShapeError,
        "3 non-negative counts, got \\(1, 1\\)",
    ),
    "multi_index negative": (nd.mixed_partial, {"multi_index": (2, -1, 0)}, nd.ShapeError, "non-negative"),
    "partial order too large": (
        nd.mixed_partial,
        {"multi_index": (nd.MAX_ORDER, 1, 0)},
        nd.OrderError,
        "the order of the partial",
    ),
    # divergence needs m == d
    "divergence m != d": (nd.divergence, {}, nd.ShapeError, "as many outputs as inputs; the model maps 3 inputs to 2"),
}


@pytest.mark.parametrize("via_vjp", [False, True], ids=["call", "vjp"])
@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_bad_arguments_raise_helpful_errors(model, case, via_vjp):
    """Each bad argument raises its nnderiv error, naming the argument, its shape and what was
    expected, from the function and from ``vjp`` of it (which plans the same way)."""
    fn, kwargs, error, message = BAD_CALLS[case]
    with pytest.raises(error) as info:
        nd.vjp(fn, model, X, **kwargs) if via_vjp else fn(model, X, **kwargs)
    assert isinstance(info.value, nd.NnderivError)
    assert re.search(message, str(info.value)), f"message {str(info.value)!r} does not match {message!r}"


def test_nothing_broadcast_in_cotangents(model):
    """The cotangent must have the output's shape exactly; NaN in it is refused."""
    for fn, kwargs in [(nd.laplacian, {}), (nd.hvp, {"v": np.ones(3)}), (nd.taylor, {"directions": np.eye(3)})]:
        out, pullback = nd.vjp(fn, model, X, **kwargs)
        with pytest.raises(nd.ShapeError, match=re.escape(f"must have shape {out.shape}")):
            pullback(np.ones(out.shape[1:]))
        with pytest.raises(nd.ShapeError):
            pullback(np.ones((1, *out.shape[1:])))
        bad = np.zeros(out.shape)
        bad.flat[-1] = np.nan
        with pytest.raises(nd.NonFiniteError, match="cotangent"):
            pullback(bad)


def test_vjp_bad_wrt(model):
    with pytest.raises(nd.ConfigError, match="'params', 'x' or 'both'"):
        nd.vjp(nd.laplacian, model, X, wrt="weights")


def test_symmetry_tolerance_scales_with_the_weights(model):
    """Rounding-level asymmetry (e.g. from ``B @ B.T``) is accepted, relative to ``|A|``."""
    A = np.eye(3) * 1e6
    A[0, 1], A[1, 0] = 1e6, 1e6 * (1 + 4 * EPS)
    nd.laplacian(model, X, weights=A)
    A[1, 0] = 1e6 * (1 + 1e-6)
    with pytest.raises(nd.ShapeError, match="symmetric"):
        nd.laplacian(model, X, weights=A)


# --------------------------------------------------------------------------------------------
# the cost contract: rows propagated


@pytest.fixture
def propagated_rows(monkeypatch):
    """The row counts of every stack that went through an affine step (recorded by wrapping
    :func:`nnderiv.kernels.affine`, which every Dense layer calls)."""
    rows, affine = set(), kernels.affine

    def recording_affine(stack, W):
        rows.add(stack.shape[0])
        return affine(stack, W)

    monkeypatch.setattr(kernels, "affine", recording_affine)
    return rows


def _row_cases(d: int, rng):
    """``(what, planner, its keyword arguments, rows it must propagate)``."""
    n_dir, K = 3, 4
    psd, indefinite = weights_matrix("psd", d, rng), weights_matrix("indefinite", d, rng)
    low_rank = np.outer(np.arange(1.0, d + 1), np.arange(1.0, d + 1))  # rank 1
    per_point_psd, per_point_mixed = np.stack([np.eye(d)] * 2), np.stack([np.eye(d), -np.eye(d)])
    V, v = rng.normal(size=(n_dir, d)), rng.normal(size=d)
    cases = [
        ("laplacian", _plan_laplacian, {}, d + 2),
        ("laplacian psd", _plan_laplacian, {"weights": psd}, d + 2),
        ("laplacian rank 1", _plan_laplacian, {"weights": low_rank}, 1 + 2),
        ("laplacian negative definite", _plan_laplacian, {"weights": -psd}, d + 2 + 1),
        ("laplacian zero", _plan_laplacian, {"weights": np.zeros((d, d))}, 3),  # one zero direction
        ("laplacian per point psd", _plan_laplacian, {"weights": per_point_psd}, d + 2),
        ("laplacian per point indefinite", _plan_laplacian, {"weights": per_point_mixed}, 2 * d + 3),
        ("pure_derivatives", _plan_pure, {"order": K}, 1 + d * K),
        ("taylor", _plan_taylor, {"directions": V, "order": K}, 1 + n_dir * K),
        ("taylor per point", _plan_taylor, {"directions": np.stack([V, V]), "order": K}, 1 + n_dir * K),
        ("hvp", _plan_hvp, {"v": v, "strategy": "forward"}, 2 * d + 2),
        ("hvp per point", _plan_hvp, {"v": np.stack([v, v]), "strategy": "forward"}, 2 * d + 2),
        ("biharmonic", _plan_biharmonic, {}, 1 + 4 * d * d),
    ]
    if d >= 2:  # indefinite needs two eigenvalues of opposite signs
        cases.append(("laplacian indefinite", _plan_laplacian, {"weights": indefinite}, d + 3))
    return cases


FUNCTIONS = {
    _plan_laplacian: nd.laplacian,
    _plan_pure: nd.pure_derivatives,
    _plan_taylor: nd.taylor,
    _plan_hvp: nd.hvp,
    _plan_biharmonic: nd.biharmonic,
}


@pytest.mark.parametrize("d", [2, 3, 5])
def test_each_mode_propagates_the_rows_it_promises(d, propagated_rows):
    """``n_rows`` of each plan is the documented count, and the sweep propagates exactly that many rows.
    (d = 1 would hit the biharmonic bug, test_biharmonic_of_one_input.)"""
    rng = np.random.default_rng(d)
    model = build_model(random_spec(rng, [d, 4, 3, 2], ["tanh", "sigmoid"]))
    x = rng.uniform(-1, 1, (2, d))
    for what, planner, kwargs, expected in _row_cases(d, rng):
        assert planner(model, x, for_vjp=False, **kwargs).mode.n_rows == expected, what
        propagated_rows.clear()
        FUNCTIONS[planner](model, x, **kwargs)
        assert propagated_rows == {expected}, f"{what}: propagated {propagated_rows}, expected {expected}"


@pytest.mark.parametrize("d", [1, 2, 3, 5])
def test_divergence_and_mixed_partials_rows(d):
    """Divergence: value and gradient, ``1 + d``; a mixed partial: ``C(d + k, k)`` rows in full mode,
    ``1 + k C(n + k - 1, k)`` by interpolation over its ``n`` inputs (which one "auto" should pick:
    test_auto_strategy_picks_the_cheaper_plan)."""
    rng = np.random.default_rng(d)
    field = build_model(random_spec(rng, [d, 4, d], ["tanh"]))
    x = rng.uniform(-1, 1, (2, d))
    assert _plan_divergence(field, x, for_vjp=False).mode.n_rows == 1 + d
    for alpha in [(2,) + (0,) * (d - 1), (1,) * d, (2,) + (1,) * min(d - 1, 2) + (0,) * (d - 3), (0,) * (d - 1) + (4,)]:
        k, n = sum(alpha), np.count_nonzero(alpha)
        full, taylor = math.comb(d + k, k), 1 + k * math.comb(n + k - 1, k)
        rows = {
            s: _plan_mixed(field, x, for_vjp=False, alpha=alpha, strategy=s).mode.n_rows
            for s in ("full", "taylor", "auto")
        }
        assert rows == {"full": full, "taylor": taylor, "auto": rows["auto"]}, alpha
        assert rows["auto"] in (full, taylor)


# --------------------------------------------------------------------------------------------
# regressions: engine bugs found while writing these tests


def test_biharmonic_of_one_input(rng):
    """For ``d = 1`` the biharmonic is the fourth derivative."""
    model = build_model(random_spec(rng, [1, 5, 2], ["tanh"]))
    x = rng.uniform(-1, 1, (3, 1))
    expected = nd.pure_derivatives(model, x, order=4)[..., 0, 4]
    assert_consistent(nd.biharmonic(model, x), expected, expected, RTOL[4], "biharmonic, d = 1")


def test_mixed_partial_of_order_zero_by_interpolation(model):
    """The partial with no differentiation is the value, whatever the strategy."""
    np.testing.assert_array_equal(nd.mixed_partial(model, X, (), strategy="taylor"), model(X))


@pytest.mark.parametrize("alpha", [(1, 1, 0), (2, 1, 0), (0, 1, 1, 1)])
def test_auto_strategy_picks_the_cheaper_plan(alpha):
    rng = np.random.default_rng(0)
    d = len(alpha)
    model, x = build_model(random_spec(rng, [d, 3, 1], ["tanh"])), rng.uniform(-1, 1, (2, d))
    rows = {
        s: _plan_mixed(model, x, for_vjp=False, alpha=alpha, strategy=s).mode.n_rows for s in ("full", "taylor", "auto")
    }
    assert rows["auto"] == min(rows["full"], rows["taylor"]), rows


def test_scalar_v_is_refused_with_its_own_shape(model):
    with pytest.raises(nd.ShapeError, match=r"got \(\)"):
        nd.hvp(model, X, 1.0)


def test_per_point_psd_weights_need_no_negative_directions(rng):
    d = 4
    model = build_model(random_spec(rng, [d, 5, 1], ["tanh"]))
    x = rng.uniform(-1, 1, (3, d))
    u = rng.normal(size=(3, d))
    A = np.einsum("ni,nj->nij", u, u)  # PSD, rank 1 at every point
    assert _plan_laplacian(model, x, for_vjp=False, weights=A).mode.n_rows <= d + 2


@pytest.mark.parametrize("strategy", ["full", "taylor"])
def test_float32_models_give_float32_results(strategy):
    model = nd.MLP([2, 3, 1], seed=0, dtype="float32")
    x = np.zeros((2, 2), np.float32)
    assert nd.mixed_partial(model, x, (0, 1), strategy=strategy).dtype == np.float32
    for fn in (nd.laplacian, nd.biharmonic, nd.hessian, nd.jacobian):
        assert fn(model, x).dtype == np.float32
