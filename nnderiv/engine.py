"""Running a model in a mode: seeding, the forward sweep, the pullback sweep, chunks and the memory guard.

Points are processed in chunks of rows of ``x`` (a loop over chunks, never over points). The
working set is estimated before anything is allocated. A forward sweep (no pullback) cuts the
points into chunks whose stacks stay in the CPU caches and fit the memory limit of
:func:`nnderiv.get_memory_limit`, so any ``N`` runs in bounded memory. A sweep kept for a pullback
over the limit raises :class:`~nnderiv.errors.MemoryLimitError` naming the estimate and a
``chunk_size`` that fits; with a ``chunk_size``, the pullback recomputes each chunk's forward sweep
instead of keeping every chunk's intermediates, so memory stays bounded by one chunk.
"""

from __future__ import annotations

import numpy as np

from . import _validation as check
from .config import get_memory_limit
from .errors import MemoryLimitError


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


def chunk_size_for(model, mode, n_points: int, chunk_size, *, extra_rows: int = 0) -> int:
    """Validate ``chunk_size`` against the memory limit, or pick ``n_points`` when all of it fits.
    ``extra_rows``: rows of a second sweep (reverse strategies) beside the mode's own."""
    per_point = bytes_per_point(model, mode) + _extra_bytes_per_point(model, extra_rows)
    limit = get_memory_limit()
    if chunk_size is None:
        if per_point * n_points > limit:
            raise MemoryLimitError(
                f"this request needs about {per_point * n_points / 2**20:.1f} MiB "
                f"({per_point} bytes per point x {n_points} points), over the memory limit of "
                f"{limit / 2**20:.1f} MiB; pass chunk_size={max(1, limit // per_point)} (or smaller) "
                "to process the points in chunks, or raise the limit with nd.set_memory_limit()"
            )
        return max(n_points, 1)
    chunk_size = check.positive_int(chunk_size, "chunk_size")
    if per_point * chunk_size > limit:
        raise MemoryLimitError(
            f"chunk_size={chunk_size} needs about {per_point * chunk_size / 2**20:.1f} MiB, over the "
            f"memory limit of {limit / 2**20:.1f} MiB; use chunk_size <= {max(1, limit // per_point)}"
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


def cache_chunk_size(model, rows: int) -> int:
    """Points per chunk such that a stack of ``rows`` rows at the widest layer fills ``CACHE_STACK_BYTES``."""
    widest = max(max(width for _, width in leaf_layers(model)), model.n_outputs)
    return max(MIN_CACHE_CHUNK, CACHE_STACK_BYTES // (rows * widest * model.dtype.itemsize))


#: points per chunk of a sweep that is pulled back at once (OperatorMSE): the sweep's whole
#: working set, intermediates kept for the pullback included, takes about this many bytes
PULLBACK_CACHE_BYTES = 8 * 2**20


def pullback_chunk_size(model, mode) -> int:
    """Points per chunk such that one forward-and-pullback of ``mode`` fills ``PULLBACK_CACHE_BYTES``."""
    return max(MIN_CACHE_CHUNK, PULLBACK_CACHE_BYTES // bytes_per_point(model, mode))


def forward_chunk_size(model, mode, n_points: int, chunk_size, *, extra_rows: int = 0) -> int:
    """Chunk of a sweep whose intermediates are not kept: ``chunk_size`` (validated against the
    memory limit) or, by default, a cache-sized chunk that also fits the limit."""
    if chunk_size is not None:
        return chunk_size_for(model, mode, n_points, chunk_size, extra_rows=extra_rows)
    fitting = get_memory_limit() // (bytes_per_point(model, mode) + _extra_bytes_per_point(model, extra_rows))
    size = min(max(n_points, 1), cache_chunk_size(model, mode.n_rows + extra_rows), max(fitting, 1))
    return chunk_size_for(model, mode, n_points, size, extra_rows=extra_rows)  # raises if one point is too many


def evaluate(model, mode, x: np.ndarray, chunk_size=None) -> np.ndarray:
    """The output stack ``(mode.n_rows, N, n_outputs)`` of ``model`` at the points ``x``, in chunks
    of points (:func:`forward_chunk_size`)."""
    size = forward_chunk_size(model, mode, len(x), chunk_size)
    outs = [model.forward(mode, mode.seed(x[part], part))[0] for part in chunks(len(x), size)]
    return outs[0] if len(outs) == 1 else np.concatenate(outs, axis=1)


def evaluate_with_pullback(model, mode, x: np.ndarray, chunk_size=None):
    """Output stack and ``pullback(out_bar) -> (param grads, x_bar)``; ``mode.for_vjp`` must be set."""
    size = chunk_size_for(model, mode, len(x), chunk_size)
    parts = chunks(len(x), size)
    if len(parts) == 1:
        out, saved = model.forward(mode, mode.seed(x))

        def pullback(out_bar):
            stack_bar, grads = model.backward(mode, saved, out_bar)
            return grads, mode.seed_vjp(stack_bar)

        return out, pullback

    out = np.concatenate([model.forward(mode, mode.seed(x[part], part))[0] for part in parts], axis=1)

    def chunked_pullback(out_bar):
        total, x_bars = None, []
        for part in parts:  # recompute each chunk's sweep: memory stays bounded by one chunk
            _, saved = model.forward(mode, mode.seed(x[part], part))
            stack_bar, grads = model.backward(mode, saved, out_bar[:, part])
            total = grads if total is None else {k: total[k] + g for k, g in grads.items()}
            x_bars.append(mode.seed_vjp(stack_bar))
        return total, np.concatenate(x_bars, axis=0)

    return out, chunked_pullback
