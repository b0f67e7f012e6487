"""Argument checks shared by the public functions: fail early, name the argument and what was expected."""

from __future__ import annotations

import numbers

import numpy as np

from .errors import DTypeError, NonFiniteError, OrderError, ShapeError

#: Largest derivative order accepted: a guard against requests that are almost surely mistakes
#: (tables grow as C(d + K, K), and order-K derivatives of a network grow like K!).
MAX_ORDER = 24

SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ShapeError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def float_dtype(dtype) -> np.dtype:
    try:
        resolved = np.dtype(dtype)
    except TypeError:
        resolved = None
    if dtype is None or resolved is None or resolved not in SUPPORTED_DTYPES:
        raise DTypeError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return resolved


def order(value, name: str = "order") -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise OrderError(f"{name} must be an integer, got {value!r} of type {type(value).__name__}")
    if not 0 <= value <= MAX_ORDER:
        raise OrderError(f"{name} must be between 0 and {MAX_ORDER}, got {value}")
    return int(value)


def same_shape(array, shape: tuple, what: str) -> None:
    if np.shape(array) != tuple(shape):
        raise ShapeError(f"{what} must have shape {tuple(shape)}, got {np.shape(array)}")


def real_array(value, what: str, dtype: np.dtype) -> np.ndarray:
    """``value`` as an array of ``dtype``; rejects non-numeric, complex and non-finite input."""
    array = np.asarray(value)
    if array.dtype.kind not in "fiu" or array.dtype == np.bool_:
        raise DTypeError(f"{what} must be a real floating-point array, got dtype {array.dtype}")
    array = np.asarray(array, dtype=dtype, order="C")  # keeps 0-d arrays 0-d: nothing reshaped
    if not np.isfinite(array).all():
        bad = np.argwhere(~np.isfinite(array))[0]
        raise NonFiniteError(f"{what} contains NaN or Inf (first at index {tuple(int(i) for i in bad)})")
    return array


def points(x, model) -> np.ndarray:
    """Validate the points ``x`` for ``model``: a finite ``(N, n_inputs)`` array, cast to the model's
    dtype, in host memory (a CuPy array is copied back: the engine moves the seed to the device)."""
    if type(x).__module__.split(".", 1)[0] == "cupy":  # as backends.is_device_array, without importing it
        x = x.get()
    array = real_array(x, "x", model.dtype)
    if array.ndim != 2 or array.shape[1] != model.n_inputs:
        hint = " (use x.reshape(-1, 1) for one input)" if array.ndim == 1 and model.n_inputs == 1 else ""
        raise ShapeError(
            f"x must have shape (N, {model.n_inputs}) for a model with {model.n_inputs} inputs, "
            f"got shape {array.shape}{hint}"
        )
    return array
