"""Hand-written pullbacks (``nnderiv.vjp``) against finite differences of the scalar loss.

For an output ``out(params, x)`` of ``nd.value`` / the model / ``nd.jacobian`` / ``nd.hessian`` /
``nd.derivatives`` and a random cotangent ``cot`` of its shape, the pullback must return the
gradient of ``L = <cot, out>``; :func:`oracles.check_grads` compares it with Richardson central
differences of ``L`` along random directions. ``L`` is evaluated by the engine's forward pass, which
tests/test_full_mode.py checks against independent oracles.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from oracles import assert_relative_close, check_grads
from strategies import FD_SMOOTH, build_model, networks, points, random_spec, spec_inputs, spec_params, spec_with_params

import nnderiv as nd

#: check_grads: |<grads, v> - FD| <= GRAD_RTOL (|<grads, v>| + |grads|) + rounding. The FD error
#: (h = 1e-3, 3 Richardson levels: truncation ~h^6 L^(7)(t), rounding ~eps |L| / 2.5e-4) measured below
#: 1e-9 on 500-example runs (chains of exp make L^(7) large: h = 1e-2 was not enough); a wrong rule is
#: off by O(1).
GRAD_RTOL = 1e-7

#: chunked vs unchunked pullback: the same sums, accumulated chunk by chunk (a few ulp)
SAME_RTOL = 1e-13

small_networks = networks(max_depth=3, max_d=3, max_m=2, activations=FD_SMOOTH, max_width=4)


def forward(name, model, x, order):
    """The output of view ``name`` (``derivatives`` gives ``{k: tensor(k)}``)."""
    if name == "derivatives":
        D = nd.derivatives(model, x, order=order)
        return {k: D.tensor(k) for k in range(order + 1)}
    return {"value": nd.value, "model": nd.value, "jacobian": nd.jacobian, "hessian": nd.hessian}[name](model, x)


def contract(cotangent, output) -> float:
    """``<cot, out>``, summed over every array of a dict ``{order or name: array}``."""
    if isinstance(cotangent, dict):
        names = {"value": 0, "jacobian": 1, "hessian": 2}
        return sum(float(np.sum(c * output[names.get(k, k)])) for k, c in cotangent.items())
    return float(np.sum(cotangent * output))


def vjp_of(name, model, x, order, **kwargs):
    """``nd.vjp`` for view ``name`` (``"model"`` passes the model itself as the function)."""
    functions = {"value": nd.value, "jacobian": nd.jacobian, "hessian": nd.hessian, "derivatives": nd.derivatives}
    fn = model if name == "model" else functions[name]
    if name == "derivatives":
        kwargs["order"] = order
    return nd.vjp(fn, model, x, **kwargs)


def random_cotangent(name, out, rng, data):
    """A normal cotangent of the shape of ``out``; for ``derivatives`` a dict over a drawn subset
    of the orders, keyed by order or (for orders <= 2, drawn) by name."""
    if name != "derivatives":
        return rng.normal(size=out.shape)
    orders = data.draw(st.sets(st.sampled_from(sorted(out)), min_size=1), label="cotangent orders")
    names = {0: "value", 1: "jacobian", 2: "hessian"}
    by_name = data.draw(st.booleans(), label="keys by name")
    return {(names[k] if by_name and k in names else k): rng.normal(size=out[k].shape) for k in orders}


#: (view, order): every view, and derivatives at each order 0..4
CASES = [(name, None) for name in ("value", "model", "jacobian", "hessian")] + [("derivatives", k) for k in range(5)]


def only_point(cotangent, i):
    """The cotangent with every point but ``i`` set to zero."""
    if isinstance(cotangent, dict):
        return {k: only_point(c, i) for k, c in cotangent.items()}
    alone = np.zeros_like(cotangent)
    alone[i] = cotangent[i]
    return alone


def draw_case(spec, data):
    """Points, a view, its order (for ``derivatives``) and a seeded generator for cotangents."""
    x = data.draw(points(spec_inputs(spec)), label="x")
    name, order = data.draw(st.sampled_from(CASES), label="view, order")
    return x, name, order, np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))


def check_output(name, out, model, x, order):
    """``vjp``'s output is the forward result (up to rounding: it may run another sweep)."""
    expected = forward(name, model, x, order)
    if name == "derivatives":
        for k in range(order + 1):
            assert_relative_close(out.tensor(k), expected[k], SAME_RTOL, f"vjp output tensor({k})")
    else:
        assert_relative_close(out, expected, SAME_RTOL, f"vjp output of {name}")


# --------------------------------------------------------------------------------------------
# against finite differences


@pytest.mark.property
@pytest.mark.parametrize(("name", "order"), CASES)
@given(spec=small_networks, data=st.data())
def test_pullback_to_params_matches_finite_differences(name, order, spec, data):
    x = data.draw(points(spec_inputs(spec)), label="x")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    model = build_model(spec)
    out, pullback = vjp_of(name, model, x, order)
    check_output(name, out, model, x, order)
    cot = random_cotangent(name, forward(name, model, x, order), rng, data)
    grads = pullback(cot)
    assert list(grads) == list(model.params)

    def loss(params):
        return contract(cot, forward(name, build_model(spec_with_params(spec, params)), x, order))

    check_grads(loss, spec_params(spec), grads, rtol=GRAD_RTOL)


@pytest.mark.property
@pytest.mark.parametrize(("name", "order"), CASES)
@given(spec=small_networks, data=st.data())
def test_pullback_to_x_matches_finite_differences(name, order, spec, data):
    x = data.draw(points(spec_inputs(spec)), label="x")
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    model = build_model(spec)
    _, pullback = vjp_of(name, model, x, order, wrt="x")
    cot = random_cotangent(name, forward(name, model, x, order), rng, data)
    x_bar = pullback(cot)
    check_grads(lambda moved: contract(cot, forward(name, model, moved, order)), x, x_bar, rtol=GRAD_RTOL)


@pytest.mark.property
@given(spec=small_networks, data=st.data())
def test_pullback_to_both_is_the_pair(spec, data):
    """``wrt="both"`` returns exactly what ``"params"`` and ``"x"`` return, and it is right."""
    x, name, order, rng = draw_case(spec, data)
    model = build_model(spec)
    cot = random_cotangent(name, forward(name, model, x, order), rng, data)
    grads, x_bar = vjp_of(name, model, x, order, wrt="both")[1](cot)
    alone = vjp_of(name, model, x, order, wrt="params")[1](cot)
    for key in alone:
        np.testing.assert_array_equal(grads[key], alone[key])
    np.testing.assert_array_equal(x_bar, vjp_of(name, model, x, order, wrt="x")[1](cot))

    def loss(both):
        params, moved = both
        return contract(cot, forward(name, build_model(spec_with_params(spec, params)), moved, order))

    # both at once: one direction moving the parameters and x together
    params = spec_params(spec)
    joined = {**{f"p/{k}": v for k, v in params.items()}, "x": x}
    joined_grads = {**{f"p/{k}": v for k, v in grads.items()}, "x": x_bar}
    check_grads(
        lambda p: loss(({k[2:]: v for k, v in p.items() if k.startswith("p/")}, p["x"])),
        joined,
        joined_grads,
        rtol=GRAD_RTOL,
    )


@pytest.mark.property
@given(spec=small_networks, n=st.integers(1, 6), chunk_size=st.integers(1, 4), data=st.data())
def test_chunked_pullback_equals_the_whole(spec, n, chunk_size, data):
    x = data.draw(points(spec_inputs(spec), n), label="x")
    name = data.draw(st.sampled_from(["value", "jacobian", "hessian", "derivatives"]), label="view")
    order = data.draw(st.integers(0, 3), label="order") if name == "derivatives" else None
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), label="seed"))
    model = build_model(spec)
    cot = random_cotangent(name, forward(name, model, x, order), rng, data)
    _, pullback = vjp_of(name, model, x, order, wrt="both", chunk_size=chunk_size)
    grads, x_bar = pullback(cot)
    whole_grads, whole_x_bar = vjp_of(name, model, x, order, wrt="both")[1](cot)
    assert_relative_close(x_bar, whole_x_bar, SAME_RTOL, "chunked x_bar")  # per point: no sum over chunks
    # parameter gradients are sums over points, added in another order: a relative bound is flaky
    # under cancellation, so bound the difference by the size of the terms: sum_n |g_n| (g_n the
    # gradient of point n alone) plus the largest entry of the array (an entry may cancel inside
    # one point too), times 1e-13 (n <= 6 points, a few dozen rows per point)
    per_point = [vjp_of(name, model, x, order)[1](only_point(cot, i)) for i in range(n)]
    for key, g in whole_grads.items():
        bound = 1e-13 * (sum(np.abs(p[key]) for p in per_point) + np.abs(g).max())
        assert np.all(np.abs(grads[key] - g) <= bound), f"chunked gradient {key}: {grads[key]} vs {g}"


def test_check_grads_detects_a_wrong_gradient(rng):
    """The oracle can fail: one bias entry off by 1e-5 (relative to the gradient's norm)."""
    spec = random_spec(rng, [2, 4, 1], ["tanh"])
    model, x = build_model(spec), rng.uniform(-1, 1, (5, 2))
    cot = rng.normal(size=(5, 1, 2, 2))
    grads = nd.vjp(nd.hessian, model, x)[1](cot)

    def loss(params):
        return contract(cot, nd.hessian(build_model(spec_with_params(spec, params)), x))

    check_grads(loss, spec_params(spec), grads, rtol=GRAD_RTOL)
    norm = np.sqrt(sum(np.sum(g**2) for g in grads.values()))
    wrong = {**grads, "0.b": grads["0.b"] + np.array([1e-5 * norm, 0, 0, 0])}
    with pytest.raises(AssertionError, match="0.b"):
        check_grads(loss, spec_params(spec), wrong, rtol=GRAD_RTOL)


# --------------------------------------------------------------------------------------------
# exact cases


def test_one_layer_gradients_in_closed_form(rng):
    """``f = tanh(x W1 + b1) W2 + b2`` and ``L = <cot, f>``: ``b2_bar = sum_n cot``,
    ``W2_bar = tanh(z)^T cot``, ``b1_bar = sum_n (cot W2^T) sech^2 z``, ``W1_bar = x^T (...)``,
    ``x_bar = ((cot W2^T) sech^2 z) W1^T``. With ``cot = 1``, ``b2_bar = N``, exactly."""
    n, d, width, m = 7, 3, 5, 2
    spec = random_spec(rng, [d, width, m], ["tanh"])
    (W1, b1, _), (W2, b2, _) = spec
    x = rng.uniform(-1, 1, (n, d))
    out, pullback = nd.vjp(nd.value, build_model(spec), x, wrt="both")
    grads, x_bar = pullback(np.ones((n, m)))
    np.testing.assert_array_equal(grads["2.b"], np.full(m, float(n)))

    cot = rng.normal(size=(n, m))
    grads, x_bar = pullback(cot)
    z = x @ W1 + b1
    hidden_bar = (cot @ W2.T) / np.cosh(z) ** 2
    assert_relative_close(out, np.tanh(z) @ W2 + b2, 1e-15, "value")  # same formula, same rounding
    # sums of a few products: 1e-14 covers the different summation orders
    assert_relative_close(grads["2.b"], cot.sum(axis=0), 1e-14, "2.b")
    assert_relative_close(grads["2.W"], np.tanh(z).T @ cot, 1e-14, "2.W")
    assert_relative_close(grads["0.b"], hidden_bar.sum(axis=0), 1e-14, "0.b")
    assert_relative_close(grads["0.W"], x.T @ hidden_bar, 1e-14, "0.W")
    assert_relative_close(x_bar, hidden_bar @ W1.T, 1e-14, "x_bar")


def test_one_layer_jacobian_gradient_in_closed_form(rng):
    """``J[n, i, j] = sum_k W2[k, i] sech^2(z[n, k]) W1[j, k]``, so for ``L = <C, J>`` the output
    bias gets no gradient and ``W2_bar[k, i] = sum_{n, j} C[n, i, j] sech^2(z[n, k]) W1[j, k]``."""
    n, d, width, m = 4, 2, 3, 2
    spec = random_spec(rng, [d, width, m], ["tanh"])
    (W1, b1, _), _ = spec
    x = rng.uniform(-1, 1, (n, d))
    cot = rng.normal(size=(n, m, d))
    grads = nd.vjp(nd.jacobian, build_model(spec), x)[1](cot)
    np.testing.assert_array_equal(grads["2.b"], 0.0)
    sech2 = 1 / np.cosh(x @ W1 + b1) ** 2
    expected = np.einsum("nk,jk,nij->ki", sech2, W1, cot)
    assert_relative_close(grads["2.W"], expected, 1e-14, "2.W of the jacobian loss")


def test_derivatives_cotangent_forms_agree(rng):
    """A cotangent given by order, by name, or as a ``Derivatives`` gives the same gradients;
    orders left out count as zero."""
    spec = random_spec(rng, [2, 4, 4, 1], ["softplus", "sin"])
    model, x = build_model(spec), rng.uniform(-1, 1, (3, 2))
    D, pullback = nd.vjp(nd.derivatives, model, x, order=2)
    cot = {k: rng.normal(size=D.tensor(k).shape) for k in range(3)}
    by_order = pullback(cot)
    by_name = pullback({"value": cot[0], "jacobian": cot[1], "hessian": cot[2]})
    as_derivatives = pullback(nd.derivatives(model, x, order=2))
    from_tensors = pullback({k: D.tensor(k) for k in range(3)})
    only_hessian = pullback({2: cot[2]})
    hessian_view = nd.vjp(nd.hessian, model, x)[1](cot[2])
    for key in by_order:
        np.testing.assert_array_equal(by_name[key], by_order[key])
        assert_relative_close(as_derivatives[key], from_tensors[key], 1e-15, key)
        assert_relative_close(only_hessian[key], hessian_view[key], 1e-15, key)  # the same order-2 sweep


def test_pullback_through_relu_warns_for_second_order(rng):
    spec = random_spec(rng, [2, 4, 1], ["relu"])
    model, x = build_model(spec), rng.uniform(-1, 1, (3, 2))
    nd.vjp(nd.jacobian, model, x)  # first order: no warning (warnings are errors here)
    with pytest.warns(nd.NnderivWarning, match="relu"):
        nd.vjp(nd.hessian, model, x)
