r"""The Numba backend: the activation step fused into one pass over the points.

Same signatures as the reference (:mod:`nnderiv.backends.numpy_backend`), same results to rounding.
What changes is the memory traffic of the activation step. The reference builds every power
``delta^j`` as a whole stack ``(rows, N, width)`` and adds ``a_j delta^j`` in another pass. Here,
for tables of up to 72 rows on large stacks, the table's straight-line kernel
(:mod:`~nnderiv.backends.numba_codegen`) composes each element in registers: every row is read
and written once. For the other tables the ``N * width`` columns are cut into blocks whose
buffers fit in the L2 cache and, per block, the powers are built in two rows-by-block buffers and
accumulated at once: the input and output stacks cross memory once. Each thread (``prange`` over
threads) takes a contiguous share of the blocks and allocates its buffers once. The pullbacks are
fused the same way.

The matrix products stay in BLAS. For tanh, sigmoid, silu, softplus, sin and cos the activation's
Taylor coefficients are computed in SIMD arithmetic (:mod:`~nnderiv.backends.numba_activations`;
``math.tanh`` and ``math.exp`` would be scalar libm calls, several times slower), by the generic
kernels inside the same pass, block by block; other activations get theirs from the reference's
NumPy fills. The series arithmetic is compiled with ``fastmath=False``: no reassociation, no fused
multiply-add, so each sum is added in the reference's order.

:mod:`nnderiv.parallel` runs chunks of points on one worker per Numba thread (``NUMBA_NUM_THREADS``
or :func:`numba.set_num_threads`, :func:`workers`); a worker's Numba thread count is 1, so every
kernel it calls runs on its own thread, as do stacks under ``PARALLEL_MIN_ELEMENTS``. Kernels
compile on first use per dtype (float32, float64): seconds (``docs/backends.md``), then they are
cached on disk (``cache=True``) and later processes load them in milliseconds. Numba keys that
cache by this file only: after editing :mod:`~nnderiv.backends.numba_activations` (inlined here),
delete ``__pycache__/*.nb*`` or touch this file, or the old code keeps running.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import cache

import numba
import numpy as np

from . import numba_codegen, numba_sweeps, numba_tiles
from . import numpy_backend as reference
from ._allocator import keep_freed_memory
from .numba_activations import KINDS, fill_block, fill_low, wide_vectors
from .numpy_backend import activation_derivatives, asarray  # noqa: F401 (re-exported)

ON_DEVICE = False

# GNU OpenMP (Numba's usual threading layer) keeps its threads spinning after each parallel region,
# on the cores OpenBLAS's threads need for the next matrix product: measured up to 1.6x slower with
# 2 threads on 2 cores. Passive waiting costs microseconds per kernel. A choice the user made wins;
# it has no effect if an OpenMP runtime was loaded before the first parallel kernel ran.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
MALLOC_TUNED = keep_freed_memory()

#: the value and the reverse-mode Jacobian of a dense tanh or sigmoid chain as one compiled call per
#: worker (:mod:`~nnderiv.backends.numba_sweeps`: the same numbers, faster); ``False``: layer by layer
COMPILED_SWEEPS = True
#: elements of one (rows, block) buffer: a few such buffers per thread stay in the L2 cache
BUFFER_ELEMENTS = 32768
#: extra columns per buffer row, so that rows are not a power of two bytes apart (cache sets)
PAD = 8
#: below this many stack elements a kernel runs on the calling thread: waking the thread pool
#: (tens of microseconds with passive waiting) would cost more than the work
PARALLEL_MIN_ELEMENTS = 1 << 17
#: from this many stack elements on, the activation step runs the table's straight-line kernels
#: (:mod:`~nnderiv.backends.numba_codegen`): their one-time compilation (0.5-10 s per table, then
#: cached on disk) pays for itself; smaller stacks use the generic kernels (set it to 2**62 to
#: never compile them)
STRAIGHT_LINE_MIN_ELEMENTS = 1 << 15
#: on straight-line tables, tanh's activation step is one generated pass computing its coefficients
#: in registers (``False``: the fill, then the straight-line composition)
FUSED_TANH = True
#: Taylor-mode tables (:func:`~nnderiv.combinatorics.directional_table`) of at least this many rows
#: run one direction at a time (:func:`~nnderiv.backends.numba_codegen.taylor_driver_source`): one
#: small kernel per order, whatever the number of directions; a straight-line kernel over all
#: rows keeps dozens of row pointers and partial sums in too few registers (measured at 128-1024
#: x 64 points: 0.65x the time at 25 rows, 0.5x at 33, 0.25x at 49, 0.1x at 65; 1.0-1.4x at 5-17)
DIRECTIONS_MIN_ROWS = 19
#: tanh's activation step kept for a pullback is one pass (coefficients and composition) up to this
#: many rows; beyond, its R + K + 2 output rows made it slower than the fill and the composition
#: apart (measured at 1024 x 64 points: 0.6x the time at 6 rows, 1.0x at 25, 1.2x at 33 and 45)
FUSED_SAVING_MAX_ROWS = 24


def workspace_bytes(rows: int, itemsize: int) -> int:
    """The most buffer memory one kernel call on a stack of ``rows`` rows allocates: per thread,
    seven ``(rows, block)`` buffers and a few ``block`` rows (the pullback of the activation step)."""
    return numba.get_num_threads() * (8 * rows + 4) * (_block(rows, 1 << 62) + PAD) * itemsize


def check_available() -> None:
    """Numba is a required dependency: always available."""


def _kernel(*, parallel: bool):
    """The one set of jit options: compiled on first call per dtype, cached on disk, exact IEEE arithmetic."""
    return numba.njit(parallel=parallel, fastmath=False, cache=True, nogil=True, error_model="numpy")


# --- the affine step -------------------------------------------------------------------------------

#: a stacked product runs as BLAS calls of at most this many multiply-adds each where NumPy's
#: BLAS is OpenBLAS with its AVX-512 kernels: those take their small-matrix path (no packing of
#: the operands) up to 10^6 (``dgemm_small_kernel_permit_skylakex.c``), measured 1.3-1.4x faster
#: on ``(M, 64) x (64, 64)`` than one call over all ``M`` rows, in float64 and float32 alike (same
#: bits); elsewhere (other BLAS libraries, OpenBLAS's AVX2 kernels: 3-10% slower so) one call.
#: ``0``: always one call.
SMALL_GEMM_MULADDS = 10**6
#: at least this many rows per call, or one call: below, the calls' own cost would show
SMALL_GEMM_MIN_ROWS = 64


#: OpenBLAS's kernel families with AVX-512 (threadpoolctl's ``architecture``, lower case)
AVX512_BLAS_KERNELS = ("skylakex", "cooperlake", "sapphirerapids")


@cache
def numpy_openblas() -> dict | None:
    """threadpoolctl's description of NumPy's own OpenBLAS (``filepath``, ``architecture``, ...),
    or ``None`` where NumPy uses another BLAS."""
    from threadpoolctl import threadpool_info

    for library in threadpool_info():
        if library.get("internal_api") == "openblas" and "numpy" in library.get("filepath", ""):
            return library
    return None


def blas_kernels() -> str:
    """The kernels NumPy's OpenBLAS runs, as threadpoolctl names them (``Haswell``, ``SkylakeX``,
    ...: chosen by CPU model when NumPy loads it, or by ``OPENBLAS_CORETYPE``); ``unknown`` for
    another BLAS."""
    library = numpy_openblas()
    return "unknown" if library is None else str(library.get("architecture") or "unknown")


def _blas_has_small_kernels() -> bool:
    """Whether NumPy's BLAS is OpenBLAS running its SkylakeX-family (AVX-512) kernels."""
    return blas_kernels().lower() in AVX512_BLAS_KERNELS


def _gemm_block_rows(n_rows: int, n_in: int, n_out: int) -> int:
    """Rows per BLAS call of an ``(n_rows, n_in) x (n_in, n_out)`` product (``n_rows``: one call)."""
    rows = SMALL_GEMM_MULADDS // (n_in * n_out) // 16 * 16
    if rows < SMALL_GEMM_MIN_ROWS or n_rows < 2 * rows or not _blas_has_small_kernels():
        return n_rows
    return rows


def affine_weight_grad(stack, z_bar):
    """The weight cotangent ``stack^T @ z_bar`` summed over rows and points, as in the reference;
    in register tiles where they fit (:func:`~nnderiv.backends.numba_tiles.weight_grad`: 1.3-2.4x
    OpenBLAS's transposed product on the sweeps' shapes, summed in blocks as accurately), else BLAS."""
    floating = stack.dtype == z_bar.dtype and stack.dtype in (np.float32, np.float64)
    if floating and stack.flags.c_contiguous and z_bar.flags.c_contiguous:
        n_in, n_out = stack.shape[-1], z_bar.shape[-1]
        tiled = numba_tiles.weight_grad(stack.reshape(-1, n_in), z_bar.reshape(-1, n_out))
        if tiled is not None:
            return tiled
    return reference.affine_weight_grad(stack, z_bar)


def affine(stack, W):
    """``stack @ W`` over the last axis: the reference's product on ``(rows * N, n_in)``, in
    register tiles where they fit (:mod:`~nnderiv.backends.numba_tiles`: on the calling thread,
    each worker its own chunk's), else as one BLAS call or, where BLAS's small-matrix kernels are
    faster, one batched ``matmul`` over blocks of rows (:data:`SMALL_GEMM_MULADDS`; NumPy loops over
    the batch in C, a BLAS call per block)."""
    rows, n, n_in = stack.shape
    n_out = W.shape[1]
    floating = stack.dtype == W.dtype and stack.dtype in (np.float32, np.float64)
    if not floating or not stack.flags.c_contiguous:
        return reference.affine(stack, W)
    if n_in == 1:
        return _outer_product(stack, W)
    # W.T of a pullback, copied (n_in * n_out numbers): BLAS's NN kernel is up to 3x faster than
    # its transposed one on narrow products ((2048, 64) x (64, 2): 35 against 115 us), and the
    # tiles read rows of W
    W = np.ascontiguousarray(W)
    if numba_tiles.fits(n_in, n_out, stack.dtype):
        out = np.empty((rows, n, n_out), dtype=stack.dtype)
        numba_tiles.tiled_product(stack.reshape(rows * n, n_in), W, out.reshape(rows * n, n_out))
        return out
    block = _gemm_block_rows(rows * n, n_in, n_out)
    if block == rows * n:
        return reference.affine(stack, W)
    flat = stack.reshape(rows * n, n_in)
    out = np.empty((rows * n, n_out), dtype=stack.dtype)
    whole = len(flat) // block * block
    with np.errstate(**reference.BLAS_ERRSTATE):
        np.matmul(flat[:whole].reshape(-1, block, n_in), W, out=out[:whole].reshape(-1, block, n_out))
        if whole < len(flat):
            np.matmul(flat[whole:], W, out=out[whole:])
    return out.reshape(rows, n, n_out)


@_kernel(parallel=False)
def _outer_share(column, w, out, block, worker, n_workers):
    """Worker ``worker``'s blocks of points of :func:`_outer`."""
    wide_vectors()
    for blk in _worker_blocks(worker, n_workers, len(column), block):
        for p in range(blk * block, min((blk + 1) * block, len(column))):
            c, row = column[p], out[p]
            for j in range(len(row)):
                row[j] = c * w[j]


@_kernel(parallel=True)
def _outer(column, w, out, block, n_workers):
    """``out[p] = column[p] * w`` for every point ``p``, in parallel blocks of points."""
    for worker in numba.prange(n_workers):
        _outer_share(column, w, out, block, worker, n_workers)


def _outer_product(stack, W):
    """``stack @ W`` for one input, ``W`` ``(1, n_out)``: an outer product, each entry one
    multiplication (the reference's numbers), in one compiled pass: NumPy's broadcast
    ``stack * W[0]`` restarts its loop every ``n_out`` elements (measured 5x slower at 64)."""
    rows, n, _ = stack.shape
    out = np.empty((rows * n, W.shape[1]), dtype=stack.dtype)
    block = max(1, BUFFER_ELEMENTS // max(W.shape[1], 1))
    args = (stack.reshape(-1), np.ascontiguousarray(W[0]), out, block)
    _launch(_outer, _outer_share, args, out.size, block * W.shape[1])
    return out.reshape(rows, n, W.shape[1])


# --- the bias of an affine step ------------------------------------------------------------------


@_kernel(parallel=False)
def _add_bias_share(z, b, block, worker, n_workers):
    """Worker ``worker``'s blocks of points of :func:`_add_bias`."""
    wide_vectors()
    for blk in _worker_blocks(worker, n_workers, z.shape[0], block):
        for p in range(blk * block, min((blk + 1) * block, z.shape[0])):
            row = z[p]
            for j in range(len(row)):
                row[j] += b[j]


@_kernel(parallel=True)
def _add_bias(z, b, block, n_workers):
    """``z[p] += b`` for every point ``p``, in parallel blocks of points."""
    for worker in numba.prange(n_workers):
        _add_bias_share(z, b, block, worker, n_workers)


def add_bias(z, b):
    """``z += b`` in place over the points of ``z`` ``(N, width)``: one compiled pass (NumPy's
    broadcast loop, restarted every ``width`` elements, takes 3x longer at width 64)."""
    if (
        z.dtype not in (np.float32, np.float64)
        or b.dtype != z.dtype
        or b.shape != z.shape[1:]
        or not z.flags.c_contiguous
    ):
        return reference.add_bias(z, b)  # (the reference also says what is wrong with a bias of the wrong shape)
    block = max(1, BUFFER_ELEMENTS // max(z.shape[1], 1))
    _launch(_add_bias, _add_bias_share, (z, b, block), z.size, block * z.shape[1])
    return z


# --- tables: the runs of every power, packed into flat integer arrays ----------------------------


@dataclass(frozen=True)
class PackedRuns:
    """Runs ``(left0, right0, target0, length)`` of several bilinear maps, map ``j`` in rows
    ``runs[starts[j] : starts[j + 1]]``."""

    runs: np.ndarray
    starts: np.ndarray


def _pack(products: dict) -> PackedRuns:
    """``{j: SparseBilinear}`` for ``j = 2..K`` -> runs indexed by ``j`` (empty for ``j < 2``)."""
    order = max(products, default=1)
    chunks = [products[j].runs if j in products else np.zeros((0, 4), np.intp) for j in range(order + 1)]
    starts = np.cumsum([0] + [len(chunk) for chunk in chunks]).astype(np.intp)
    return PackedRuns(np.ascontiguousarray(np.concatenate(chunks).astype(np.intp)), starts)


@dataclass(frozen=True)
class CompositionTables:
    """For ``delta^j = delta * delta^{j-1}`` (``j = 2..K``): the forward runs, the runs of its two
    adjoints, and the first row of each degree."""

    forward: PackedRuns
    adjoint_left: PackedRuns
    adjoint_right: PackedRuns
    first: np.ndarray


@cache
def composition_tables(table) -> CompositionTables:
    """The packed runs of ``table`` (cached for the table's lifetime: tables are cached too)."""
    products = {j: table.series_product(j - 1) for j in range(2, table.order + 1)}
    # first row of each degree, and past the end for degrees up to order + 2 (no such rows)
    first = [table.degree_slice(k).start for k in range(table.order + 1)] + [table.n_coef] * 2
    first = np.array(first, dtype=np.intp)
    return CompositionTables(
        _pack(products),
        _pack({j: p.adjoint_left for j, p in products.items()}),
        _pack({j: p.adjoint_right for j, p in products.items()}),
        first,
    )


# --- compiled kernels: stacks flattened to (rows, M), M = N * width ------------------------------
# Per block of columns ``s:e`` of the stacks, the rows that are read more than once are first copied
# into local buffers whose row stride (``block + PAD``) is not a power of two: rows of a stack are
# ``M * itemsize`` bytes apart, often a power of two, and would all fall into the same cache sets.
# Inner loops run over one contiguous row, ``buffer[row, :n]``: on such 1D views LLVM vectorizes.


@_kernel(parallel=False)
def _copy(out, x):
    wide_vectors()
    for i in range(len(out)):
        out[i] = x[i]


@_kernel(parallel=False)
def _add(out, x):
    wide_vectors()
    for i in range(len(out)):
        out[i] += x[i]


@_kernel(parallel=False)
def _multiply(out, x, y):
    wide_vectors()
    for i in range(len(out)):
        out[i] = x[i] * y[i]


@_kernel(parallel=False)
def _multiply_add(out, x, y):
    wide_vectors()
    for i in range(len(out)):
        out[i] += x[i] * y[i]


@_kernel(parallel=False)
def _load(buffer, stack, s, n, first_row):
    """``buffer[first_row:, :n] = stack[first_row:, s : s + n]``, row by row."""
    for r in range(first_row, stack.shape[0]):
        _copy(buffer[r, :n], stack[r, s : s + n])


@_kernel(parallel=False)
def _store(stack, s, buffer, n, first_row):
    """``stack[first_row:, s : s + n] = buffer[first_row:, :n]``, row by row."""
    for r in range(first_row, stack.shape[0]):
        _copy(stack[r, s : s + n], buffer[r, :n])


@_kernel(parallel=False)
def _zero(buffer, n, first_row):
    wide_vectors()
    for r in range(first_row, buffer.shape[0]):
        buffer[r, :n] = 0


@_kernel(parallel=False)
def _add_runs(out, a, b, runs, first_run, stop_run, n):
    """``out[t, :n] += a[l, :n] * b[r, :n]`` over the runs ``first_run:stop_run`` of a packed table."""
    for q in range(first_run, stop_run):
        l0, r0, t0, length = runs[q, 0], runs[q, 1], runs[q, 2], runs[q, 3]
        for k in range(length):
            _multiply_add(out[t0 + k, :n], a[l0 + k, :n], b[r0 + k, :n])


@_kernel(parallel=False)
def _worker_blocks(worker, n_workers, m, block):
    """The blocks of worker ``worker``: a contiguous share, as a ``range``."""
    n_blocks = (m + block - 1) // block
    return range(worker * n_blocks // n_workers, (worker + 1) * n_blocks // n_workers)


# --- bilinear: out = a * b over one table --------------------------------------------------------


@_kernel(parallel=False)
def _bilinear_share(a, b, runs, out, block, worker, n_workers):
    """Worker ``worker``'s blocks of :func:`bilinear`; its buffers are allocated once."""
    m, n_out = a.shape[1], out.shape[0]
    a_block = np.empty((a.shape[0], block + PAD), dtype=a.dtype)
    b_block = np.empty((b.shape[0], block + PAD), dtype=a.dtype)
    out_block = np.empty((n_out, block + PAD), dtype=a.dtype)
    for blk in _worker_blocks(worker, n_workers, m, block):
        s = blk * block
        n = min(block, m - s)
        _load(a_block, a, s, n, 0)
        _load(b_block, b, s, n, 0)
        _zero(out_block, n, 0)
        _add_runs(out_block, a_block, b_block, runs, 0, len(runs), n)
        _store(out, s, out_block, n, 0)


@_kernel(parallel=True)
def _bilinear(a, b, runs, out, block, n_workers):
    for worker in numba.prange(n_workers):
        _bilinear_share(a, b, runs, out, block, worker, n_workers)


# --- the activation step, forward (order >= 2) ---------------------------------------------------
# delta^j has no rows below degree j (first[j]), and only rows of degree >= j - 1 of delta^{j-1} are
# read: the loops skip the others, and saved powers keep their zeros there (``np.zeros``: untouched
# pages cost nothing).


@_kernel(parallel=False)
def _compose_block(out, z, a, kind, order, runs, starts, first, powers, save, s, n, buffers, coefs):
    """Columns ``s : s + n`` of :func:`_compose`; ``buffers`` ``(4, rows, >= n)``. With ``kind > 0``
    the coefficients ``a_j`` of the block are computed here, into ``coefs`` ``(order + 2, >= n)``."""
    z_block, out_block, previous, current = buffers[0], buffers[1], buffers[2], buffers[3]
    if kind > 0:  # the activation's Taylor coefficients, from the value row: never in memory
        fill_block(kind, z[0, s : s + n], coefs, order, n, coefs[order + 1])
        a, c = coefs, 0
    else:
        c = s
    _copy(out[0, s : s + n], a[0, c : c + n])
    for r in range(1, z.shape[0]):  # delta (the value row is never read), and a_1 delta
        _copy(z_block[r, :n], z[r, s : s + n])
        if r < first[2]:  # first-order rows are final: written out at once
            _multiply(out[r, s : s + n], a[1, c : c + n], z_block[r, :n])
        else:
            _multiply(out_block[r, :n], a[1, c : c + n], z_block[r, :n])
    for j in range(2, order + 1):  # current = delta^j = delta * delta^{j-1}
        _zero(current, n, first[j])
        _add_runs(current, z_block, z_block if j == 2 else previous, runs, starts[j], starts[j + 1], n)
        for r in range(first[j], z.shape[0]):
            _multiply_add(out_block[r, :n], a[j, c : c + n], current[r, :n])
        if save:
            _store(powers[j - 2], s, current, n, first[j])
        previous, current = current, previous
    _store(out, s, out_block, n, first[2])


@_kernel(parallel=False)
def _compose_share(z, a, kind, order, runs, starts, first, out, powers, save, block, worker, n_workers):
    """Worker ``worker``'s blocks of :func:`_compose`; its buffers are allocated once."""
    rows, m = z.shape
    buffers = np.empty((4, rows, block + PAD), dtype=z.dtype)
    coefs = np.empty((order + 2, block + PAD), dtype=z.dtype)
    for blk in _worker_blocks(worker, n_workers, m, block):
        s = blk * block
        n = min(block, m - s)
        _compose_block(out, z, a, kind, order, runs, starts, first, powers, save, s, n, buffers, coefs)


@_kernel(parallel=True)
def _compose(z, a, kind, order, runs, starts, first, out, powers, save, block, n_workers):
    """``out = a_0`` on row 0, ``sum_j a_j delta^j`` elsewhere; if ``save``, ``powers[j - 2] = delta^j``.
    ``a``: the coefficients (``kind == 0``), or computed per block for activation ``kind``."""
    for worker in numba.prange(n_workers):
        _compose_share(z, a, kind, order, runs, starts, first, out, powers, save, block, worker, n_workers)


@_kernel(parallel=False)
def _fill_share(kind, z, a, order, block, worker, n_workers):
    """Worker ``worker``'s blocks of :func:`_fill`."""
    coefs = np.empty((order + 2, block + PAD), dtype=z.dtype)
    for blk in _worker_blocks(worker, n_workers, z.shape[0], block):
        s = blk * block
        n = min(block, z.shape[0] - s)
        fill_block(kind, z[s : s + n], coefs, order, n, coefs[order + 1])
        _store(a, s, coefs, n, 0)


@_kernel(parallel=False)
def _fill_low_share(kind, z, a, order, block, worker, n_workers):
    """Worker ``worker``'s blocks of :func:`_fill_low`."""
    for blk in _worker_blocks(worker, n_workers, z.shape[0], block):
        s = blk * block
        e = min(s + block, z.shape[0])
        fill_low(kind, z[s:e], a[0, s:e], a[order, s:e], order)


@_kernel(parallel=True)
def _fill_low(kind, z, a, order, block, n_workers):
    """``a[0] = g(z)`` and for ``order`` 1 ``a[1] = g'(z)`` (tanh or sigmoid), in parallel blocks."""
    for worker in numba.prange(n_workers):
        _fill_low_share(kind, z, a, order, block, worker, n_workers)


@_kernel(parallel=True)
def _fill(kind, z, a, order, block, n_workers):
    """``a[j] = g^(j)(z) / j!`` for activation ``kind``, ``j = 0..order``, in parallel blocks."""
    for worker in numba.prange(n_workers):
        _fill_share(kind, z, a, order, block, worker, n_workers)


# --- an activation step of a reverse sweep (nnderiv.modes.reverse) ------------------------------


@_kernel(parallel=False)
def _tangent_adjoint(out, adjoint, a1, a2, z, adjoint0):
    """``out = adjoint a_1 + ((2 a_2) z) adjoint_0`` on 1D slices (the reference's order)."""
    wide_vectors()
    for i in range(len(out)):
        out[i] = adjoint[i] * a1[i] + ((2.0 * a2[i]) * z[i]) * adjoint0[i]


@_kernel(parallel=False)
def _activation_adjoint_share(adjoint, a, z, out, block, worker, n_workers):
    """Worker ``worker``'s blocks of :func:`_activation_adjoint`."""
    tangents, m, size = adjoint.shape
    for blk in _worker_blocks(worker, n_workers, size, block):
        s = blk * block
        e = min(s + block, size)
        for k in range(m):
            _multiply(out[0, k, s:e], adjoint[0, k, s:e], a[1, s:e])
            for t in range(1, tangents):
                _tangent_adjoint(out[t, k, s:e], adjoint[t, k, s:e], a[1, s:e], a[2, s:e], z[t, s:e],
                                 adjoint[0, k, s:e])  # fmt: skip


@_kernel(parallel=True)
def _activation_adjoint(adjoint, a, z, out, block, n_workers):
    """``out[0] = adjoint[0] a_1``, ``out[t] = adjoint[t] a_1 + ((2 a_2) z_t) adjoint[0]``, over
    blocks of the flattened points; shapes ``(T, m, M)``."""
    for worker in numba.prange(n_workers):
        _activation_adjoint_share(adjoint, a, z, out, block, worker, n_workers)


def activation_adjoint(adjoint, a, stack):
    """One activation step of a reverse sweep: one parallel pass (see the reference)."""
    tangents, m = adjoint.shape[:2]
    flat = np.ascontiguousarray(adjoint).reshape(tangents, m, -1)
    out = np.empty_like(flat)
    _launch(_activation_adjoint, _activation_adjoint_share, (flat, _flat(a), _flat(stack), out, 4096), flat.size, 4096)
    return out.reshape(adjoint.shape)


# --- the activation step, pullback ---------------------------------------------------------------


@_kernel(parallel=False)
def _value_cotangent(c0_bar, a_j_bar, out_bar_block, z_block, powers, a_block, order, first, counts, s, n, power_block):
    """``c_0_bar = out_bar_0 a_1 + sum_j <out_bar, delta^j> (j + 1) a_{j+1}`` on one block."""
    wide_vectors()
    _multiply(c0_bar[:n], out_bar_block[0, :n], a_block[1, :n])
    for j in range(1, order + 1):
        a_j_bar[:n] = 0
        if j >= 2:
            _load(power_block, powers[j - 2], s, n, first[j])
        power = z_block if j == 1 else power_block
        for r in range(first[j], z_block.shape[0]):
            _multiply_add(a_j_bar[:n], out_bar_block[r, :n], power[r, :n])
        for i in range(n):  # d a_j / d c_0 = (j + 1) a_{j+1}
            c0_bar[i] += a_j_bar[i] * counts[j + 1] * a_block[j + 1, i]


@_kernel(parallel=False)
def _compose_vjp_block(stack_bar, out_bar, z, powers, a, order, tables, s, n, buffers, a_block, scalars):
    """Columns ``s : s + n`` of :func:`_compose_vjp`; ``buffers`` ``(7, rows, >= n)``, ``scalars`` ``(2, >= n)``."""
    left, left_starts, right, right_starts, first, counts = tables
    rows = z.shape[0]
    z_block, out_bar_block, power_block, block_bar = buffers[0], buffers[1], buffers[2], buffers[3]
    power_bar, next_bar, product = buffers[4], buffers[5], buffers[6]
    _load(z_block, z, s, n, 1)
    _load(a_block, a, s, n, 0)
    _load(out_bar_block, out_bar, s, n, 0)
    c0_bar = scalars[0]
    _value_cotangent(
        c0_bar, scalars[1], out_bar_block, z_block, powers, a_block, order, first, counts, s, n, power_block
    )
    _zero(block_bar, n, 1)
    for r in range(first[order], rows):  # the cotangent of delta^K
        _multiply(power_bar[r, :n], a_block[order, :n], out_bar_block[r, :n])
    for j in range(order, 1, -1):  # delta^j = delta * delta^{j-1}, backwards
        if j >= 3:
            _load(power_block, powers[j - 3], s, n, first[j - 1])
        _zero(product, n, 1)
        _add_runs(product, power_bar, z_block if j == 2 else power_block, left, left_starts[j], left_starts[j + 1], n)
        for r in range(1, rows):
            _add(block_bar[r, :n], product[r, :n])
        _zero(product, n, first[j - 1])
        _add_runs(product, power_bar, z_block, right, right_starts[j], right_starts[j + 1], n)
        for r in range(first[j - 1], rows):  # the cotangent of delta^{j-1}
            _multiply(next_bar[r, :n], a_block[j - 1, :n], out_bar_block[r, :n])
            _add(next_bar[r, :n], product[r, :n])
        power_bar, next_bar = next_bar, power_bar
    for r in range(1, rows):
        _add(block_bar[r, :n], power_bar[r, :n])
    _copy(block_bar[0, :n], c0_bar[:n])
    _store(stack_bar, s, block_bar, n, 0)


@_kernel(parallel=False)
def _compose_vjp_share(out_bar, z, powers, a, order, tables, stack_bar, block, worker, n_workers):
    """Worker ``worker``'s blocks of :func:`_compose_vjp`; its buffers are allocated once."""
    rows, m = z.shape
    buffers = np.empty((7, rows, block + PAD), dtype=z.dtype)
    a_block = np.empty((order + 2, block + PAD), dtype=z.dtype)
    scalars = np.empty((2, block + PAD), dtype=z.dtype)  # c_0_bar and a_j_bar
    for blk in _worker_blocks(worker, n_workers, m, block):
        s = blk * block
        n = min(block, m - s)
        _compose_vjp_block(stack_bar, out_bar, z, powers, a, order, tables, s, n, buffers, a_block, scalars)


@_kernel(parallel=True)
def _compose_vjp(out_bar, z, powers, a, order, tables, stack_bar, block, n_workers):
    """Pullback of :func:`_compose` for ``order >= 1`` (``powers[j - 2] = delta^j``), in the reference's
    order of operations; ``tables``: the adjoints' runs and starts, ``first``, ``counts[j] = j``."""
    for worker in numba.prange(n_workers):
        _compose_vjp_share(out_bar, z, powers, a, order, tables, stack_bar, block, worker, n_workers)


# --- the backend's kernels (signatures of the reference) -----------------------------------------


def _block(rows: int, columns: int) -> int:
    """Columns per block: ``BUFFER_ELEMENTS / rows``, a multiple of 64 in ``[512, 8192]`` (small
    stacks get long blocks: the per-block overhead is then negligible), but no more than the
    ``columns`` there are (a training step on a few points then allocates small buffers)."""
    return max(1, min(columns, max(512, min(8192, BUFFER_ELEMENTS // rows // 64 * 64))))


def _flat(stack) -> np.ndarray:
    """``(rows, N, width)`` as ``(rows, N * width)``, C-contiguous (a view when it already is)."""
    return np.ascontiguousarray(stack).reshape(len(stack), -1)


def _flat_powers(powers) -> np.ndarray:
    """``(n_powers, rows, N, width)`` as ``(n_powers, rows, N * width)`` (a view when contiguous)."""
    return np.ascontiguousarray(powers).reshape(*powers.shape[:2], math.prod(powers.shape[2:]))


def _launch(parallel, share, args, size: int, block: int) -> None:
    """Run a kernel over ``size`` columns in blocks of ``block``: on the thread pool (``parallel``,
    one share of the blocks per thread), or on the calling thread (``share``) for small work or
    where Numba has one thread (inside :mod:`nnderiv.parallel`'s workers): waking the pool would
    cost more than the work, and workers must not nest."""
    if size < PARALLEL_MIN_ELEMENTS:  # asked first: numba.get_num_threads() costs microseconds
        share(*args, 0, 1)
        return
    n_workers = max(1, min(numba.get_num_threads(), -(-size // block)))
    if n_workers == 1:
        share(*args, 0, 1)
    else:
        parallel(*args, n_workers)


def workers() -> int:
    """Chunks of points that run at once (:mod:`nnderiv.parallel`): Numba's thread count."""
    return numba.get_num_threads()


#: a row of a forward-over-reverse sweep (the Hessian's, ``nd.hvp``'s) against a forward row,
#: measured on the benchmark's network, N = 4096 (docs/strategies.md): where both sweeps are one
#: compiled call per worker (a tanh chain: the forward series and
#: :meth:`~nnderiv.backends.numba_sweeps.DenseSweep.forward_over_reverse`), 0.86-1.32 for the
#: Hessian at d = 2-8 and 1.02-1.15 for ``nd.hvp`` at d = 1-8
COMPILED_BOTH_REVERSE_ROW_COST = 1.2
#: ... where only the reverse sweep is (a sigmoid chain): 0.69-0.92
COMPILED_REVERSE_ROW_COST = 0.8
#: ... where only the forward series is (``numba_sweeps.COMPILED_HESSIAN`` off): 1.4-1.5
COMPILED_SERIES_REVERSE_ROW_COST = 1.5


def reverse_row_cost(model, order: int) -> float:
    """What a reverse-sweep row costs in forward rows (:func:`nnderiv.kernels.reverse_row_cost`)."""
    chain = numba_sweeps.dense_chain(model, model.dtype) if order == 2 and COMPILED_SWEEPS else None
    if chain is None:
        return 1.0
    series = numba_sweeps.compiles_series(chain[1])
    if numba_sweeps.COMPILED_HESSIAN:
        return COMPILED_BOTH_REVERSE_ROW_COST if series else COMPILED_REVERSE_ROW_COST
    return COMPILED_SERIES_REVERSE_ROW_COST if series else 1.0


def dense_sweep(model, dtype):
    """The value and Jacobian sweeps of ``model``, one compiled call per worker over all its chunks
    (:mod:`~nnderiv.backends.numba_sweeps`), or ``None`` (the engine's generic sweep, and where
    :data:`COMPILED_SWEEPS` is off)."""
    return numba_sweeps.dense_sweep(model, dtype) if COMPILED_SWEEPS else None


def bilinear(a, b, table):
    """``out[table.target[p]] += a[table.left[p]] * b[table.right[p]]``: parallel over point blocks."""
    out = np.empty((table.n_out, *a.shape[1:]), dtype=a.dtype)
    flat_a = _flat(a)
    block = _block(len(a) + len(b) + len(out), flat_a.shape[1])
    args = (flat_a, _flat(b), table.runs, _flat(out), block)
    _launch(_bilinear, _bilinear_share, args, flat_a.size, block)
    return out


def _composition(stack, a, table, order: int, save: bool, kind: int = 0):
    """The activation step on ``stack``, with coefficients ``a`` (``kind == 0``) or those of
    activation ``kind`` computed per block; returns ``(out, powers)`` (powers empty unless ``save``)."""
    # outputs are allocated by NumPy, not inside the kernel: NumPy asks for huge pages for large
    # arrays, Numba's allocator does not, and first-touch page faults would cost more than the math
    tables, block = composition_tables(table), _block(len(stack), stack[0].size)
    out = np.empty_like(stack, order="C")
    powers = np.zeros((max(order - 1, 0) if save else 0, *stack.shape), dtype=stack.dtype)
    z, forward = _flat(stack), tables.forward
    coefs = _flat(a) if kind == 0 else np.empty((0, 0), dtype=stack.dtype)
    args = (z, coefs, kind, order, forward.runs, forward.starts, tables.first, _flat(out), _flat_powers(powers), save)
    _launch(_compose, _compose_share, (*args, block), z.size, block)
    return out, powers


def _straight_line(stack, table, order: int) -> bool:
    """Whether the activation step on ``stack`` runs the table's straight-line kernels."""
    return (
        stack.size >= STRAIGHT_LINE_MIN_ELEMENTS
        and stack.dtype in (np.float32, np.float64)
        and numba_codegen.supports(table, order)
    )


def _directional(table, order: int) -> bool:
    """Whether ``table`` is one Taylor mode runs one direction at a time (:data:`DIRECTIONS_MIN_ROWS`);
    no row limit: the size of those kernels does not grow with the directions."""
    return order >= 1 and (table.n_directions or 0) >= 2 and table.n_coef >= DIRECTIONS_MIN_ROWS


def _by_direction(stack, table, order: int) -> bool:
    """Whether the activation step on ``stack`` runs Taylor mode's kernels of one direction."""
    return (
        _directional(table, order)
        and stack.size >= STRAIGHT_LINE_MIN_ELEMENTS
        and stack.dtype in (np.float32, np.float64)
    )


def tanh_series_share(table, order: int, smallest: int, dtype):
    """The compiled loop over a worker's chunks of a series through a tanh chain
    (:func:`~nnderiv.backends.numba_codegen.tanh_series_share`: ``(share, scratch)``), running
    the kernels :func:`activate` runs on tanh stacks of at least ``smallest`` elements, or ``None``
    where those are not generated ones (a smaller stack, a table without straight-line kernels)."""
    if not FUSED_TANH or smallest < STRAIGHT_LINE_MIN_ELEMENTS or np.dtype(dtype) not in (np.float32, np.float64):
        return None
    if _directional(table, order):
        return numba_codegen.tanh_series_share(table, order, "directions", dtype)
    if numba_codegen.supports(table, order):
        return numba_codegen.tanh_series_share(table, order, "rows", dtype)
    return None


def _by_direction_forward(stack, a, order: int):
    """The activation step of Taylor mode with coefficients ``a``, one direction at a time."""
    out = np.empty_like(stack, order="C")
    numba_codegen.taylor_forward(order, _flat(a), _flat(stack), _flat(out))  # on this thread: see nnderiv.parallel
    return out


def _straight_line_forward(stack, a, table, order: int):
    """The activation step by the table's straight-line kernel (coefficients ``a``)."""
    out = np.empty_like(stack, order="C")
    numba_codegen.forward(table, order, _flat(a), _flat(stack), _flat(out))  # on this thread: see nnderiv.parallel
    return out


def compose(stack, a, table, order: int):
    """``a_0`` on row 0, ``sum_j a_j delta^j`` elsewhere: one fused pass, no power kept."""
    if _by_direction(stack, table, order):
        return _by_direction_forward(stack, a, order)
    if order > 0 and _straight_line(stack, table, order):  # order 0 is a_0 itself: no pass at all
        return _straight_line_forward(stack, a, table, order)
    if order <= 1:  # one multiplication, nothing to fuse: NumPy streams it as fast
        return reference.compose(stack, a, table, order)
    return _composition(stack, a, table, order, save=False)[0]


def compose_saving(stack, a, table, order: int):
    """:func:`compose` and the powers ``delta^2 .. delta^K`` (written in the same pass); none for
    the straight-line and the by-direction kernels, whose pullbacks recompute them in registers."""
    if _by_direction(stack, table, order):
        return _by_direction_forward(stack, a, order), _no_powers(stack)
    if order > 0 and _straight_line(stack, table, order):
        return _straight_line_forward(stack, a, table, order), _no_powers(stack)
    if order <= 1:
        return reference.compose_saving(stack, a, table, order)
    return _composition(stack, a, table, order, save=True)


def _no_powers(stack) -> np.ndarray:
    return np.zeros((0, *stack.shape), dtype=stack.dtype)


def taylor_coefficients(activation, z, order: int):
    """``a_j = g^(j)(z) / j!``, ``j = 0..order``: for tanh and sigmoid one vectorized parallel pass
    (:mod:`~nnderiv.backends.numba_activations`), for the others the reference's NumPy fills."""
    kind = KINDS.get(activation.name, 0)
    if kind == 0 or z.dtype not in (np.float32, np.float64):
        return reference.taylor_coefficients(activation, z, order)
    a = np.empty((order + 1, *z.shape), dtype=z.dtype)
    flat = np.ascontiguousarray(z).reshape(-1)
    if order <= 1 and kind <= 2:  # tanh or sigmoid to order 1: straight into a, no block buffers
        args = (kind, flat, a.reshape(order + 1, -1), order, BUFFER_ELEMENTS)
        _launch(_fill_low, _fill_low_share, args, flat.size, BUFFER_ELEMENTS)
        return a
    block = _block(order + 2, flat.size)
    _launch(_fill, _fill_share, (kind, flat, a.reshape(order + 1, -1), order, block), flat.size * (order + 1), block)
    return a


def activate(stack, activation, table, order: int):
    """The activation step: ``g`` applied to the series ``stack``. For tanh and sigmoid the
    coefficients ``a_j`` are computed inside the composition, block by block, and never stored."""
    kind = KINDS.get(activation.name, 0)
    if order == 0:  # the value alone: a_0 is the output
        return taylor_coefficients(activation, stack[0], 0)
    if kind == 0 or stack.dtype not in (np.float32, np.float64):
        return compose(stack, taylor_coefficients(activation, stack[0], order), table, order)
    if _by_direction(stack, table, order):
        if activation.name != "tanh" or not FUSED_TANH:
            return _by_direction_forward(stack, taylor_coefficients(activation, stack[0], order), order)
        out = np.empty_like(stack, order="C")
        numba_codegen.tanh_taylor_forward(order, _flat(stack), _flat(out))
        return out
    if _straight_line(stack, table, order):
        if activation.name == "tanh" and FUSED_TANH:  # the coefficients in registers too: one pass
            out = np.empty_like(stack, order="C")
            numba_codegen.tanh_forward(table, order, _flat(stack), _flat(out))
            return out
        return _straight_line_forward(stack, taylor_coefficients(activation, stack[0], order), table, order)
    return _composition(stack, None, table, order, save=False, kind=kind)[0]


def activate_saving(stack, activation, table, order: int):
    """:func:`activate` and what its pullback needs: ``(out, a, powers)``, ``a`` to order ``order + 1``."""
    # (order 0: the fill to order 1 is one pass already, and its a_0 is the output itself)
    tanh = activation.name == "tanh" and FUSED_TANH and 0 < order
    if tanh and _by_direction(stack, table, order):
        out = np.empty_like(stack, order="C")
        a = np.empty((order + 2, *stack.shape[1:]), dtype=stack.dtype)
        numba_codegen.tanh_taylor_forward(order, _flat(stack), _flat(out), _flat(a))
        return out, a, _no_powers(stack)
    fused = tanh and table.n_coef <= FUSED_SAVING_MAX_ROWS
    if fused and _straight_line(stack, table, order):  # one pass, no powers kept
        out = np.empty_like(stack, order="C")
        a = np.empty((order + 2, *stack.shape[1:]), dtype=stack.dtype)
        numba_codegen.tanh_forward(table, order, _flat(stack), _flat(out), _flat(a))
        return out, a, _no_powers(stack)
    a = taylor_coefficients(activation, stack[0], order + 1)
    out, powers = compose_saving(stack, a, table, order)
    return out, a, powers


def compose_vjp(out_bar, stack, powers, a, table, order: int):
    """Pullback of :func:`compose` to its input stack: one fused pass (the powers recomputed in
    registers where :func:`compose_saving` kept none)."""
    if order == 0:
        return reference.compose_vjp(out_bar, stack, powers, a, table, order)
    if _by_direction(stack, table, order):  # (any powers given are recomputed in registers instead)
        stack_bar = np.empty_like(stack, order="C")
        numba_codegen.taylor_backward(order, _flat(out_bar), _flat(stack), _flat(a), _flat(stack_bar))
        return stack_bar
    if _straight_line(stack, table, order) or (order >= 2 and len(powers) == 0):
        stack_bar = np.empty_like(stack, order="C")
        numba_codegen.backward(table, order, _flat(out_bar), _flat(stack), _flat(a), _flat(stack_bar))
        return stack_bar
    tables, block = composition_tables(table), _block(len(stack), stack[0].size)
    stack_bar = np.empty_like(stack, order="C")
    left, right = tables.adjoint_left, tables.adjoint_right
    counts = np.arange(order + 2, dtype=stack.dtype)  # (j + 1) in the dtype of the stack
    flat_tables = (left.runs, left.starts, right.runs, right.starts, tables.first, counts)
    z = _flat(stack)
    args = (_flat(out_bar), z, _flat_powers(powers), _flat(a), order, flat_tables, _flat(stack_bar), block)
    _launch(_compose_vjp, _compose_vjp_share, args, z.size, block)
    return stack_bar
