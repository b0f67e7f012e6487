"""The exceptions and warnings nnderiv raises.

Every error is an :class:`NnderivError`; each subclass also derives from the built-in exception a
caller would naturally catch (``ValueError`` for a bad value, ``TypeError`` for a bad type,
``MemoryError`` for a request that would not fit), so generic code keeps working.
"""

from __future__ import annotations


class NnderivError(Exception):
    """Base class of every error raised by nnderiv."""


class ConfigError(NnderivError, ValueError):
    """An argument has a value that makes no sense (a learning rate of -1, an unknown option)."""


class ShapeError(NnderivError, ValueError):
    """An array has the wrong number of dimensions or the wrong size along an axis."""


class DTypeError(NnderivError, TypeError):
    """An array or model has a dtype nnderiv does not support (only float32 and float64)."""


class NonFiniteError(NnderivError, ValueError):
    """An input contains NaN or Inf."""


class OrderError(NnderivError, ValueError):
    """A derivative order is negative, not an integer, or larger than supported."""


class UnknownActivationError(NnderivError, ValueError):
    """An activation name is not in the table of known activations."""


class ArchitectureError(NnderivError, ValueError):
    """Layers do not fit together (mismatched widths, unknown layer kind, bad parameters)."""


class MemoryLimitError(NnderivError, MemoryError):
    """The working set of a request would exceed the configured memory limit."""


class FileFormatError(NnderivError, ValueError):
    """A saved model file is missing, corrupt, or not an nnderiv model."""


class BackendError(NnderivError, RuntimeError):
    """A backend is unknown or not available on this machine."""


class NnderivWarning(UserWarning):
    """A result is valid but probably not what the caller wants."""
