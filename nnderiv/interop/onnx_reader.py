"""Models from ONNX files: the graph read back as a chain of affine layers and activations."""

from __future__ import annotations

import functools
import itertools
import math
import os

import numpy as np

from ..errors import ArchitectureError, DTypeError, FileFormatError
from ..layers import Sequential
from ._common import _model, _require

#: constants and float attributes of an ONNX graph are float32 at worst: equal up to this
_CONSTANT_RTOL = 1e-6


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
