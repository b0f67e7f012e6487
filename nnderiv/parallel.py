"""Chunks of points on every core: one worker thread per core, each taking whole chunks through the network.

A sweep alternates two kinds of steps on stacks of a few MiB: a matrix product (BLAS) and an
elementwise kernel (Numba). Run one after the other with each step parallel inside, the two thread
pools take turns on the same cores: every step wakes its threads, and the threads of the step
that just finished keep spinning on the cores the next step needs (measured on 2 cores: two
threads no faster than one, ``docs/performance.md``). Here each worker takes a whole chunk of
points through every layer, with BLAS and the kernels single-threaded inside, so no thread waits
on another between steps and each chunk's stacks stay in its core's cache. Workers meet only when
a chunk is done.

Results come back in the order of the chunks, whatever the scheduling, so a sum over chunks (a
gradient, a loss) is the same on every run. Inside a worker, :func:`workers` is 1: nothing nests.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from . import backends

_local = threading.local()  # .in_worker: set in the pool's threads
_executor: dict = {"pool": None, "size": 0}
_blas: dict = {"lock": threading.Lock(), "depth": 0, "limits": None, "libraries": None}


def workers() -> int:
    """How many chunks run at once: the active backend's thread count (``numba``:
    :func:`numba.get_num_threads`, i.e. ``NUMBA_NUM_THREADS``; ``numpy`` and ``cupy``: 1), and 1
    inside a worker."""
    if getattr(_local, "in_worker", False):
        return 1
    return max(1, backends.active().workers())


def map_chunks(fn: Callable, parts: Iterable) -> Iterator:
    """``fn(part)`` for every part, in order; up to :func:`workers` parts at a time, each on a worker
    thread with single-threaded BLAS and kernels. At most one more part than there are workers is
    in flight, so memory stays bounded by a few chunks. Consume the iterator to the end."""
    parts = list(parts)
    n_workers = min(workers(), len(parts))
    if n_workers <= 1:
        yield from map(fn, parts)
        return
    pool = _pool(n_workers)
    with single_threaded_blas():
        pending, upcoming = deque(), iter(parts)
        try:
            for part in upcoming:
                pending.append(pool.submit(fn, part))
                if len(pending) > n_workers:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # an error, or an abandoned iterator: let no chunk outlive the BLAS setting
            for future in pending:
                future.cancel()
            for future in pending:
                if not future.cancelled():
                    future.exception()  # waits; its error (if any) is the first one's echo


def _pool(n_workers: int) -> ThreadPoolExecutor:
    """The process's worker threads, at least ``n_workers`` of them (started once, reused)."""
    if _executor["size"] < n_workers:
        previous = _executor["pool"]
        _executor["pool"] = ThreadPoolExecutor(n_workers, thread_name_prefix="nnderiv", initializer=_start_worker)
        _executor["size"] = n_workers
        if previous is not None:
            previous.shutdown(wait=False)
    return _executor["pool"]


def _start_worker() -> None:
    """A worker runs its kernels on its own thread: Numba's thread count is per thread."""
    import numba

    _local.in_worker = True
    numba.set_num_threads(1)


@contextmanager
def single_threaded_blas():
    """BLAS on one thread per call while workers run (``threadpoolctl``), restored when the last
    concurrent user leaves; a no-op where BLAS already runs on one thread."""
    with _blas["lock"]:
        if _blas["libraries"] is None:  # found once (milliseconds): the BLAS libraries loaded by then
            from threadpoolctl import ThreadpoolController

            _blas["libraries"] = ThreadpoolController().select(user_api="blas")
        if _blas["depth"] == 0:
            _blas["limits"] = _blas["libraries"].limit(limits=1)
        _blas["depth"] += 1
    try:
        yield
    finally:
        with _blas["lock"]:
            _blas["depth"] -= 1
            if _blas["depth"] == 0:
                _blas["limits"].restore_original_limits()
                _blas["limits"] = None
