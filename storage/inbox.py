"""The inbox: Meta's webhook bodies, durable the moment they are acknowledged.

A webhook is answered 200 only after its raw body is on disk. Turning a body into
per-conversation work items (routing, parsing, the TinyDB queues) costs several times
what keeping the bytes costs, so the receiver only appends here and
:mod:`bot.relay.intake` does the rest afterwards, in the gaps of a webhook storm
rather than during it (``bench_inbound`` (a)).

On disk, next to the store: ``<base>.inbox.<16 hex digits>`` segment files, numbered
upwards (never reused), each a run of records::

    kind (1 byte) | body length (4) | crc32 (4) | seq (8) | body

An ``E`` record carries one raw webhook body; an ``R`` record (empty body) says that
every event up to its ``seq`` has reached the store's queues. Appends are
group-committed: the event loop adds records to the open batch, one thread writes and
``fdatasync``s batch after batch, and every append of a batch is answered together.
A segment is sealed when it outgrows ``segment_bytes`` (or after a failed write) and
deleted once all its events are released; a clean close deletes them all.

Recovery reads the segments in order. The first record that is incomplete or fails its
checksum ends its segment, and the file is truncated there: that is a torn write that
was never acknowledged, because a batch is written only after the previous one is
synced and a failed write seals its segment.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import logging
import os
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from storage.atomic import FILE_MODE, fsync_dir, write_all
from storage.base import StorageError

log = logging.getLogger("storage")

#: A segment is sealed (and the next batch starts a new file) past this size.
SEGMENT_BYTES = 8 << 20
#: Seconds the sync thread lets a batch fill while appends arrive concurrently.
COMMIT_DELAY = 0.001
EVENT = b"E"
RELEASED = b"R"
_HEADER = struct.Struct("<cIIQ")  # kind, body length, crc32, seq
_CRC_PREFIX = struct.Struct("<cQ")  # what the checksum covers besides the body


@dataclass
class InboxEvent:
    """One acknowledged webhook body, waiting to become work items."""

    seq: int
    raw: bytes
    #: ``time.monotonic()`` when it was acknowledged (when it was recovered, after a restart).
    received_at: float
    #: The parsed JSON when the receiver already had it (None after a restart).
    body: Any = field(default=None, repr=False)


def encode_record(kind: bytes, seq: int, body: bytes = b"") -> bytes:
    """One on-disk record (see the module docstring)."""
    crc = zlib.crc32(body, zlib.crc32(_CRC_PREFIX.pack(kind, seq)))
    return _HEADER.pack(kind, len(body), crc, seq) + body


def decode_records(data: bytes) -> tuple[list[tuple[bytes, int, bytes]], int]:
    """``([(kind, seq, body), …], end)``: the valid records and where they end."""
    records = []
    offset = 0
    while offset + _HEADER.size <= len(data):
        kind, length, crc, seq = _HEADER.unpack_from(data, offset)
        start = offset + _HEADER.size
        body = data[start:start + length]
        if (kind not in (EVENT, RELEASED) or len(body) != length
                or zlib.crc32(body, zlib.crc32(_CRC_PREFIX.pack(kind, seq))) != crc):
            break
        records.append((kind, seq, body))
        offset = start + length
    return records, offset


@dataclass
class _Segment:
    path: str
    last_event: int = 0  # highest event seq inside (0: none)


@dataclass
class _Batch:
    records: list[bytes] = field(default_factory=list)
    events: list[InboxEvent] = field(default_factory=list)
    #: One future per waiting caller: a cancelled caller must not cancel the others.
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class Inbox:
    """Durable, ordered log of acknowledged webhook bodies; see the module docstring.

    ``open``/``close`` are blocking (call them off the event loop); everything else
    runs on the event loop.
    """

    def __init__(
        self,
        prefix: str,
        *,
        segment_bytes: int = SEGMENT_BYTES,
        commit_delay: float = COMMIT_DELAY,
        fsync: Callable[[int], None] = os.fdatasync,
    ) -> None:
        self.prefix = prefix  # "<base>.inbox."
        self.segment_bytes = segment_bytes
        self.commit_delay = commit_delay
        self._fsync = fsync
        self._pending: deque[InboxEvent] = deque()
        self._seq = 0
        self._released = 0
        self._sealed: list[_Segment] = []
        self._last_name = 0  # the highest segment number used so far
        self._current: _Segment | None = None
        self._fd: int | None = None
        self._size = 0
        self._cond = threading.Condition(threading.Lock())
        self._batch = _Batch()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = False
        self._healthy = True
        self.last_error: str | None = None
        #: Never called here (one process): the PostgreSQL inbox calls it when it takes
        #: the events of a replica that stopped (storage.postgres_inbox).
        self.on_adopted: Callable[[], None] | None = None

    # -- files -------------------------------------------------------------------------
    def segments(self) -> list[str]:
        """The segment files on disk, oldest first."""
        return sorted(p for p in glob.glob(glob.escape(self.prefix) + "*")
                      if not p.endswith(".tmp"))

    def _segment_path(self, number: int) -> str:
        return f"{self.prefix}{number:016x}"

    def _name_of(self, path: str) -> int:
        try:
            return int(path[len(self.prefix):], 16)
        except ValueError:
            return 0

    # -- lifecycle ---------------------------------------------------------------------
    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        """Recover unreleased events from disk and start the sync thread."""
        if self._thread is not None:
            raise StorageError(f"{self.prefix}* is already open")
        events: list[tuple[int, bytes]] = []
        sealed: list[_Segment] = []
        released = top = 0
        for path in self.segments():
            try:
                with open(path, "rb") as fh:
                    data = fh.read()
                records, end = decode_records(data)
                if end < len(data):
                    log.warning("inbox: %s ends in a torn write (%d bytes never acknowledged);"
                                " truncating", path, len(data) - end)
                    os.truncate(path, end)
            except OSError as exc:
                raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
            segment = _Segment(path)
            for kind, seq, body in records:
                top = max(top, seq)
                if kind == RELEASED:
                    released = max(released, seq)
                else:
                    events.append((seq, body))
                    segment.last_event = max(segment.last_event, seq)
            sealed.append(segment)
        now = time.monotonic()
        self._pending = deque(InboxEvent(seq, raw, now) for seq, raw in events if seq > released)
        self._seq = top
        self._released = released
        self._sealed = sealed
        self._last_name = max((self._name_of(s.path) for s in sealed), default=0)
        self._loop = loop
        self._stopping = False
        self._delete_released()
        if self._pending:
            log.info("inbox: %d acknowledged webhook(s) not yet queued; taking them now",
                     len(self._pending))
        self._thread = threading.Thread(target=self._run, name="inbox-sync", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Write what is batched, stop the thread; delete the files if all is released."""
        thread = self._thread
        if thread is None:
            return
        with self._cond:
            self._stopping = True
            self._cond.notify()
        thread.join()
        self._thread = None
        self._close_fd()
        if not self._pending and self._healthy:
            if self._current is not None:
                self._sealed.append(self._current)
                self._current = None
            self._delete_released(everything=True)

    # -- the event loop's side ------------------------------------------------------------
    async def append(self, raw: bytes, body: Any = None) -> InboxEvent:
        """Store one webhook body durably; returns once it is on disk.

        Raises StorageError when the write fails (nothing was acknowledged).
        """
        self._seq += 1
        event = InboxEvent(self._seq, raw, time.monotonic(), body)
        await self._submit(encode_record(EVENT, event.seq, raw), event)
        return event

    def pending(self, limit: int | None = None) -> list[InboxEvent]:
        """Acknowledged events not yet released, oldest first (at most ``limit``)."""
        if limit is None or limit >= len(self._pending):
            return list(self._pending)
        return [self._pending[i] for i in range(limit)]

    @property
    def backlog(self) -> int:
        """How many acknowledged events wait to become work items."""
        return len(self._pending)

    def release(self, through: int) -> None:
        """Every event up to seq ``through`` is in the store; forget them."""
        while self._pending and self._pending[0].seq <= through:
            self._pending.popleft()
        if through > self._released:
            self._released = through
            # Recorded without waiting: losing it only means taking them again (deduped).
            self._submit(encode_record(RELEASED, through), wait=False)

    @property
    def healthy(self) -> bool:
        return self._healthy and self._thread is not None

    async def probe(self) -> bool:
        """Try a durable write now (after a failure: has the disk recovered?)."""
        try:
            await self._submit(encode_record(RELEASED, self._released))
        except StorageError:
            return False
        return True

    def _submit(
        self, record: bytes, event: InboxEvent | None = None, *, wait: bool = True
    ) -> asyncio.Future[None]:
        if self._thread is None or self._loop is None:
            raise StorageError("the inbox is not open")
        waiter = self._loop.create_future()
        with self._cond:
            batch = self._batch
            batch.records.append(record)
            if event is not None:
                batch.events.append(event)
            if wait:
                batch.waiters.append(waiter)
            if len(batch.records) == 1:  # the thread waits only for an empty batch
                self._cond.notify()
        return waiter

    def _committed(self, batch: _Batch, error: str | None) -> None:
        if error is None:
            self._healthy = True
            self.last_error = None
            self._pending.extend(batch.events)
            for waiter in batch.waiters:
                if not waiter.done():
                    waiter.set_result(None)
        else:
            self._healthy = False
            self.last_error = error
            for waiter in batch.waiters:
                if not waiter.done():
                    waiter.set_exception(StorageError(f"cannot write the inbox: {error}"))

    # -- the sync thread -----------------------------------------------------------------
    def _run(self) -> None:
        crowded = False  # the last batch had company: appends arrive concurrently
        while True:
            with self._cond:
                while not self._batch.records and not self._stopping:
                    self._cond.wait()
                if not self._batch.records:
                    return
                if crowded and self.commit_delay and not self._stopping:
                    # Under concurrent load, a moment's wait fills the batch: fewer
                    # fdatasyncs, each answering more webhooks (about 14 instead of 9,
                    # and a third to half less system time; bench_inbound (a)).
                    # Alone, never wait.
                    self._cond.wait(self.commit_delay)
                batch, self._batch = self._batch, _Batch()
                crowded = len(batch.events) > 1
            error = None
            try:
                self._write(batch)
            except OSError as exc:
                error = exc.strerror or str(exc)
                log.error("inbox: write failed: %s", error)
            assert self._loop is not None
            with contextlib.suppress(RuntimeError):  # the loop closed under us
                self._loop.call_soon_threadsafe(self._committed, batch, error)
            self._delete_released()

    def _write(self, batch: _Batch) -> None:
        if self._fd is None:
            self._start_segment()
        assert self._fd is not None and self._current is not None
        data = b"".join(batch.records)
        try:
            write_all(self._fd, data)
            self._fsync(self._fd)
        except OSError:
            self._seal_after_failure()
            raise
        self._size += len(data)
        if batch.events:
            self._current.last_event = batch.events[-1].seq
        if self._size >= self.segment_bytes:
            self._seal()

    def _start_segment(self) -> None:
        # Never reuse a name: a file still listed (sealed or recovered) must not be
        # appended to, nor deleted as if it were the other one.
        self._last_name = max(self._last_name + 1, self._seq + 1)
        path = self._segment_path(self._last_name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, FILE_MODE)
        try:
            os.fchmod(fd, FILE_MODE)
            fsync_dir(os.path.dirname(path))  # the file must outlive a crash, not only its bytes
        except OSError:
            os.close(fd)
            raise
        self._fd = fd
        self._size = os.fstat(fd).st_size
        self._current = _Segment(path)

    def _seal(self) -> None:
        self._close_fd()
        if self._current is not None:
            self._sealed.append(self._current)
            self._current = None

    def _seal_after_failure(self) -> None:
        # Cut a half-written batch off (best effort; recovery would cut it too) and
        # never append after it: an acknowledged record must not follow a torn one.
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, self._size)
        self._seal()

    def _close_fd(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None

    def _delete_released(self, *, everything: bool = False) -> None:
        keep = []
        for segment in self._sealed:
            if everything or segment.last_event <= self._released:
                try:
                    os.unlink(segment.path)
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    log.warning("inbox: cannot delete %s: %s", segment.path, exc.strerror)
                    keep.append(segment)
            else:
                keep.append(segment)
        self._sealed = keep
