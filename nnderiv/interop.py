"""Networks in and out of nnderiv: from plain arrays, PyTorch modules and ONNX files, and back.

Conventions. nnderiv's :class:`~nnderiv.Dense` computes ``z = h @ W + b`` with ``W`` of shape
``(n_in, n_out)``; ``torch.nn.Linear.weight`` and ONNX ``Gemm(transB=1)`` hold the transpose
``(n_out, n_in)``. Every conversion copies the weights bit for bit (a transpose never rounds) and
keeps their dtype (float32 or float64); the arrays are copies, never shared with the source.

Activations that correspond exactly (one row each way; ``x`` is the activation's input):

============  ==========================================  ===========================================
nnderiv       torch.nn                                    ONNX (opset 13+, ``Gelu`` from 20)
============  ==========================================  ===========================================
identity      Identity                                    Identity
tanh          Tanh                                        Tanh
sigmoid       Sigmoid                                     Sigmoid
softplus      Softplus (beta=1) [1]                       Softplus
sin, cos      NnderivActivation("sin"), ("cos") [2]       Sin, Cos
exp           NnderivActivation("exp") [2]                Exp
gaussian      NnderivActivation("gaussian") [2]           Exp(Mul(Mul(x, x), -0.5))
gelu          GELU (approximate="none")                   Gelu, or x * 0.5 * (1 + Erf(x / sqrt 2)) [3]
silu          SiLU                                        Mul(x, Sigmoid(x))
elu           ELU (alpha=1)                               Elu (alpha=1)
relu          ReLU                                        Relu
leaky_relu    LeakyReLU (negative_slope=0.01)             LeakyRelu (alpha=0.01)
============  ==========================================  ===========================================

[1] torch's Softplus returns ``x`` itself above its ``threshold`` (20 by default); nnderiv never
    clamps. There the two differ by ``log1p(exp(-x)) < 2.1e-9`` (relative ``< 1e-10``), and their
    derivatives by as little: far below any tolerance that matters, so no option is refused.
[2] torch has no module for these; :func:`to_torch` uses a small module of its own, which
    :func:`from_torch` reads back.
[3] the form PyTorch exports below opset 20 (``Div`` by ``sqrt 2``, or ``Mul`` by ``1/sqrt 2``,
    in any order of the factors). Constants must match to float32 rounding (relative 1e-6).

PyTorch and ONNX are optional: they are imported inside the functions that need them, and a
missing one raises ``ImportError`` naming ``pip install 'nnderiv[crosscheck]'``.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import math
import os
import tempfile

import numpy as np

from . import _validation as check
from .activations import get_activation
from .errors import ArchitectureError, DTypeError, FileFormatError, ShapeError
from .layers import Activation, Dense, Sequential

#: constants and float attributes of an ONNX graph are float32 at worst: equal up to this
_CONSTANT_RTOL = 1e-6


def _require(package: str):
    try:
        return importlib.import_module(package)
    except ImportError as exc:
        raise ImportError(
            f"this needs the optional package {package!r}: pip install 'nnderiv[crosscheck]' ({exc})"
        ) from None


def _model(entries) -> Sequential:
    """A Sequential of ``entries``: ``(W, b)`` pairs (copied exactly) and activation names."""
    layers = []
    for entry in entries:
        if isinstance(entry, str):
            layers.append(Activation(entry))
            continue
        W, b = entry
        layer = Dense(*W.shape, dtype=W.dtype)
        layer.params = {"W": np.array(W, order="C"), "b": np.array(b, order="C")}
        layers.append(layer)
    return Sequential(*layers)


def _leaves(model):
    """Dense and Activation layers of a model, nested Sequentials flattened, with parameter prefixes."""
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Sequential):
            yield from ((f"{i}.{prefix}", leaf) for prefix, leaf in _leaves(layer))
        else:
            yield f"{i}.", layer


# --------------------------------------------------------------------------------------------
# plain arrays


def from_arrays(weights, biases=None, activation="tanh", output_activation=None, *, dtype=None, transpose=False):
    """A model from weight and bias arrays: ``h = act(h @ weights[i] + biases[i])`` layer after layer.

    ``weights[i]`` has shape ``(n_in, n_out)`` (nnderiv's convention); pass ``transpose=True`` for
    arrays in the ``(n_out, n_in)`` convention of ``torch.nn.Linear`` and most checkpoints.
    ``biases`` is a list of ``(n_out,)`` arrays, or ``None`` for zeros. ``activation`` is one name
    for every hidden layer or a list of one name per hidden layer; the last layer is linear unless
    ``output_activation`` is given. ``dtype``: by default float32 if every array is float32, else
    float64; arrays of that dtype are copied bit for bit.

    >>> import numpy as np, nnderiv as nd
    >>> W0, W1 = np.array([[1.0, 2.0, 3.0]]), np.array([[1.0], [1.0], [1.0]])
    >>> model = from_arrays([W0, W1], [np.zeros(3), np.array([0.5])], activation="identity")
    >>> model(np.array([[1.0]]))        # 1 + 2 + 3 + 0.5
    array([[6.5]])
    >>> torch_style = [W0.T, W1.T]      # (n_out, n_in), as torch.nn.Linear.weight
    >>> from_arrays(torch_style, [np.zeros(3), np.array([0.5])], ["identity"], transpose=True)(np.ones((1, 1)))
    array([[6.5]])
    """
    if isinstance(weights, np.ndarray) or not weights:
        raise ArchitectureError("weights must be a non-empty list of 2-d arrays, one per layer")
    arrays = [np.asarray(w) for w in weights] + [np.asarray(b) for b in biases or ()]
    if dtype is None:
        dtype = "float32" if all(a.dtype == np.float32 for a in arrays) else "float64"
    dtype = check.float_dtype(dtype)
    weights = [_weight(w, i, dtype, transpose) for i, w in enumerate(weights)]
    biases = _biases(biases, weights, dtype)
    for i in range(1, len(weights)):
        if weights[i].shape[0] != weights[i - 1].shape[1]:
            raise ShapeError(
                f"weights[{i}] has shape {weights[i].shape} (n_in, n_out): n_in must be "
                f"{weights[i - 1].shape[1]}, the n_out of weights[{i - 1}] {weights[i - 1].shape}"
            )
    hidden = [activation] * (len(weights) - 1) if isinstance(activation, str) else list(activation)
    if len(hidden) != len(weights) - 1:
        raise ArchitectureError(f"{len(weights)} layers have {len(weights) - 1} hidden activations, got {hidden}")
    entries = []
    for i, layer in enumerate(zip(weights, biases)):
        entries += [layer, hidden[i]] if i < len(hidden) else [layer]
    return _model(entries + ([output_activation] if output_activation else []))


def _weight(w, i, dtype, transpose) -> np.ndarray:
    w = check.real_array(w, f"weights[{i}]", dtype)
    if w.ndim != 2:
        raise ShapeError(f"weights[{i}] must be a 2-d array (n_in, n_out), got shape {w.shape}")
    return w.T if transpose else w


def _biases(biases, weights, dtype) -> list[np.ndarray]:
    if biases is None:
        return [np.zeros(w.shape[1], dtype) for w in weights]
    if len(biases) != len(weights):
        raise ArchitectureError(f"{len(weights)} weight arrays need {len(weights)} biases, got {len(biases)}")
    checked = [check.real_array(b, f"biases[{i}]", dtype) for i, b in enumerate(biases)]
    for i, (b, w) in enumerate(zip(checked, weights)):
        check.same_shape(b, (w.shape[1],), f"biases[{i}] (n_out of weights[{i}])")
    return checked


# --------------------------------------------------------------------------------------------
# PyTorch

_TORCH_FUNCTIONS = {  # activations torch.nn has no module for
    "sin": lambda torch, z: torch.sin(z),
    "cos": lambda torch, z: torch.cos(z),
    "exp": lambda torch, z: torch.exp(z),
    "gaussian": lambda torch, z: torch.exp(-0.5 * (z * z)),
}


@functools.cache
def _torch_activation_class():
    torch = _require("torch")

    class NnderivActivation(torch.nn.Module):
        """An nnderiv activation torch.nn has no module for: ``NnderivActivation("sin")``."""

        def __init__(self, name: str):
            super().__init__()
            self.nnderiv_activation = name

        def forward(self, z):
            return _TORCH_FUNCTIONS[self.nnderiv_activation](torch, z)

        def extra_repr(self):
            return repr(self.nnderiv_activation)

    return NnderivActivation


def _torch_module_of(name: str, nn):
    plain = {"identity": nn.Identity, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "softplus": nn.Softplus}
    plain.update({"gelu": nn.GELU, "silu": nn.SiLU, "elu": nn.ELU, "relu": nn.ReLU})
    if name == "leaky_relu":
        return nn.LeakyReLU(0.01)
    return plain[name]() if name in plain else _torch_activation_class()(name)


def to_torch(model: Sequential):
    """A ``torch.nn.Sequential`` computing the same function with the same weights (bit for bit).

    ``Dense(n_in, n_out)`` becomes ``Linear(n_in, n_out)`` with ``weight = W.T``, in the model's
    dtype; activations follow the module table. Nested Sequentials are flattened. The torch
    random state is not touched (the layers are created uninitialised, then filled).

    >>> import nnderiv as nd
    >>> module = nd.to_torch(nd.MLP([2, 8, 1], activation="sin", seed=0))     # doctest: +SKIP
    >>> module                                                                # doctest: +SKIP
    Sequential(
      (0): Linear(in_features=2, out_features=8, bias=True)
      (1): NnderivActivation('sin')
      (2): Linear(in_features=8, out_features=1, bias=True)
    )
    """
    torch = _require("torch")
    torch_dtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[model.dtype]
    modules = []
    for _, layer in _leaves(model):
        if not isinstance(layer, Dense):
            modules.append(_torch_module_of(layer.activation.name, torch.nn))
            continue
        linear = torch.nn.utils.skip_init(torch.nn.Linear, layer.n_in, layer.n_out, dtype=torch_dtype)
        with torch.no_grad():
            linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(layer.params["W"].T)))
            linear.bias.copy_(torch.from_numpy(layer.params["b"]))
        modules.append(linear)
    return torch.nn.Sequential(*modules)


def torch_leaves(module) -> list:
    """The leaf modules of ``module`` in registration order, containers (any module with children) flattened."""
    children = list(module.children())
    if not children:
        return [module]
    if any(True for _ in module.parameters(recurse=False)):
        raise ArchitectureError(f"{type(module).__name__} holds parameters of its own besides its children")
    return [leaf for child in children for leaf in torch_leaves(child)]


def _torch_activation_name(leaf, nn) -> str:
    """The nnderiv name of a supported torch activation module, or an ArchitectureError."""
    if isinstance(getattr(leaf, "nnderiv_activation", None), str):
        return get_activation(leaf.nnderiv_activation).name
    plain = {nn.Identity: "identity", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid", nn.SiLU: "silu", nn.ReLU: "relu"}
    conditional = {  # module -> (nnderiv name, the only setting nnderiv implements, its description)
        nn.Softplus: ("softplus", lambda m: m.beta == 1, "beta=1"),
        nn.GELU: ("gelu", lambda m: m.approximate == "none", "approximate='none' (the erf form)"),
        nn.ELU: ("elu", lambda m: m.alpha == 1, "alpha=1"),
        nn.LeakyReLU: ("leaky_relu", lambda m: m.negative_slope == 0.01, "negative_slope=0.01"),
    }
    if type(leaf) in plain:
        return plain[type(leaf)]
    if type(leaf) in conditional:
        name, supported, setting = conditional[type(leaf)]
        if supported(leaf):
            return name
        raise ArchitectureError(f"{leaf!r}: nnderiv's {name} implements only {setting}")
    known = [cls.__name__ for cls in (nn.Linear, *plain, *conditional)] + [
        "NnderivActivation (sin, cos, exp, gaussian)"
    ]
    raise ArchitectureError(f"unsupported torch module {leaf!r}; supported: {', '.join(known)}")


def _torch_entry(leaf, nn):
    if not isinstance(leaf, nn.Linear):
        return _torch_activation_name(leaf, nn)
    weight = leaf.weight.detach().cpu().numpy()
    if weight.dtype not in (np.float32, np.float64):
        raise DTypeError(f"{leaf!r} has dtype {weight.dtype}; nnderiv supports float32 and float64")
    bias = np.zeros(weight.shape[0], weight.dtype) if leaf.bias is None else leaf.bias.detach().cpu().numpy()
    return np.array(weight.T, order="C"), np.array(bias, order="C")


def from_torch(module) -> Sequential:
    """The nnderiv model of a PyTorch network of ``Linear`` layers and activation modules.

    ``module`` is an ``nn.Sequential`` (nested ones are flattened) or any ``nn.Module`` whose
    ``forward`` is the plain chain of its child modules *in the order they were registered*
    (assigned in ``__init__``): no skips, reshapes or functional calls. That limitation is checked,
    not trusted: the converted model is compared with ``module`` on 8 random points, and an
    ``ArchitectureError`` says so if they differ. Supported modules and settings: see the table in
    the module docstring; anything else raises ``ArchitectureError`` naming the module. Weights are
    copied exactly, in their dtype (float32 or float64).

    >>> import torch, nnderiv as nd                                           # doctest: +SKIP
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 16), torch.nn.GELU(), torch.nn.Linear(16, 1))  # doctest: +SKIP
    >>> model = nd.from_torch(net.double())                                   # doctest: +SKIP
    >>> nd.hessian(model, np.zeros((5, 3))).shape                             # doctest: +SKIP
    (5, 1, 3, 3)
    """
    torch = _require("torch")
    if not isinstance(module, torch.nn.Module):
        raise ArchitectureError(f"from_torch takes a torch.nn.Module, got {type(module).__name__}")
    entries = [_torch_entry(leaf, torch.nn) for leaf in torch_leaves(module)]
    dtypes = {str(e[0].dtype) for e in entries if not isinstance(e, str)}
    if len(dtypes) > 1:
        raise DTypeError(f"the Linear layers of the module mix dtypes {sorted(dtypes)}")
    model = _model(entries)
    _check_same_function(module, model, torch)
    return model


def _check_same_function(module, model, torch) -> None:
    """Raise unless ``module`` and ``model`` agree on 8 random points (a plain chain of its children)."""
    x = np.random.default_rng(0).uniform(-1, 1, (8, model.n_inputs)).astype(model.dtype)
    try:
        with torch.no_grad():
            expected = module(torch.from_numpy(x)).cpu().numpy()
    except Exception as exc:  # noqa: BLE001 - any failure means forward is not what we assumed
        raise ArchitectureError(f"cannot run {type(module).__name__} on points of shape {x.shape}: {exc}") from exc
    actual = model(x)
    tolerance = 1e-3 if model.dtype == np.float32 else 1e-9  # rounding differs; a wrong wiring is O(1)
    same = expected.shape == actual.shape and np.abs(actual - expected).max() <= tolerance * (
        1 + np.abs(expected).max()
    )
    if not same:
        raise ArchitectureError(
            f"{type(module).__name__}.forward is not the plain chain of its registered children "
            "(skips, reordering or functional calls?): convert an nn.Sequential instead"
        )


# --------------------------------------------------------------------------------------------
# ONNX: reading. Each activation is read back as an expression tree over its input (Div by a
# constant, Sub, Neg and Pow(x, 2) rewritten as Mul and Add) and matched against the templates
# below, "x" binding to the activation's input. A template's Mul or Add matches any way of reading a
# tree of nested Mul (Add) nodes as one product (sum) of factors, in any order, its constants
# multiplied (added) together: so 0.5 * (x * (1 + Erf(x / sqrt 2))) is gelu, and
# Exp(-0.5 * g * g) is the gaussian of g even where g is itself a product (silu, gelu).
#
# Expressions are tuples: ("ref", tensor) a layer's output or the graph input, ("const", value),
# ("x",) the template variable, (op, attrs, args) a node, attrs a sorted tuple of (name, value).

_X = ("x",)
_ASSOCIATIVE = {"Mul": (1.0, float.__mul__), "Add": (0.0, float.__add__)}  # unit, combine
#: readings of one product or sum tried at most (a hostile graph's long Mul chain has 2^n of them)
_MAX_READINGS = 256


def _unary(op, arg=_X, **attrs):
    return (op, tuple(sorted(attrs.items())), (arg,))


def _mul(*args):
    return ("Mul", (), args)


def _add(*args):
    return ("Add", (), args)


_ONNX_SIMPLE = {"identity": "Identity", "tanh": "Tanh", "sigmoid": "Sigmoid", "softplus": "Softplus"}
_ONNX_SIMPLE.update({"sin": "Sin", "cos": "Cos", "exp": "Exp", "relu": "Relu"})
_ATTRIBUTE_DEFAULTS = {"LeakyRelu": {"alpha": 0.01}, "Elu": {"alpha": 1.0}, "Gelu": {"approximate": "none"}}
_TEMPLATES = [(name, _unary(op)) for name, op in _ONNX_SIMPLE.items()] + [
    ("leaky_relu", _unary("LeakyRelu", alpha=0.01)),
    ("elu", _unary("Elu", alpha=1.0)),
    ("gelu", _unary("Gelu", approximate="none")),
    ("gelu", _mul(("const", 0.5), _X, _add(("const", 1.0), _unary("Erf", _mul(("const", math.sqrt(0.5)), _X))))),
    ("silu", _mul(_X, _unary("Sigmoid"))),
    ("gaussian", _unary("Exp", _mul(("const", -0.5), _X, _X))),
]
_AFFINE_OPS = {"Gemm", "MatMul", "Add"}
_SUPPORTED_OPS = sorted(
    {*_AFFINE_OPS, *_ONNX_SIMPLE.values(), *_ATTRIBUTE_DEFAULTS, "Constant", "Div", "Sub", "Neg", "Pow", "Erf", "Mul"}
)


def _close(a, b) -> bool:
    if isinstance(a, str) or isinstance(b, str):
        return a == b
    return abs(a - b) <= _CONSTANT_RTOL * max(abs(a), abs(b))


def _operands(expr, op, root=True):
    """Every reading of ``expr`` as ``op(f1, f2, ...)``: each nested ``op`` node expanded or kept whole."""
    if expr[0] != op or not expr[2]:
        yield [expr]
        return
    if not root:
        yield [expr]
    for parts in itertools.product(*(list(_operands(arg, op, False)) for arg in expr[2])):
        yield [factor for part in parts for factor in part]


def _matches(template, expr, binding):
    """Every binding ``{"x": subexpression}`` (extending ``binding``) under which ``template`` is ``expr``."""
    if template == _X:
        if "x" not in binding or binding["x"] == expr:
            yield {"x": expr}
        return
    if expr[0] != template[0]:
        return
    if template[0] == "const":
        if _close(template[1], expr[1]):
            yield binding
        return
    attrs, expected = dict(expr[1]), dict(template[1])
    if attrs.keys() != expected.keys() or not all(_close(attrs[k], expected[k]) for k in attrs):
        return
    if template[0] not in _ASSOCIATIVE:
        yield from _match_all(template[2], expr[2], binding)
        return
    unit, combine = _ASSOCIATIVE[template[0]]
    wanted = [t for t in template[2] if t[0] != "const"]
    constant = functools.reduce(combine, (t[1] for t in template[2] if t[0] == "const"), unit)
    for operands in itertools.islice(_operands(expr, template[0]), _MAX_READINGS):
        rest = [e for e in operands if e[0] != "const"]
        if len(rest) == len(wanted) and _close(
            functools.reduce(combine, (e[1] for e in operands if e[0] == "const"), unit), constant
        ):
            for order in itertools.permutations(rest):
                yield from _match_all(wanted, order, binding)


def _match_all(templates, exprs, binding):
    """Bindings under which each of ``templates`` is the ``exprs`` at the same place."""
    if not templates:
        yield binding
        return
    for first in _matches(templates[0], exprs[0], binding):
        yield from _match_all(templates[1:], exprs[1:], first)


def _peel(expr):
    """``(activation names, innermost first; the tensor they apply to)``, or None if unreadable."""
    if expr[0] == "ref":
        return [], expr[1]
    for name, template in _TEMPLATES:
        for binding in _matches(template, expr, {}):
            inner = _peel(binding["x"])
            if inner is not None:
                return inner[0] + [name], inner[1]
    return None


def _show(expr) -> str:
    """``expr`` as text; ``z`` stands for a layer's output, ``x`` for a template's variable."""
    if expr[0] in ("x", "ref", "const"):
        return {"x": "x", "ref": "z"}.get(expr[0]) or f"{expr[1]:.8g}"
    attrs = "".join(f"[{k}={v:.6g}]" if isinstance(v, float) else f"[{k}={v}]" for k, v in expr[1])
    return f"{expr[0]}{attrs}({', '.join(_show(a) for a in expr[2])})"


class _OnnxGraph:
    """An ONNX graph read as a chain: affine layers (Gemm, or MatMul then Add) and activations."""

    def __init__(self, onnx, graph):
        self.onnx, self.graph = onnx, graph
        self.initializers = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
        self.producer = {out: node for node in graph.node for out in node.output}
        inputs = [i.name for i in graph.input if i.name not in self.initializers]
        if len(inputs) != 1 or len(graph.output) != 1:
            raise ArchitectureError(
                f"the graph must have one input and one output, got {inputs} and {[o.name for o in graph.output]}"
            )
        self.input, self.expressions = inputs[0], {}
        for node in graph.node:
            if node.domain not in ("", "ai.onnx") or node.op_type not in _SUPPORTED_OPS:
                raise ArchitectureError(
                    f"unsupported ONNX op {node.op_type} (domain {node.domain or 'ai.onnx'!r}) in node "
                    f"{node.name!r}; supported ops: {', '.join(_SUPPORTED_OPS)}"
                )

    def attributes(self, node) -> dict:
        values = {a.name: self.onnx.helper.get_attribute_value(a) for a in node.attribute}
        values = {k: v.decode() if isinstance(v, bytes) else v for k, v in values.items()}
        return {**_ATTRIBUTE_DEFAULTS.get(node.op_type, {}), **values}

    def constant(self, tensor):
        """The array of an initializer or Constant node (through Identity nodes), or None."""
        if tensor in self.initializers:
            return self.initializers[tensor]
        node = self.producer.get(tensor)
        if node is not None and node.op_type == "Identity":
            return self.constant(node.input[0])
        if node is None or node.op_type != "Constant":
            return None
        (attribute,) = node.attribute
        value = self.onnx.helper.get_attribute_value(attribute)
        return self.onnx.numpy_helper.to_array(value) if attribute.name == "value" else np.asarray(value)

    def affine(self, tensor):
        """``(input tensor, W (n_in, n_out), b (n_out,))`` if ``tensor`` is a layer's output, else None."""
        node = self.producer.get(tensor)
        if node is None or node.op_type not in _AFFINE_OPS:
            return None
        if node.op_type == "Gemm":
            return self._gemm(node)
        if node.op_type == "MatMul":
            W = self.constant(node.input[1])
            return None if W is None or W.ndim != 2 else (node.input[0], W, np.zeros(W.shape[1], W.dtype))
        for product, bias in (node.input, node.input[::-1]):  # Add: MatMul output + bias, either order
            producer = self.producer.get(product)
            layer = self.affine(product) if producer is not None and producer.op_type == "MatMul" else None
            b = self.constant(bias)
            if layer is not None and b is not None and b.size == layer[1].shape[1] and b.shape[-1:] == (b.size,):
                return layer[0], layer[1], b.reshape(-1)
        return None

    def _gemm(self, node):
        attrs = {"alpha": 1.0, "beta": 1.0, "transA": 0, "transB": 0, **self.attributes(node)}
        W = self.constant(node.input[1])
        if attrs["alpha"] != 1 or attrs["beta"] != 1 or attrs["transA"] != 0 or W is None:
            raise ArchitectureError(
                f"Gemm node {node.name!r}: nnderiv reads Gemm(x, W, b) with constant W, alpha=beta=1 and "
                f"transA=0, got {attrs} ({'constant' if W is not None else 'computed'} W)"
            )
        W = W.T if attrs["transB"] else W
        b = self.constant(node.input[2]) if len(node.input) > 2 and node.input[2] else np.zeros(W.shape[1], W.dtype)
        if b is None or b.size != W.shape[1] or b.shape[-1] != b.size:
            raise ArchitectureError(f"Gemm node {node.name!r}: the bias must be a constant of {W.shape[1]} values")
        return node.input[0], W, b.reshape(-1)

    def expression(self, tensor):
        """The normal-form expression of ``tensor`` down to the nearest layer outputs or graph input."""
        if tensor not in self.expressions:
            self.expressions[tensor] = self._expression(tensor)
        return self.expressions[tensor]

    def _expression(self, tensor):
        if tensor == self.input or self.affine(tensor) is not None:
            return ("ref", tensor)
        value = self.constant(tensor)
        if value is not None:
            if value.size != 1:
                raise ArchitectureError(
                    f"constant {tensor!r} of shape {value.shape} where an elementwise scalar was expected"
                )
            return ("const", float(value.reshape(())))
        node = self.producer[tensor]
        args = [self.expression(name) for name in node.input if name]
        op = node.op_type
        if op in ("Div", "Pow") and args[1][0] == "const":
            if op == "Div":
                return _mul(args[0], ("const", 1.0 / args[1][1]))
            return _mul(args[0], args[0]) if args[1][1] == 2 else (op, (), tuple(args))
        rewritten = {
            "Mul": lambda: _mul(*args),
            "Add": lambda: _add(*args),
            "Neg": lambda: _mul(("const", -1.0), *args),
        }
        rewritten["Sub"] = lambda: _add(args[0], _mul(("const", -1.0), args[1]))
        if op in rewritten:
            return rewritten[op]()
        return (op, tuple(sorted(self.attributes(node).items())), tuple(args))

    def chain(self) -> list:
        """Model entries, input first: ``(W, b)`` pairs and activation names."""
        entries, tensor = [], self.graph.output[0].name
        while True:
            expr = self.expression(tensor)
            peeled = _peel(expr)
            if peeled is None:
                shown = _show(expr) if len(_show(expr)) < 400 else _show(expr)[:400] + "..."
                raise ArchitectureError(
                    f"cannot read {shown} (computing {tensor!r}; z a layer's output) as supported "
                    "activations; supported forms (x their input): "
                    + "; ".join(f"{name}: {_show(t)}" for name, t in _TEMPLATES)
                )
            names, tensor = peeled
            entries[:0] = names
            if tensor == self.input:
                return entries
            tensor, W, b = self.affine(tensor)
            entries.insert(0, (W, b))


def _load_onnx(onnx, source):
    """A checked ``ModelProto`` from a path or a ``ModelProto``; FileFormatError for anything broken."""
    from google.protobuf.message import DecodeError

    proto = source
    if not isinstance(source, onnx.ModelProto):
        path = os.fspath(source)
        if not os.path.isfile(path):
            raise FileFormatError(f"cannot read an ONNX model from {path!r}: no such file")
        try:
            proto = onnx.load(path)
        except (DecodeError, OSError, ValueError, RuntimeError) as exc:
            raise FileFormatError(f"{path!r} is not an ONNX model ({type(exc).__name__}: {exc})") from None
    try:
        onnx.checker.check_model(proto)
    except (onnx.checker.ValidationError, ValueError, RuntimeError) as exc:
        raise FileFormatError(f"{source!r} is not a valid ONNX model: {exc}") from None
    return proto


def from_onnx(source) -> Sequential:
    """The nnderiv model of an ONNX file (or ``onnx.ModelProto``) of a dense network.

    Read with the ``onnx`` package alone (no runtime): layers are ``Gemm`` (constant weights,
    ``alpha = beta = 1``, ``transA = 0``, either ``transB``) or ``MatMul`` by a constant followed by
    ``Add`` of a constant bias; activations follow the table of the module docstring, composite
    ones (silu, gaussian, gelu's Erf form) recognised in any order of their factors. An op outside
    that set raises ``ArchitectureError`` naming its type and node and listing the supported ops;
    a missing, corrupt or invalid file raises ``FileFormatError``. The dtype is the weights'.

    >>> import nnderiv as nd
    >>> model = nd.from_onnx("model.onnx")                  # doctest: +SKIP
    >>> nd.laplacian(model, np.zeros((4, model.n_inputs)))  # doctest: +SKIP
    """
    onnx = _require("onnx")
    graph = _OnnxGraph(onnx, _load_onnx(onnx, source).graph)
    entries = graph.chain()
    dtypes = {e[0].dtype for e in entries if not isinstance(e, str)} | {
        e[1].dtype for e in entries if not isinstance(e, str)
    }
    if len(dtypes) != 1 or dtypes.pop() not in (np.float32, np.float64):
        raise DTypeError(
            f"the weights of an ONNX model must all be float32 or all float64, got {sorted(map(str, dtypes))}"
        )
    return _model(entries)


# --------------------------------------------------------------------------------------------
# ONNX: writing


class _OnnxBuilder:
    """Nodes and initializers of a graph under construction, with fresh tensor names."""

    def __init__(self, onnx, dtype):
        self.onnx, self.dtype, self.nodes, self.initializers = onnx, dtype, [], []

    def array(self, name: str, value) -> str:
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(value, self.dtype), name))
        return name

    def node(self, op: str, inputs, **attrs) -> str:
        name = f"{op}_{len(self.nodes)}"
        self.nodes.append(self.onnx.helper.make_node(op, list(inputs), [f"{name}_out"], name=name, **attrs))
        return f"{name}_out"

    def activation(self, name: str, z: str, tag: str, opset: int) -> str:
        if name in _ONNX_SIMPLE:
            return self.node(_ONNX_SIMPLE[name], [z])
        if name in ("leaky_relu", "elu"):
            op = {"leaky_relu": "LeakyRelu", "elu": "Elu"}[name]
            return self.node(op, [z], alpha=_ATTRIBUTE_DEFAULTS[op]["alpha"])
        if name == "silu":
            return self.node("Mul", [z, self.node("Sigmoid", [z])])
        if name == "gaussian":
            return self.node(
                "Exp", [self.node("Mul", [self.node("Mul", [z, z]), self.array(f"{tag}minus_half", -0.5)])]
            )
        if opset >= 20:  # gelu
            return self.node("Gelu", [z], approximate="none")
        erf = self.node("Erf", [self.node("Mul", [z, self.array(f"{tag}sqrt_half", math.sqrt(0.5))])])
        one_plus = self.node("Add", [erf, self.array(f"{tag}one", 1.0)])
        return self.node("Mul", [self.node("Mul", [z, one_plus]), self.array(f"{tag}half", 0.5)])


def to_onnx(model: Sequential, path, *, opset: int = 18) -> None:
    """Write ``model`` as an ONNX file: input ``"x"`` ``[N, d]`` (dynamic batch), output ``"y"`` ``[N, m]``.

    Each Dense layer is ``Gemm(h, W, b)`` with ``W`` stored ``(n_in, n_out)`` as in nnderiv
    (``transB = 0``), bit for bit, in the model's dtype; activations follow the module table.
    gelu is the ``Gelu`` op from ``opset = 20``, its Erf form below (default 18, what
    ``torch.onnx.export`` writes by default). The graph passes ``onnx.checker`` (full check, with
    shape inference) and is written atomically. :func:`from_onnx` reads it back exactly.

    >>> import nnderiv as nd
    >>> nd.to_onnx(nd.MLP([2, 64, 1], activation="gelu", seed=0), "model.onnx", opset=20)  # doctest: +SKIP
    """
    onnx = _require("onnx")
    helper = onnx.helper
    if not 13 <= opset <= onnx.defs.onnx_opset_version():
        raise ValueError(f"opset must be between 13 and {onnx.defs.onnx_opset_version()}, got {opset}")
    builder, h = _OnnxBuilder(onnx, model.dtype), "x"
    for prefix, layer in _leaves(model):
        if isinstance(layer, Dense):
            h = builder.node(
                "Gemm",
                [h, builder.array(f"{prefix}W", layer.params["W"]), builder.array(f"{prefix}b", layer.params["b"])],
            )
        else:
            h = builder.activation(layer.activation.name, h, prefix, opset)
    builder.nodes[-1].output[0] = "y"
    elem = helper.np_dtype_to_tensor_dtype(model.dtype)
    graph = helper.make_graph(
        builder.nodes,
        "nnderiv",
        [helper.make_tensor_value_info("x", elem, ["N", model.n_inputs])],
        [helper.make_tensor_value_info("y", elem, ["N", model.n_outputs])],
        builder.initializers,
    )
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(graph, opset_imports=opsets, producer_name="nnderiv")
    proto.ir_version = helper.find_min_ir_version_for(opsets)
    onnx.checker.check_model(proto, full_check=True)
    _write_atomically(proto.SerializeToString(), os.fspath(path))


def _write_atomically(data: bytes, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            file.write(data)
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
