r"""Fused CUDA kernels for the activation step of one series table, compiled by CuPy on first use.

On the GPU every array operation is a kernel launch and a trip through device memory: the
reference's activation step (:mod:`~nnderiv.backends.numpy_backend`) reads and writes the stack
once per product run and again per power, and the tanh fill launches a dozen more. Here one
thread computes one element's whole step in registers, from the statements of
:mod:`~nnderiv.backends.codegen`: each input row is read once, each output row written once.
Four kernels per table and order, each ``(m, arrays...)`` with one pointer per array of shape
``(rows, m)`` (``m`` = points x width, row ``r`` at ``r * m``):

- ``nnderiv_forward(m, A, Z, OUT)``: the composition ``OUT = sum_j a_j delta^j`` given the Taylor
  coefficients ``A`` (any activation: its coefficients are computed by CuPy first);
- ``nnderiv_tanh_forward(m, Z, OUT)``: the same with tanh's coefficients computed in the thread
  from the value row, never stored (the whole activation step in one launch);
- ``nnderiv_tanh_forward_saving(m, Z, OUT, A)``: and ``A = a_0 .. a_{K+1}`` stored for the pullback;
- ``nnderiv_backward(m, A, Z, B, S)``: the pullback, the powers recomputed in registers.

The source is compiled with ``--fmad=false``: no multiply-add is contracted, so ``forward`` and
``backward`` return the reference's numbers bit for bit, and the tanh kernels differ from it only
by what the device's ``tanh`` and ``exp`` round differently (an ulp). :func:`source` with
``host=True`` writes the same statements as plain C functions looping over the points: the tests
compile them with the system's C compiler and check them against the reference on machines
without a GPU. CuPy caches compiled kernels on disk (``~/.cupy/kernel_cache``).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from .. import activations
from ..errors import BackendError
from . import codegen

#: threads per block of every launch (each thread loops over elements grid-stride)
THREADS = 256
#: at most this many blocks (enough to fill any GPU; the grid-stride loop covers the rest)
MAX_BLOCKS = 65536
NVRTC_OPTIONS = ("--fmad=false",)

_TYPES = {np.dtype(np.float64): ("double", ""), np.dtype(np.float32): ("float", "f")}


def _prelude(dtype, host: bool) -> str:
    real, suffix = _TYPES[np.dtype(dtype)]
    lines = ["#include <math.h>"] if host else []
    lines += [f"typedef {real} real;", "#define REAL(x) ((real) (x))"]
    lines += [f"#define {name.upper()} {name}{suffix}" for name in ("tanh", "exp", "fabs", "fmin")]
    return "\n".join(lines)


#: each statement of :mod:`~nnderiv.backends.codegen` as a line of C, a pointer per array with
#: rows ``m`` apart
LINES = {
    "load": "const real {0} = {1}[{2} * m + i];",
    "store": "{0}[{1} * m + i] = {2};",
    "count": "const real {0} = REAL({1});",
    "let": "real {0} = {1};",
    "set": "{0} = {1};",
}


def render(kernel: codegen.Kernel, host: bool = False) -> str:
    """``kernel`` as a CUDA ``__global__`` function, a thread per element (or a C loop, ``host``)."""
    arguments = ["const long long m"]
    arguments += [f"const real* __restrict__ {array}" for array in kernel.inputs]
    arguments += [f"real* __restrict__ {array}" for array in kernel.outputs]
    if host:
        head, loop = "void", "for (long long i = 0; i < m; ++i)"
    else:
        head = 'extern "C" __global__ void'
        loop = (
            "for (long long i = blockIdx.x * (long long) blockDim.x + threadIdx.x; i < m;"
            " i += (long long) blockDim.x * gridDim.x)"
        )
    body = [f"        {codegen.line(statement, LINES)}" for statement in kernel.body]
    return "\n".join(
        [f"{head} nnderiv_{kernel.name}({', '.join(arguments)}) {{", f"    {loop} {{", *body, "    }", "}"]
    )


def kernels(table, order: int) -> list[codegen.Kernel]:
    """The four kernels of ``table`` at ``order`` (see the module's docstring)."""

    def tanh(n_coefficients: int) -> codegen.Kernel:  # the coefficients to order n computed in the thread
        coefficients = codegen.tanh_coefficients(n_coefficients, activations._TANH_CUTOFF)
        return codegen.composition(table, order, coefficients)._replace(name="tanh_forward")

    return [
        codegen.composition(table, order),
        tanh(order),
        codegen.saving(tanh(order + 1), order + 1),
        codegen.pullback(table, order),
    ]


def source(table, order: int, dtype, host: bool = False) -> str:
    """The CUDA source of the four kernels in precision ``dtype`` (plain C for the host, ``host``)."""
    parts = [f"// {table.description}, order {order}: written by nnderiv.backends.cuda_codegen", _prelude(dtype, host)]
    return "\n\n".join(parts + [render(kernel, host) for kernel in kernels(table, order)]) + "\n"


@cache
def _module(table, order: int, dtype):
    import cupy

    return cupy.RawModule(code=source(table, order, dtype), options=NVRTC_OPTIONS)


def _function(table, order: int, name: str, dtype):
    """Kernel ``name`` of the table's module (compiled on first use); :class:`BackendError` if
    NVRTC refuses it, naming the switch that runs the unfused reference kernels instead."""
    import cupy

    try:
        return _module(table, order, dtype).get_function(f"nnderiv_{name}")
    except cupy.cuda.compiler.CompileException as exc:
        raise BackendError(
            f"CuPy could not compile the fused kernel {name!r} for {table.description}, order {order} "
            f"({np.dtype(dtype).name}): {exc}. Set nnderiv.backends.cupy_backend.FUSED = False to run "
            "the unfused reference kernels, and please report this with your CUDA and CuPy versions"
        ) from exc


def _launch(table, order: int, name: str, m: int, *arrays) -> None:
    if m == 0:
        return
    function = _function(table, order, name, arrays[0].dtype)
    blocks = min(-(-m // THREADS), MAX_BLOCKS)
    function((blocks,), (THREADS,), (np.int64(m), *arrays))


def _rows(array):
    """``array`` as C-contiguous ``(rows, m)`` on the device (a view when it already is)."""
    import cupy

    return cupy.ascontiguousarray(array).reshape(len(array), -1)


def forward(table, order: int, a, stack):
    """The activation step of ``stack`` ``(rows, N, width)`` given its Taylor coefficients ``a``."""
    import cupy

    out = cupy.empty(stack.shape, dtype=stack.dtype)
    z = _rows(stack)
    _launch(table, order, "forward", z.shape[1], _rows(a[: order + 1].astype(stack.dtype, copy=False)), z, out)
    return out


def tanh_forward(table, order: int, stack, saving: bool = False):
    """The tanh activation step of ``stack`` in one launch; with ``saving``, ``(out, a)`` with the
    coefficients ``a_0 .. a_{order+1}`` its pullback needs."""
    import cupy

    out = cupy.empty(stack.shape, dtype=stack.dtype)
    z = _rows(stack)
    if not saving:
        _launch(table, order, "tanh_forward", z.shape[1], z, out)
        return out
    a = cupy.empty((order + 2, *stack.shape[1:]), dtype=stack.dtype)
    _launch(table, order, "tanh_forward_saving", z.shape[1], z, out, a)
    return out, a


def backward(table, order: int, out_bar, stack, a):
    """The pullback of :func:`forward` to ``stack``; ``a`` holds orders ``0 .. order + 1``."""
    import cupy

    stack_bar = cupy.empty(stack.shape, dtype=stack.dtype)
    z = _rows(stack)
    coefficients = _rows(a[: order + 2].astype(stack.dtype, copy=False))
    _launch(
        table, order, "backward", z.shape[1], coefficients, z, _rows(out_bar.astype(stack.dtype, copy=False)), stack_bar
    )
    return stack_bar
