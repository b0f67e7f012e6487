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
- ``nnderiv_backward(m, A, Z, B, S)``: the pullback, the powers recomputed in registers;

and, table-free, ``nnderiv_activation_adjoint`` (:func:`adjoint_source`): the reverse sweep's
activation rule for every cotangent and tangent of an element in one thread.

The source is compiled with ``--fmad=false``: no multiply-add is contracted, so ``forward``,
``backward`` and ``activation_adjoint`` return the reference's numbers bit for bit, and the tanh
kernels differ from it only where the device's ``tanh`` and ``exp`` round differently (a few ulp). :func:`source` with
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
    lines += [f"#define {name.upper()} {name}{suffix}" for name in ("tanh", "exp", "fabs")]
    lines.append("#define FMIN(a, b) ((b) < (a) ? (b) : (a))  /* np.minimum's NaN: fmin(NaN, b) is b */")
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


def _function_text(name: str, arguments: list[str], body: list[str], host: bool) -> str:
    """A function running ``body`` for every element ``i < m``: a CUDA kernel, a thread per
    element (grid-stride), or for the host a C loop."""
    if host:
        head, loop = "void", "for (long long i = 0; i < m; ++i)"
    else:
        head = 'extern "C" __global__ void'
        loop = (
            "for (long long i = blockIdx.x * (long long) blockDim.x + threadIdx.x; i < m;"
            " i += (long long) blockDim.x * gridDim.x)"
        )
    signature = f"{head} nnderiv_{name}({', '.join(['const long long m', *arguments])}) {{"
    return "\n".join([signature, f"    {loop} {{", *(f"        {line}" for line in body), "    }", "}"])


def render(kernel: codegen.Kernel, host: bool = False) -> str:
    """``kernel`` as a CUDA ``__global__`` function, a thread per element (or a C loop, ``host``)."""
    arguments = [f"const real* __restrict__ {array}" for array in kernel.inputs]
    arguments += [f"real* __restrict__ {array}" for array in kernel.outputs]
    return _function_text(kernel.name, arguments, [codegen.line(s, LINES) for s in kernel.body], host)


#: the reverse sweep's activation rule (:func:`nnderiv.backends.numpy_backend.activation_adjoint`),
#: for ``outputs`` cotangents ``h_bar`` and ``tangents - 1`` tangents of each: ``z_bar = h_bar a_1``,
#: ``z_bar_t = h_bar_t a_1 + (2 a_2 z_t) h_bar``, in the reference's order of operations
_ADJOINT_BODY = """const real a_1 = A[1 * m + i];
const real curvature = tangents > 1 ? REAL(2.0) * A[2 * m + i] : REAL(0.0);
for (long long j = 0; j < outputs; ++j) {
    const real h = ADJ[j * m + i];
    OUT[j * m + i] = h * a_1;
    for (long long t = 1; t < tangents; ++t) {
        const long long k = (t * outputs + j) * m + i;
        OUT[k] = ADJ[k] * a_1 + (curvature * Z[t * m + i]) * h;
    }
}""".splitlines()


def adjoint_source(dtype, host: bool = False) -> str:
    """The source of ``nnderiv_activation_adjoint(m, tangents, outputs, ADJ, A, Z, OUT)``."""
    arguments = ["const long long tangents", "const long long outputs"]
    arguments += [f"const real* __restrict__ {array}" for array in ("ADJ", "A", "Z")] + ["real* __restrict__ OUT"]
    header = "// the reverse sweep's activation rule: written by nnderiv.backends.cuda_codegen"
    return "\n\n".join(
        [header, _prelude(dtype, host), _function_text("activation_adjoint", arguments, _ADJOINT_BODY, host)]
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


def module_source(key, dtype, host: bool = False) -> str:
    """The source of one module: ``key`` ``(table, order)`` (:func:`source`), or ``None`` for the
    activation adjoint (:func:`adjoint_source`)."""
    return adjoint_source(dtype, host) if key is None else source(*key, dtype, host)


@cache
def _module(key, dtype):
    import cupy

    return cupy.RawModule(code=module_source(key, dtype), options=NVRTC_OPTIONS)


def _function(key, name: str, dtype):
    """Kernel ``name`` of module ``key`` (compiled on first use); :class:`BackendError` if NVRTC
    refuses it, naming the switch that runs the unfused reference kernels instead."""
    import cupy

    try:
        return _module(key, np.dtype(dtype)).get_function(f"nnderiv_{name}")
    except cupy.cuda.compiler.CompileException as exc:
        what = "" if key is None else f" for {key[0].description}, order {key[1]}"
        raise BackendError(
            f"CuPy could not compile the fused kernel {name!r}{what} ({np.dtype(dtype).name}): {exc}. "
            "Set nnderiv.backends.cupy_backend.FUSED = False to run the unfused reference kernels, "
            "and please report this with your CUDA and CuPy versions"
        ) from exc


def _launch(key, name: str, m: int, dtype, *args) -> None:
    if m == 0:
        return
    blocks = min(-(-m // THREADS), MAX_BLOCKS)
    _function(key, name, dtype)((blocks,), (THREADS,), (np.int64(m), *args))


def _rows(array):
    """``array`` as C-contiguous ``(rows, m)`` on the device (a view when it already is)."""
    import cupy

    return cupy.ascontiguousarray(array).reshape(len(array), -1)


def forward(table, order: int, a, stack):
    """The activation step of ``stack`` ``(rows, N, width)`` given its Taylor coefficients ``a``."""
    import cupy

    out = cupy.empty(stack.shape, dtype=stack.dtype)
    z = _rows(stack)
    coefficients = _rows(a[: order + 1].astype(stack.dtype, copy=False))
    _launch((table, order), "forward", z.shape[1], z.dtype, coefficients, z, out)
    return out


def tanh_forward(table, order: int, stack, saving: bool = False):
    """The tanh activation step of ``stack`` in one launch; with ``saving``, ``(out, a)`` with the
    coefficients ``a_0 .. a_{order+1}`` its pullback needs."""
    import cupy

    out = cupy.empty(stack.shape, dtype=stack.dtype)
    z = _rows(stack)
    if not saving:
        _launch((table, order), "tanh_forward", z.shape[1], z.dtype, z, out)
        return out
    a = cupy.empty((order + 2, *stack.shape[1:]), dtype=stack.dtype)
    _launch((table, order), "tanh_forward_saving", z.shape[1], z.dtype, z, out, a)
    return out, a


def backward(table, order: int, out_bar, stack, a):
    """The pullback of :func:`forward` to ``stack``; ``a`` holds orders ``0 .. order + 1``."""
    import cupy

    stack_bar = cupy.empty(stack.shape, dtype=stack.dtype)
    z, b = _rows(stack), _rows(out_bar.astype(stack.dtype, copy=False))
    coefficients = _rows(a[: order + 2].astype(stack.dtype, copy=False))
    _launch((table, order), "backward", z.shape[1], z.dtype, coefficients, z, b, stack_bar)
    return stack_bar


def activation_adjoint(adjoint, a, stack):
    """The reverse sweep's activation step in one launch: ``adjoint`` ``(T, outputs, N, width)``
    (``h_bar`` and its ``T - 1`` tangents), ``a`` the coefficients (to order 2 when ``T > 1``),
    ``stack`` the layer's input series (rows ``1 .. T - 1`` read)."""
    import cupy

    tangents, outputs = adjoint.shape[:2]
    out = cupy.empty(adjoint.shape, dtype=adjoint.dtype)
    z = _rows(stack.astype(adjoint.dtype, copy=False))
    coefficients = _rows(a[: 3 if tangents > 1 else 2].astype(adjoint.dtype, copy=False))
    m = z.shape[1]
    adj = cupy.ascontiguousarray(adjoint)
    _launch(None, "activation_adjoint", m, z.dtype, np.int64(tangents), np.int64(outputs), adj, coefficients, z, out)
    return out
