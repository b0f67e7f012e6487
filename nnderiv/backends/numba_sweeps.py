r"""The value, the reverse-mode Jacobian, the Hessian by forward-over-reverse and the series modes of
a dense chain, every chunk of points in one compiled call.

The value and the Jacobian are the cheapest quantities nnderiv computes: one stacked row forward
(and ``m`` adjoint rows back). There, the generic engine's own cost shows: per layer and chunk, a
few Python calls into separate kernels (the product, the bias, the activation, the adjoint step),
each taking the GIL that the other worker may be waiting for. Here each worker of
:mod:`nnderiv.parallel` takes all its chunks (``worker``, ``worker + n_workers``, ...) through
every layer in one compiled call, without returning to Python. The products are BLAS calls made
from the compiled code (the CBLAS functions of NumPy's own OpenBLAS, found through
``threadpoolctl``, on one thread per worker), and each layer's bias and activation are one pass
over its rows. Measured on the benchmark's network (``docs/backends.md``): the value 1.03-1.11x
faster, the Jacobian 1.24-1.31x.

Every number is the generic numba path's: the same BLAS calls on the same blocks of rows of the
same chunks (:func:`~nnderiv.backends.numba_backend.affine`), the same additions, the same
activation functions (:mod:`~nnderiv.backends.numba_activations`). Where a model is not a chain of
:class:`~nnderiv.layers.Dense` layers, each followed by at most one tanh or sigmoid, or
NumPy's BLAS is not an OpenBLAS whose symbols are found, :func:`dense_sweep` returns ``None`` and
the engine runs its generic sweep.

The rules are those of :mod:`nnderiv.modes.reverse` at order 0: forward ``z = h W + b``,
``h = g(z)``, keeping ``g'(z)``; back ``z_bar = h_bar g'(z)``, ``h_bar = z_bar W^T``; and for the
Hessian (:meth:`DenseSweep.forward_over_reverse`) the same differentiated along every input: ``1 + d`` rows
forward, keeping ``g'``, ``g''/2`` and the tangents ``z_t``, then ``z_bar_t = h_bar_t g' +
(g'' z_t) h_bar`` back on ``(1 + d) m`` rows. The Hessian and the series sweeps agree with the
layer-by-layer path to a few ulps (their activation steps are other compiled code), the value and
the Jacobian bit for bit.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from functools import cache

import numba
import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from . import numba_tiles
from .numba_activations import FILL_FASTMATH, KINDS, sigmoid_parts, tanh_sech2, wide_vectors
from .numba_tiles import tiled_product

#: row-major; no transposition, transposition (CBLAS's enumerations)
_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112
#: the activations a compiled sweep takes (those with one-pass fills of g and g'; the others, whose
#: fills would triple the compile time of every sweep, go layer by layer)
COMPILED = ("tanh", "sigmoid")
#: forward-over-reverse (the Hessian, nd.hvp) in one compiled call per worker (:meth:`DenseSweep.forward_over_reverse`);
#: ``False``: layer by layer (an A/B switch)
COMPILED_HESSIAN = True


@dataclass(frozen=True)
class Blas:
    """NumPy's OpenBLAS's ``cblas_?gemm``, ``cblas_?gemv`` and ``cblas_?dot``: their addresses, per
    dtype, and the type of its integers."""

    addresses: dict  # numpy dtype -> int64 array [gemm, gemv, dot]
    int_type: type  # np.int64 for an ILP64 build (NumPy's wheels), np.int32 otherwise


@cache
def numpy_blas() -> Blas | None:
    """The CBLAS functions of NumPy's own OpenBLAS, or ``None`` (another BLAS, or no such symbols)."""
    from . import numba_backend

    library = numba_backend.numpy_openblas()
    if library is None:
        return None
    try:
        return openblas_cblas(ctypes.CDLL(library["filepath"]))
    except OSError:
        return None


def openblas_cblas(dll: ctypes.CDLL) -> Blas | None:
    """The CBLAS functions of the OpenBLAS ``dll``, or ``None`` where its symbols are not found."""
    for prefix in ("scipy_", ""):  # the affixes threadpoolctl knows OpenBLAS's symbols by
        for suffix in ("64_", "_64", ""):
            config = f"{prefix}openblas_get_config{suffix}"
            names = {t: [f"{prefix}cblas_{t}{f}{suffix}" for f in ("gemm", "gemv", "dot")] for t in "sd"}
            if not all(hasattr(dll, name) for name in [config, *names["s"], *names["d"]]):
                continue
            getattr(dll, config).restype = ctypes.c_char_p
            ilp64 = b"USE64BITINT" in (getattr(dll, config)() or b"")
            addresses = {
                np.dtype(dtype): np.array([ctypes.cast(getattr(dll, n), ctypes.c_void_p).value for n in names[t]])
                for dtype, t in ((np.float32, "s"), (np.float64, "d"))
            }
            return Blas(addresses, np.int64 if ilp64 else np.int32)
    return None


# The calls are intrinsics: the function's address is an argument, not a constant, so that the
# compiled code is cached on disk; ``ints`` (any value) gives the type of the library's integers.


def _data(context, builder, signature, args, indices):
    """The data pointers of the array arguments at ``indices``."""
    return [context.make_array(signature.args[i])(context, builder, args[i]).data for i in indices]


@intrinsic
def _cblas_gemm(typingctx, address, ints, m, n, k, a, b, c):
    """``c = a @ b``, C-contiguous ``(m, k)``, ``(k, n)``, ``(m, n)`` arrays of one dtype."""

    def codegen(context, builder, signature, args):
        index = context.get_value_type(signature.args[1])
        m, n, k = (context.cast(builder, args[i], signature.args[i], signature.args[1]) for i in (2, 3, 4))
        real = context.get_value_type(signature.args[5].dtype)
        enum, pointer = ir.IntType(32), real.as_pointer()
        arguments = [enum, enum, enum, index, index, index, real, pointer, index, pointer, index, real, pointer, index]
        function = builder.inttoptr(args[0], ir.FunctionType(ir.VoidType(), arguments).as_pointer())
        a, b, c = _data(context, builder, signature, args, (5, 6, 7))
        row_major, plain = enum(_ROW_MAJOR), enum(_NO_TRANS)
        builder.call(function, [row_major, plain, plain, m, n, k, real(1.0), a, k, b, n, real(0.0), c, n])
        return context.get_dummy_value()

    return types.void(address, ints, m, n, k, a, b, c), codegen


@intrinsic
def _cblas_gemv(typingctx, address, ints, transposed, m, n, a, x, y):
    """``y = a @ x`` (``a`` ``(m, n)``), or ``y = a^T @ x`` where ``transposed``; contiguous vectors."""

    def codegen(context, builder, signature, args):
        index = context.get_value_type(signature.args[1])
        m, n = (context.cast(builder, args[i], signature.args[i], signature.args[1]) for i in (3, 4))
        real = context.get_value_type(signature.args[5].dtype)
        enum, pointer = ir.IntType(32), real.as_pointer()
        arguments = [enum, enum, index, index, real, pointer, index, pointer, index, real, pointer, index]
        function = builder.inttoptr(args[0], ir.FunctionType(ir.VoidType(), arguments).as_pointer())
        a, x, y = _data(context, builder, signature, args, (5, 6, 7))
        trans = builder.select(args[2], enum(_TRANS), enum(_NO_TRANS))
        one = index(1)
        builder.call(function, [enum(_ROW_MAJOR), trans, m, n, real(1.0), a, n, x, one, real(0.0), y, one])
        return context.get_dummy_value()

    return types.void(address, ints, transposed, m, n, a, x, y), codegen


@intrinsic
def _cblas_dot(typingctx, address, ints, n, x, y):
    """``sum_i x_i y_i`` of two contiguous vectors (arrays) of ``n`` numbers."""

    def codegen(context, builder, signature, args):
        index = context.get_value_type(signature.args[1])
        n = context.cast(builder, args[2], signature.args[2], signature.args[1])
        real = context.get_value_type(signature.args[3].dtype)
        function = builder.inttoptr(
            args[0], ir.FunctionType(real, [index, real.as_pointer(), index, real.as_pointer(), index]).as_pointer()
        )
        x, y = _data(context, builder, signature, args, (3, 4))
        return builder.call(function, [n, x, index(1), y, index(1)])

    return x.dtype(address, ints, n, x, y), codegen


_jit = numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=FILL_FASTMATH)


@_jit
def _matmul(blas, ints, a, b, c):
    """``c = a @ b`` as NumPy's ``matmul`` computes it, by the same BLAS call: ``dot`` for one
    number, ``gemv`` for one column or one row, ``gemm`` otherwise (the same bits)."""
    m, k = a.shape
    n = b.shape[1]
    if m == 1 and n == 1:
        c[0, 0] = _cblas_dot(blas[2], ints, k, a, b)
    elif n == 1:
        _cblas_gemv(blas[1], ints, False, m, k, a, b, c)
    elif m == 1:
        _cblas_gemv(blas[1], ints, True, k, n, b, a, c)
    else:
        _cblas_gemm(blas[0], ints, m, n, k, a, b, c)


@_jit
def _product(blas, ints, h, W, out, n, block):
    """``out[:n] = h[:n] @ W`` (flat row-major buffers) by the products of
    :func:`~nnderiv.backends.numba_backend.affine`: blocks of ``block`` rows, then the rest; all
    ``n`` rows in register tiles for ``block`` 0 (:func:`~nnderiv.backends.numba_tiles.tiled_product`)."""
    n_in, n_out = W.shape
    if n_in == 1:  # an outer product, one multiplication per entry (numba_backend._outer_product)
        wide_vectors()
        for p in range(n):
            c = h[p]
            for j in range(n_out):
                out[p * n_out + j] = c * W[0, j]
        return
    if block == 0:
        tiled_product(h[: n * n_in].reshape((n, n_in)), W, out[: n * n_out].reshape((n, n_out)))
        return
    for s in range(0, n, block):
        rows = min(block, n - s)
        a = h[s * n_in : (s + rows) * n_in].reshape((rows, n_in))
        c = out[s * n_out : (s + rows) * n_out].reshape((rows, n_out))
        _matmul(blas, ints, a, W, c)


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath=FILL_FASTMATH, inline="always")
def _tanh_or_sigmoid(kind, v):
    """``(g(v), g'(v))`` for tanh (``kind`` 1) or sigmoid (2): the functions of the fills."""
    if kind == 1:
        return tanh_sech2(v)
    parts = sigmoid_parts(v)
    return parts[0], parts[1]


@_jit
def _bias_activation(z, b, kind, slope, n):
    """``z = g(z + b)`` on ``z[:n * width]`` in place, and ``slope = g'(z + b)`` where ``slope``
    is not empty; ``kind`` 0: the bias alone. One pass over each row, written in place element by
    element so that the loops vectorize."""
    wide_vectors()
    width, save = len(b), len(slope) > 0
    for p in range(n):
        o = p * width
        if kind == 0:
            for j in range(width):
                z[o + j] += b[j]
        elif save:
            for j in range(width):
                z[o + j], slope[o + j] = _tanh_or_sigmoid(kind, z[o + j] + b[j])
        else:
            for j in range(width):
                z[o + j] = _tanh_or_sigmoid(kind, z[o + j] + b[j])[0]


# --- the sweeps, on the parameters packed into one flat array -----------------------------------
# (One compiled function for every depth: a tuple of arrays would compile once per length.) Row
# ``l`` of ``layout``: the offset of
# layer l's ``W`` (n_in, n_out) in ``params``, n_in, n_out, the offset of its ``b``, the kind of the
# activation after it (0: none); ``W^T`` lies at the same offset in ``transposes``.


@_jit
def _layer(params, layout, layer, transposed):
    """Layer ``layer``'s ``W`` (``W^T`` if ``transposed``, from the other array) and ``b``, as views."""
    o, n_in, n_out, ob = layout[layer, 0], layout[layer, 1], layout[layer, 2], layout[layer, 3]
    shape = (n_out, n_in) if transposed else (n_in, n_out)
    return params[o : o + n_in * n_out].reshape(shape), params[ob : ob + n_out]


@_jit
def _value_chunk(blas, ints, x, params, layout, blocks, out, buffers):
    """The value of the chain at the ``n`` points ``x`` (flat ``(n, d)``) into ``out`` (flat
    ``(n, m)``); ``buffers`` ``(2, >= n * widest)``."""
    n_layers = len(layout)
    n = len(x) // layout[0, 1]
    h = x
    for layer in range(n_layers):
        W, b = _layer(params, layout, layer, False)
        z = out if layer == n_layers - 1 else buffers[layer % 2]
        _product(blas, ints, h, W, z, n, blocks[layer])
        _bias_activation(z, b, layout[layer, 4], x[:0], n)
        h = z


@_jit
def _seed_adjoint(adjoint, m, n):
    """The adjoint rows of a reverse sweep at the output, flat ``(..., m, n, m)``: output ``k``'s
    first row ``e_k`` at every point, every other row (tangents) 0."""
    adjoint[:] = 0
    for k in range(m):
        for p in range(n):
            adjoint[(k * n + p) * m + k] = 1.0
    return adjoint


@_jit
def _jacobian_chunk(blas, ints, x, params, transposes, layout, blocks, back_blocks, value, jacobian, buffers, slopes):
    """Value (flat ``(n, m)``) and Jacobian (flat ``(m, n, d)``: row ``k`` is ``grad f_k``) of the
    chain at the ``n`` points ``x``; ``buffers`` ``(2, >= n * m * widest)``, ``slopes`` room for
    ``g'`` of every activation, ``n * width`` each."""
    n_layers = len(layout)
    n, m = len(x) // layout[0, 1], layout[n_layers - 1, 2]
    h, kept = x, 0
    starts = np.empty(n_layers, dtype=np.int64)  # where each layer's g' is kept in ``slopes``
    for layer in range(n_layers):
        W, b = _layer(params, layout, layer, False)
        width = layout[layer, 2]
        z = value if layer == n_layers - 1 else buffers[layer % 2]
        _product(blas, ints, h, W, z, n, blocks[layer])
        size = n * width if layout[layer, 4] != 0 else 0
        starts[layer] = kept
        _bias_activation(z, b, layout[layer, 4], slopes[kept : kept + size], n)
        kept += size
        h = z
    adjoint = _seed_adjoint(buffers[0][: m * n * m], m, n)  # rows (m, n, width)
    for layer in range(n_layers - 1, -1, -1):
        WT, _ = _layer(transposes, layout, layer, True)
        if layout[layer, 4] != 0:
            width = layout[layer, 2]
            slope = slopes[starts[layer] : starts[layer] + n * width]
            for k in range(m):
                row = adjoint[k * n * width : (k + 1) * n * width]
                for i in range(n * width):
                    row[i] = row[i] * slope[i]
        target = jacobian if layer == 0 else buffers[(n_layers - layer) % 2]
        _product(blas, ints, adjoint, WT, target, m * n, back_blocks[layer])
        adjoint = target


@_jit
def _value_share(blas, ints, x, params, layout, blocks, out, buffers, chunk, worker, n_workers):
    """Worker ``worker``'s chunks of the value: chunks ``worker``, ``worker + n_workers``, ..."""
    d, m = layout[0, 1], layout[len(layout) - 1, 2]
    n, half = len(x) // d, buffers.shape[1] // 2
    work = buffers[worker, : 2 * half].reshape((2, half))
    for s in range(worker * chunk, n, n_workers * chunk):
        e = min(n, s + chunk)
        last = 1 if e - s < chunk else 0  # a shorter last chunk has its own blocks of rows
        _value_chunk(blas, ints, x[s * d : e * d], params, layout, blocks[last], out[s * m : e * m], work)


@_jit
def _jacobian_workspace(layout, chunk):
    """Elements of one worker's buffers for :func:`_jacobian_share`: each of the two sweep buffers
    (forward rows, then ``m`` adjoint rows, at most ``max(d, widest)`` wide), the kept ``g'`` of
    every activation, and one chunk's Jacobian (``m > 1``: written into place after)."""
    d, m = layout[0, 1], layout[len(layout) - 1, 2]
    widest, kept = d, 0
    for layer in range(len(layout)):
        widest = max(widest, layout[layer, 2])
        kept += layout[layer, 2] if layout[layer, 4] != 0 else 0
    return chunk * m * widest, chunk * kept, chunk * m * d


@_jit
def _jacobian_share(
    blas, ints, x, params, transposes, layout, blocks, value, jacobian, buffers, chunk, worker, n_workers
):
    """Worker ``worker``'s chunks of the value and the Jacobian; ``jacobian`` flat ``(m, N, d)``."""
    d, m = layout[0, 1], layout[len(layout) - 1, 2]
    n = len(x) // d
    work = buffers[worker]
    size, kept, _ = _jacobian_workspace(layout, chunk)
    sweep = work[: 2 * size].reshape((2, size))
    slopes, own = work[2 * size : 2 * size + kept], work[2 * size + kept :]
    for s in range(worker * chunk, n, n_workers * chunk):
        e = min(n, s + chunk)
        last = 1 if e - s < chunk else 0
        rows = (e - s) * d
        target = jacobian[s * d : e * d] if m == 1 else own[: m * rows]
        _jacobian_chunk(
            blas, ints, x[s * d : e * d], params, transposes, layout, blocks[last], blocks[2 + last],
            value[s * m : e * m], target, sweep, slopes,
        )  # fmt: skip
        if m > 1:  # output k's rows into their place among all N points
            for k in range(m):
                jacobian[k * n * d + s * d : k * n * d + e * d] = own[k * rows : (k + 1) * rows]


# --- forward-over-reverse: the Hessian, nd.hvp (nnderiv.modes.reverse, order 2) -------------------
# A chunk's forward stack is (T, n, width), T = 1 + R: the value row and its derivatives z_t along
# R directions (the unit vectors: the Hessian's rows; v: nd.hvp); each activation keeps g'(z),
# g''(z)/2 of the value row and the tangent rows of its input. The adjoint stack is (T, m, n,
# width): h_bar and its tangents for each output.


@_jit
def _activate_tangents(z, b, kind, n, tangents, a1, a2, kept_tangents):
    """The activation step of a first-order series in place: the value row ``z[:n * width]`` gets
    ``b`` and becomes ``g``; tangent rows ``t`` become ``g' z_t``; ``a1 = g'``, ``a2 = g''/2`` of
    the value row and the tangent rows as they came are kept (``kind`` 0: the bias alone)."""
    wide_vectors()
    width = len(b)
    size = n * width
    for p in range(n):
        o = p * width
        if kind == 0:
            for j in range(width):
                z[o + j] += b[j]
        elif kind == 1:
            for j in range(width):
                value, slope = tanh_sech2(z[o + j] + b[j])
                z[o + j], a1[o + j] = value, slope
                a2[o + j] = -(value * slope)  # the Riccati step: (2 g a_1) (-1/2)
        else:
            for j in range(width):
                sigma, slope, centred, _ = sigmoid_parts(z[o + j] + b[j])
                z[o + j], a1[o + j] = sigma, slope
                a2[o + j] = -(centred * slope)
    if kind != 0:
        kept_tangents[: (tangents - 1) * size] = z[size : tangents * size]
        for t in range(1, tangents):
            row = z[t * size : (t + 1) * size]
            for i in range(size):
                row[i] = a1[i] * row[i]


@_jit
def _adjoint_tangents(adjoint, a1, a2, kept_tangents, tangents, m, size):
    """The activation step of the reverse sweep in place on ``adjoint`` (flat ``(T, m, size)``):
    ``h_bar_t a_1 + ((2 a_2) z_t) h_bar`` for the tangent rows, then ``h_bar a_1``."""
    wide_vectors()
    for k in range(m):
        first = adjoint[k * size : (k + 1) * size]
        for t in range(1, tangents):
            row = adjoint[(t * m + k) * size : (t * m + k + 1) * size]
            z = kept_tangents[(t - 1) * size : t * size]
            for i in range(size):
                row[i] = row[i] * a1[i] + ((2.0 * a2[i]) * z[i]) * first[i]
        for i in range(size):
            first[i] = first[i] * a1[i]


@_jit
def _over_reverse_workspace(layout, tangents, chunk):
    """Elements of one worker's buffers for :func:`_over_reverse_share`: each of the two sweep buffers
    (``tangents`` forward rows, then ``tangents * m`` adjoint rows, at most ``max(d, widest)``
    wide), ``g'``, ``g''/2`` and the tangent rows kept per activation, and one chunk's adjoint."""
    d, m = layout[0, 1], layout[len(layout) - 1, 2]
    widest, kept = d, 0
    for layer in range(len(layout)):
        widest = max(widest, layout[layer, 2])
        kept += (1 + tangents) * layout[layer, 2] if layout[layer, 4] != 0 else 0
    return chunk * tangents * m * widest, chunk * kept, chunk * tangents * m * d


@_jit
def _over_reverse_chunk(blas, ints, n, tangents, params, transposes, layout, blocks, back_blocks, value, adjoint_out,
                   buffers, kept):  # fmt: skip
    """Value (flat ``(n, m)``) and the adjoint stack (flat ``(tangents, m, n, d)``: ``grad f_k``
    and its derivatives along the series' directions) of the chain at ``n`` points, from the
    first-order series seeded in ``buffers[1]`` (flat ``(tangents, n, d)``)."""
    n_layers, m = len(layout), layout[len(layout) - 1, 2]
    h = buffers[1]
    starts, used = np.empty(n_layers, dtype=np.int64), 0
    for layer in range(n_layers):
        W, b = _layer(params, layout, layer, False)
        width = layout[layer, 2]
        z = buffers[layer % 2]
        _product(blas, ints, h, W, z, tangents * n, blocks[layer])
        size = n * width
        starts[layer] = used
        keeps = layout[layer, 4] != 0
        a1 = kept[used : used + size] if keeps else kept[:0]
        a2 = kept[used + size : used + 2 * size] if keeps else kept[:0]
        rows = kept[used + 2 * size : used + (1 + tangents) * size] if keeps else kept[:0]
        _activate_tangents(z, b, layout[layer, 4], n, tangents, a1, a2, rows)
        used += (1 + tangents) * size if keeps else 0
        h = z
    value[:] = h[: n * m]
    adjoint = _seed_adjoint(buffers[n_layers % 2][: tangents * m * n * m], m, n)  # rows (tangents, m, n, width)
    for layer in range(n_layers - 1, -1, -1):
        WT, _ = _layer(transposes, layout, layer, True)
        if layout[layer, 4] != 0:
            size, o = n * layout[layer, 2], starts[layer]
            a1, a2 = kept[o : o + size], kept[o + size : o + 2 * size]
            _adjoint_tangents(adjoint, a1, a2, kept[o + 2 * size : o + (1 + tangents) * size], tangents, m, size)
        target = adjoint_out if layer == 0 else buffers[layer % 2]  # not the adjoint's, buffers[(layer + 1) % 2]
        _product(blas, ints, adjoint, WT, target, tangents * m * n, back_blocks[layer])
        adjoint = target


@_jit
def _over_reverse_share(
    blas, ints, x, directions, params, transposes, layout, blocks, value, adjoint, buffers, chunk, worker, n_workers
):
    """Worker ``worker``'s chunks of :func:`_over_reverse_chunk`, the series seeded with ``directions``
    (as :func:`series_seed`); ``adjoint`` flat ``(1 + n_directions, m, N, d)``."""
    d, m, tangents = layout[0, 1], layout[len(layout) - 1, 2], 1 + directions.shape[0]
    n = len(x) // d
    work = buffers[worker]
    size, kept, _ = _over_reverse_workspace(layout, tangents, chunk)
    sweep = work[: 2 * size].reshape((2, size))
    saved, own = work[2 * size : 2 * size + kept], work[2 * size + kept :]
    for s in range(worker * chunk, n, n_workers * chunk):
        e = min(n, s + chunk)
        last = 1 if e - s < chunk else 0
        rows = tangents * m * (e - s) * d
        series_seed(x, directions, s, e, tangents, sweep[1])
        _over_reverse_chunk(
            blas, ints, e - s, tangents, params, transposes, layout, blocks[last], blocks[2 + last],
            value[s * m : e * m], own[:rows], sweep, saved,
        )  # fmt: skip
        series_place(own[:rows], adjoint, s, e, tangents * m, d)


# --- series modes (nnderiv.modes.series) through a tanh chain --------------------------------------
# A worker's chunk is a stack (rows, n, width), flat, in one of two buffers: the seed, then per layer
# one product into the other buffer (every row through W), the bias on the value row, and the
# activation step back into the first, by a kernel generated for the table
# (:func:`nnderiv.backends.numba_codegen.series_share_source` writes the loop over the chunks).


@_jit
def series_workspace(layout, rows, chunk):
    """Elements of each of the two stacks of one worker: ``rows`` rows of ``chunk`` points, as wide
    as the widest layer or the input."""
    widest = layout[0, 1]
    for layer in range(len(layout)):
        widest = max(widest, layout[layer, 2])
    return rows * chunk * widest


@_jit
def series_seed(x, directions, s, e, rows, stack):
    """The series of the points ``x[s:e]`` (``x`` flat ``(N, d)``) into ``stack`` (flat ``(rows,
    e - s, d)``), as :meth:`~nnderiv.modes.series.SeriesMode.seed`: the value row ``x``, first-order
    rows ``1 ..`` the ``directions`` ``(n_first, 1, d)`` (shared) or ``(n_first, N, d)`` (per
    point), zeros elsewhere."""
    d, n = directions.shape[2], e - s
    stack[: rows * n * d] = 0
    stack[: n * d] = x[s * d : e * d]
    shared = directions.shape[1] == 1
    for r in range(directions.shape[0]):
        for p in range(n):
            q = 0 if shared else s + p
            for i in range(d):
                stack[((1 + r) * n + p) * d + i] = directions[r, q, i]


@_jit
def series_affine(blas, ints, params, layout, layer, h, z, rows, n, block):
    """``z = h W`` on every row of the stack ``h`` (``rows * n`` points: ONE product, in blocks of
    ``block`` rows, as :func:`~nnderiv.backends.numba_backend.affine`), plus ``b`` on the value row."""
    W, b = _layer(params, layout, layer, False)
    _product(blas, ints, h, W, z, rows * n, block)
    _bias_activation(z, b, 0, z[:0], n)


@_jit
def series_place(h, out, s, e, rows, m):
    """The chunk's output stack ``h`` (flat ``(rows, e - s, m)``) into its points of ``out`` (flat
    ``(rows, N, m)``)."""
    n_points, n = len(out) // (rows * m), e - s
    for r in range(rows):
        out[(r * n_points + s) * m : (r * n_points + e) * m] = h[r * n * m : (r + 1) * n * m]


@dataclass(frozen=True)
class DenseSweep:
    """The compiled sweeps of one dense chain (:func:`dense_sweep`), its parameters packed."""

    params: np.ndarray  # every W and b, flat
    layout: np.ndarray  # (n_layers, 5): see above
    blas: np.ndarray  # the addresses of Blas.addresses for this dtype
    ints: np.integer  # a value of the library's integer type

    def _blocks(self, n: int, chunk: int, transposed: bool = False) -> np.ndarray:
        """Rows per BLAS call of every layer's product, for a whole chunk and for the last one; 0
        for a product in register tiles (:func:`~nnderiv.backends.numba_tiles.fits`)."""
        from .numba_backend import _gemm_block_rows

        shapes = [(n_out, n_in) if transposed else (n_in, n_out) for n_in, n_out in self.layout[:, 1:3].tolist()]

        def rows(n_rows, shape):
            return 0 if numba_tiles.fits(*shape, self.params.dtype) else max(1, _gemm_block_rows(n_rows, *shape))

        full = [rows(chunk, shape) for shape in shapes]
        last = n % chunk
        return np.array([full, [rows(last, shape) for shape in shapes] if last else full])

    def _transposes(self) -> np.ndarray:
        """Every ``W^T`` (row-major) at the offset of its ``W``, the biases beside them (the
        reverse sweep's products; BLAS's NN kernel is faster than its transposed one)."""
        out = self.params.copy()
        for o, n_in, n_out, _, _ in self.layout:
            out[o : o + n_in * n_out] = self.params[o : o + n_in * n_out].reshape(n_in, n_out).T.reshape(-1)
        return out

    def _run(self, share, args, n: int, chunk: int, per_worker: int):
        """``share`` for every worker (:mod:`nnderiv.parallel`: the caller and the helper threads,
        BLAS on one thread each), each taking its chunks in one compiled call."""
        from ..parallel import map_chunks, workers

        n_workers = max(1, min(workers(), -(-n // chunk)))
        buffers = np.empty((n_workers, per_worker), dtype=self.params.dtype)
        head = (self.blas, self.ints, *args, buffers, chunk)
        for _ in map_chunks(lambda worker: share(*head, worker, n_workers), range(n_workers)):
            pass

    def value(self, x: np.ndarray, chunk: int) -> np.ndarray:
        """``(N, m)`` values at ``x`` ``(N, d)``, ``chunk`` points at a time on each worker."""
        n, m, widest = len(x), self.layout[-1, 2], self.layout[:, 2].max()
        chunk = max(1, min(chunk, n))
        out = np.empty((n, m), dtype=x.dtype)
        args = (np.ascontiguousarray(x).reshape(-1), self.params, self.layout, self._blocks(n, chunk), out.reshape(-1))
        self._run(_value_share, args, n, chunk, 2 * chunk * widest)
        return out

    def jacobian(self, x: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray]:
        """``(value (N, m), adjoint (1, m, N, d))`` at ``x`` (the layout of
        :func:`nnderiv.modes.reverse.sweep`), ``chunk`` points at a time on each worker."""
        n, d, m = len(x), x.shape[1], self.layout[-1, 2]
        chunk = max(1, min(chunk, n))
        value, jacobian = np.empty((n, m), dtype=x.dtype), np.empty((1, m, n, d), dtype=x.dtype)
        blocks = np.concatenate([self._blocks(n, chunk), self._blocks(m * n, m * chunk, transposed=True)])
        flat = np.ascontiguousarray(x).reshape(-1)
        args = (flat, self.params, self._transposes(), self.layout, blocks, value.reshape(-1), jacobian.reshape(-1))
        sweep, kept, own = _jacobian_workspace(self.layout, chunk)
        self._run(_jacobian_share, args, n, chunk, 2 * sweep + kept + own)
        return value, jacobian

    def forward_over_reverse(self, x: np.ndarray, directions: np.ndarray, chunk: int):
        """``(value (N, m), adjoint (1 + R, m, N, d))`` at ``x`` by forward-over-reverse along the
        ``R`` ``directions`` ``(R, d)`` (shared) or ``(R, N, d)`` (per point): the layout of
        :func:`nnderiv.modes.reverse.sweep`, ``adjoint[0, k]`` is ``grad f_k``, ``adjoint[1 + r,
        k]`` its derivative along direction ``r`` (the unit vectors: the Hessian's rows; ``v``:
        ``nd.hvp``), ``chunk`` points at a time on each worker; ``None`` where
        :data:`COMPILED_HESSIAN` is off."""
        if not COMPILED_HESSIAN:
            return None
        n, d, m = len(x), x.shape[1], self.layout[-1, 2]
        chunk, tangents = max(1, min(chunk, n)), 1 + len(directions)
        value, adjoint = np.empty((n, m), dtype=x.dtype), np.empty((tangents, m, n, d), dtype=x.dtype)
        forward = self._blocks(tangents * n, tangents * chunk)
        back = self._blocks(tangents * m * n, tangents * m * chunk, transposed=True)
        flat = np.ascontiguousarray(x).reshape(-1)
        directions = np.ascontiguousarray(directions, dtype=x.dtype).reshape((len(directions), -1, d))
        blocks = np.concatenate([forward, back])
        args = (flat, directions, self.params, self._transposes(), self.layout, blocks, value.reshape(-1))
        sweep, kept, own = _over_reverse_workspace(self.layout, tangents, chunk)
        self._run(_over_reverse_share, (*args, adjoint.reshape(-1)), n, chunk, 2 * sweep + kept + own)
        return value, adjoint

    def series(self, table, order: int, directions: np.ndarray, x: np.ndarray, chunk: int) -> np.ndarray | None:
        """The output stack ``(table.n_coef, N, m)`` of the series of ``table`` to ``order`` at
        ``x`` ``(N, d)``, seeded with ``directions`` ``(n_first, d)`` or ``(n_first, N, d)``
        (:class:`~nnderiv.modes.series.SeriesMode`), ``chunk`` points at a time on each worker;
        ``None`` where the chain has an activation other than tanh, or the layer-by-layer path
        would run other kernels than generated ones on some chunk
        (:func:`~nnderiv.backends.numba_backend.tanh_series_share`): then the engine sweeps."""
        from . import numba_backend

        kinds = self.layout[:, 4]
        if order < 1 or not compiles_series(kinds):
            return None
        n, rows, m = len(x), table.n_coef, self.layout[-1, 2]
        chunk = max(1, min(chunk, n))
        smallest = rows * (n % chunk or chunk) * self.layout[kinds != 0, 2].min()  # the smallest stack activated
        found = numba_backend.tanh_series_share(table, order, smallest, x.dtype)
        if found is None:
            return None
        share, scratch = found
        out = np.empty((rows, n, m), dtype=x.dtype)
        shape = (directions.shape[0], -1, x.shape[1])
        directions = np.ascontiguousarray(directions, dtype=x.dtype).reshape(shape)
        flat = np.ascontiguousarray(x).reshape(-1)
        args = (flat, directions, self.params, self.layout, self._blocks(rows * n, rows * chunk), out.reshape(-1), rows)
        self._run(share, args, n, chunk, 2 * series_workspace(self.layout, rows, chunk) + scratch)
        return out


def dense_chain(model, dtype) -> tuple[list, list] | None:
    """``([(W, b), ...], kinds)`` if ``model`` is a chain of Dense layers in ``dtype`` (float32 or
    float64, NumPy arrays), each followed by at most one activation of :data:`COMPILED` (its
    :data:`KINDS` number, 0 for none), and NumPy's OpenBLAS can be called; ``None`` otherwise."""
    from ..engine import leaf_layers

    dtype = np.dtype(dtype)
    blas = numpy_blas()
    if blas is None or dtype not in blas.addresses:
        return None
    dense, kinds = [], []
    for layer, _ in leaf_layers(model):
        if "W" in layer.params:
            W, b = layer.params["W"], layer.params["b"]
            if not (isinstance(W, np.ndarray) and isinstance(b, np.ndarray)) or W.dtype != dtype or b.dtype != dtype:
                return None
            dense.append((W, b))
            kinds.append(0)
        elif hasattr(layer, "activation") and dense and kinds[-1] == 0 and layer.activation.name in COMPILED:
            kinds[-1] = KINDS[layer.activation.name]
        else:  # an activation first, two in a row, or one nnderiv does not compile
            return None
    return dense, kinds


def compiles_series(kinds) -> bool:
    """Whether :meth:`DenseSweep.series` takes a chain of these activation kinds: tanh (at least
    one), no other."""
    kinds = np.asarray(kinds)
    return bool((kinds == KINDS["tanh"]).any() and not (kinds > KINDS["tanh"]).any())


def dense_sweep(model, dtype) -> DenseSweep | None:
    """The compiled sweeps of ``model`` if it is a :func:`dense_chain`; ``None`` otherwise."""
    chain = dense_chain(model, dtype)
    if chain is None:
        return None
    (dense, kinds), dtype, blas = chain, np.dtype(dtype), numpy_blas()
    rows, offset = [], 0
    for (W, b), kind in zip(dense, kinds):
        rows.append((offset, *W.shape, offset + W.size, kind))
        offset += W.size + b.size
    params = np.concatenate([a.reshape(-1) for W, b in dense for a in (W, b)])
    return DenseSweep(params, np.array(rows, dtype=np.int64), blas.addresses[dtype], blas.int_type(1))
