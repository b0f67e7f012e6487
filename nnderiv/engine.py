"""Running a model in a mode: seeding, the forward sweep, the pullback sweep, chunks and the memory guard.

Points are processed in chunks of rows of ``x`` (a loop over chunks, never over points), one chunk
per worker thread at a time (:mod:`nnderiv.parallel`). The working set is estimated before
anything is allocated. A forward sweep (no pullback) cuts the points into chunks whose stacks stay
in the CPU caches and fit the memory limit of :func:`nnderiv.get_memory_limit`, so any ``N`` runs
in bounded memory. A sweep kept for a pullback over the limit raises
:class:`~nnderiv.errors.MemoryLimitError` naming the estimate and a ``chunk_size`` that fits; with
a ``chunk_size``, the pullback recomputes each chunk's forward sweep instead of keeping every
chunk's intermediates, so memory stays bounded by one chunk per worker.
"""

from __future__ import annotations

import sys

import numpy as np

from . import _validation as check
from . import kernels
from .backends.numpy_backend import namespace
from .config import get_memory_limit
from .errors import MemoryLimitError
from .modes.series import SeriesMode
from .parallel import map_chunks, workers


def leaf_layers(model, width=None):
    """``(layer, width of its input)`` for every Dense and activation layer, nested models flattened."""
    width = model.n_inputs if width is None else width
    for layer in model.layers:
        if hasattr(layer, "layers"):
            yield from leaf_layers(layer, width)
            width = layer.n_outputs
        else:
            yield layer, width
            width = getattr(layer, "n_out", width)


def bytes_per_point(model, mode) -> int:
    """Estimated peak bytes per point of one sweep of ``model`` in ``mode`` (pullback included if
    ``mode.for_vjp``): the live stacks of the widest step, plus every intermediate kept for the pullback."""
    peak = kept = 0
    for layer, width in leaf_layers(model):
        if hasattr(layer, "activation"):
            peak = max(peak, mode.elementwise_rows() * width)
            kept += mode.elementwise_saved_rows() * width if mode.for_vjp else 0
        else:
            peak = max(peak, mode.n_rows * (width + layer.n_out))
            kept += mode.n_rows * width if mode.for_vjp else 0
    return (peak + kept) * model.dtype.itemsize


def kept_bytes_per_point(model, mode, extra_rows: int = 0) -> int:
    """Bytes per point of what a chunked call keeps for ALL points while its chunks run: the output
    stack and its read-out (about as large: the results are read from the coefficients); for a
    pullback also the cotangent read into a stack, a temporary of that size, the stack on the
    backend, and ``x_bar`` with its chunks; a reverse sweep's ``extra_rows`` adjoint rows at the
    input (``d`` wide). A read-out larger than its stack (a dense derivative tensor of high order
    that you ask for, and its cotangent that you pass) comes on top."""
    m, d = model.n_outputs, model.n_inputs
    entries = 2 * mode.n_rows * m + extra_rows * d
    if mode.for_vjp:
        entries += 3 * mode.n_rows * m + 2 * d
    return entries * model.dtype.itemsize


#: chunks that nnderiv chooses (and the chunk_size it suggests) fill this share of the memory limit:
#: the estimates above leave out small temporaries (read-outs, cotangents of the read-out, a
#: broadcast bias), measured at up to 10% of the total on narrow networks (tests/test_engine.py)
HEADROOM = 0.8


def _workspace(model, mode, extra_rows: int = 0) -> int:
    """The backend kernels' own buffers, for the largest stack of ``mode`` (plus ``extra_rows``)."""
    return kernels.workspace_bytes(mode.n_rows + extra_rows, model.dtype.itemsize)


def _footprint(model, mode, n_points: int, extra_rows: int = 0) -> tuple[int, int]:
    """``(bytes per point of one chunk's working set, bytes kept for all n_points and the kernels'
    buffers)``: what the memory guard weighs against the limit."""
    per_point = bytes_per_point(model, mode) + _extra_bytes_per_point(model, extra_rows)
    kept = kept_bytes_per_point(model, mode, extra_rows) * n_points + _workspace(model, mode, extra_rows)
    return per_point, kept


def _fitting(footprint: tuple[int, int]) -> int:
    """:func:`fitting_chunk_size` on a :func:`_footprint` already estimated."""
    per_point, kept = footprint
    return max(1, int((HEADROOM * get_memory_limit() - kept) // (per_point * workers())))


def fitting_chunk_size(model, mode, n_points: int, *, extra_rows: int = 0) -> int:
    """The most points per chunk whose working sets, one per worker, with what is kept for all
    ``n_points``, fill ``HEADROOM`` of the memory limit (at least 1: :func:`chunk_size_for` says
    when even that is too much)."""
    return _fitting(_footprint(model, mode, n_points, extra_rows))


def concurrent_chunks(n_points: int, size: int) -> int:
    """Chunks of ``size`` points alive at once: one per worker, no more than there are."""
    return max(1, min(workers(), -(-n_points // max(size, 1))))


def chunk_size_for(model, mode, n_points: int, chunk_size, *, extra_rows: int = 0) -> int:
    """Validate ``chunk_size`` against the memory limit, or pick ``n_points`` when all of it fits.
    ``extra_rows``: rows of a second sweep (reverse strategies) beside the mode's own.

    A chunked sweep needs the working sets of the chunks that run at once (one per worker) plus
    what it keeps for all points (:func:`kept_bytes_per_point`), and both must fit under the limit."""
    return _checked(_footprint(model, mode, n_points, extra_rows), n_points, chunk_size)


def _checked(footprint: tuple[int, int], n_points: int, chunk_size) -> int:
    """:func:`chunk_size_for` on a :func:`_footprint` already estimated."""
    per_point, kept = footprint
    limit = get_memory_limit()
    if kept >= limit:
        raise MemoryLimitError(
            f"the results at all {n_points} points (and the kernels' buffers) alone need about "
            f"{kept / 2**20:.1f} MiB, over the memory "
            f"limit of {limit / 2**20:.1f} MiB: pass fewer points per call (split x), use fewer threads "
            "(NUMBA_NUM_THREADS: the numba backend's kernels keep buffers per thread), or raise the limit "
            "with nd.set_memory_limit()"
        )
    if chunk_size is None:
        if per_point * n_points + kept > limit:
            raise MemoryLimitError(
                f"this request needs about {(per_point * n_points + kept) / 2**20:.1f} MiB "
                f"({per_point} bytes per point x {n_points} points), over the memory limit of "
                f"{limit / 2**20:.1f} MiB; pass chunk_size={_fitting(footprint)} (or smaller) "
                "to process the points in chunks, or raise the limit with nd.set_memory_limit()"
            )
        return max(n_points, 1)
    chunk_size = check.positive_int(chunk_size, "chunk_size")
    need = per_point * min(chunk_size, n_points) * concurrent_chunks(n_points, chunk_size) + kept
    if need > limit:
        raise MemoryLimitError(
            f"chunk_size={chunk_size} needs about {need / 2**20:.1f} MiB, over the "
            f"memory limit of {limit / 2**20:.1f} MiB; use chunk_size <= {_fitting(footprint)}"
        )
    return chunk_size


def _extra_bytes_per_point(model, extra_rows: int) -> int:
    """A second sweep's ``extra_rows``: input, output and one temporary at the widest layer."""
    if not extra_rows:
        return 0
    widest = max(max(width for _, width in leaf_layers(model)), model.n_outputs)
    return 3 * extra_rows * widest * model.dtype.itemsize


def chunks(n_points: int, size: int) -> list[slice]:
    """The points ``0 .. n_points`` cut into slices of ``size``."""
    return [slice(start, min(start + size, n_points)) for start in range(0, max(n_points, 1), size)]


#: points per chunk of a forward sweep are chosen so that one stack takes about this many bytes:
#: then the few stacks alive at each step stay in the CPU's L2/L3 caches from one step to the
#: next, instead of streaming through memory (measured: 1.3-3x faster, docs/performance.md)
CACHE_STACK_BYTES = 5 * 2**19
#: ... but never fewer points than this (the per-chunk Python overhead would then show)
MIN_CACHE_CHUNK = 128


def _on_device() -> bool:
    """Whether the current backend runs on a GPU: its kernels want every point in one launch (a
    chunk costs the same launches whatever its size), and no CPU cache is there to fit."""
    from . import backends

    return backends.active().ON_DEVICE


def cache_chunk_size(model, rows: int) -> int:
    """Points per chunk such that a stack of ``rows`` rows at the widest layer fills ``CACHE_STACK_BYTES``
    (on a GPU: no limit but the memory's)."""
    if _on_device():
        return sys.maxsize
    widest = max(max(width for _, width in leaf_layers(model)), model.n_outputs)
    return max(MIN_CACHE_CHUNK, CACHE_STACK_BYTES // (rows * widest * model.dtype.itemsize))


#: points per chunk of a sweep that is pulled back at once (OperatorMSE): the sweep's whole
#: working set, intermediates kept for the pullback included, takes about this many bytes. Each
#: chunk's pullback goes layer by layer, a few dozen kernel calls from Python, which the workers
#: take one at a time (the GIL): on two workers 8 MiB (239 points of W6 at d = 2, 128 at d = 8)
#: ran 1.55x / 1.17x slower than 32 MiB; on one worker the two measured the same (docs/performance.md)
PULLBACK_CACHE_BYTES = 32 * 2**20


def checked_pullback_chunk_size(model, mode, n_points: int, chunk_size) -> int:
    """``chunk_size`` for chunks that are each swept forward and pulled back at once, one per
    worker at a time (:class:`nnderiv.OperatorMSE`): :class:`MemoryLimitError` where the working
    sets of the chunks that run at once and the kernels' buffers exceed the memory limit (each
    chunk's own call, inside a worker, sees only itself)."""
    chunk_size = check.positive_int(chunk_size, "chunk_size")
    per_point = bytes_per_point(model, mode) + kept_bytes_per_point(model, mode)
    at_once, workspace = concurrent_chunks(n_points, chunk_size), _workspace(model, mode)
    need = per_point * min(chunk_size, max(n_points, 1)) * at_once + workspace
    limit = get_memory_limit()
    if need <= limit:
        return chunk_size
    smallest = per_point * concurrent_chunks(n_points, 1) + workspace
    fix = (
        f"use chunk_size <= {pullback_chunk_size(model, mode)}"
        if smallest <= limit
        else f"even one point per worker needs {smallest / 2**20:.1f} MiB: use fewer workers (NUMBA_NUM_THREADS)"
    )
    raise MemoryLimitError(
        f"chunk_size={chunk_size} needs about {need / 2**20:.1f} MiB ({at_once} chunks at once, one per worker, "
        f"and the kernels' buffers), over the memory limit of {limit / 2**20:.1f} MiB; {fix}, or raise the "
        "limit with nd.set_memory_limit()"
    )


def pullback_chunk_size(model, mode) -> int:
    """Points per chunk such that one forward-and-pullback of ``mode`` fills ``PULLBACK_CACHE_BYTES``
    (and, all kept, fits the memory limit; on a GPU, only that)."""
    per_point = bytes_per_point(model, mode) + kept_bytes_per_point(model, mode)
    budget = HEADROOM * get_memory_limit() - _workspace(model, mode)
    fitting = max(1, int(budget // (per_point * workers())))
    if _on_device():
        return fitting
    return min(max(MIN_CACHE_CHUNK, PULLBACK_CACHE_BYTES // per_point), fitting)


#: a chunk given to a worker carries at least this many bytes of stack at the widest layer: each
#: sweep of a chunk costs about 0.2 ms of Python, which the workers run one at a time (the GIL)
PARALLEL_MIN_STACK_BYTES = 2**20


def spread_chunk_size(model, rows: int, n_points: int) -> int:
    """Points per chunk so that every worker gets one, but no chunk is too small to be worth a
    worker (:data:`PARALLEL_MIN_STACK_BYTES` for a stack of ``rows`` rows)."""
    widest = max(max(width for _, width in leaf_layers(model)), model.n_outputs)
    smallest = max(MIN_CACHE_CHUNK, PARALLEL_MIN_STACK_BYTES // (rows * widest * model.dtype.itemsize))
    n_chunks = max(1, min(workers(), n_points // smallest))
    return max(1, -(-n_points // n_chunks))  # equal shares


def balanced_chunk_size(n_points: int, size: int) -> int:
    """At most ``size`` points per chunk, in a number of chunks that every worker takes as many of:
    5 chunks on 2 workers would leave one worker idle while the other sweeps the last."""
    n_chunks = -(-n_points // max(size, 1))
    if n_chunks <= 1:
        return size
    n_workers = workers()
    return -(-n_points // (-(-n_chunks // n_workers) * n_workers))


def chosen_chunk_size(model, rows: int, n_points: int, *limits: int) -> int:
    """The chunk nnderiv chooses for ``n_points`` of ``rows`` stacked rows: no larger than any of
    ``limits`` (cache, memory), one at least for every worker (:func:`spread_chunk_size`) and as
    many for each (:func:`balanced_chunk_size`)."""
    return balanced_chunk_size(n_points, min(max(n_points, 1), *limits, spread_chunk_size(model, rows, n_points)))


def forward_chunk_size(model, mode, n_points: int, chunk_size, *, extra_rows: int = 0) -> int:
    """Chunk of a sweep whose intermediates are not kept: ``chunk_size`` (validated against the
    memory limit) or, by default, a cache-sized chunk that fits the limit (:func:`chosen_chunk_size`)."""
    footprint = _footprint(model, mode, n_points, extra_rows)
    if chunk_size is None:
        rows = mode.n_rows + extra_rows
        chunk_size = chosen_chunk_size(model, rows, n_points, cache_chunk_size(model, rows), _fitting(footprint))
    return _checked(footprint, n_points, chunk_size)  # raises if one point is too many


def evaluate(model, mode, x: np.ndarray, chunk_size=None) -> np.ndarray:
    """The output stack ``(mode.n_rows, N, n_outputs)`` of ``model`` at the points ``x``, in chunks
    of points (:func:`forward_chunk_size`). Without a pullback, the value and a series mode are one
    compiled call per worker where the backend has one for ``model`` (:func:`kernels.dense_sweep`)."""
    size = forward_chunk_size(model, mode, len(x), chunk_size)
    sweep = None if mode.for_vjp else kernels.dense_sweep(model, x.dtype)
    if sweep is not None and mode.n_rows == 1:
        return sweep.value(x, size)[None]
    if sweep is not None and isinstance(mode, SeriesMode):
        stack = sweep.series(mode.table, mode.order, mode.directions, x, size)
        if stack is not None:
            return stack
    parts = chunks(len(x), size)
    return gather(zip(map_chunks(lambda part: _sweep(model, mode, x, part)[0], parts), parts), len(x))


def _sweep(model, mode, x, part):
    """The forward sweep of ``mode`` at the points ``x[part]``: ``(output stack, saved)``."""
    return model.forward(mode, mode.seed(x[part], part))


def gather(pieces, n_points: int, axis: int = 1):
    """One array from ``(piece, slice of points)`` pairs, the points along ``axis``: each piece is
    written into its place as it comes (no list of pieces and their concatenation alive at once)."""
    out = None
    for piece, part in pieces:
        if part == slice(0, n_points):
            return piece
        if out is None:
            shape = (*piece.shape[:axis], n_points, *piece.shape[axis + 1 :])
            out = namespace(piece).empty(shape, dtype=piece.dtype)
        out[(slice(None),) * axis + (part,)] = piece
    return out


def evaluate_with_pullback(model, mode, x: np.ndarray, chunk_size=None):
    """Output stack and ``pullback(out_bar) -> (param grads, x_bar)``; ``mode.for_vjp`` must be set.

    Without ``chunk_size`` the sweep of every point is kept, in one chunk per worker; with it, each
    chunk's sweep is recomputed in the pullback instead of kept, so memory stays bounded."""
    size = chunk_size_for(model, mode, len(x), chunk_size)
    parts = chunks(len(x), spread_chunk_size(model, mode.n_rows, len(x)) if chunk_size is None else size)
    keep = chunk_size is None or len(parts) == 1
    if keep:
        sweeps = list(map_chunks(lambda part: _sweep(model, mode, x, part), parts))
        out = gather(((sweep[0], part) for sweep, part in zip(sweeps, parts)), len(x))
    else:
        out = gather(zip(map_chunks(lambda part: _sweep(model, mode, x, part)[0], parts), parts), len(x))

    def pullback(out_bar):
        def pull(index):
            part = parts[index]
            saved = sweeps[index][1] if keep else _sweep(model, mode, x, part)[1]
            stack_bar, grads = model.backward(mode, saved, out_bar[:, part])
            return grads, mode.seed_vjp(stack_bar)

        total = {}

        def x_bars():  # the gradients summed in the order of the chunks, whatever the scheduling
            for (grads, x_bar), part in zip(map_chunks(pull, range(len(parts))), parts):
                for name, grad in grads.items():
                    total[name] = grad if name not in total else total[name] + grad
                yield x_bar, part

        x_bar = gather(x_bars(), len(x), axis=0)
        return total, x_bar

    return out, pullback
