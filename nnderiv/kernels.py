"""The kernels every mode calls, each forwarded to the active backend (:mod:`nnderiv.backends`).

Mode code calls ``kernels.affine(...)``, never a backend module, so it is written once; a backend
module implements the same signatures (``numpy`` is the reference: see
:mod:`nnderiv.backends.numpy_backend` for what each kernel computes). The lookup of the active
backend is two dictionary reads per kernel call, nothing next to the kernel itself.
"""

from __future__ import annotations

from . import backends
from .errors import BackendError


def asarray(array):
    """``array`` where the active backend keeps its arrays (host memory, or the GPU for cupy)."""
    return backends.active().asarray(array)


def host(array):
    """``array`` in host memory, as a NumPy array (copied back from the GPU if it is a CuPy array)."""
    from .backends.numpy_backend import asarray

    return asarray(array)


def workspace_bytes(rows: int, itemsize: int) -> int:
    """Bytes a kernel call of the active backend on a stack of ``rows`` rows allocates for itself
    beyond its inputs and outputs (per-thread buffers), whatever the number of points: part of the
    memory budget of every call."""
    workspace = getattr(backends.active(), "workspace_bytes", None)
    return 0 if workspace is None else workspace(rows, itemsize)


def dense_sweep(model, dtype):
    """The active backend's compiled sweeps of ``model`` over all points (``.value(x, chunk)``,
    ``.jacobian(x, chunk)``: :mod:`nnderiv.backends.numba_sweeps`), or ``None`` where it has none
    for this model: then the engine sweeps layer by layer, chunk by chunk."""
    sweep = getattr(backends.active(), "dense_sweep", None)
    return None if sweep is None else sweep(model, dtype)


def reverse_row_cost(model, order: int) -> float:
    """What one row of a reverse sweep of ``order`` costs on the active backend for ``model``, in
    rows of its forward sweep (1 where the backend measured none): the strategy's weight in
    :func:`nnderiv.modes.reverse.choose`."""
    cost = getattr(backends.active(), "reverse_row_cost", None)
    return 1.0 if cost is None else float(cost(model, order))


def activation_derivatives(activation, z, k: int):
    """``[g(z), g'(z), ..., g^(k)(z)]``, shape ``(k + 1, *z.shape)``, on the backend's arrays."""
    return backends.active().activation_derivatives(activation, z, k)


def affine(stack, W):
    """``stack @ W`` over the last axis, ONE matrix product; ``W`` must live where the backend runs."""
    backend = backends.active()
    if backends.is_device_array(W) != backend.ON_DEVICE:
        raise BackendError(_placement_message(backend.ON_DEVICE))
    return backend.affine(stack, W)


def _placement_message(backend_on_device: bool) -> str:
    if backend_on_device:
        return (
            f"the active backend is {backends.get_backend()!r} but the model's parameters are NumPy "
            "arrays: call model.to('cupy') first"
        )
    return (
        f"the model's parameters are CuPy arrays but the active backend is {backends.get_backend()!r}: "
        "call nd.set_backend('cupy'), or model.to('numpy') to bring them back"
    )


def add_bias(z, b):
    """``z += b`` in place for ``z`` ``(N, width)`` and ``b`` ``(width,)``; returns ``z``."""
    return backends.active().add_bias(z, b)


def affine_weight_grad(stack, z_bar):
    """``sum over rows and points of stack^T @ z_bar``: the weight cotangent, one product."""
    return backends.active().affine_weight_grad(stack, z_bar)


def bilinear(a, b, table):
    """``out[table.target[p]] += a[table.left[p]] * b[table.right[p]]`` for every pair ``p``."""
    return backends.active().bilinear(a, b, table)


def taylor_coefficients(activation, z, order: int):
    """``a_j = g^(j)(z) / j!`` for ``j = 0..order``: shape ``(order + 1, *z.shape)``."""
    return backends.active().taylor_coefficients(activation, z, order)


def activate(stack, activation, table, order: int):
    """The activation step on a series: ``compose`` of the activation's Taylor coefficients at the
    value row (a backend may fuse the two: numba does for tanh and sigmoid)."""
    return backends.active().activate(stack, activation, table, order)


def activate_saving(stack, activation, table, order: int):
    """:func:`activate` and what its pullback needs: ``(out, a, powers)``, ``a`` to order ``order + 1``."""
    return backends.active().activate_saving(stack, activation, table, order)


def activation_adjoint(adjoint, a, stack):
    """An activation step of a reverse sweep: ``z_bar = h_bar g'``, tangents ``h_bar_i g' + h_bar g'' z_i``."""
    return backends.active().activation_adjoint(adjoint, a, stack)


def compose(stack, a, table, order: int):
    """The activation step ``a_0`` on row 0, ``sum_j a_j delta^j`` elsewhere (nothing saved)."""
    return backends.active().compose(stack, a, table, order)


def compose_saving(stack, a, table, order: int):
    """:func:`compose` and the powers ``delta^2 .. delta^K``, ``(order - 1, *stack.shape)``."""
    return backends.active().compose_saving(stack, a, table, order)


def compose_vjp(out_bar, stack, powers, a, table, order: int):
    """Pullback of :func:`compose` to the input stack (``a`` holds orders ``0 .. order + 1``)."""
    return backends.active().compose_vjp(out_bar, stack, powers, a, table, order)
