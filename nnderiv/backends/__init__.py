"""Backends: where arrays live and who runs the hot kernels.

A backend is one module with the same five kernels, the ones every mode's propagation goes through
(:mod:`nnderiv.kernels` forwards each call to the active backend):

- ``affine(stack, W)`` and ``affine_weight_grad(stack, z_bar)``: the matrix products (BLAS, cuBLAS);
- ``bilinear(a, b, table)``: one sparse product of stacks (:class:`~nnderiv.combinatorics.SparseBilinear`);
- ``compose(stack, a, table, order)``: the activation step, ``sum_j a_j delta^j`` (see
  :mod:`nnderiv.modes.series`); ``compose_saving`` also returns the powers ``delta^2 .. delta^K``
  for the pullback, ``compose_vjp`` is the pullback;
- ``activation_derivatives(activation, z, k)``: ``[g, g', ..., g^(k)]`` at ``z`` on the backend's arrays;

plus ``asarray`` (move an array onto the backend's device, no copy when already there) and
``workers()`` (how many chunks of points :mod:`nnderiv.parallel` runs at once). The
``numpy`` module is the readable reference and the oracle every other backend is tested against;
``numba`` fuses the activation step (straight-line kernels per table,
:mod:`~nnderiv.backends.numba_codegen`) and runs chunks of points on every core; ``cupy`` runs the
same code on the GPU. Choose one with :func:`set_backend` or, for a block of code,
:func:`use_backend`; the default is ``numba`` (see ``docs/backends.md`` for why and when not).

>>> import nnderiv as nd
>>> with nd.use_backend("numpy"):
...     nd.get_backend()
'numpy'
"""

from __future__ import annotations

import importlib
from contextlib import contextmanager

from ..errors import BackendError

#: backend name -> module implementing it
MODULES = {"numpy": "numpy_backend", "numba": "numba_backend", "cupy": "cupy_backend"}
NAMES = tuple(MODULES)

_state: dict = {"name": None, "module": None}


def _default_name() -> str:
    """``numba`` when it imports (it is a required dependency), else ``numpy``."""
    try:
        importlib.import_module("numba")
    except ImportError:  # pragma: no cover - numba is installed with nnderiv
        return "numpy"
    return "numba"


def _check_name(name) -> str:
    if not isinstance(name, str) or name.strip().lower() not in MODULES:
        raise BackendError(f"unknown backend {name!r}; known backends: {', '.join(NAMES)}")
    return name.strip().lower()


def load(name: str):
    """The module of backend ``name``, imported on first use; :class:`BackendError` if unavailable."""
    module = importlib.import_module(f".{MODULES[_check_name(name)]}", __name__)
    module.check_available()
    return module


def set_backend(name: str) -> None:
    """Run the kernels on backend ``name``: ``"numpy"``, ``"numba"`` or ``"cupy"``, process-wide.

    Raises :class:`~nnderiv.BackendError` for an unknown name, or for ``"cupy"`` when CuPy is not
    installed (``pip install 'nnderiv[gpu]'``) or finds no CUDA device.

    >>> import nnderiv as nd
    >>> nd.set_backend("numpy"); nd.get_backend()
    'numpy'
    >>> nd.set_backend("numba")
    """
    name = _check_name(name)
    module = load(name)
    _state["name"], _state["module"] = name, module


def get_backend() -> str:
    """The name of the active backend."""
    if _state["name"] is None:
        set_backend(_default_name())
    return _state["name"]


@contextmanager
def use_backend(name: str):
    """Run the kernels on backend ``name`` inside a ``with`` block, then restore the previous one."""
    previous = get_backend(), _state["module"]
    set_backend(name)
    try:
        yield
    finally:
        _state["name"], _state["module"] = previous


def active():
    """The module of the active backend (the kernels :mod:`nnderiv.kernels` forwards to)."""
    module = _state["module"]
    if module is None:
        get_backend()
        module = _state["module"]
    return module


def is_device_array(array) -> bool:
    """Whether ``array`` is a CuPy array, told by its type's module: CuPy is never imported to check."""
    return type(array).__module__.split(".", 1)[0] == "cupy"


__all__ = ["NAMES", "active", "get_backend", "is_device_array", "load", "set_backend", "use_backend"]
