"""Models to and from PyTorch modules (``torch.nn.Linear`` and activation modules)."""

from __future__ import annotations

import functools

import numpy as np

from ..activations import get_activation
from ..errors import ArchitectureError, DTypeError
from ..layers import Dense, Sequential
from ._common import _leaves, _model, _require

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
