"""Losses: values and cotangents against finite differences, in the component and in the parameters."""

import numpy as np
import pytest

import nnderiv as nd
from nnderiv.losses import WeightedSum

N, M, D_IN = 3, 2, 2


class TensorStack:
    """A stand-in for Derivatives whose tensors are independent arrays (no symmetry), so that a
    finite difference in one entry of a component is a difference in exactly that entry."""

    def __init__(self, tensors):
        self.tensors = tensors
        self.n_inputs = D_IN

    def tensor(self, k):
        return self.tensors[k]

    def partial(self, indices):
        return self.tensors[len(indices)][(Ellipsis, *indices)]


def random_stack(rng, order=3):
    return TensorStack({k: rng.normal(size=(N, M) + (D_IN,) * k) for k in range(order + 1)})


def batch_for(rng, component_shapes):
    return {"x": np.zeros((N, D_IN)), **{key: rng.normal(size=shape) for key, shape in component_shapes.items()}}


COMPONENTS = [  # (component, order k, shape of the component)
    ("value", 0, (N, M)),
    ("jacobian", 1, (N, M, D_IN)),
    ("hessian", 2, (N, M, D_IN, D_IN)),
    (3, 3, (N, M, D_IN, D_IN, D_IN)),
    ((0, 1), 2, (N, M)),
    ((1, 1, 0), 3, (N, M)),
]


@pytest.mark.parametrize("with_target", [True, False])
@pytest.mark.parametrize("component, k, shape", COMPONENTS)
def test_mse_value_and_cotangent_match_finite_differences_in_the_component(component, k, shape, with_target):
    rng = np.random.default_rng(0)
    stack = random_stack(rng)
    batch = batch_for(rng, {"t": shape})
    loss = nd.MSE(component, "t" if with_target else None)
    value, cotangent = loss(stack, batch)
    residual = loss.component_of(stack) - (batch["t"] if with_target else 0)
    assert value == pytest.approx(np.mean(residual**2), rel=1e-14)
    assert set(cotangent) == {k} and cotangent[k].shape == stack.tensor(k).shape
    h = 1e-6  # the loss is quadratic: central differences are exact up to rounding (~1e-10 relative)
    for _ in range(5):
        entry = tuple(int(rng.integers(size)) for size in stack.tensor(k).shape)
        plus, minus = random_stack_copy(stack), random_stack_copy(stack)
        plus.tensors[k][entry] += h
        minus.tensors[k][entry] -= h
        fd = (loss(plus, batch)[0] - loss(minus, batch)[0]) / (2 * h)
        assert cotangent[k][entry] == pytest.approx(fd, rel=1e-6, abs=1e-10)


def random_stack_copy(stack):
    return TensorStack({k: t.copy() for k, t in stack.tensors.items()})


def test_mse_is_the_mean_over_all_entries_ddn_convention():
    stack = TensorStack({0: np.zeros((N, M)), 1: np.ones((N, M, D_IN))})
    value, cotangent = nd.MSE("jacobian")(stack, {"x": None})
    assert value == 1.0
    np.testing.assert_allclose(cotangent[1], 2.0 / (N * M * D_IN))


def test_weighted_sum_adds_values_and_cotangents():
    rng = np.random.default_rng(1)
    stack = random_stack(rng)
    batch = batch_for(rng, {"y": (N, M), "dy": (N, M, D_IN)})
    a, b, c = nd.MSE("value", "y"), nd.MSE("jacobian", "dy"), nd.MSE((0, 0))
    loss = a + 0.1 * b + c * 3
    value, cotangent = loss(stack, batch)
    (va, ca), (vb, cb), (vc, cc) = a(stack, batch), b(stack, batch), c(stack, batch)
    assert value == pytest.approx(va + 0.1 * vb + 3 * vc, rel=1e-14)
    np.testing.assert_allclose(cotangent[0], ca[0], rtol=1e-14)
    np.testing.assert_allclose(cotangent[1], 0.1 * cb[1], rtol=1e-14)
    np.testing.assert_allclose(cotangent[2], 3 * cc[2], rtol=1e-14)
    assert loss.order == 2
    assert [w for w, _ in loss.terms] == [1.0, 0.1, 3.0]


def test_weighted_sums_flatten_and_scale_and_python_sum_works():
    a, b = nd.MSE("value"), nd.MSE("jacobian")
    loss = 2 * (a + 0.5 * b)
    assert isinstance(loss, WeightedSum)
    assert [(w, t) for w, t in loss.terms] == [(2.0, a), (1.0, b)]
    assert sum([a, b]).terms == [(1.0, a), (1.0, b)]
    assert repr(a + b) == "1.0 * MSE('value', None) + 1.0 * MSE('jacobian', None)"


def test_same_order_terms_accumulate_into_one_cotangent():
    stack = random_stack(np.random.default_rng(2))
    loss = nd.MSE("jacobian") + nd.MSE("jacobian")
    value, cotangent = loss(stack, {"x": None})
    single_value, single = nd.MSE("jacobian")(stack, {"x": None})
    assert value == pytest.approx(2 * single_value)
    np.testing.assert_allclose(cotangent[1], 2 * single[1])


# ------------------------------------------------------------------ gradients w.r.t. the parameters


def model_and_batch(dtype="float64"):
    rng = np.random.default_rng(3)
    model = nd.MLP([2, 6, 5, 2], activation="tanh", seed=0, dtype=dtype)
    for name, theta in model.params.items():  # non-zero biases, so that no derivative vanishes by symmetry
        if name.endswith(".b"):
            theta[:] = rng.normal(size=theta.shape)
    x = rng.uniform(-1, 1, (7, 2))
    batch = {
        "x": x,
        "y": rng.normal(size=(7, 2)),
        "dy": rng.normal(size=(7, 2, 2)),
        "d2y": rng.normal(size=(7, 2, 2, 2)),
        "f01": rng.normal(size=(7, 2)),
    }
    return model, batch


LOSSES = {
    "value": nd.MSE("value", "y"),
    "jacobian": nd.MSE("jacobian", "dy"),
    "hessian": nd.MSE("hessian", "d2y"),
    "tensor3": nd.MSE(3),
    "partial": nd.MSE((0, 1), "f01"),
    "partial3": nd.MSE((1, 1, 0)),
    "sum": nd.MSE("value", "y") + 0.1 * nd.MSE("jacobian", "dy") + 0.01 * nd.MSE((0, 0)),
}


def loss_at(loss, model, batch, params):
    model.set_params(params)
    D = nd.derivatives(model, batch["x"], order=loss.order)
    return loss(D, batch)[0]


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_value_and_grad_matches_central_differences_along_random_directions(name):
    loss = LOSSES[name]
    model, batch = model_and_batch()
    params = {k: v.copy() for k, v in model.params.items()}
    value, grads = loss.value_and_grad(model, batch)
    assert value == pytest.approx(loss_at(loss, model, batch, params), rel=1e-14)
    assert {k: g.shape for k, g in grads.items()} == {k: p.shape for k, p in params.items()}
    rng = np.random.default_rng(4)
    h = 1e-5  # central differences: error O(h^2) ~ 1e-10 relative to the curvature of the loss
    for _ in range(3):
        direction = {k: rng.normal(size=p.shape) for k, p in params.items()}
        plus = loss_at(loss, model, batch, {k: p + h * direction[k] for k, p in params.items()})
        minus = loss_at(loss, model, batch, {k: p - h * direction[k] for k, p in params.items()})
        directional = sum(float(np.sum(grads[k] * direction[k])) for k in params)
        assert directional == pytest.approx((plus - minus) / (2 * h), rel=1e-6, abs=1e-9)


def test_value_and_grad_in_float32_stays_float32():
    model, batch = model_and_batch("float32")
    value, grads = (nd.MSE("value", "y") + nd.MSE("jacobian", "dy")).value_and_grad(model, batch)
    assert np.isfinite(value) and all(g.dtype == np.float32 for g in grads.values())


# ------------------------------------------------------------------ bad input


def test_bad_components_and_targets_fail_loudly():
    with pytest.raises(nd.NnderivError, match="component"):
        nd.MSE("laplacian")
    with pytest.raises(nd.OrderError, match="component"):
        nd.MSE(-1)
    with pytest.raises(nd.NnderivError, match="input indices"):
        nd.MSE((0, -1))
    with pytest.raises(nd.NnderivError, match="target"):
        nd.MSE("value", target=3)


def test_target_problems_name_the_key():
    model, batch = model_and_batch()
    D = nd.derivatives(model, batch["x"], order=1)
    with pytest.raises(nd.NnderivError, match="'missing'"):
        nd.MSE("value", "missing")(D, batch)
    with pytest.raises(nd.ShapeError, match=r"batch\['dy'\].*D.value \(7, 2\)"):
        nd.MSE("value", "dy")(D, batch)  # nothing is broadcast
    bad = dict(batch, y=np.full((7, 2), np.nan))
    with pytest.raises(nd.NonFiniteError, match="'y'"):
        nd.MSE("value", "y")(D, bad)


def test_bad_weights_and_operands():
    loss = nd.MSE("value")
    with pytest.raises(TypeError):
        loss * "2"
    with pytest.raises(TypeError):
        loss + 1
    with pytest.raises(nd.NonFiniteError, match="weight"):
        loss * float("nan")


def test_value_and_grad_needs_a_batch_with_x():
    model, _ = model_and_batch()
    with pytest.raises(nd.NnderivError, match="'x'"):
        nd.MSE("value").value_and_grad(model, {"y": np.zeros((3, 2))})


# ------------------------------------------------------------------ OperatorMSE: any operator, any points

OperatorMSE = nd.losses.OperatorMSE

OPERATOR_LOSSES = {  # name: (loss, the same loss written out with the public operators)
    "poisson": (
        OperatorMSE(nd.laplacian, "y", scale=-1.0),
        lambda m, b: np.mean((-nd.laplacian(m, b["x"]) - b["y"]) ** 2),
    ),
    "boundary": (
        OperatorMSE(nd.value, "y", points="xb"),
        lambda m, b: np.mean((m(b["xb"]) - b["y"]) ** 2),
    ),
    "weighted laplacian": (
        OperatorMSE(nd.laplacian, weights=np.array([[2.0, 1.0], [1.0, -1.0]])),
        lambda m, b: np.mean(np.einsum("ij,nmij->nm", [[2.0, 1.0], [1.0, -1.0]], nd.hessian(m, b["x"])) ** 2),
    ),
    "jacobian column": (
        OperatorMSE(nd.jacobian, "y", scale=0.5, select=(..., 1)),
        lambda m, b: np.mean((0.5 * nd.jacobian(m, b["x"])[..., 1] - b["y"]) ** 2),
    ),
    "pure third": (
        OperatorMSE(nd.pure_derivatives, order=3, select=(..., 3)),
        lambda m, b: np.mean(nd.pure_derivatives(m, b["x"], order=3)[..., 3] ** 2),
    ),
    "mixed": (
        OperatorMSE(nd.mixed_partial, "f01", points="xb", indices=(0, 0, 1)),
        lambda m, b: np.mean((nd.mixed_partial(m, b["xb"], (0, 0, 1)) - b["f01"]) ** 2),
    ),
    "hvp": (
        OperatorMSE(nd.hvp, "dy", v=np.array([1.0, -2.0])),
        lambda m, b: np.mean((nd.hvp(m, b["x"], np.array([1.0, -2.0])) - b["dy"]) ** 2),
    ),
    "taylor": (
        OperatorMSE(nd.taylor, directions=[[1.0, 1.0]], order=2),
        lambda m, b: np.mean(nd.taylor(m, b["x"], [[1.0, 1.0]], order=2) ** 2),
    ),
    "divergence": (OperatorMSE(nd.divergence), lambda m, b: np.mean(nd.divergence(m, b["x"]) ** 2)),
    "biharmonic": (OperatorMSE(nd.biharmonic), lambda m, b: np.mean(nd.biharmonic(m, b["x"]) ** 2)),
    "repeated select": (  # an index used twice: the pullback must add, not overwrite
        OperatorMSE(nd.value, select=(slice(None), [0, 0, 1])),
        lambda m, b: np.mean(m(b["x"])[:, [0, 0, 1]] ** 2),
    ),
}


def operator_batch():
    model, batch = model_and_batch()
    batch["xb"] = np.random.default_rng(5).uniform(-1, 1, (7, 2))
    return model, batch


def assert_gradient_matches_central_differences(loss, model, batch, grads, seed=4):
    params = {k: v.copy() for k, v in model.params.items()}
    rng = np.random.default_rng(seed)
    h = 1e-5  # central differences: error O(h^2) ~ 1e-10 relative to the curvature of the loss
    for _ in range(3):
        direction = {k: rng.normal(size=p.shape) for k, p in params.items()}
        values = []
        for sign in (1, -1):
            model.set_params({k: p + sign * h * direction[k] for k, p in params.items()})
            values.append(loss.value_and_grad(model, batch)[0])
        directional = sum(float(np.sum(grads[k] * direction[k])) for k in params)
        assert directional == pytest.approx((values[0] - values[1]) / (2 * h), rel=1e-6, abs=1e-9)
    model.set_params(params)


@pytest.mark.parametrize("name", sorted(OPERATOR_LOSSES))
def test_operator_mse_value_is_the_formula_and_its_gradient_matches_central_differences(name):
    loss, formula = OPERATOR_LOSSES[name]
    model, batch = operator_batch()
    value, grads = loss.value_and_grad(model, batch)
    assert value == pytest.approx(formula(model, batch), rel=1e-12)
    assert {k: g.shape for k, g in grads.items()} == {k: p.shape for k, p in model.params.items()}
    assert_gradient_matches_central_differences(loss, model, batch, grads)


def test_operator_mse_laplacian_agrees_with_the_trace_of_the_full_hessian_loss():
    """The same loss through two modes: collapsed Laplacian (OperatorMSE) and full Hessian (MSE)."""

    class TraceMSE(nd.Loss):
        order = 2

        def __call__(self, D, batch):
            trace = np.trace(D.hessian, axis1=2, axis2=3)
            cot = (2.0 / trace.size) * trace
            return float(np.mean(trace**2)), {2: cot[:, :, None, None] * np.eye(D.n_inputs)}

    model, batch = operator_batch()
    value, grads = OperatorMSE(nd.laplacian).value_and_grad(model, batch)
    full_value, full_grads = TraceMSE().value_and_grad(model, batch)
    assert value == pytest.approx(full_value, rel=1e-12)
    for name in grads:
        np.testing.assert_allclose(grads[name], full_grads[name], rtol=1e-10, atol=1e-13)


def test_mixed_sums_add_values_and_gradients_of_both_kinds_of_terms():
    model, batch = operator_batch()
    a, b = nd.MSE("value", "y"), nd.MSE("jacobian", "dy")
    c, d = OperatorMSE(nd.laplacian, "y", scale=-1.0), OperatorMSE(nd.value, points="xb")
    loss = a + 0.1 * c + 2.0 * b + d * 3
    assert loss.order == 1  # the shared sweep: the Laplacian runs its own
    value, grads = loss.value_and_grad(model, batch)
    parts = [(1.0, a), (0.1, c), (2.0, b), (3.0, d)]
    results = [(w, term.value_and_grad(model, batch)) for w, term in parts]
    assert value == pytest.approx(sum(w * v for w, (v, _) in results), rel=1e-13)
    for name in grads:
        expected = sum(w * g[name] for w, (_, g) in results)
        np.testing.assert_allclose(grads[name], expected, rtol=1e-12, atol=1e-15)
    assert_gradient_matches_central_differences(loss, model, batch, grads)


def test_a_mixed_sum_shares_one_derivatives_sweep_among_its_mse_terms(monkeypatch):
    import nnderiv.losses as losses_module

    calls = []

    def counting_vjp(fn, *args, **kwargs):
        calls.append((fn.__name__, kwargs.get("order")))
        return nd.vjp(fn, *args, **kwargs)

    monkeypatch.setattr(losses_module, "vjp", counting_vjp)
    model, batch = operator_batch()
    loss = nd.MSE("value", "y") + nd.MSE((0, 1), "f01") + OperatorMSE(nd.laplacian) + nd.MSE("jacobian", "dy")
    loss.value_and_grad(model, batch)
    assert sorted(calls) == [("derivatives", 2), ("laplacian", None)]


def test_model_losses_defined_by_value_and_grad_compose():
    class Weights(nd.Loss):  # an L2 penalty on the parameters: a model loss without operators
        order = None

        def value_and_grad(self, model, batch):
            return sum(float(np.sum(p**2)) for p in model.params.values()), {k: 2 * p for k, p in model.params.items()}

    model, batch = operator_batch()
    loss = nd.MSE("value", "y") + 1e-3 * Weights()
    value, grads = loss.value_and_grad(model, batch)
    mse, mse_grads = nd.MSE("value", "y").value_and_grad(model, batch)
    assert value == pytest.approx(mse + 1e-3 * sum(np.sum(p**2) for p in model.params.values()), rel=1e-13)
    np.testing.assert_allclose(grads["0.W"], mse_grads["0.W"] + 2e-3 * model.params["0.W"], rtol=1e-12)
    assert (Weights() + OperatorMSE(nd.value)).order is None


def test_operator_mse_in_float32_stays_float32():
    model, batch = model_and_batch("float32")
    value, grads = OperatorMSE(nd.laplacian, "y", scale=-1.0).value_and_grad(model, batch)
    assert np.isfinite(value) and all(g.dtype == np.float32 for g in grads.values())


def test_fit_trains_a_boundary_value_problem_with_operator_losses():
    rng = np.random.default_rng(6)
    x, xb = rng.uniform(0, 1, (32, 1)), rng.integers(0, 2, (32, 1)).astype(float)
    data = {"x": x, "f": np.full((32, 1), 2.0), "xb": xb, "g": np.zeros((32, 1))}  # -u'' = 2, u(0) = u(1) = 0
    loss = OperatorMSE(nd.laplacian, "f", scale=-1.0) + OperatorMSE(nd.value, "g", points="xb")
    model = nd.MLP([1, 8, 1], activation="tanh", seed=0)
    history = nd.fit(model, loss, data, optimizer=nd.Adam(1e-2), epochs=100, progress=False)
    assert history.loss[-1] < 0.1 * history.loss[0]


def test_operator_mse_repr_and_weighted_sum_repr():
    loss = OperatorMSE(nd.laplacian, "f", scale=-1.0) + 0.5 * OperatorMSE(nd.value, "g", points="xb")
    assert repr(loss) == (
        "1.0 * OperatorMSE(nd.laplacian, 'f', points='x', scale=-1.0) + "
        "0.5 * OperatorMSE(nd.value, 'g', points='xb', scale=1.0)"
    )


def test_bad_operator_losses_fail_loudly_at_construction():
    with pytest.raises(nd.ConfigError, match="nd.MSE"):
        OperatorMSE(nd.derivatives, order=2)
    with pytest.raises(nd.ConfigError, match="nd.laplacian"):  # lists what is supported
        OperatorMSE(np.sin)
    with pytest.raises(nd.ConfigError, match="target"):
        OperatorMSE(nd.laplacian, 3)
    with pytest.raises(nd.ConfigError, match="points"):
        OperatorMSE(nd.laplacian, points=None)
    for scale in (float("nan"), "2", True):
        with pytest.raises(nd.ConfigError, match="scale"):
            OperatorMSE(nd.laplacian, scale=scale)
    with pytest.raises(nd.ConfigError, match="wrt"):
        OperatorMSE(nd.laplacian, wrt="x")


def test_bad_operator_batches_fail_loudly_and_name_the_problem():
    model, batch = operator_batch()
    with pytest.raises(nd.ConfigError, match=r"batch\['x_boundary'\].*\['d2y', 'dy', 'f01', 'x', 'xb', 'y'\]"):
        OperatorMSE(nd.value, points="x_boundary").value_and_grad(model, batch)
    with pytest.raises(nd.ConfigError, match=r"batch\['missing'\]"):
        OperatorMSE(nd.value, "missing").value_and_grad(model, batch)
    with pytest.raises(nd.ShapeError, match=r"batch\['dy'\].*nd.laplacian \(7, 2\)"):
        OperatorMSE(nd.laplacian, "dy").value_and_grad(model, batch)  # nothing is broadcast
    with pytest.raises(nd.ShapeError, match=r"select=\(Ellipsis, 5\).*\(7, 2, 2\)"):
        OperatorMSE(nd.jacobian, select=(..., 5)).value_and_grad(model, batch)
    with pytest.raises(nd.ShapeError, match="x must have shape"):
        OperatorMSE(nd.value, points="y").value_and_grad(model, dict(batch, y=np.zeros((7, 3))))
    with pytest.raises(nd.NonFiniteError, match="'y'"):
        OperatorMSE(nd.value, "y").value_and_grad(model, dict(batch, y=np.full((7, 2), np.inf)))
    with pytest.raises(nd.OrderError):
        OperatorMSE(nd.pure_derivatives, order=-1).value_and_grad(model, batch)


def test_operator_losses_are_not_evaluated_on_shared_derivatives():
    model, batch = operator_batch()
    D = nd.derivatives(model, batch["x"], order=2)
    with pytest.raises(nd.ConfigError, match="value_and_grad"):
        OperatorMSE(nd.laplacian)(D, batch)
    with pytest.raises(nd.ConfigError, match=r"OperatorMSE\(nd.laplacian.*value_and_grad"):
        (nd.MSE("value") + OperatorMSE(nd.laplacian))(D, batch)


@pytest.mark.parametrize(
    ("fn", "kwargs", "select"),
    [
        (nd.laplacian, {}, None),
        (nd.pure_derivatives, {"order": 3}, (..., 3)),
        (nd.hvp, {"v": "per point"}, None),  # a per-point argument: never chunked
    ],
)
def test_operator_mse_in_cache_chunks_equals_one_sweep(fn, kwargs, select, monkeypatch):
    from nnderiv import engine

    model = nd.MLP([3, 16, 16, 1], activation="tanh", seed=0)
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (300, 3))
    kwargs = {key: rng.normal(size=(300, 3)) if value == "per point" else value for key, value in kwargs.items()}
    output = fn(model, x, **kwargs)
    target = rng.normal(size=(output if select is None else output[select]).shape)
    loss = nd.OperatorMSE(fn, "t", select=select, **kwargs)
    whole_value, whole_grads = loss.value_and_grad(model, {"x": x, "t": target})
    monkeypatch.setattr(engine, "PULLBACK_CACHE_BYTES", 1)  # the smallest chunks: MIN_CACHE_CHUNK points
    monkeypatch.setattr(engine, "MIN_CACHE_CHUNK", 64)
    value, grads = loss.value_and_grad(model, {"x": x, "t": target})
    assert value == pytest.approx(whole_value, rel=1e-13)
    for name in whole_grads:
        np.testing.assert_allclose(grads[name], whole_grads[name], rtol=1e-12, atol=1e-15)
    expected = np.mean(((output if select is None else output[select]) - target) ** 2)
    assert value == pytest.approx(expected, rel=1e-13)


def test_operator_mse_target_with_the_wrong_number_of_rows_is_refused_when_chunked(monkeypatch):
    from nnderiv import engine

    monkeypatch.setattr(engine, "PULLBACK_CACHE_BYTES", 1)
    monkeypatch.setattr(engine, "MIN_CACHE_CHUNK", 64)
    model = nd.MLP([2, 8, 1], seed=0)
    x = np.zeros((200, 2))
    with pytest.raises(nd.ShapeError, match="one row per point"):
        nd.OperatorMSE(nd.laplacian, "f").value_and_grad(model, {"x": x, "f": np.zeros((150, 1))})


@pytest.mark.usefixtures("at_most_two_threads")
@pytest.mark.parametrize("chunk_size", [None, 50])
def test_operator_mse_chunked_stays_under_the_memory_limit(chunk_size):
    """A PINN step on many points: each chunk is swept and pulled back at once, nothing is kept
    for all points, so the traced peak (every NumPy array) stays under the limit; ``chunk_size=None``
    is the default (cache-sized chunks), a number is the chunk, and both give the one-sweep gradient."""
    import tracemalloc

    model = nd.MLP([8, 32, 32, 1], activation="tanh", seed=0)
    rng = np.random.default_rng(0)
    batch = {"x": rng.uniform(-1, 1, (40_000, 8)), "f": np.ones((40_000, 1))}
    limit = 8 * 2**20
    loss = nd.OperatorMSE(nd.laplacian, "f", chunk_size=chunk_size)
    with nd.memory_limit(limit):
        loss.value_and_grad(model, batch)  # compiles; then measure
        tracemalloc.start()
        try:
            value, grads = loss.value_and_grad(model, batch)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    assert peak <= limit, f"traced peak {peak / 2**20:.1f} MiB over the limit of {limit / 2**20:.0f} MiB"
    small = {key: array[:2000] for key, array in batch.items()}
    want_value, want_grads = nd.OperatorMSE(nd.laplacian, "f").value_and_grad(model, small)
    got_value, got_grads = loss.value_and_grad(model, small)
    assert got_value == pytest.approx(want_value, rel=1e-13)
    for name in want_grads:
        np.testing.assert_allclose(got_grads[name], want_grads[name], rtol=1e-12, atol=1e-15)


@pytest.mark.usefixtures("at_most_two_threads")
def test_operator_mse_chunk_size_over_the_limit_is_refused():
    model = nd.MLP([8, 32, 32, 1], activation="tanh", seed=0)
    batch = {"x": np.zeros((5000, 8)), "f": np.ones((5000, 1))}
    with nd.memory_limit(16 * 2**20), pytest.raises(nd.MemoryLimitError, match="use chunk_size <="):
        nd.OperatorMSE(nd.laplacian, "f", chunk_size=5000).value_and_grad(model, batch)


def test_a_chunk_size_too_large_for_the_workers_together_is_refused(monkeypatch):
    """Each chunk's own call sees only itself (it runs inside a worker); OperatorMSE weighs the
    chunks that run at once together: 16 workers of 50 points need 16 times one."""
    from nnderiv import engine

    model = nd.MLP([8, 32, 32, 1], activation="tanh", seed=0)
    batch = {"x": np.zeros((40_000, 8)), "f": np.ones((40_000, 1))}
    loss = nd.OperatorMSE(nd.laplacian, "f", chunk_size=50)
    with nd.use_backend("numpy"), nd.memory_limit(8 * 2**20):  # no per-thread buffers there
        value, _ = loss.value_and_grad(model, {k: v[:200] for k, v in batch.items()})  # fits on 1-2 workers
        monkeypatch.setattr(engine, "workers", lambda: 64)
        with pytest.raises(nd.MemoryLimitError, match=r"chunk_size=50 needs about .* \(64 chunks at once") as info:
            loss.value_and_grad(model, batch)
        suggested = int(str(info.value).split("use chunk_size <= ")[1].split(",")[0])
        assert suggested == engine.pullback_chunk_size(model, engine_mode(model)) and 1 <= suggested < 50
        nd.OperatorMSE(nd.laplacian, "f", chunk_size=suggested).value_and_grad(model, batch)
        monkeypatch.setattr(engine, "workers", lambda: 10_000)
        with pytest.raises(nd.MemoryLimitError, match="even one point per worker needs"):
            loss.value_and_grad(model, batch)


def engine_mode(model):
    from nnderiv.operators import PLANNERS

    return PLANNERS[nd.laplacian](model, np.zeros((1, model.n_inputs)), for_vjp=True).mode


def test_the_default_chunks_fill_the_pullback_working_set(monkeypatch):
    """Each chunk's forward sweep and pullback take about ``engine.PULLBACK_CACHE_BYTES`` (at most
    that, at least half after the chunks are balanced over the workers), so fewer, larger chunks
    meet each other's Python steps less often; a smaller setting cuts them smaller."""
    from nnderiv import engine

    model = nd.MLP([2, 64, 64, 64, 1], activation="tanh", seed=0)
    x = np.zeros((65_536, 2))
    mode = engine_mode(model)
    per_point = engine.bytes_per_point(model, mode) + engine.kept_bytes_per_point(model, mode)
    loss = nd.OperatorMSE(nd.laplacian, "f")
    monkeypatch.setattr(engine, "workers", lambda: 2)  # with many, the memory limit cuts first
    with nd.memory_limit(2**30):
        chunk = loss._chunk_size(model, x)
        assert engine.PULLBACK_CACHE_BYTES / 2 <= chunk * per_point <= engine.PULLBACK_CACHE_BYTES
        monkeypatch.setattr(engine, "PULLBACK_CACHE_BYTES", engine.PULLBACK_CACHE_BYTES // 4)
        assert loss._chunk_size(model, x) < chunk
