"""The ordered parallel runner: one function over a stream of work items, results in input
order, with a bounded number of items in flight (which bounds memory)."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Callable, Iterator

from tfpipes.preprocess.malloc import keep_block_memory


class OrderedRunner:
    """Runs ``fn`` on the items in input order: in this thread, or on a pool of worker
    threads with a bounded number of items in flight (2 per worker).

    Threads, not processes: Arrow's CSV parser, numpy's kernels, zlib, file writes and the
    CRC32C library all release the GIL, which leaves little to serialize on, while processes
    would cost a start-up and a copy of every byte in and out (measured: ~40% more CPU on two
    cores).
    """

    def __init__(self, workers: int, fn: Callable) -> None:
        from concurrent.futures import ThreadPoolExecutor

        keep_block_memory()  # every loop over blocks runs here: their buffers are reused
        self.workers = workers
        self._fn = fn
        self._pool = (
            ThreadPoolExecutor(workers, thread_name_prefix="preprocess") if workers > 1 else None
        )
        self._pending: deque = deque()

    def submit(self, *args) -> Iterator:
        """Queue ``fn(*args)``; yield the results that are due, in order."""
        if self._pool is None:
            yield self._fn(*args)
            return
        self._pending.append(self._pool.submit(self._fn, *args))
        while len(self._pending) > 2 * self.workers:
            yield self._pending.popleft().result()

    def drain(self) -> Iterator:
        """Yield the results still in flight, in order."""
        while self._pending:
            yield self._pending.popleft().result()

    def close(self) -> None:
        """Stop the pool; queued work that has not started is cancelled."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


def default_workers() -> int:
    """The CPU cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
