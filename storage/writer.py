"""Pipelined group commit: one thread owns TinyDB, one sync thread per file family.

The asyncio side never touches TinyDB. Each call becomes an operation on a queue.

The *writer thread* (the only one that reads or changes the tables) takes everything
queued, runs it, and resolves the batch's reads at once, in one hop back to each event
loop. It then asks every family to encode what the batch changed
(:meth:`Family.prepare`: a journal line, or a whole snapshot when one is due) and hands
the bytes, numbered by batch, to that family's *sync thread*, and goes straight on with
the next batch. So reads never wait for a disk flush, and the next batch is applied
while the previous one is being made durable.

Each sync thread takes every job queued for its family and makes them durable strictly
in order (:meth:`Family.flush`: one write and one ``fdatasync`` for all queued journal
lines; a snapshot supersedes the lines before it). The families (hot queues, cold
configuration) sync concurrently, on separate files, so a batch that changed both waits
for the slower of the two fsyncs, not for their sum. While a flush is in progress the
next jobs pile up by themselves, so the batch size adapts to the load with no timer:
one writer pays one fsync, a thousand concurrent writers pay a handful.

A mutating operation resolves once every family is durable up to the last job
submitted (to that family) by the operation's batch or any earlier batch: the same
"nothing of mine or before me is pending" guarantee a single sequential commit gives.
Operations that raised resolve with their own exception, after that point too.

Durability and ordering: within a family, jobs reach the disk in submission order and
each flush completes (fsync) before the next begins, so after a crash only the last
journal line can be incomplete (see :mod:`storage.journal`). Across families there is
no order (no invariant spans them); a caller that needs one awaits the first call
before making the second. A read may observe changes that are applied but not yet
durable (they are durable, or their callers have been told they failed, before any
mutation issued after that read returns).

Failure: a write that fails (OSError) fails every mutating operation waiting on it
with :class:`StorageError`, sets ``healthy`` False, and makes the family refuse further
appends (the journal's tail is unknown); the writer thread notices at its next batch
and submits a full snapshot instead, which replaces both files and, once it succeeds,
makes everything durable again and sets ``healthy`` True.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from storage.base import StorageError

log = logging.getLogger("storage")

_STOP = object()


class Family(Protocol):
    """One independently synced set of files (a :class:`storage.journal.JournalStorage`)."""

    journal_path: str

    def prepare(self) -> Any | None:
        """Writer thread: encode what changed since the last call (None: nothing)."""

    def request_snapshot(self) -> None:
        """Writer thread: make the next :meth:`prepare` rewrite everything."""

    def flush(self, jobs: list[Any]) -> None:
        """Sync thread: make ``jobs`` durable in order; raise OSError on failure."""


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


class _Waiter:
    """A batch's mutating outcomes, released when each family is synced to ``needs``."""

    __slots__ = ("error", "needs", "outcomes")

    def __init__(self, needs: tuple[int, ...], outcomes: list[_Outcome]) -> None:
        self.needs = needs
        self.outcomes = outcomes
        self.error: StorageError | None = None


class GroupCommitter:
    """Runs operations on one dedicated thread; families are synced by their own threads.

    ``after_batch`` runs housekeeping on the writer thread after each batch's
    operations (its changes are committed with the batch).
    """

    def __init__(
        self,
        families: Sequence[Family],
        after_batch: Callable[[], None] | None = None,
        name: str = "storage-writer",
    ) -> None:
        self._families = list(families)
        self._after_batch = after_batch
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._sync_queues: list[queue.SimpleQueue[Any]] = [
            queue.SimpleQueue() for _ in self._families
        ]
        self._sync_threads = [
            threading.Thread(
                target=self._sync, args=(n,), name=f"{name}-sync{n}", daemon=True
            )
            for n in range(len(self._families))
        ]
        self._running = False
        # Shared between the writer and sync threads (under _lock):
        self._lock = threading.Lock()
        self._submitted = [0] * len(self._families)  # last batch number handed over
        self._synced = [0] * len(self._families)  # last batch number made durable
        self._waiters: deque[_Waiter] = deque()
        self._failed: set[int] = set()  # families whose write failed; snapshot them
        self._errors: list[str | None] = [None] * len(self._families)
        self._seq = 0  # writer thread only
        self.commits = 0
        self.batches = 0

    def start(self) -> None:
        self._running = True
        for thread in self._sync_threads:
            thread.start()
        self._thread.start()

    @property
    def running(self) -> bool:
        return self._running

    @property
    def healthy(self) -> bool:
        """False from a failed write until a later write of that family succeeds."""
        return not any(self._errors)

    @property
    def last_error(self) -> str | None:
        return next((error for error in self._errors if error), None)

    async def call(self, fn: Callable[[], Any], *, mutating: bool) -> Any:
        """Run ``fn`` on the writer thread; for a mutation, return once it is durable."""
        if not self._running:
            raise StorageError("the store is not open")
        future = asyncio.get_running_loop().create_future()
        self._queue.put(_Op(fn, future, mutating))
        return await future

    def stop(self) -> None:
        """Finish queued operations and their writes, then end the threads (blocks)."""
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
            self._submit(writes)
        for sync_queue in self._sync_queues:
            sync_queue.put(_STOP)
        for thread in self._sync_threads:
            thread.join()

    def _submit(self, writes: list[_Outcome]) -> None:
        """Hand this batch's encoded changes to the sync threads; park its mutations."""
        if self._after_batch is not None:
            try:
                self._after_batch()
            except Exception:  # housekeeping must never fail the batch's writes
                log.exception("storage housekeeping failed")
        with self._lock:
            failed, self._failed = self._failed, set()
        for n in failed:
            self._families[n].request_snapshot()
        self._seq += 1
        seq = self._seq
        error: StorageError | None = None
        for n, family in enumerate(self._families):
            try:
                job = family.prepare()
            except Exception as exc:  # cannot happen with JSON-proof documents
                log.exception("storage: cannot encode the changes of %s", family.journal_path)
                family.request_snapshot()
                error = StorageError(f"cannot encode the changes: {exc}")
                continue
            if job is not None:
                with self._lock:
                    self._submitted[n] = seq
                self._sync_queues[n].put((seq, job))
        if not writes:
            return
        with self._lock:
            waiter = _Waiter(tuple(self._submitted), writes)
            waiter.error = error
            self._waiters.append(waiter)
            ready = self._ready()
        _release(ready)

    # -- the sync threads -------------------------------------------------------------
    def _sync(self, n: int) -> None:
        family = self._families[n]
        sync_queue = self._sync_queues[n]
        stop = False
        while not stop:
            entries = [sync_queue.get()]
            while True:
                try:
                    entries.append(sync_queue.get_nowait())
                except queue.Empty:
                    break
            if entries[-1] is _STOP:  # the writer stops last: nothing follows it
                entries.pop()
                stop = True
            if not entries:
                continue
            error: BaseException | None = None
            try:
                family.flush([job for _, job in entries])
            except Exception as exc:  # OSError from the disk, or StorageError
                error = exc
            self._synced_to(n, entries[-1][0], error)

    def _synced_to(self, n: int, seq: int, error: BaseException | None) -> None:
        """Family ``n`` is durable up to batch ``seq`` (or those jobs failed)."""
        with self._lock:
            previous = self._synced[n]
            if error is not None:
                failure = error if isinstance(error, StorageError) else StorageError(
                    _describe(error)
                )
                for waiter in self._waiters:
                    if previous < waiter.needs[n] <= seq and waiter.error is None:
                        waiter.error = failure
                if not isinstance(error, StorageError):
                    # A fresh failure (not a refusal after one): rewrite the family.
                    self._failed.add(n)
                message = str(failure)
                if self._errors[n] != message:
                    log.error("storage write failed: %s", message)
                self._errors[n] = message
            else:
                if self._errors[n] is not None:
                    log.warning("storage writes succeed again")
                self._errors[n] = None
                self.commits += 1
            self._synced[n] = seq
            ready = self._ready()
        _release(ready)

    def _ready(self) -> list[_Waiter]:
        """Pop the waiters every family has caught up with (call under ``_lock``).

        ``needs`` only grows from one waiter to the next, so they are released in order.
        """
        ready = []
        synced = self._synced
        while self._waiters and all(
            need <= done for need, done in zip(self._waiters[0].needs, synced, strict=True)
        ):
            ready.append(self._waiters.popleft())
        return ready


def _release(waiters: list[_Waiter]) -> None:
    outcomes: list[_Outcome] = []
    for waiter in waiters:
        if waiter.error is None:
            outcomes += waiter.outcomes
        else:
            outcomes += [(f, None, exc or waiter.error) for f, _, exc in waiter.outcomes]
    _post(outcomes)


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
