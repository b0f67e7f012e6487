"""Models from plain weight and bias arrays."""

from __future__ import annotations

import numpy as np

from .. import _validation as check
from ..errors import ArchitectureError, ShapeError
from ._common import _model


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
