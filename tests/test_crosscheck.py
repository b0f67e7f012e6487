"""Cross-checks against JAX and PyTorch (``torch.func``): input-derivative tensors and parameter
gradients of losses on them, for networks ``[d, 16, 16, m]`` with every smooth activation both
frameworks have.

Each framework is imported by its own fixture (``pytest.importorskip``), so a missing JAX skips only
the JAX tests and a missing PyTorch only the PyTorch ones. The frameworks build their references
by nesting first-order transforms (``jacfwd``/``jacrev``, ``hessian``) and reverse mode for the
parameter gradients: nothing in common with nnderiv's Taylor-coefficient stacks.

Error measure: ``max |nnderiv - reference| / max |reference|`` per array.
"""

from __future__ import annotations

import numpy as np
import pytest
from oracles import jax_network, relative_error
from strategies import build_model, random_spec, spec_params

import nnderiv as nd

pytestmark = pytest.mark.crosscheck

#: float64 bars: orders <= 2 agree to a few hundred ulp; orders 3-4 and parameter gradients sum
#: longer chains of products (Faa di Bruno terms, reverse sweeps over them): 1e-10
RTOL_LOW_ORDER = 1e-12
RTOL_HIGH_ORDER = 1e-10
RTOL_GRADIENT = 1e-10
#: float32: both sides round at eps = 1.2e-7 through a few layers (measured <= 1e-6 here)
RTOL_FLOAT32 = 1e-4

#: (d, m, hidden activations): together every smooth activation both frameworks implement
NETWORKS = [
    (1, 1, ("tanh", "gelu")),
    (2, 2, ("sigmoid", "softplus")),
    (3, 1, ("sin", "silu")),
    (5, 2, ("cos", "elu")),
    (2, 1, ("gaussian", "exp")),
    (3, 2, ("identity", "tanh")),
]
NETWORK_IDS = ["-".join((f"d{d}m{m}", *acts)) for d, m, acts in NETWORKS]
MAX_ORDER = 4


def make_case(index: int, dtype=np.float64):
    """A ``[d, 16, 16, m]`` network description, 4 points in [-1, 1], and the cotangent generator."""
    d, m, activations = NETWORKS[index]
    rng = np.random.default_rng(100 + index)
    spec = random_spec(rng, [d, 16, 16, m], list(activations))
    spec = [(W.astype(dtype), b.astype(dtype), act) for W, b, act in spec]
    return spec, rng.uniform(-1, 1, (4, d)).astype(dtype), rng


def tensor_rtol(k: int) -> float:
    return RTOL_LOW_ORDER if k <= 2 else RTOL_HIGH_ORDER


def assert_close(actual, expected, rtol, what):
    error = relative_error(actual, np.asarray(expected))
    assert error <= rtol, f"{what}: relative error {error:.3g} > {rtol:.0e}"


def random_cotangents(D, rng, orders):
    return {k: rng.normal(size=D.tensor(k).shape) for k in orders}


# --------------------------------------------------------------------------------------------
# JAX


@pytest.fixture(scope="module")
def jax():
    jax = pytest.importorskip("jax")
    jax.config.update("jax_enable_x64", True)  # float64 arrays stay float64
    return jax


def jax_tensors(jax, f, max_order):
    """``g(params, x) -> [tensor(0), ..., tensor(max_order)]``, batched over the rows of ``x``:
    ``jacrev`` once, then ``jacfwd`` nested, each vmapped over points."""
    per_point, fn = [f], jax.jacrev(f, argnums=1)
    for _ in range(max_order):
        per_point.append(fn)
        fn = jax.jacfwd(fn, argnums=1)
    return lambda params, x: [jax.vmap(g, in_axes=(None, 0))(params, x) for g in per_point]


@pytest.mark.parametrize("index", range(len(NETWORKS)), ids=NETWORK_IDS)
def test_tensors_match_jax(jax, index):
    spec, x, _ = make_case(index)
    f, params = jax_network(jax, spec)
    expected = jax.jit(jax_tensors(jax, f, MAX_ORDER))(params, x)
    D = nd.derivatives(build_model(spec), x, order=MAX_ORDER)
    for k in range(MAX_ORDER + 1):
        assert_close(D.tensor(k), expected[k], tensor_rtol(k), f"tensor({k})")


def jax_gradient(jax, f, params, x, cotangents):
    """``jax.grad`` of ``sum_k <cot_k, tensor(k)>``, as ``{"<layer>.W": ..., ...}`` like nnderiv."""
    tensors = jax_tensors(jax, f, max(cotangents))

    def loss(params):
        out = tensors(params, x)
        return sum(jax.numpy.sum(c * out[k]) for k, c in cotangents.items())

    grads = jax.jit(jax.grad(loss))(params)
    return [np.asarray(g) for pair in grads for g in pair]


@pytest.mark.parametrize(
    ("index", "orders"), [(0, (2,)), (3, (2,)), (4, (2,)), (1, (0, 1, 2, 3)), (2, (1, 3))], ids=str
)
def test_parameter_gradients_match_jax(jax, index, orders):
    """Gradients of a loss on the Hessian, and on several orders of ``nd.derivatives`` at once."""
    spec, x, rng = make_case(index)
    f, params = jax_network(jax, spec)
    model = build_model(spec)
    D, pullback = nd.vjp(nd.derivatives, model, x, order=max(orders))
    cotangents = random_cotangents(D, rng, orders)
    grads = pullback(cotangents)
    if orders == (2,):  # the Hessian view must agree with derivatives
        hessian_grads = nd.vjp(nd.hessian, model, x)[1](cotangents[2])
        for name in grads:
            assert_close(hessian_grads[name], grads[name], RTOL_LOW_ORDER, f"hessian view {name}")
    for name, expected in zip(spec_params(spec), jax_gradient(jax, f, params, x, cotangents)):
        assert_close(grads[name], expected, RTOL_GRADIENT, f"gradient {name}")


@pytest.mark.parametrize("index", [1, 3], ids=[NETWORK_IDS[1], NETWORK_IDS[3]])
def test_float32_matches_jax(jax, index):
    spec, x, rng = make_case(index, np.float32)
    f, params = jax_network(jax, spec)
    expected = jax.jit(jax_tensors(jax, f, 2))(params, x)
    model = build_model(spec, "float32")
    D, pullback = nd.vjp(nd.derivatives, model, x, order=2)
    for k in range(3):
        assert D.tensor(k).dtype == np.float32 and expected[k].dtype == np.float32
        assert_close(D.tensor(k), expected[k], RTOL_FLOAT32, f"float32 tensor({k})")
    cotangents = {k: c.astype(np.float32) for k, c in random_cotangents(D, rng, (0, 2)).items()}
    grads = pullback(cotangents)
    for name, expected in zip(spec_params(spec), jax_gradient(jax, f, params, x, cotangents)):
        assert grads[name].dtype == np.float32
        assert_close(grads[name], expected, RTOL_FLOAT32, f"float32 gradient {name}")


# --------------------------------------------------------------------------------------------
# PyTorch


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


#: torch.func's first forward-mode call imports a module that uses the deprecated torch.jit.script
#: (PyTorch's own warning, once per process; pytest turns warnings into errors)
torch_jit_warning = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def torch_network(torch, spec, requires_grad=False):
    """``f(x_point) -> (m,)`` in PyTorch, closing over its parameters (a flat list W0, b0, W1, ...)."""
    F = torch.nn.functional
    activations = {
        "identity": lambda z: z,
        "tanh": torch.tanh,
        "sigmoid": torch.sigmoid,
        "softplus": F.softplus,  # linear above z = 20 (its threshold): our points stay far below
        "sin": torch.sin,
        "cos": torch.cos,
        "exp": torch.exp,
        "gaussian": lambda z: torch.exp(-(z**2) / 2),
        "gelu": F.gelu,  # default approximate="none": the erf form
        "silu": F.silu,
        "elu": F.elu,
    }
    params = [torch.tensor(a, requires_grad=requires_grad) for W, b, _ in spec for a in (W, b)]

    def f(x_point):
        h = x_point
        for layer, (_, _, name) in enumerate(spec):
            h = h @ params[2 * layer] + params[2 * layer + 1]
            h = h if name is None else activations[name](h)
        return h

    return f, params


def torch_tensors(torch, f, x, max_order):
    """``[tensor(0), ..., tensor(max_order)]``: ``jacrev``, ``hessian``, then ``jacfwd`` nested."""
    func = torch.func
    per_point = [f, func.jacrev(f), func.hessian(f)]
    while len(per_point) <= max_order:
        per_point.append(func.jacfwd(per_point[-1]))
    return [func.vmap(g)(x) for g in per_point[: max_order + 1]]


@torch_jit_warning
@pytest.mark.parametrize("index", range(len(NETWORKS)), ids=NETWORK_IDS)
def test_tensors_match_torch(torch, index):
    spec, x, _ = make_case(index)
    f, _ = torch_network(torch, spec)
    expected = torch_tensors(torch, f, torch.from_numpy(x), MAX_ORDER)
    D = nd.derivatives(build_model(spec), x, order=MAX_ORDER)
    for k in range(MAX_ORDER + 1):
        assert_close(D.tensor(k), expected[k].numpy(), tensor_rtol(k), f"tensor({k})")


def torch_gradient(torch, spec, x, cotangents):
    """``torch.autograd.grad`` of ``sum_k <cot_k, tensor(k)>`` with respect to every parameter."""
    f, params = torch_network(torch, spec, requires_grad=True)
    out = torch_tensors(torch, f, torch.from_numpy(x), max(cotangents))
    loss = sum((torch.from_numpy(c) * out[k]).sum() for k, c in cotangents.items())
    # the output bias does not reach derivatives of order >= 1: its gradient is zero, not missing
    grads = torch.autograd.grad(loss, params, allow_unused=True, materialize_grads=True)
    return [g.numpy() for g in grads]


@torch_jit_warning
@pytest.mark.parametrize("index", range(len(NETWORKS)), ids=NETWORK_IDS)
def test_parameter_gradients_match_torch(torch, index):
    """Loss on the Hessian for every network; on orders 0..4 together for half of them."""
    spec, x, rng = make_case(index)
    orders = (2,) if index % 2 else (0, 1, 2, 3, 4)
    model = build_model(spec)
    D, pullback = nd.vjp(nd.derivatives, model, x, order=max(orders))
    cotangents = random_cotangents(D, rng, orders)
    grads = pullback(cotangents)
    for name, expected in zip(spec_params(spec), torch_gradient(torch, spec, x, cotangents)):
        assert_close(grads[name], expected, RTOL_GRADIENT, f"gradient {name}")


@torch_jit_warning
@pytest.mark.parametrize("index", [0, 2, 4], ids=[NETWORK_IDS[0], NETWORK_IDS[2], NETWORK_IDS[4]])
def test_float32_matches_torch(torch, index):
    spec, x, rng = make_case(index, np.float32)
    f, _ = torch_network(torch, spec)
    expected = torch_tensors(torch, f, torch.from_numpy(x), 2)
    model = build_model(spec, "float32")
    D, pullback = nd.vjp(nd.derivatives, model, x, order=2)
    for k in range(3):
        assert D.tensor(k).dtype == np.float32 and expected[k].dtype == torch.float32
        assert_close(D.tensor(k), expected[k].numpy(), RTOL_FLOAT32, f"float32 tensor({k})")
    cotangents = {k: c.astype(np.float32) for k, c in random_cotangents(D, rng, (1, 2)).items()}
    grads = pullback(cotangents)
    for name, expected in zip(spec_params(spec), torch_gradient(torch, spec, x, cotangents)):
        assert grads[name].dtype == np.float32
        assert_close(grads[name], expected, RTOL_FLOAT32, f"float32 gradient {name}")
