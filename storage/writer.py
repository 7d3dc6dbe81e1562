"""Group commit: one thread owns TinyDB; concurrent writers share one fsync.

The asyncio side never touches TinyDB. Each call becomes an operation on a queue;
the writer thread takes *everything* queued, runs it, then commits once (one journal
append + one fsync per file family that changed) and resolves the batch's futures in
one hop back to the event loop. While a commit is in progress the next batch piles up
by itself, so the batch size adapts to the load with no timer: one writer pays one
fsync, a thousand concurrent writers pay a handful.

Read operations resolve as soon as they have run (they do not wait for the fsync);
mutating operations resolve only after a commit that left nothing pending. A failed
commit fails every mutating operation of the batch with :class:`StorageError`, and the
changes stay pending, so the next successful commit makes them durable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

from storage.base import StorageError

log = logging.getLogger("storage")

_STOP = object()


class _Op:
    __slots__ = ("fn", "future", "mutating")

    def __init__(
        self,
        fn: Callable[[], Any],
        future: asyncio.Future,
        mutating: bool,
    ) -> None:
        self.fn = fn
        self.future = future
        self.mutating = mutating


_Outcome = tuple[asyncio.Future, Any, BaseException | None]


class GroupCommitter:
    """Runs operations on one dedicated thread and commits them in batches.

    ``commit`` makes everything pending durable (raising on failure; True if it
    wrote); ``pending`` tells whether anything is not yet durable; ``after_batch`` runs
    housekeeping on the writer thread before each commit.
    """

    def __init__(
        self,
        commit: Callable[[], bool],
        pending: Callable[[], bool],
        after_batch: Callable[[], None] | None = None,
        name: str = "storage-writer",
    ) -> None:
        self._commit = commit
        self._pending = pending
        self._after_batch = after_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._running = False
        self.healthy = True
        self.last_error: str | None = None
        self.commits = 0
        self.batches = 0

    def start(self) -> None:
        self._running = True
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._running

    async def call(self, fn: Callable[[], Any], *, mutating: bool) -> Any:
        """Run ``fn`` on the writer thread; for a mutation, return once it is durable."""
        if not self._running:
            raise StorageError("the store is not open")
        future = asyncio.get_running_loop().create_future()
        self._queue.put(_Op(fn, future, mutating))
        return await future

    def stop(self) -> None:
        """Finish queued operations, then end the thread (blocks until it has)."""
        if not self._running:
            return
        self._running = False
        self._queue.put(_STOP)
        self._thread.join()

    # -- the writer thread ------------------------------------------------------------
    def _run(self) -> None:
        stop = False
        while not stop:
            batch = [self._queue.get()]
            while True:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            reads: list[_Outcome] = []
            writes: list[_Outcome] = []
            for op in batch:
                if op is _STOP:
                    stop = True
                    continue
                try:
                    outcome: _Outcome = (op.future, op.fn(), None)
                except BaseException as exc:  # the caller gets its own exception
                    outcome = (op.future, None, exc)
                (writes if op.mutating else reads).append(outcome)
            self.batches += 1
            _post(reads)
            error = self._commit_batch(bool(writes))
            if error is not None:
                writes = [(f, None, exc or error) for f, _, exc in writes]
            _post(writes)

    def _commit_batch(self, has_writes: bool) -> StorageError | None:
        if self._after_batch is not None:
            try:
                self._after_batch()
            except Exception:  # housekeeping must never fail the batch's writes
                log.exception("storage housekeeping failed")
        try:
            if not (has_writes or self._pending()):
                return None
            if self._commit():
                self.commits += 1
        except Exception as exc:  # OSError from the disk, or StorageError
            message = _describe(exc)
            if self.healthy or message != self.last_error:
                log.error("storage write failed: %s", message)
            self.healthy = False
            self.last_error = message
            error = exc if isinstance(exc, StorageError) else StorageError(message)
            return error
        if not self.healthy:
            log.warning("storage writes succeed again")
        self.healthy = True
        self.last_error = None
        return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        where = f" ({exc.filename})" if exc.filename else ""
        return f"{exc.strerror or exc}{where}"
    return str(exc) or type(exc).__name__


def _post(outcomes: list) -> None:
    """Resolve futures on their loops: one thread-safe hop per loop per batch."""
    if not outcomes:
        return
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        future = outcome[0]
        by_loop.setdefault(future.get_loop(), []).append(outcome)
    for loop, group in by_loop.items():
        # A closed loop raises RuntimeError: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, group)


def _resolve(outcomes: list[_Outcome]) -> None:
    for future, result, exc in outcomes:
        if future.done():
            continue  # cancelled by its caller; the operation still ran
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
