r"""Tall products ``c = a @ W`` with the sums in registers: the matrix product of every sweep.

A sweep's products all have one shape: a tall stack of rows (points times stacked coefficients,
thousands) times a small weight matrix (``64 x 64`` in the benchmark's network). OpenBLAS runs
them through its general path, packing both operands into buffers before its micro-kernel sees
them; with its AVX2 kernels (``Haswell``: what it picks for a CPU it does not know, or what
``OPENBLAS_CORETYPE`` asks for) that is 45-55 GFLOP/s on one core of a CPU whose 512-bit units
allow twice as many multiply-adds (``docs/performance.md``).

Here a *tile* of ``TILE_ROWS`` rows of ``c`` by ``TILE_VECTORS`` SIMD vectors of columns keeps its
``TILE_ROWS * TILE_VECTORS`` sums in vector registers through the whole sum over ``k``: each step
loads ``TILE_VECTORS`` vectors of ``W``'s row ``k`` and, for each of the tile's rows, broadcasts
``a[i, k]`` and does ``TILE_VECTORS`` fused multiply-adds. Nothing is packed (the operands are
read where they are: ``W``'s panel stays in the core's cache, the tile's rows of ``a`` too), and
nothing but ``c`` is written. With 512-bit vectors (32 registers) a tile is 6 rows by 4 vectors
(24 sums, 4 rows of ``W``, the broadcast). Measured on one Zen 4 core (512-bit instructions on
256-bit units): 56 GFLOP/s, the core's peak, 1.25-1.65x OpenBLAS's SkylakeX kernels on the
hidden layers' shapes; a prototype on a Zen 5 core reached 110-125 GFLOP/s, 2.1-3.0x OpenBLAS's
AVX2 kernels up to ``256 x 256`` (``docs/backends.md``, "Products in register tiles").

The sums are ``c_ij = fma(a_ik, w_kj, ...)`` for ``k = 0, 1, ...``, from 0: the order of OpenBLAS's
kernels where they do not split ``k`` (measured the same bits as its AVX2 kernels for
``k <= 256``), to rounding elsewhere. Every entry is summed in that order whatever tile, block or
thread computes it, so a product has the same bits in every sweep and on any number of workers.

A pullback's weight gradient ``h^T z_bar`` (:func:`weight_grad`) has tiles of its own, which run
down the rows of both operands, 4 of ``h``'s columns by :data:`TILE_VECTORS` vectors of
``z_bar``'s, the rows in blocks of :data:`GRADIENT_BLOCK_ROWS` summed in two levels (as accurately
as BLAS's blocked sums; one chain over tens of thousands of points would not be).

The tiles are explicit LLVM vector code (:func:`_tile`), so the vector width is chosen here, from
the CPU Numba compiles for (:data:`TILE_BITS`); where that is not the host's own CPU with AVX2 and
FMA, :func:`fits` is false and the products stay BLAS's.
"""

from __future__ import annotations

import os

import numba
import numpy as np
from llvmlite import binding, ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from .numba_activations import wide_vectors
from .numpy_backend import BLAS_ERRSTATE


def _vector_bits() -> int:
    """The SIMD width of the tiles: 512 with AVX-512F, 256 with AVX2 and FMA, 0 (no tiles) where
    the CPU has neither or Numba compiles for another CPU than the host's (``NUMBA_CPU_NAME``)."""
    if numba.config.CPU_NAME not in (None, "host"):
        return 0
    features = binding.get_host_cpu_features()
    if features.get("avx512f"):
        return 512
    return 256 if features.get("avx2") and features.get("fma") else 0


#: bits per SIMD vector of the tiles (0: no tiles, the products are BLAS's)
TILE_BITS = _vector_bits()
#: rows per tile, and vectors of columns: 6 x 4 (24 sums) in 32 registers of 512 bits, 6 x 2 (12)
#: in 16 of 256
TILE_ROWS = 6
TILE_VECTORS = 4 if TILE_BITS == 512 else 2
#: the largest ``W`` (bytes) taken by tiles: each tile row block reads all of it, from the core's
#: cache (measured faster than BLAS up to ``512 x 512`` float64, 2 MiB)
TILE_MAX_WEIGHT_BYTES = 2 * 2**20
#: ``NNDERIV_TILED_PRODUCTS=0``: every product BLAS's (an A/B switch, read when a product is planned)
TILED_PRODUCTS = os.environ.get("NNDERIV_TILED_PRODUCTS", "1") != "0"


def lanes(dtype) -> int:
    """Numbers per SIMD vector of the tiles in ``dtype``."""
    return TILE_BITS // (8 * np.dtype(dtype).itemsize)


def fits(n_in: int, n_out: int, dtype) -> bool:
    """Whether an ``(M, n_in) x (n_in, n_out)`` product in ``dtype`` runs in tiles: float32 or
    float64, at least one vector of columns, ``W`` within :data:`TILE_MAX_WEIGHT_BYTES`."""
    dtype = np.dtype(dtype)
    return (
        TILED_PRODUCTS
        and TILE_BITS > 0
        and dtype in (np.float32, np.float64)
        and n_out >= lanes(dtype)
        and n_in * n_out * dtype.itemsize <= TILE_MAX_WEIGHT_BYTES
    )


def _tile(rows: int, n_vectors: int | None, transposed: bool = False):
    """The intrinsic ``tile(a, W, c, i, j)``: ``c[i : i + rows, j : j + vectors * lanes] =
    a[i : i + rows] @ W[:, j : j + vectors * lanes]`` for row-major 2D arrays of one dtype, with
    ``n_vectors`` vectors (``None``: :data:`TILE_VECTORS`, read when the tile compiles, like
    :data:`TILE_BITS`). ``transposed``: ``tile(a, W, c, i, j, k0, k1)`` adds
    ``a[k0:k1, i : i + rows].T @ W[k0:k1, j : ...]``, summed in registers from 0, to the tile of
    ``c`` (a weight gradient's sum over points, a block of them at a time)."""

    def codegen(context, builder, signature, args):
        vectors = TILE_VECTORS if n_vectors is None else n_vectors
        a_type, W_type, c_type = signature.args[:3]
        arrays = [context.make_array(t)(context, builder, v) for t, v in zip(signature.args[:3], args[:3])]
        i, j, *bounds = (context.cast(builder, v, t, types.intp) for v, t in zip(args[3:], signature.args[3:]))
        real = context.get_value_type(a_type.dtype)
        bits = a_type.dtype.bitwidth
        width = TILE_BITS // bits
        vector, index = ir.VectorType(real, width), context.get_value_type(types.intp)
        size = index(bits // 8)
        try:  # vectors of TILE_BITS kept whole, not split in two (what clang marks its intrinsics' callers with)
            set.add(builder.function.attributes, f'"min-legal-vector-width"="{TILE_BITS}"')
        except TypeError:
            pass
        a_row, W_row, c_row = (builder.sdiv(cgutils.unpack_tuple(builder, x.strides)[0], size) for x in arrays)
        if transposed:  # the tile's row r is a's column i + r; the sum runs down a's rows k0 .. k1
            k0, k1 = bounds
            a_rows = [builder.gep(arrays[0].data, [builder.add(i, index(r))]) for r in range(rows)]
            a_step = a_row
        else:
            k0, k1 = index(0), cgutils.unpack_tuple(builder, arrays[0].shape)[1]
            a_data = builder.gep(arrays[0].data, [builder.mul(i, a_row)])
            a_rows = [builder.gep(a_data, [builder.mul(index(r), a_row)]) for r in range(rows)]
            a_step = index(1)
        W_data = builder.gep(arrays[1].data, [j])
        c_data = builder.gep(arrays[2].data, [builder.add(builder.mul(i, c_row), j)])
        fma = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(vector, [vector] * 3), f"llvm.fma.v{width}f{bits}"
        )
        undefined, lane0 = ir.Constant(vector, ir.Undefined), ir.IntType(32)(0)
        splat = ir.Constant(ir.VectorType(ir.IntType(32), width), [0] * width)

        def at(pointer, offset):  # the vector at pointer + offset numbers
            return builder.bitcast(builder.gep(pointer, [index(offset)]), vector.as_pointer())

        c_rows = [builder.gep(c_data, [builder.mul(index(r), c_row)]) for r in range(rows)]
        zero = ir.Constant(vector, [0.0] * width)
        sums = [[cgutils.alloca_once_value(builder, zero) for _ in range(vectors)] for _ in range(rows)]
        with cgutils.for_range_slice(builder, k0, k1, index(1)) as (k, _):
            W_k = builder.gep(W_data, [builder.mul(k, W_row)])
            w = [builder.load(at(W_k, v * width), align=size.constant) for v in range(vectors)]
            for r in range(rows):
                number = builder.load(builder.gep(a_rows[r], [builder.mul(k, a_step)]))
                one = builder.insert_element(undefined, number, lane0)
                broadcast = builder.shuffle_vector(one, undefined, splat)
                for v in range(vectors):
                    builder.store(builder.call(fma, [broadcast, w[v], builder.load(sums[r][v])]), sums[r][v])
        for r in range(rows):
            for v in range(vectors):
                total = builder.load(sums[r][v])
                if transposed:  # the block's sum added to the sums of the blocks before it
                    total = builder.fadd(builder.load(at(c_rows[r], v * width), align=size.constant), total)
                builder.store(total, at(c_rows[r], v * width), align=size.constant)
        return context.get_dummy_value()

    def typed(a, W, c, *indices):
        if not (a.dtype == W.dtype == c.dtype and a.dtype in (types.float32, types.float64)):
            return None
        return types.void(a, W, c, *indices), codegen

    if transposed:

        @intrinsic
        def gradient_tile(typingctx, a, W, c, i, j, k0, k1):
            return typed(a, W, c, i, j, k0, k1)

        return gradient_tile

    @intrinsic
    def tile(typingctx, a, W, c, i, j):
        return typed(a, W, c, i, j)

    return tile


# the tiles the products use: TILE_ROWS rows or one (the last rows), by TILE_VECTORS vectors or one
# (the last vectors)
_block, _block_vector = _tile(TILE_ROWS, None), _tile(TILE_ROWS, 1)
_row, _row_vector = _tile(1, None), _tile(1, 1)
# the weight gradient's: GRADIENT_TILE_ROWS of a's columns (the last ones one at a time)
GRADIENT_TILE_ROWS = 4
_gradient_block = _tile(GRADIENT_TILE_ROWS, None, transposed=True)
_gradient_block_vector = _tile(GRADIENT_TILE_ROWS, 1, transposed=True)
_gradient_row, _gradient_row_vector = _tile(1, None, transposed=True), _tile(1, 1, transposed=True)


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def tiled_product(a, W, c):
    """``c = a @ W`` for row-major ``a`` ``(M, k)``, ``W`` ``(k, n)``, ``c`` ``(M, n)`` of one
    dtype (:func:`fits`): tiles of ``TILE_ROWS`` rows (the last rows one at a time) by
    ``TILE_VECTORS`` vectors (the last vectors one at a time), then the columns past the last whole
    vector one number at a time; every entry summed over ``k`` in the same order, by multiply-adds."""
    wide_vectors()
    m, k = a.shape
    n = W.shape[1]
    width = TILE_BITS // (8 * a.itemsize)
    whole = n // width  # vectors of columns
    grouped = whole - whole % TILE_VECTORS  # ... in whole tiles
    full = m - m % TILE_ROWS
    for i in range(0, full, TILE_ROWS):
        for v in range(0, grouped, TILE_VECTORS):
            _block(a, W, c, i, v * width)
        for v in range(grouped, whole):
            _block_vector(a, W, c, i, v * width)
    for i in range(full, m):
        for v in range(0, grouped, TILE_VECTORS):
            _row(a, W, c, i, v * width)
        for v in range(grouped, whole):
            _row_vector(a, W, c, i, v * width)
    for i in range(m):
        for col in range(whole * width, n):
            s = c.dtype.type(0)
            for q in range(k):
                s += a[i, q] * W[q, col]  # contracted: fma(a, w, s), as in the tiles
            c[i, col] = s


#: rows of ``a`` and ``b`` per pass of the weight gradient's tiles: two blocks of 256 x 64 float64
#: (256 KiB) stay in a core's L2 cache while every tile of ``c`` runs down them
GRADIENT_BLOCK_ROWS = 256


@numba.njit(cache=True, nogil=True, error_model="numpy", fastmath={"contract"})
def tiled_weight_grad(a, b, c):
    """``c = a.T @ b`` for ``a`` ``(M, n_in)``, ``b`` ``(M, n_out)``, ``c`` ``(n_in, n_out)`` of
    one dtype, each with rows of unit stride, ``n_out`` a whole number of vectors (the caller,
    :func:`weight_grad`, gives the other columns to BLAS): a weight gradient, the sum over every
    point and stacked row. ``M`` is taken in blocks of :data:`GRADIENT_BLOCK_ROWS` rows, which stay
    in cache while every tile of ``c`` runs down them; a tile sums its block in registers, by
    multiply-adds from 0, and adds that to ``c``. Each entry is thus summed in two levels, along
    each block and over the blocks: error bound ``(B + M / B) eps sum_k |a_ki b_kj|``, ``B`` the
    block (BLAS's blocked sums are alike), where one chain over all ``M`` would have ``M eps``."""
    wide_vectors()
    m, n_in = a.shape
    width = TILE_BITS // (8 * a.itemsize)
    vectors = b.shape[1] // width
    grouped = vectors - vectors % TILE_VECTORS
    full = n_in - n_in % GRADIENT_TILE_ROWS
    c[:] = 0
    for k0 in range(0, m, GRADIENT_BLOCK_ROWS):
        k1 = min(k0 + GRADIENT_BLOCK_ROWS, m)
        for i in range(0, full, GRADIENT_TILE_ROWS):
            for v in range(0, grouped, TILE_VECTORS):
                _gradient_block(a, b, c, i, v * width, k0, k1)
            for v in range(grouped, vectors):
                _gradient_block_vector(a, b, c, i, v * width, k0, k1)
        for i in range(full, n_in):
            for v in range(0, grouped, TILE_VECTORS):
                _gradient_row(a, b, c, i, v * width, k0, k1)
            for v in range(grouped, vectors):
                _gradient_row_vector(a, b, c, i, v * width, k0, k1)


#: fewest multiply-adds ``M n_in n_out`` for which :func:`weight_grad` takes tiles (below, a call's
#: overhead decides: ``(1024, 5) x (1024, 9)`` measured 2x BLAS's time, ``(4096, 67) x (4096, 37)`` even)
GRADIENT_MIN_MULADDS = 2**20


def weight_grad(a, b):
    """``a.T @ b`` for C-contiguous ``a`` ``(M, n_in)``, ``b`` ``(M, n_out)`` of one dtype: in
    tiles (:func:`tiled_weight_grad`) for the columns that fill whole vectors where :func:`fits`
    and there are :data:`GRADIENT_MIN_MULADDS`, by BLAS for the rest; ``None`` where no tile applies."""
    (m, n_in), n_out = a.shape, b.shape[1]
    if m * n_in * n_out < GRADIENT_MIN_MULADDS or not fits(n_in, n_out, a.dtype):
        return None
    tiled = n_out - n_out % lanes(a.dtype)
    c = np.empty((n_in, n_out), dtype=a.dtype)
    tiled_weight_grad(a, b[:, :tiled], c[:, :tiled])
    if tiled < n_out:
        with np.errstate(**BLAS_ERRSTATE):
            c[:, tiled:] = a.T @ b[:, tiled:]
    return c
