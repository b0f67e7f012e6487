"""Tests of nnderiv.interop: plain arrays, PyTorch modules and ONNX files, in and out.

Round trips must be exact: the weights bit for bit (``np.array_equal``), the layer structure equal,
and the outputs equal up to the rounding of two different matrix-product implementations
(float64: 1e-13 relative; float32: 1e-5). PyTorch and ONNX tests skip cleanly when the package is
missing (``pytest.importorskip`` in their fixtures).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import nnderiv as nd
from nnderiv import interop

ALL_ACTIVATIONS = list(nd.ACTIVATIONS)
#: outputs of the same weights computed by torch or by nnderiv differ by rounding only
OUTPUT_RTOL = {np.float64: 1e-13, np.float32: 1e-5}

#: the legacy (TorchScript) exporter works without onnxscript; it says it is legacy, twice
legacy_exporter_warning = pytest.mark.filterwarnings(
    "ignore:You are using the legacy TorchScript-based ONNX export:DeprecationWarning"
)
legacy_exporter_deprecation = pytest.mark.filterwarnings(
    "ignore:The feature will be removed. Please remove usage:DeprecationWarning"
)


@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def onnx():
    return pytest.importorskip("onnx")


def every_activation_model(dtype="float64", seed=0):
    """``Dense(3, 4)`` then, for each activation, the activation and a ``Dense(4, 4)``; ``Dense(4, 2)`` last."""
    layers = [nd.Dense(3, 4, seed=seed, dtype=dtype)]
    for i, name in enumerate(ALL_ACTIVATIONS):
        layers += [nd.Activation(name), nd.Dense(4, 4, seed=seed + i + 1, dtype=dtype)]
    return nd.Sequential(*layers, nd.Dense(4, 2, seed=seed + 99, dtype=dtype))


def small_biases(model, seed=1):
    """Give every bias nonzero values, so a lost or misplaced bias cannot go unnoticed."""
    rng = np.random.default_rng(seed)
    model.set_params({k: rng.uniform(-0.5, 0.5, v.shape) for k, v in model.params.items() if k.endswith(".b")})
    return model


def assert_same_model(actual, expected):
    assert [layer.config() for layer in actual.layers] == [layer.config() for layer in expected.layers]
    assert list(actual.params) == list(expected.params)
    for name, theta in expected.params.items():
        assert actual.params[name].dtype == theta.dtype
        assert np.array_equal(actual.params[name], theta), name


def points(d, dtype=np.float64, n=7, seed=3):
    return np.random.default_rng(seed).uniform(-1, 1, (n, d)).astype(dtype)


def assert_outputs_close(actual, expected, dtype):
    scale = max(1.0, float(np.abs(expected).max()))
    assert np.abs(actual - expected).max() <= OUTPUT_RTOL[np.dtype(dtype).type] * scale


# --------------------------------------------------------------------------------------------
# plain arrays


def test_from_arrays_builds_the_network_of_its_arrays():
    rng = np.random.default_rng(0)
    W = [rng.normal(size=(2, 5)), rng.normal(size=(5, 3)), rng.normal(size=(3, 1))]
    b = [rng.normal(size=5), rng.normal(size=3), rng.normal(size=1)]
    model = interop.from_arrays(W, b, activation=["tanh", "sin"], output_activation="softplus")
    x = points(2)
    expected = np.logaddexp(0, np.sin(np.tanh(x @ W[0] + b[0]) @ W[1] + b[1]) @ W[2] + b[2])
    assert np.allclose(model(x), expected, rtol=1e-14, atol=0)
    assert [layer.activation.name for layer in model.layers if hasattr(layer, "activation")] == [
        "tanh",
        "sin",
        "softplus",
    ]
    for i, (weight, bias) in enumerate(zip(W, b)):
        assert np.array_equal(model.params[f"{2 * i}.W"], weight) and np.array_equal(model.params[f"{2 * i}.b"], bias)
    assert not np.shares_memory(model.params["0.W"], W[0])  # copies, never views of the caller's arrays


def test_from_arrays_transpose_dtype_and_zero_biases():
    rng = np.random.default_rng(1)
    W = [rng.normal(size=(2, 4)).astype(np.float32), rng.normal(size=(4, 1)).astype(np.float32)]
    model = interop.from_arrays([w.T for w in W], transpose=True)
    assert model.dtype == np.float32
    assert np.array_equal(model.params["0.W"], W[0]) and np.array_equal(model.params["2.W"], W[1])
    assert not model.params["0.b"].any() and model.params["2.b"].shape == (1,)
    assert interop.from_arrays(W).dtype == np.float32
    assert interop.from_arrays(W, dtype="float64").dtype == np.float64
    assert interop.from_arrays([np.ones((2, 2), dtype=int)]).dtype == np.float64


@pytest.mark.parametrize(
    ("weights", "biases", "activation", "error", "words"),
    [
        ([np.ones((2, 3)), np.ones((4, 1))], None, "tanh", nd.ShapeError, "weights[1] has shape (4, 1)"),
        ([np.ones(3)], None, "tanh", nd.ShapeError, "2-d"),
        ([np.ones((2, 3))], [np.ones(2)], "tanh", nd.ShapeError, "biases[0]"),
        ([np.ones((2, 3))], [np.ones(3), np.ones(1)], "tanh", nd.ArchitectureError, "1 weight arrays need 1 biases"),
        ([np.ones((2, 3)), np.ones((3, 1))], None, ["tanh", "sin"], nd.ArchitectureError, "hidden activations"),
        ([np.ones((2, 3)), np.ones((3, 1))], None, "nope", nd.UnknownActivationError, "nope"),
        ([np.full((2, 3), np.nan)], None, "tanh", nd.NonFiniteError, "weights[0]"),
        ([], None, "tanh", nd.ArchitectureError, "non-empty"),
    ],
)
def test_from_arrays_rejects_bad_input(weights, biases, activation, error, words):
    with pytest.raises(error, match=None) as info:
        interop.from_arrays(weights, biases, activation)
    assert words in str(info.value)


def test_missing_optional_package_names_the_extra():
    with pytest.raises(ImportError, match=r"pip install 'nnderiv\[crosscheck\]'"):
        interop._require("nnderiv_no_such_package")


# --------------------------------------------------------------------------------------------
# PyTorch


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_torch_round_trip_every_activation(torch, dtype):
    model = small_biases(every_activation_model(dtype))
    module = nd.to_torch(model)
    assert isinstance(module, torch.nn.Sequential) and len(module) == len(model.layers)
    first = module[0]
    assert first.weight.dtype == getattr(torch, dtype)
    assert np.array_equal(first.weight.detach().numpy(), model.params["0.W"].T)  # torch holds (out, in)
    x = points(3, dtype)
    with torch.no_grad():
        assert_outputs_close(module(torch.from_numpy(x)).numpy(), model(x), dtype)
    assert_same_model(nd.from_torch(module), model)


def test_to_torch_does_not_touch_torch_random_state(torch):
    state = torch.random.get_rng_state()
    nd.to_torch(nd.MLP([3, 8, 1], seed=0))
    assert torch.equal(torch.random.get_rng_state(), state)


def test_from_torch_plain_torch_modules(torch):
    """Every supported torch.nn module, nested Sequentials, a Linear without bias, float32."""
    nn = torch.nn
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Linear(2, 6),
        nn.Sequential(nn.Tanh(), nn.Linear(6, 6), nn.Sigmoid()),
        nn.Linear(6, 6),
        nn.Softplus(),
        nn.Linear(6, 6),
        nn.GELU(),
        nn.Linear(6, 6),
        nn.SiLU(),
        nn.ELU(),
        nn.ReLU(),
        nn.LeakyReLU(),
        nn.Identity(),
        nn.Linear(6, 1, bias=False),
    )
    model = nd.from_torch(module)
    names = [layer.activation.name for layer in model.layers if hasattr(layer, "activation")]
    assert names == ["tanh", "sigmoid", "softplus", "gelu", "silu", "elu", "relu", "leaky_relu", "identity"]
    assert model.dtype == np.float32
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    dense = [name for name in model.params if name.endswith(".W")]
    for linear, name in zip(linears, dense, strict=True):
        assert np.array_equal(model.params[name], linear.weight.detach().numpy().T)
    assert not model.params[dense[-1][:-1] + "b"].any()
    x = points(2, np.float32)
    with torch.no_grad():
        assert_outputs_close(model(x), module(torch.from_numpy(x)).numpy(), np.float32)


def test_from_torch_module_with_children_in_call_order(torch):
    nn = torch.nn

    class Chain(nn.Module):
        def __init__(self, swapped=False):
            super().__init__()
            self.inner, self.act, self.outer = nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 4)
            self.swapped = swapped

        def forward(self, x):
            h = self.inner(x)
            return self.act(self.outer(h)) if self.swapped else self.outer(self.act(h))

    model = nd.from_torch(Chain().double())
    assert [type(layer).__name__ for layer in model.layers] == ["Dense", "Activation", "Dense"]
    with pytest.raises(nd.ArchitectureError, match="not the plain chain"):
        nd.from_torch(Chain(swapped=True).double())  # forward order differs from registration order


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda nn: nn.GELU(approximate="tanh"), "approximate='none'"),
        (lambda nn: nn.Softplus(beta=2.0), "beta=1"),
        (lambda nn: nn.ELU(alpha=0.5), "alpha=1"),
        (lambda nn: nn.LeakyReLU(0.2), "negative_slope=0.01"),
        (lambda nn: nn.PReLU(), "unsupported torch module PReLU"),
        (lambda nn: nn.Dropout(0.1), "supported: Linear, Identity, Tanh"),
    ],
    ids=["gelu-tanh", "softplus-beta", "elu-alpha", "leaky-slope", "prelu", "dropout"],
)
def test_from_torch_rejects_unsupported_modules(torch, make, words):
    module = torch.nn.Sequential(torch.nn.Linear(2, 3), make(torch.nn), torch.nn.Linear(3, 1))
    with pytest.raises(nd.ArchitectureError) as info:
        nd.from_torch(module)
    assert words in str(info.value)


def test_from_torch_rejects_half_precision_and_non_modules(torch):
    with pytest.raises(nd.DTypeError, match="float16"):
        nd.from_torch(torch.nn.Sequential(torch.nn.Linear(2, 1).half()))
    with pytest.raises(nd.ArchitectureError, match="torch.nn.Module"):
        nd.from_torch(nd.MLP([2, 1]))


# --------------------------------------------------------------------------------------------
# ONNX: our own files


@pytest.mark.parametrize("opset", [18, 20], ids=["erf-gelu", "gelu-op"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_onnx_round_trip_every_activation(onnx, tmp_path, dtype, opset):
    model = small_biases(every_activation_model(dtype))
    path = tmp_path / "model.onnx"
    nd.to_onnx(model, path, opset=opset)
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    ops = {node.op_type for node in proto.graph.node}
    assert ("Gelu" in ops) == (opset >= 20) and ("Erf" in ops) == (opset < 20)
    assert [d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim] == ["N", 3]
    assert_same_model(nd.from_onnx(path), model)
    assert_same_model(nd.from_onnx(proto), model)


def test_onnx_round_trip_nested_and_consecutive_activations(onnx, tmp_path):
    inner = nd.Sequential(nd.Dense(4, 4, seed=2), nd.Activation("sin"), nd.Activation("gaussian"))
    model = nd.Sequential(nd.Dense(2, 4, seed=1), nd.Activation("tanh"), nd.Activation("silu"), inner, nd.Dense(4, 1))
    nd.to_onnx(model, tmp_path / "nested.onnx")
    back = nd.from_onnx(tmp_path / "nested.onnx")
    names = [layer.activation.name for layer in back.layers if hasattr(layer, "activation")]
    assert names == ["tanh", "silu", "sin", "gaussian"]
    x = points(2)
    assert np.array_equal(back(x), model(x))


def gemm_graph(onnx, activation_nodes, extra_initializers=(), gemm_attrs=None, dtype=np.float64):
    """``x -> Gemm(W0, b0) -> z -> [activation nodes] -> a -> MatMul(W1) + b1 -> y`` built by hand."""
    helper, numpy_helper = onnx.helper, onnx.numpy_helper
    rng = np.random.default_rng(7)
    W0, b0 = rng.normal(size=(3, 2)).astype(dtype), rng.normal(size=3).astype(dtype)  # (out, in): transB=1
    W1, b1 = rng.normal(size=(3, 1)).astype(dtype), rng.normal(size=1).astype(dtype)
    inits = [numpy_helper.from_array(a, n) for a, n in ((W0, "W0"), (b0, "b0"), (W1, "W1"), (b1, "b1"))]
    inits += [numpy_helper.from_array(np.asarray(v, dtype), n) for n, v in extra_initializers]
    nodes = [helper.make_node("Gemm", ["x", "W0", "b0"], ["z"], name="layer0", transB=1, **(gemm_attrs or {}))]
    nodes += activation_nodes
    nodes += [
        helper.make_node("MatMul", ["a", "W1"], ["p"], name="layer1"),
        helper.make_node("Add", ["b1", "p"], ["y"]),
    ]
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", elem, [None, 2])],
        [helper.make_tensor_value_info("y", elem, [None, 1])],
        inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return proto, (W0.T, b0, W1, b1)


def test_onnx_matmul_add_and_rewritten_composites(onnx):
    """GELU as ``0.5 * x`` first and ``Mul`` by ``1/sqrt 2``; the gaussian through ``Pow``, ``Neg`` and ``Div``."""
    make = onnx.helper.make_node
    gelu = [
        make("Mul", ["half", "z"], ["hz"]),
        make("Mul", ["z", "inv_sqrt2"], ["s"]),
        make("Erf", ["s"], ["e"]),
        make("Add", ["one", "e"], ["ep"]),
        make("Mul", ["hz", "ep"], ["g"]),
        make("Pow", ["g", "two"], ["g2"]),
        make("Neg", ["g2"], ["ng2"]),
        make("Div", ["ng2", "two"], ["q"]),
        make("Exp", ["q"], ["a"]),
    ]
    constants = [("half", 0.5), ("inv_sqrt2", 1 / math.sqrt(2)), ("one", 1.0), ("two", 2.0)]
    proto, (W0, b0, W1, b1) = gemm_graph(onnx, gelu, constants)
    model = nd.from_onnx(proto)
    assert [layer.activation.name for layer in model.layers if hasattr(layer, "activation")] == ["gelu", "gaussian"]
    for name, expected in {"0.W": W0, "0.b": b0, "3.W": W1, "3.b": b1}.items():
        assert np.array_equal(model.params[name], expected)


@pytest.mark.parametrize(
    ("nodes", "constants", "gemm_attrs", "words"),
    [
        ([("Softsign", ["z"], ["a"], {})], [], None, "unsupported ONNX op Softsign"),
        ([("Sigmoid", ["z"], ["s"], {}), ("Mul", ["s", "s"], ["a"], {})], [], None, "cannot read Mul(Sigmoid(z)"),
        ([("LeakyRelu", ["z"], ["a"], {"alpha": 0.2})], [], None, "cannot read LeakyRelu[alpha=0.2](z)"),
        ([("Tanh", ["z"], ["a"], {})], [], {"alpha": 2.0}, "Gemm node 'layer0'"),
        ([("Mul", ["z", "vector"], ["a"], {})], [("vector", [1.0, 2.0, 3.0])], None, "elementwise scalar"),
    ],
    ids=["unsupported-op", "unknown-composite", "leaky-alpha", "gemm-alpha", "vector-constant"],
)
def test_onnx_unsupported_graphs_name_the_problem(onnx, nodes, constants, gemm_attrs, words):
    made = [onnx.helper.make_node(op, i, o, name=f"act{k}", **attrs) for k, (op, i, o, attrs) in enumerate(nodes)]
    proto, _ = gemm_graph(onnx, made, constants, gemm_attrs)
    with pytest.raises(nd.ArchitectureError) as info:
        nd.from_onnx(proto)
    assert words in str(info.value)
    if "unsupported" in words:  # names the node and lists what is supported
        assert "'act0'" in str(info.value) and "Gelu, Gemm, Identity" in str(info.value)
    if "cannot read" in words:  # lists the forms it knows
        assert "leaky_relu: LeakyRelu[alpha=0.01](x)" in str(info.value)


def test_onnx_corrupt_and_missing_files(onnx, tmp_path):
    good = tmp_path / "good.onnx"
    nd.to_onnx(nd.MLP([2, 4, 1], seed=0), good)
    data = good.read_bytes()
    cases = {
        "truncated.onnx": data[: len(data) // 2],
        "garbage.onnx": b"\x08\x07not an onnx file" * 9,
        "empty.onnx": b"",
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(nd.FileFormatError):
            nd.from_onnx(tmp_path / name)
    with pytest.raises(nd.FileFormatError, match="no such file"):
        nd.from_onnx(tmp_path / "missing.onnx")


def test_to_onnx_rejects_unknown_opset(onnx, tmp_path):
    with pytest.raises(ValueError, match="opset"):
        nd.to_onnx(nd.MLP([2, 1]), tmp_path / "m.onnx", opset=7)
    assert not list(tmp_path.iterdir())


# --------------------------------------------------------------------------------------------
# ONNX written by torch.onnx.export


@pytest.mark.parametrize("opset", [17, 20], ids=["erf-gelu", "gelu-op"])
@legacy_exporter_warning
@legacy_exporter_deprecation
def test_onnx_exported_by_torch(torch, onnx, tmp_path, opset):
    """The ONNX exported by torch (Gemm with transB=1, Gelu or its Erf form, SiLU as Mul(x, Sigmoid(x)))."""
    nn = torch.nn
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Linear(2, 5),
        nn.GELU(),
        nn.Linear(5, 5),
        nn.SiLU(),
        nn.Linear(5, 5),
        nn.Softplus(),
        nn.ELU(),
        nn.Linear(5, 1),
    )
    path = tmp_path / "torch.onnx"
    try:
        torch.onnx.export(module, (torch.zeros(1, 2),), str(path), dynamo=False, input_names=["x"], opset_version=opset)
    except (ImportError, RuntimeError) as exc:  # an exporter that needs packages we do not have
        pytest.skip(f"torch.onnx.export unavailable: {exc}")
    model = nd.from_onnx(path)
    assert_same_model(model, nd.from_torch(module))
    x = points(2, np.float32)
    with torch.no_grad():
        assert_outputs_close(model(x), module(torch.from_numpy(x)).numpy(), np.float32)
