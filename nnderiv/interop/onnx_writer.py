"""Models to ONNX files (opset 13 and later), written atomically."""

from __future__ import annotations

import math
import os
import tempfile

import numpy as np

from ..layers import Dense, Sequential
from ._common import _leaves, _require
from .onnx_reader import _ATTRIBUTE_DEFAULTS, _ONNX_SIMPLE


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
