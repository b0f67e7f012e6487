"""The CuPy backend: the reference kernels on GPU arrays, cuBLAS for the matrix products, and one
fused CUDA kernel per activation step (:mod:`~nnderiv.backends.cuda_codegen`).

The reference module (:mod:`nnderiv.backends.numpy_backend`) is written against the namespace of its
input arrays, so on CuPy arrays it runs on the GPU unchanged: every run of a series product is one
elementwise multiply and one add on contiguous slices. For tables of up to
:data:`~nnderiv.backends.codegen.MAX_ROWS` rows in float32 or float64, the activation step and
its pullback instead run as one generated kernel, a thread per element, every row read once and
written once (for tanh the Taylor coefficients too are computed in the thread). The results of the
composition and its pullback are the reference's bit for bit. What else this module adds is where
arrays go (``asarray``: onto the current device) and the activation fills, which mostly work on
CuPy arrays through NumPy's dispatch (``__array_ufunc__``, ``__array_function__``) except where they
create a host array or call a host-only ufunc: gelu's ``erfc`` (here ``cupyx.scipy.special.erfc``)
and the ``n F^(n-1)`` term of silu and gelu (here ``cupy.arange``).

CuPy is imported when this backend is selected, never to test an array's type.
"""

from __future__ import annotations

import numpy as np

from .. import activations
from ..errors import BackendError
from . import codegen, cuda_codegen
from . import numpy_backend as reference
from .numpy_backend import (  # noqa: F401 (re-exported: the same code on CuPy arrays)
    add_bias,
    affine,
    affine_weight_grad,
    bilinear,
    divide_by_factorials,
    workers,  # one: the GPU runs each kernel on all the points
)

ON_DEVICE = True


def _cupy():
    try:
        import cupy
    except ImportError:
        raise BackendError(
            "the cupy backend needs CuPy, which is not installed: pip install 'nnderiv[gpu]' "
            "(or the cupy-cudaXXx wheel matching your CUDA version)"
        ) from None
    return cupy


def check_available() -> None:
    """:class:`BackendError` unless CuPy imports and sees at least one CUDA device."""
    cupy = _cupy()
    try:
        n_devices = cupy.cuda.runtime.getDeviceCount()
    except Exception:  # CUDARuntimeError when there is no driver or no device  # noqa: BLE001
        n_devices = 0
    if n_devices == 0:
        raise BackendError("the cupy backend found no CUDA device (cupy.cuda.runtime.getDeviceCount() is 0)")


def asarray(array):
    """``array`` on the current GPU (no copy when it already is there)."""
    return _cupy().asarray(array)


# --- activation fills on the GPU ------------------------------------------------------------------


def _fill_times_z(z, out, factor_fill):
    """``(z F)^(n) = z F^(n) + n F^(n-1)``, as :func:`nnderiv.activations._fill_times_z` on the device."""
    cupy = _cupy()
    factor = cupy.empty_like(out)
    factor_fill(z, factor)
    cupy.multiply(z, factor, out=out)
    out[1:] += cupy.arange(1, len(out), dtype=out.dtype)[:, None] * factor[:-1]


def _fill_normal_cdf(z, out):
    """``Phi(z) = erfc(-z/sqrt 2)/2``, ``Phi^(n) = phi^(n-1)``, with CuPy's ``erfc``."""
    from cupyx.scipy.special import erfc

    out[0] = 0.5 * erfc(-activations._SQRT_HALF * z)
    activations._fill_gaussian_from(z, activations._INV_SQRT_2PI * activations._gaussian(z), out[1:])


_DEVICE_FILLS = {
    "silu": lambda z, out: _fill_times_z(z, out, activations._fill_sigmoid),
    "gelu": lambda z, out: _fill_times_z(z, out, _fill_normal_cdf),
}


def activation_derivatives(activation, z, k: int):
    """``[g(z), ..., g^(k)(z)]`` on the GPU: the activation's own fill on CuPy arrays (its
    transcendental functions dispatch to CuPy), or the device version above."""
    cupy = _cupy()
    fill = _DEVICE_FILLS.get(activation.name) or getattr(activation.derivatives, "__wrapped__", None)
    if fill is None:  # an activation defined outside the table: evaluate on the host
        return cupy.asarray(activation.derivatives(cupy.asnumpy(z), k))
    out = cupy.empty((k + 1, z.size), dtype=z.dtype)
    fill(z.reshape(-1), out)
    return out.reshape(k + 1, *z.shape)


def taylor_coefficients(activation, z, order: int):
    """``a_j = g^(j)(z) / j!`` for ``j = 0..order``, on the GPU."""
    return divide_by_factorials(activation_derivatives(activation, z, order))


#: run the activation steps of small tables as fused kernels (:mod:`~nnderiv.backends.cuda_codegen`);
#: ``False``: the reference's array operations, a launch per operation
FUSED = True


def _fused(stack, table, order: int) -> bool:
    """Whether the activation step on ``stack`` runs the table's generated kernels."""
    return FUSED and stack.dtype in (np.float32, np.float64) and codegen.supports(table, order)


def _no_powers(stack):
    return _cupy().zeros((0, *stack.shape), dtype=stack.dtype)


def activation_adjoint(adjoint, a, stack):
    """One activation step of a reverse sweep (:func:`nnderiv.backends.numpy_backend.activation_adjoint`),
    as one fused kernel: the reference's numbers bit for bit."""
    if FUSED and adjoint.dtype in (np.float32, np.float64):
        return cuda_codegen.activation_adjoint(adjoint, a, stack)
    return reference.activation_adjoint(adjoint, a, stack)


def compose(stack, a, table, order: int):
    """``a_0`` on row 0, ``sum_j a_j delta^j`` elsewhere: one fused kernel where the table has one
    (order 0 is ``a_0`` itself: no kernel at all)."""
    if order > 0 and _fused(stack, table, order):
        return cuda_codegen.forward(table, order, a, stack)
    return reference.compose(stack, a, table, order)


def compose_saving(stack, a, table, order: int):
    """:func:`compose` and the powers its pullback needs (none for the fused kernels: their
    pullback recomputes them in registers)."""
    if order > 0 and _fused(stack, table, order):
        return cuda_codegen.forward(table, order, a, stack), _no_powers(stack)
    return reference.compose_saving(stack, a, table, order)


def compose_vjp(out_bar, stack, powers, a, table, order: int):
    """Pullback of :func:`compose` to its input stack; ``a`` holds orders ``0 .. order + 1``."""
    if _fused(stack, table, order):
        return cuda_codegen.backward(table, order, out_bar, stack, a)
    return reference.compose_vjp(out_bar, stack, powers, a, table, order)


def activate(stack, activation, table, order: int):
    """The activation step; for tanh one kernel computing the coefficients and the composition."""
    if activation.name == "tanh" and _fused(stack, table, order):
        return cuda_codegen.tanh_forward(table, order, stack)
    return compose(stack, taylor_coefficients(activation, stack[0], order), table, order)


def activate_saving(stack, activation, table, order: int):
    """:func:`activate` and what its pullback needs: ``(out, a, powers)``, ``a`` to order ``order + 1``."""
    if activation.name == "tanh" and _fused(stack, table, order):
        out, a = cuda_codegen.tanh_forward(table, order, stack, saving=True)
        return out, a, _no_powers(stack)
    a = taylor_coefficients(activation, stack[0], order + 1)
    out, powers = compose_saving(stack, a, table, order)
    return out, a, powers
