"""Layers: what the network is.

A layer knows its parameters and calls a *mode*'s two primitives (see :mod:`nnderiv.modes`):
``mode.linear`` for :class:`Dense` and ``mode.elementwise`` for :class:`Activation`, each with its
pullback beside it. A layer never looks inside a mode's coefficient stack.

Parameters are plain arrays held in ``layer.params`` (``{"W": (n_in, n_out), "b": (n_out,)}``);
a model's ``params`` names them ``"<layer index>.<name>"``, e.g. ``"0.W"``, ``"2.b"``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _validation as check
from .activations import Activation as ActivationFn
from .activations import get_activation
from .errors import ArchitectureError


class Layer:
    """Base class: a map of a coefficient stack with parameters ``params``."""

    params: dict[str, np.ndarray]

    def forward(self, mode, stack):
        """Return ``(output stack, saved)``; ``saved`` is what :meth:`backward` needs."""
        raise NotImplementedError  # pragma: no cover - abstract

    def backward(self, mode, saved, stack_bar):
        """Return ``(input stack cotangent, {param name: gradient})``."""
        raise NotImplementedError  # pragma: no cover - abstract

    def config(self) -> dict[str, Any]:
        """A JSON-able description from which :func:`layer_from_config` rebuilds the layer."""
        raise NotImplementedError  # pragma: no cover - abstract


class Dense(Layer):
    """Affine layer ``z = h @ W + b`` with ``W`` of shape ``(n_in, n_out)``.

    Weights are Glorot-uniform, ``U(-sqrt(6 / (n_in + n_out)), +...)``, drawn from
    ``numpy.random.default_rng(seed)``; biases start at zero.

    >>> layer = Dense(3, 2, seed=0)
    >>> layer.params["W"].shape, layer.params["b"].shape, layer.dtype
    ((3, 2), (2,), dtype('float64'))
    """

    def __init__(self, n_in: int, n_out: int, *, seed=None, dtype="float64"):
        self.n_in = check.positive_int(n_in, "n_in")
        self.n_out = check.positive_int(n_out, "n_out")
        self.dtype = check.float_dtype(dtype)
        rng = np.random.default_rng(seed)
        limit = np.sqrt(6.0 / (n_in + n_out))
        self.params = {
            "W": rng.uniform(-limit, limit, (n_in, n_out)).astype(self.dtype),
            "b": np.zeros(n_out, dtype=self.dtype),
        }

    def forward(self, mode, stack):
        return mode.linear(stack, self.params["W"], self.params["b"]), stack

    def backward(self, mode, stack, stack_bar):
        stack_in_bar, W_bar, b_bar = mode.linear_vjp(stack, self.params["W"], stack_bar)
        return stack_in_bar, {"W": W_bar, "b": b_bar}

    def config(self):
        return {"kind": "Dense", "n_in": self.n_in, "n_out": self.n_out, "dtype": self.dtype.name}

    def __repr__(self):
        return f"Dense({self.n_in}, {self.n_out}, dtype={self.dtype.name})"


class Activation(Layer):
    """Elementwise activation layer, e.g. ``Activation("tanh")``; no parameters.

    >>> Activation("tanh")
    Activation('tanh')
    """

    def __init__(self, activation: str | ActivationFn):
        self.activation = get_activation(activation)
        self.params = {}

    def forward(self, mode, stack):
        return mode.elementwise(stack, self.activation)

    def backward(self, mode, saved, stack_bar):
        return mode.elementwise_vjp(saved, self.activation, stack_bar), {}

    def config(self):
        return {"kind": "Activation", "name": self.activation.name}

    def __repr__(self):
        return f"Activation({self.activation.name!r})"


def _activation_class(name: str, doc: str) -> type:
    return type(name, (Activation,), {"__init__": lambda self: Activation.__init__(self, name.lower()), "__doc__": doc})


Tanh = _activation_class("Tanh", "``Activation('tanh')``.")
Sigmoid = _activation_class("Sigmoid", "``Activation('sigmoid')``.")
Softplus = _activation_class("Softplus", "``Activation('softplus')``.")
Sin = _activation_class("Sin", "``Activation('sin')``.")
Cos = _activation_class("Cos", "``Activation('cos')``.")
GELU = _activation_class("GELU", "``Activation('gelu')``.")
SiLU = _activation_class("SiLU", "``Activation('silu')``.")
ELU = _activation_class("ELU", "``Activation('elu')``.")
ReLU = _activation_class("ReLU", "``Activation('relu')``.")


class Sequential(Layer):
    """Layers applied one after the other: ``Sequential(Dense(2, 8), Tanh(), Dense(8, 1))``.

    >>> model = Sequential(Dense(2, 8, seed=0), Activation("tanh"), Dense(8, 1, seed=1))
    >>> sorted(model.params), model.n_inputs, model.n_outputs
    (['0.W', '0.b', '2.W', '2.b'], 2, 1)
    """

    def __init__(self, *layers: Layer):
        if not layers:
            raise ArchitectureError("Sequential needs at least one layer")
        self.layers = list(layers)
        shaped = [layer for layer in self.layers if isinstance(layer, (Dense, Sequential))]
        if not shaped:
            raise ArchitectureError("a model needs at least one Dense layer to fix its input width")
        for before, after in zip(shaped, shaped[1:]):
            if _widths(before)[1] != _widths(after)[0]:
                raise ArchitectureError(
                    f"mismatched widths: {before!r} outputs {_widths(before)[1]} values but the next "
                    f"layer {after!r} expects {_widths(after)[0]}"
                )
        dtypes = {layer.dtype for layer in shaped}
        if len(dtypes) > 1:
            raise ArchitectureError(f"all Dense layers must share one dtype, got {sorted(d.name for d in dtypes)}")
        self.dtype = shaped[0].dtype
        self.n_inputs, self.n_outputs = _widths(shaped[0])[0], _widths(shaped[-1])[1]

    @property
    def params(self) -> dict[str, np.ndarray]:
        """All parameters, named ``"<layer index>.<name>"``; the arrays themselves, not copies."""
        return {f"{i}.{name}": value for i, layer in enumerate(self.layers) for name, value in layer.params.items()}

    def set_params(self, new_params: dict[str, np.ndarray]) -> None:
        """Replace parameters by name (all of them or some); shapes and dtypes must match."""
        current = self.params
        for name, value in new_params.items():
            if name not in current:
                raise ArchitectureError(f"unknown parameter {name!r}; this model has {sorted(current)}")
            check.same_shape(value, current[name].shape, f"parameter {name!r}")
        for name, value in new_params.items():
            index, key = name.split(".", 1)
            layer = self.layers[int(index)]
            if isinstance(layer, Sequential):
                layer.set_params({key: value})
            else:
                layer.params[key] = np.asarray(value, dtype=self.dtype)

    def to(self, backend: str) -> Sequential:
        """Move every parameter array to where ``backend`` keeps its arrays; returns the model.

        ``"cupy"``: GPU memory (CuPy arrays); ``"numpy"`` or ``"numba"``: host memory (NumPy
        arrays). The kernels run on the backend chosen with :func:`nnderiv.set_backend`; a model
        whose arrays live elsewhere raises :class:`~nnderiv.BackendError` naming both fixes.

        >>> model = MLP([2, 4, 1], seed=0).to("numpy")
        >>> type(model.params["0.W"]).__name__
        'ndarray'
        """
        from .backends import load

        module = load(backend)
        for layer in self.layers:
            if isinstance(layer, Sequential):
                layer.to(backend)
            else:
                layer.params = {name: module.asarray(value) for name, value in layer.params.items()}
        return self

    def save(self, path) -> None:
        """Save parameters and architecture to one ``.npz`` file, atomically: see :func:`nnderiv.save`."""
        from .io import save

        save(self, path)

    def to_torch(self):
        """The same network as a ``torch.nn.Sequential``: see :func:`nnderiv.to_torch`."""
        from .interop import to_torch

        return to_torch(self)

    def to_onnx(self, path, *, opset: int = 18) -> None:
        """Write the network as an ONNX file: see :func:`nnderiv.to_onnx`."""
        from .interop import to_onnx

        to_onnx(self, path, opset=opset)

    def forward(self, mode, stack):
        saved = []
        for layer in self.layers:
            stack, layer_saved = layer.forward(mode, stack)
            saved.append(layer_saved)
        return stack, saved

    def backward(self, mode, saved, stack_bar):
        grads = {}
        for i in reversed(range(len(self.layers))):
            stack_bar, layer_grads = self.layers[i].backward(mode, saved[i], stack_bar)
            grads.update({f"{i}.{name}": g for name, g in layer_grads.items()})
        position = {name: i for i, name in enumerate(self.params)}  # the order of model.params
        return stack_bar, dict(sorted(grads.items(), key=lambda item: position[item[0]]))

    def __call__(self, x) -> np.ndarray:
        """The network's value at ``x`` of shape ``(N, n_inputs)``: an array ``(N, n_outputs)``."""
        from .derivatives import value

        return value(self, x)

    def config(self):
        return {"kind": "Sequential", "layers": [layer.config() for layer in self.layers]}

    def __repr__(self):
        inner = ",\n".join(f"  {layer!r}" for layer in self.layers)
        return f"{type(self).__name__}(\n{inner}\n)"


def _widths(layer) -> tuple[int, int]:
    """``(input width, output width)`` of a Dense layer or a Sequential model."""
    return (layer.n_in, layer.n_out) if isinstance(layer, Dense) else (layer.n_inputs, layer.n_outputs)


class MLP(Sequential):
    """Multilayer perceptron: ``Dense`` layers of the given widths with an activation between them.

    ``MLP([2, 64, 64, 1], activation="tanh", seed=0)`` is
    ``Sequential(Dense(2, 64), Tanh(), Dense(64, 64), Tanh(), Dense(64, 1))``; layer ``i`` is
    seeded with ``seed + i`` so the whole model is reproducible from one integer. The last layer
    is linear unless ``output_activation`` is given.

    >>> model = MLP([2, 16, 1], activation="tanh", seed=0)
    >>> model(np.zeros((5, 2))).shape
    (5, 1)
    """

    def __init__(self, widths, activation="tanh", *, output_activation=None, seed=None, dtype="float64"):
        widths = [check.positive_int(w, "widths") for w in widths]
        if len(widths) < 2:
            raise ArchitectureError(f"MLP needs at least [n_inputs, n_outputs], got widths={widths}")
        layers: list[Layer] = []
        for i, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
            layers.append(Dense(n_in, n_out, seed=None if seed is None else seed + i, dtype=dtype))
            if i < len(widths) - 2:
                layers.append(Activation(activation))
        if output_activation is not None:
            layers.append(Activation(output_activation))
        super().__init__(*layers)


def layer_from_config(config: dict) -> Layer:
    """Rebuild a layer (or a whole model) from :meth:`Layer.config`, with freshly initialised parameters."""
    try:
        kind = config["kind"]
        if kind == "Dense":
            return Dense(int(config["n_in"]), int(config["n_out"]), dtype=config["dtype"])
        if kind == "Activation":
            return Activation(str(config["name"]))
        if kind == "Sequential":
            return Sequential(*(layer_from_config(c) for c in config["layers"]))
    except (KeyError, TypeError) as exc:
        raise ArchitectureError(f"malformed layer description {config!r}: {exc}") from None
    raise ArchitectureError(f"unknown layer kind {kind!r}; known kinds: Dense, Activation, Sequential")
