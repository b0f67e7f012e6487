"""Optimisers against steps computed by hand, purity of step(), validation."""

import numpy as np
import pytest

import nnderiv as nd


def params_and_grads(dtype=np.float64):
    params = {"a": np.array([1.0, -2.0, 3.0], dtype=dtype), "b": np.array([[0.5, 0.0]], dtype=dtype)}
    grads = {"a": np.array([0.5, 1.0, -2.0], dtype=dtype), "b": np.array([[4.0, -1e-3]], dtype=dtype)}
    return params, grads


def test_sgd_is_theta_minus_lr_g():
    params, grads = params_and_grads()
    new = nd.SGD(lr=0.1).step(params, grads)
    for name in params:  # the same floating-point expression: bit for bit
        np.testing.assert_array_equal(new[name], params[name] - 0.1 * grads[name])
    np.testing.assert_allclose(new["b"], [[0.1, 1e-4]], rtol=1e-15)


def test_sgd_momentum_two_steps_by_hand():
    theta, g1, g2 = np.array([1.0]), np.array([2.0]), np.array([-1.0])
    sgd = nd.SGD(lr=0.5, momentum=0.9)
    theta1 = sgd.step({"w": theta}, {"w": g1})["w"]  # v = 2,            theta = 1 - 0.5 * 2 = 0
    theta2 = sgd.step({"w": theta1}, {"w": g2})["w"]  # v = 0.9 * 2 - 1 = 0.8, theta = 0 - 0.4
    np.testing.assert_allclose(theta1, [0.0], atol=1e-15)
    np.testing.assert_allclose(theta2, [-0.4], rtol=1e-15)


def test_adam_first_step_moves_every_entry_by_lr():
    params, grads = params_and_grads()
    new = nd.Adam(lr=0.01).step(params, grads)
    for name in params:
        step = params[name] - new[name]
        # |step| = lr * |g| / (|g| + eps): lr up to eps / |g| <= 1e-5 relative (smallest |g| is 1e-3)
        np.testing.assert_allclose(np.abs(step), 0.01, rtol=1e-5)
        np.testing.assert_array_equal(np.sign(step), np.sign(grads[name]))


def test_adam_on_a_quadratic_matches_the_formula_by_hand():
    curvature, theta = np.array([1.0, 10.0]), np.array([1.0, 1.0])  # f = sum(c theta^2) / 2, g = c theta
    lr, b1, b2, eps = 0.05, 0.8, 0.99, 1e-8
    adam = nd.Adam(lr=lr, betas=(b1, b2), eps=eps)
    expected, m, v = theta.copy(), np.zeros(2), np.zeros(2)
    for t in range(1, 6):
        g = curvature * expected
        m, v = b1 * m + (1 - b1) * g, b2 * v + (1 - b2) * g * g
        expected = expected - lr * (m / (1 - b1**t)) / (np.sqrt(v / (1 - b2**t)) + eps)
        theta = adam.step({"w": theta}, {"w": curvature * theta})["w"]
        np.testing.assert_allclose(theta, expected, rtol=1e-14)
    assert adam.state["w"]["t"] == 5
    assert np.all(np.abs(theta) < 1.0)  # it descends


def test_adam_converges_on_a_quadratic():
    theta, adam = np.array([3.0, -2.0]), nd.Adam(lr=0.1)
    for _ in range(500):
        theta = adam.step({"w": theta}, {"w": theta})["w"]
    assert np.all(np.abs(theta) < 1e-2)


@pytest.mark.parametrize("optimizer", [nd.SGD(0.1, momentum=0.9), nd.Adam(0.1)], ids=["sgd", "adam"])
def test_step_returns_new_arrays_and_never_writes_its_inputs(optimizer):
    params, grads = params_and_grads()
    params_before = {k: v.copy() for k, v in params.items()}
    grads_before = {k: v.copy() for k, v in grads.items()}
    for _ in range(2):
        new = optimizer.step(params, grads)
        grads["a"] += 1.0  # the caller may reuse its gradient arrays: the optimiser's state must not alias them
        grads["a"] -= 1.0
    for name in params:
        assert new[name] is not params[name] and new[name] is not grads[name]
        np.testing.assert_array_equal(params[name], params_before[name])
        np.testing.assert_array_equal(grads[name], grads_before[name])
    for state in optimizer.state.values():
        for moment in state.values():
            assert not any(moment is g for g in grads.values())


@pytest.mark.parametrize("optimizer", [nd.SGD(0.1, momentum=0.5), nd.Adam(0.1)], ids=["sgd", "adam"])
def test_float32_stays_float32(optimizer):
    params, grads = params_and_grads(np.float32)
    grads = {k: g.astype(np.float64) for k, g in grads.items()}  # float64 gradients are cast to the parameter's dtype
    for _ in range(2):
        params = optimizer.step(params, grads)
    assert all(p.dtype == np.float32 for p in params.values())
    assert all(m.dtype == np.float32 for s in optimizer.state.values() for m in s.values() if isinstance(m, np.ndarray))


def test_state_is_kept_per_parameter_name():
    adam = nd.Adam(0.1)
    adam.step({"a": np.ones(2)}, {"a": np.ones(2)})
    adam.step({"a": np.ones(2), "b": np.ones(3)}, {"a": np.ones(2), "b": np.ones(3)})
    assert adam.state["a"]["t"] == 2 and adam.state["b"]["t"] == 1
    adam.reset()
    assert adam.state == {}


def test_grads_must_name_exactly_the_parameters():
    params, grads = params_and_grads()
    with pytest.raises(nd.ArchitectureError, match=r"unknown names: \['c'\].*missing names: \[\]"):
        nd.Adam().step(params, dict(grads, c=np.zeros(1)))
    with pytest.raises(nd.ArchitectureError, match=r"missing names: \['b'\]"):
        nd.SGD(0.1).step(params, {"a": grads["a"]})


def test_shape_dtype_and_finiteness_of_grads_are_checked():
    params, grads = params_and_grads()
    with pytest.raises(nd.ShapeError, match="gradient of 'a'"):
        nd.SGD(0.1).step(params, dict(grads, a=np.zeros((3, 1))))
    with pytest.raises(nd.NonFiniteError, match="gradient of 'b'"):
        nd.SGD(0.1).step(params, dict(grads, b=np.array([[np.inf, 0.0]])))
    with pytest.raises(nd.DTypeError, match="gradient of 'a'"):
        nd.SGD(0.1).step(params, dict(grads, a=np.array(["x", "y", "z"])))
    with pytest.raises(nd.DTypeError, match="parameter 'a'"):
        nd.SGD(0.1).step(dict(params, a=np.array([1, 2, 3])), grads)


def test_a_failed_step_leaves_the_state_untouched():
    adam = nd.Adam(0.1)
    params, grads = params_and_grads()
    adam.step(params, grads)
    state_before = {k: dict(v) for k, v in adam.state.items()}
    with pytest.raises(nd.ShapeError):
        adam.step(params, dict(grads, b=np.zeros(7)))
    assert adam.state == state_before


def test_state_of_another_shape_is_refused():
    adam = nd.Adam(0.1)
    adam.step({"w": np.ones(2)}, {"w": np.ones(2)})
    with pytest.raises(nd.ShapeError, match="reset"):
        adam.step({"w": np.ones(3)}, {"w": np.ones(3)})


@pytest.mark.parametrize(
    "make",
    [
        lambda: nd.SGD(0.0),
        lambda: nd.SGD(-1.0),
        lambda: nd.SGD(float("nan")),
        lambda: nd.SGD("0.1"),
        lambda: nd.SGD(0.1, momentum=1.0),
        lambda: nd.Adam(lr=0),
        lambda: nd.Adam(betas=(0.9,)),
        lambda: nd.Adam(betas=(0.9, 1.5)),
        lambda: nd.Adam(eps=0.0),
    ],
)
def test_bad_hyperparameters_fail_loudly(make):
    with pytest.raises(nd.NnderivError, match="lr|momentum|betas|eps"):
        make()


def test_params_and_grads_must_be_dicts():
    with pytest.raises(nd.NnderivError, match="dicts"):
        nd.SGD(0.1).step([np.ones(2)], [np.ones(2)])


# --------------------------------------------------------------------------------------------
# L-BFGS (full batch)


def _fit_problem():
    model = nd.MLP([1, 8, 1], activation="tanh", seed=0)
    x = np.linspace(-1, 1, 32)[:, None]
    return model, nd.MSE("value", "y"), {"x": x, "y": np.sin(2 * x)}


def test_lbfgs_decreases_the_loss_monotonically_and_beats_adam():
    model, loss, batch = _fit_problem()
    start, _ = loss.value_and_grad(model, batch)
    losses = nd.optim.lbfgs(model, loss, batch, 300)
    assert losses[-1] < 1e-5 < start
    assert all(b <= a for a, b in zip([start, *losses], losses))
    final, _ = loss.value_and_grad(model, batch)
    assert final == losses[-1]  # the model is left at the last accepted point
    adam_model, _, _ = _fit_problem()
    history = nd.fit(adam_model, loss, batch, optimizer=nd.Adam(1e-2), epochs=300, progress=False)
    assert losses[-1] < history.loss[-1]


def test_lbfgs_stops_at_a_stationary_point_and_on_zero_iterations():
    model = nd.MLP([1, 4, 1], activation="tanh", seed=0)
    x = np.linspace(-1, 1, 8)[:, None]
    batch = {"x": x, "y": model(x)}  # already exact: zero gradient
    assert nd.optim.lbfgs(model, nd.MSE("value", "y"), batch, 10) == []
    model, loss, batch = _fit_problem()
    before = {name: value.copy() for name, value in model.params.items()}
    assert nd.optim.lbfgs(model, loss, batch, 0) == []
    for name, value in model.params.items():
        np.testing.assert_array_equal(value, before[name])


@pytest.mark.parametrize(("kwargs", "match"), [({"iterations": -1}, "iterations"), ({"memory": 0}, "memory")])
def test_lbfgs_rejects_bad_settings(kwargs, match):
    model, loss, batch = _fit_problem()
    arguments = {"iterations": 5, **kwargs}
    with pytest.raises(nd.ConfigError, match=match):
        nd.optim.lbfgs(model, loss, batch, arguments.pop("iterations"), **arguments)
