"""What the converters share: optional imports, building a model from its entries, walking one."""

from __future__ import annotations

import importlib

import numpy as np

from ..layers import Activation, Dense, Sequential


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
