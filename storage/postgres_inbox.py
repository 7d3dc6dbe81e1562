"""The inbox of the PostgreSQL store: acknowledged webhook bodies in ``rcig_inbox``.

The same contract as :class:`storage.inbox.Inbox` (``append`` returns once the body is
durable, ``pending``/``release``/``backlog`` answer from memory), kept in a table so
that several replicas can share one database:

- every row carries its ``owner``, the replica id of the process that stored it. A
  replica holds a session advisory lock on its id for as long as it lives
  (:class:`storage.postgres.PostgresStore` takes it on open), so "is that owner alive?"
  is ``pg_try_advisory_xact_lock`` on the id: granted means its session is gone;
- appends are group-committed: the event loop adds bodies to the open batch, one task
  inserts batch after batch, each in one committed transaction, and answers every
  append of the batch together. Ids come from one sequence and batches are inserted
  in order, so a replica's own events are ordered by id;
- ``release(through)`` deletes the owner's rows up to ``through`` in the next batch's
  transaction (without waiting: losing it only means taking the events again, and the
  intake's item ids are deterministic);
- on open, and every ``adopt_interval`` seconds, the rows of dead owners are moved to
  this replica (new ids, appended after its own pending events) and taken like its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from storage.base import StorageError
from storage.inbox import InboxEvent

log = logging.getLogger("storage")

#: Seconds between looks for the inbox rows of replicas that died.
ADOPT_INTERVAL = 5.0

Connect = Callable[[], Awaitable[psycopg.AsyncConnection]]


@dataclass
class _Batch:
    raws: list[bytes] = field(default_factory=list)
    events: list[InboxEvent] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)


class PostgresInbox:
    """Durable, ordered log of acknowledged webhook bodies in PostgreSQL; see the module doc."""

    def __init__(self, connect: Connect, *, adopt_interval: float = ADOPT_INTERVAL) -> None:
        self._connect = connect
        self.adopt_interval = adopt_interval
        self.owner = 0
        self._replica_lock = 0
        self._conn: psycopg.AsyncConnection | None = None
        self._pending: deque[InboxEvent] = deque()
        self._released = 0  # highest id released by the intake
        self._deleted = 0  # highest id whose rows are known deleted
        self._batch = _Batch()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._healthy = True
        self.last_error: str | None = None
        self._next_adopt = 0.0
        self._resync = False
        #: Called when events of a replica that stopped were taken while running: the
        #: intake waits for a webhook's notification otherwise, and none may come.
        self.on_adopted: Callable[[], None] | None = None

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self, owner: int, replica_lock: int) -> None:
        """Take dead replicas' rows; ``replica_lock`` is the replica locks' namespace."""
        if self._task is not None:
            raise StorageError("the inbox is already open")
        self.owner = owner
        self._replica_lock = replica_lock
        self._pending.clear()
        self._batch = _Batch()
        self._conn = await self._connect()
        adopted = await self._adopt()
        if adopted:
            log.info("inbox: %d acknowledged webhook(s) not yet queued; taking them now",
                     adopted)
        self._next_adopt = time.monotonic() + self.adopt_interval
        self._task = asyncio.create_task(self._run(), name="inbox-commit")

    async def close(self) -> None:
        """Commit what is batched (and the last release), then stop."""
        task = self._task
        if task is None:
            return
        self._task = None
        self._wake.set()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        if self._conn is not None:
            await self._conn.close()
            self._conn = None

    # -- the event loop's side -----------------------------------------------------------
    async def append(self, raw: bytes, body: Any = None) -> InboxEvent:
        """Store one webhook body durably; returns once its transaction committed.

        Raises StorageError when the commit fails (nothing was acknowledged).
        """
        if self._task is None:
            raise StorageError("the inbox is not open")
        event = InboxEvent(0, raw, time.monotonic(), body)
        waiter = asyncio.get_running_loop().create_future()
        self._batch.raws.append(raw)
        self._batch.events.append(event)
        self._batch.waiters.append(waiter)
        self._wake.set()
        await waiter
        return event

    def pending(self, limit: int | None = None) -> list[InboxEvent]:
        """Acknowledged events not yet released, oldest first (at most ``limit``)."""
        if limit is None or limit >= len(self._pending):
            return list(self._pending)
        return [self._pending[i] for i in range(limit)]

    @property
    def backlog(self) -> int:
        return len(self._pending)

    def release(self, through: int) -> None:
        """Every event up to id ``through`` is in the store's queues; forget them."""
        while self._pending and self._pending[0].seq <= through:
            self._pending.popleft()
        if through > self._released:
            self._released = through
            self._wake.set()

    @property
    def healthy(self) -> bool:
        return self._healthy and self._task is not None

    async def probe(self) -> bool:
        """Try a committed write now (after a failure: is the database back?)."""
        if self._task is None:
            return False
        waiter = asyncio.get_running_loop().create_future()
        self._batch.waiters.append(waiter)
        self._wake.set()
        try:
            await waiter
        except StorageError:
            return False
        return True

    # -- the commit task -------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            timeout = max(0.0, self._next_adopt - time.monotonic())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)
            self._wake.clear()
            stopping = self._task is None
            if time.monotonic() >= self._next_adopt:
                self._next_adopt = time.monotonic() + self.adopt_interval
                try:
                    count = await self._adopt()
                except (psycopg.Error, StorageError) as exc:
                    log.warning("inbox: cannot look for other replicas' webhooks: %s", exc)
                else:
                    if count:
                        log.warning("inbox: took %d webhook(s) left by a replica that stopped",
                                    count)
                        if self.on_adopted is not None:
                            self.on_adopted()
            batch, self._batch = self._batch, _Batch()
            if self._resync and not await self._take_own_rows():
                # Until we know which of our rows committed, commit nothing newer: their
                # ids must stay below every later event's (release is by prefix).
                self._fail(batch, self.last_error or "the database is unavailable")
            elif batch.waiters or self._released > self._deleted:
                await self._commit(batch)
            if stopping and not self._batch.waiters:
                return

    async def _commit(self, batch: _Batch) -> None:
        error = None
        release = self._released
        try:
            conn = await self._connection()
            async with conn.transaction():
                if release > self._deleted:
                    await conn.execute(
                        "DELETE FROM rcig_inbox WHERE owner = %s AND id <= %s",
                        (self.owner, release),
                    )
                ids = await self._insert(conn, batch.raws) if batch.raws else []
        except Exception as exc:  # every waiter must be answered, whatever failed
            error = str(exc).strip() or type(exc).__name__
            log.error("inbox: commit failed: %s", error)
            await self._drop_connection()
        if error is None:
            self._deleted = max(self._deleted, release)
            for event, event_id in zip(batch.events, ids, strict=True):
                event.seq = event_id
            self._healthy = True
            self.last_error = None
            self._pending.extend(batch.events)
            for waiter in batch.waiters:
                if not waiter.done():
                    waiter.set_result(None)
        else:
            # The COMMIT may have succeeded with only its answer lost: look for our rows.
            self._resync = self._resync or bool(batch.raws)
            self._fail(batch, error)

    def _fail(self, batch: _Batch, error: str) -> None:
        self._healthy = False
        self.last_error = error
        for waiter in batch.waiters:
            if not waiter.done():
                waiter.set_exception(StorageError(f"cannot write the inbox: {error}"))

    async def _insert(self, conn: psycopg.AsyncConnection, raws: list[bytes]) -> list[int]:
        cur = await conn.execute(
            "INSERT INTO rcig_inbox (owner, raw) "
            "SELECT %s, r FROM unnest(%s::bytea[]) WITH ORDINALITY AS t(r, n) ORDER BY n "
            "RETURNING id",
            (self.owner, raws),
        )
        # nextval() runs row by row in ``n`` order: sorted ids are in body order.
        return sorted(row[0] for row in await cur.fetchall())

    async def _take_own_rows(self) -> bool:
        """After a failed commit: rows of ours that did commit (unacknowledged, but kept:
        left unread they would hold every replica's inbound relay, see
        storage.postgres's settled heads) join the pending events."""
        try:
            conn = await self._connection()
            cur = await conn.execute(
                "SELECT id, raw FROM rcig_inbox WHERE owner = %s AND id > %s ORDER BY id",
                (self.owner, self._deleted))
            rows = await cur.fetchall()
        except (psycopg.Error, StorageError) as exc:
            await self._drop_connection()
            self.last_error = str(exc)
            return False  # still down: the next pass tries again
        self._resync = False
        known = {event.seq for event in self._pending}
        now = time.monotonic()
        extra = [InboxEvent(row[0], bytes(row[1]), now) for row in rows
                 if row[0] not in known and row[0] > self._released]
        if extra:
            log.warning("inbox: %d webhook(s) committed although their commit reported a "
                        "failure; taking them", len(extra))
            self._pending.extend(extra)  # newer than every pending event (see _run)
            if self.on_adopted is not None:
                self.on_adopted()
        return True

    async def _adopt(self) -> int:
        """Move the rows of replicas that are gone to this one; return how many.

        A restart is a new replica id, so this also takes the previous run's rows.
        """
        conn = await self._connection()
        cur = await conn.execute(
            "SELECT DISTINCT owner FROM rcig_inbox WHERE owner <> %s", (self.owner,))
        owners = [row[0] for row in await cur.fetchall()]
        taken: list[tuple[int, bytes]] = []
        for owner in owners:
            async with conn.transaction():
                cur = await conn.execute(
                    "SELECT pg_try_advisory_xact_lock(%s, %s)", (self._replica_lock, owner))
                row = await cur.fetchone()
                if not (row and row[0]):
                    continue  # that replica is alive and takes its own rows
                # received_at is kept: an inbound item queued since must still wait for
                # these (storage.postgres: settled heads).
                cur = await conn.execute(
                    "WITH gone AS (DELETE FROM rcig_inbox WHERE owner = %s "
                    "RETURNING id, raw, received_at) "
                    "INSERT INTO rcig_inbox (owner, raw, received_at) "
                    "SELECT %s, raw, received_at FROM gone ORDER BY id RETURNING id, raw",
                    (owner, self.owner),
                )
                taken += [(row[0], bytes(row[1])) for row in await cur.fetchall()]
        now = time.monotonic()
        self._pending.extend(InboxEvent(seq, raw, now) for seq, raw in sorted(taken))
        return len(taken)

    async def _connection(self) -> psycopg.AsyncConnection:
        if self._conn is None or self._conn.closed:
            try:
                self._conn = await self._connect()
            except psycopg.Error as exc:
                raise StorageError(f"cannot connect: {exc}") from exc
        return self._conn

    async def _drop_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None
