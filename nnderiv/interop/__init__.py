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

One module per format: ``arrays.py`` (:func:`from_arrays`), ``pytorch.py`` (:func:`from_torch`,
:func:`to_torch`), ``onnx_reader.py`` (:func:`from_onnx`: the graph matched back to layers) and
``onnx_writer.py`` (:func:`to_onnx`); ``_common.py`` builds and walks the models they exchange.
"""

from ._common import _leaves, _model, _require  # noqa: F401 (used by nnderiv.crosscheck and the tests)
from .arrays import from_arrays
from .onnx_reader import from_onnx
from .onnx_writer import to_onnx
from .pytorch import from_torch, to_torch, torch_leaves

__all__ = ["from_arrays", "from_onnx", "from_torch", "to_onnx", "to_torch", "torch_leaves"]
