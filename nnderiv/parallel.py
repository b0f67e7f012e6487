"""Chunks of points on every core: one worker thread per core, each taking whole chunks through the network.

A sweep alternates two kinds of steps on stacks of a few MiB: a matrix product (BLAS) and an
elementwise kernel (Numba). Run one after the other with each step parallel inside, the two thread
pools take turns on the same cores: every step wakes its threads, and the threads of the step
that just finished keep spinning on the cores the next step needs (measured on 2 cores: two
threads no faster than one, ``docs/performance.md``). Here each worker — the calling thread and
``workers() - 1`` helper threads — takes a whole chunk of points through every layer, with BLAS and
the kernels single-threaded inside, so no thread waits on another between steps and each chunk's
stacks stay in its core's cache. Workers meet only when a chunk is done.

Results come back in the order of the chunks, whatever the scheduling, so a sum over chunks (a
gradient, a loss) is the same on every run. Inside a worker, :func:`workers` is 1: nothing nests.
While a call's workers run, each is pinned to a CPU of its own where that is safe (:func:`_placed`).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from . import backends

_local = threading.local()  # .in_worker: set in the pool's threads
_executor: dict = {"pool": None, "size": 0}
_blas: dict = {"lock": threading.Lock(), "depth": 0, "limits": None, "libraries": None}

#: while workers run, each on a CPU of its own (Linux, where the workers take every CPU the caller
#: may run on): ``NNDERIV_PIN_WORKERS=0`` or ``False`` here leaves the placement to the scheduler
PIN_WORKERS = os.environ.get("NNDERIV_PIN_WORKERS", "1") != "0"
_pins: dict = {"lock": threading.Lock(), "depth": 0}  # depth: map_chunks calls running now


def workers() -> int:
    """How many chunks run at once: the active backend's thread count (``numba``:
    :func:`numba.get_num_threads`, i.e. ``NUMBA_NUM_THREADS``; ``numpy`` and ``cupy``: 1), and 1
    inside a worker."""
    if getattr(_local, "in_worker", False):
        return 1
    return max(1, backends.active().workers())


def map_chunks(fn: Callable, parts: Iterable) -> Iterator:
    """``fn(part)`` for every part, in order; up to :func:`workers` parts at a time, with
    single-threaded BLAS and kernels. The calling thread is one of the workers: it takes parts
    too, so a part never waits for a sleeping thread to wake up (measured: up to milliseconds on a
    virtual machine). At most one more part than there are workers is in flight, so memory stays
    bounded by a few chunks. Consume the iterator to the end."""
    parts = list(parts)
    n_workers = min(workers(), len(parts))
    if n_workers <= 1:
        yield from map(fn, parts)
        return
    chunks = _Chunks(fn, parts, window=n_workers + 1)
    with single_threaded_blas(), _placed(n_workers) as masks:
        helpers = [_pool(n_workers - 1).submit(_help, chunks, mask) for mask in masks]
        try:
            for index in range(len(parts)):
                yield chunks.result(index)
        finally:  # an error, or an abandoned iterator: let no chunk outlive the BLAS setting
            chunks.stop()
            for helper in helpers:
                helper.result()


@contextmanager
def _placed(n_workers: int):
    """The calling thread on a CPU of its own while its workers run, and the CPUs of each helper
    (yielded). One CPU per worker where :data:`PIN_WORKERS`, Linux, :func:`workers` equals the
    number of CPUs the caller may run on, and no other call is running (two callers would share the
    first CPU); else the caller stays as it is and the helpers get the caller's CPUs (``None`` off
    Linux).

    Why: a helper woken for a call is placed by Linux on the CPU of the thread that woke it (the
    caller, about to sweep its own chunk) and moved only later. After a pause (other work between
    calls), the two workers of a 2-core machine shared one CPU in most calls of a few
    milliseconds, and ran one after the other (measured, docs/backends.md); pinned apart they run
    at once. With fewer workers than CPUs nothing is pinned: processes side by side would all pick
    the same first CPUs."""
    if not hasattr(os, "sched_setaffinity"):
        yield [None] * (n_workers - 1)
        return
    with _pins["lock"]:
        alone = _pins["depth"] == 0
        _pins["depth"] += 1
    try:
        allowed = os.sched_getaffinity(0)
        if not (alone and PIN_WORKERS and len(allowed) == workers() >= n_workers):
            yield [allowed] * (n_workers - 1)
            return
        cpus = sorted(allowed)
        try:
            os.sched_setaffinity(0, {cpus[0]})
        except OSError:  # not permitted here (a sandbox): the scheduler places the workers
            yield [None] * (n_workers - 1)
            return
        try:
            yield [{cpu} for cpu in cpus[1:n_workers]]
        finally:
            os.sched_setaffinity(0, allowed)
    finally:
        with _pins["lock"]:
            _pins["depth"] -= 1


def _help(chunks, mask) -> None:
    """A helper thread's part of a call, on the CPUs of ``mask`` (set when it changes: a helper
    stays pinned from one call to the next)."""
    if mask is not None and getattr(_local, "mask", None) != mask:
        try:
            os.sched_setaffinity(0, mask)
            _local.mask = mask
        except OSError:  # not permitted here: run where the thread is
            pass
    chunks.help()


class _Chunks:
    """The parts of one :func:`map_chunks` call, claimed in order by the caller and the helpers;
    parts up to ``window`` past the one the caller waits for may start, and their results wait
    (``results``: index -> ``(ok, value or error)``) until the caller takes them in order."""

    def __init__(self, fn, parts, window: int):
        self.fn, self.parts, self.window = fn, parts, window
        self.claimed = 0  # parts claimed so far (the next to claim)
        self.wanted = 0  # the part the caller yields next
        self.results: dict = {}
        self.stopped = False
        self.changed = threading.Condition()

    def _claim(self):
        """The next part to run, or None (none left, stopped, or too far ahead); under the lock."""
        if self.stopped or self.claimed >= min(len(self.parts), self.wanted + self.window):
            return None
        self.claimed += 1
        return self.claimed - 1

    def _run(self, index: int) -> None:
        try:
            outcome = (True, self.fn(self.parts[index]))
        except BaseException as error:  # noqa: BLE001 - raised again, in order, by result()
            outcome = (False, error)
        with self.changed:
            self.results[index] = outcome
            self.changed.notify_all()

    def help(self) -> None:
        """A helper thread: claim and run parts until none is left."""
        while True:
            with self.changed:
                index = self._claim()
                while index is None and not (self.stopped or self.claimed >= len(self.parts)):
                    self.changed.wait()  # the window moves when the caller takes a result
                    index = self._claim()
            if index is None:
                return
            self._run(index)

    def result(self, index: int):
        """Part ``index``'s result, running parts on the calling thread until it is there."""
        while True:
            with self.changed:
                self.wanted = index
                self.changed.notify_all()
                if index in self.results:
                    ok, value = self.results.pop(index)
                    break
                claim = self._claim()
                if claim is None:
                    self.changed.wait()
                    continue
            with _as_worker():
                self._run(claim)
        if not ok:
            raise value
        return value

    def stop(self) -> None:
        with self.changed:
            self.stopped = True
            self.changed.notify_all()


@contextmanager
def _as_worker():
    """The calling thread as a worker for one part: its kernels on itself, nothing nested."""
    import numba

    previous = numba.get_num_threads(), getattr(_local, "in_worker", False)
    numba.set_num_threads(1)
    _local.in_worker = True
    try:
        yield
    finally:
        numba.set_num_threads(previous[0])
        _local.in_worker = previous[1]


def _pool(n_workers: int) -> ThreadPoolExecutor:
    """The process's helper threads, at least ``n_workers`` of them (started once, reused)."""
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
