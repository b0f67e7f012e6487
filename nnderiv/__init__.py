"""nnderiv: a dense network's outputs and their input derivatives of any order, with pullbacks.

>>> import numpy as np, nnderiv as nd
>>> model = nd.MLP([2, 16, 1], activation="tanh", seed=0)
>>> D = nd.derivatives(model, np.zeros((4, 2)), order=3)
>>> D.hessian.shape
(4, 1, 2, 2)
"""

from . import losses, optim, plot
from ._validation import MAX_ORDER
from .activations import ACTIVATIONS, get_activation
from .backends import get_backend, set_backend, use_backend
from .config import get_memory_limit, memory_limit, set_memory_limit
from .crosscheck import Report, crosscheck
from .derivatives import Derivatives, derivatives, divergence, hessian, jacobian, value
from .errors import (
    ArchitectureError,
    BackendError,
    ConfigError,
    DTypeError,
    FileFormatError,
    MemoryLimitError,
    NnderivError,
    NnderivWarning,
    NonFiniteError,
    OrderError,
    ShapeError,
    UnknownActivationError,
)
from .interop import from_arrays, from_onnx, from_torch, to_onnx, to_torch
from .io import load, save
from .layers import (
    ELU,
    GELU,
    MLP,
    Activation,
    Cos,
    Dense,
    ReLU,
    Sequential,
    Sigmoid,
    SiLU,
    Sin,
    Softplus,
    Tanh,
)
from .losses import MSE, Loss, OperatorMSE
from .modes.hvp import hvp
from .modes.laplacian import laplacian
from .modes.taylor import biharmonic, mixed_partial, pure_derivatives, taylor
from .operators import explain, vjp
from .optim import SGD, Adam
from .training import History, StopTraining, fit

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "MAX_ORDER",
    "MLP",
    "Activation",
    "ArchitectureError",
    "BackendError",
    "ConfigError",
    "Cos",
    "DTypeError",
    "Dense",
    "Derivatives",
    "ELU",
    "explain",
    "FileFormatError",
    "GELU",
    "MemoryLimitError",
    "NnderivError",
    "NnderivWarning",
    "NonFiniteError",
    "OrderError",
    "ReLU",
    "Sequential",
    "ShapeError",
    "SiLU",
    "Sigmoid",
    "Sin",
    "Softplus",
    "Tanh",
    "UnknownActivationError",
    "derivatives",
    "get_activation",
    "get_memory_limit",
    "hessian",
    "jacobian",
    "memory_limit",
    "set_memory_limit",
    "value",
    "vjp",
    "taylor",
    "pure_derivatives",
    "mixed_partial",
    "laplacian",
    "hvp",
    "divergence",
    "biharmonic",
    "Adam",
    "History",
    "Loss",
    "MSE",
    "SGD",
    "StopTraining",
    "fit",
    "load",
    "losses",
    "optim",
    "plot",
    "save",
    "OperatorMSE",
    "get_backend",
    "set_backend",
    "use_backend",
    "Report",
    "crosscheck",
    "from_arrays",
    "from_onnx",
    "from_torch",
    "to_onnx",
    "to_torch",
]
