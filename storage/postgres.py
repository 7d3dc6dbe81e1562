"""The PostgreSQL implementation of :class:`storage.base.Store` (psycopg 3).

Chosen by ``storage.url = postgresql://…``. Tables (``rcig_*``, see
:mod:`storage.postgres_schema`) are created and migrated on open. What the TinyDB store
guarantees holds here too:

- durable before acknowledged: every mutating call returns after its transaction
  committed, with ``synchronous_commit = on`` forced for the store's sessions (a server
  default of ``off`` would acknowledge before the WAL is flushed);
- crash safety is PostgreSQL's (WAL); a call either committed or left nothing;
- tokens are encrypted with the same Fernet key (:mod:`storage.crypto`) and the same
  key check, kept in ``rcig_meta``;
- expiry of dedupe keys, login states and idle conversations runs every
  ``expire_interval`` seconds of the injected clock, by index, so the cost of a call
  does not grow with history (finished items are deleted, expired keys dropped).

Several replicas may share one database. Each holds, on a dedicated session, an
advisory lock on its replica id (a sequence value) — that is how the others see it
alive (:mod:`storage.postgres_inbox`) — and one advisory lock per conversation it is
working on: :meth:`next_items` hands out only heads it could lock, and releases the
locks of the conversations its caller no longer works on (those not in ``exclude``).
A conversation is thus worked by one replica at a time, strictly in order; a replica
that dies loses its session, and with it every lock, at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import re
import secrets
import time
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import psycopg
from psycopg.types.json import Jsonb

from storage.base import (
    DEFAULT_CONVERSATION_TTL,
    DEFAULT_DEDUPE_TTL,
    QUEUES,
    Conversation,
    LoginState,
    Page,
    QueueName,
    SetAsideItem,
    StorageError,
    Store,
    StoreDump,
    WorkItem,
)
from storage.crypto import TokenCipher
from storage.postgres_inbox import ADOPT_INTERVAL, PostgresInbox
from storage.postgres_schema import migrate

log = logging.getLogger("storage")

Clock = Callable[[], float]
R = TypeVar("R")

#: Kinds of advisory lock. Each store's namespaces (the first int4 key) derive from the
#: kind and the oid of its schema, so two bridges in two schemas of one database never
#: take each other's locks (advisory locks are per database).
LOCK_KINDS = ("replica", "inbound", "outbound", "once")
#: How often a waiter of Store.once tries again.
ONCE_POLL = 0.2
#: Seconds after which a worker looks again at an inbound head that is not settled yet.
UNSETTLED_RECHECK = 0.05
#: Pooled sessions for the repository calls (the inbox and the locks have their own).
POOL_SIZE = 4

_URL_PASSWORD = re.compile(r"(?P<head>^[a-z][a-z0-9+.-]*://[^/?#@:]*:)(?P<password>[^/?#@]*)@",
                           re.IGNORECASE)


def is_postgres_url(location: str) -> bool:
    """True for a ``postgresql://`` (or ``postgres://``) URL."""
    return location.lower().startswith(("postgresql://", "postgres://"))


def mask_url(url: str) -> str:
    """``url`` with its password (in the authority or a ``password=`` query) as ``***``."""
    masked = _URL_PASSWORD.sub(r"\g<head>***@", url)
    return re.sub(r"(?i)([?&]password=)[^&#]*", r"\1***", masked)


def lock_key(conversation: str) -> int:
    """The conversation's advisory-lock key (second int4), stable across processes."""
    value = zlib.crc32(conversation.encode())
    return value - (1 << 32) if value >= 1 << 31 else value


def lock_namespaces(schema_oid: int) -> dict[str, int]:
    """The first int4 key of each kind of advisory lock, for the schema with that oid."""
    return {kind: lock_key(f"rc-instagram:{kind}:{schema_oid}") for kind in LOCK_KINDS}


def _fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


_PAGE_FIELDS = _fields(Page)
_LOGIN_FIELDS = _fields(LoginState)
_CONV_FIELDS = _fields(Conversation)
_ITEM_COLUMNS = ("item_id", "queue", "conversation", "kind", "payload", "order_ts", "seq",
                 "attempts", "next_try_at", "created_at", "last_error", "progress",
                 "sending_at")
_ITEM_SELECT = ", ".join(_ITEM_COLUMNS)
_LOCK_KEY = len(_ITEM_COLUMNS)  # the column after the item's in a heads row


def _heads(condition: str = "") -> str:
    """The head of every conversation of ``%(queue)s`` (optionally only some)."""
    return (f"SELECT DISTINCT ON (conversation) {_ITEM_SELECT}, lock_key, queued_at "
            f"FROM rcig_items WHERE queue = %(queue)s {condition} "
            "ORDER BY conversation, order_ts, seq")


#: An inbound head is settled when no webhook acknowledged before it was queued still
#: waits, unqueued, in any replica's inbox: that webhook may hold an earlier message of
#: the same conversation (another replica received it, or died before queueing it).
#: Until it is queued the head waits, so a conversation's messages stay in order across
#: replicas (alone, the wait is the intake's own release: milliseconds).
_SETTLED_VALUE = ("NOT EXISTS (SELECT 1 FROM rcig_inbox b WHERE b.received_at < h.queued_at)"
                  " AS settled")
_SETTLED = ("AND NOT EXISTS (SELECT 1 FROM rcig_inbox b WHERE b.received_at < h.queued_at) ")


#: A conversation row ``c`` that has not expired: recently active, or with work queued.
_LIVE = ("(updated_at > %(idle)s OR EXISTS "
         "(SELECT 1 FROM rcig_items i WHERE i.conversation = c.key))")

#: Conversation locks held by any session of this database, as unsigned keys.
_LOCKED = ("SELECT objid::bigint FROM pg_locks WHERE locktype = 'advisory' AND granted "
           "AND objsubid = 2 AND classid = %(ns)s::oid "
           "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())")
_ENQUEUE = """
WITH pend AS (SELECT 1 FROM rcig_items WHERE queue = %(queue)s AND item_id = %(item_id)s),
claim AS (
    INSERT INTO rcig_dedupe (key, exp) SELECT %(key)s, %(exp)s WHERE NOT EXISTS (SELECT 1 FROM pend)
    ON CONFLICT (key) DO UPDATE SET exp = EXCLUDED.exp WHERE rcig_dedupe.exp <= %(now)s
    RETURNING 1)
INSERT INTO rcig_items (queue, item_id, conversation, lock_key, kind, payload, order_ts,
                        attempts, next_try_at, created_at, last_error, progress)
SELECT %(queue)s, %(item_id)s, %(conversation)s, %(lock_key)s, %(kind)s, %(payload)s,
       %(order_ts)s, %(attempts)s, %(next_try_at)s, %(now)s, %(last_error)s, %(progress)s
WHERE EXISTS (SELECT 1 FROM claim)
ON CONFLICT (queue, item_id) DO NOTHING
RETURNING seq
"""
_REMEMBER = ("INSERT INTO rcig_dedupe (key, exp) VALUES (%s, %s) "
             "ON CONFLICT (key) DO UPDATE SET exp = EXCLUDED.exp")


def _item(row: tuple[Any, ...]) -> WorkItem:
    return WorkItem(**dict(zip(_ITEM_COLUMNS, row, strict=False)))


@dataclasses.dataclass(frozen=True)
class _Completion:
    """One finished item waiting for the next group commit."""

    item: WorkItem
    remember: list[str]
    want_head: bool


class _GroupCommit:
    """Calls that share one transaction: whatever is waiting when a commit starts.

    While one batch is being committed (its round trip and WAL flush), the next calls
    pile up by themselves, so the batch size follows the load with no timer, as the
    TinyDB store's writer does. Batches commit one at a time, in call order; every
    caller gets its own part of the result, or the batch's exception.
    """

    def __init__(self, name: str, commit: Callable[[list[Any]], Awaitable[list[Any]]]) -> None:
        self._name = name
        self._commit = commit
        self._waiting: list[tuple[Any, asyncio.Future[Any]]] = []
        self._task: asyncio.Task[None] | None = None

    async def submit(self, call: Any) -> Any:
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._waiting.append((call, waiter))
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self._name)
        return await waiter

    async def _run(self) -> None:
        batch: list[tuple[Any, asyncio.Future[Any]]] = []
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                try:
                    results = await self._commit([call for call, _ in batch])
                except Exception as exc:  # every caller of the batch must be answered
                    for _, waiter in batch:
                        if not waiter.done():
                            waiter.set_exception(exc)
                    continue
                for (_, waiter), result in zip(batch, results, strict=True):
                    if not waiter.done():
                        waiter.set_result(result)
        except BaseException:
            for _, waiter in batch + self._waiting:
                waiter.cancel()
            self._waiting = []
            raise
        finally:
            self._task = None


class _Pool:
    """A few autocommit sessions, reconnected when one breaks."""

    def __init__(self, connect: Callable[[], Awaitable[psycopg.AsyncConnection]],
                 size: int) -> None:
        self._connect = connect
        self._idle: asyncio.Queue[psycopg.AsyncConnection | None] = asyncio.Queue()
        for _ in range(size):
            self._idle.put_nowait(None)  # connected on first use

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        conn = await self._idle.get()
        try:
            if conn is None or conn.closed:
                conn = await self._connect()
            yield conn
        except BaseException:
            if conn is not None and (conn.broken or conn.closed):
                conn = None
            raise
        finally:
            self._idle.put_nowait(conn)

    async def close(self) -> None:
        while not self._idle.empty():
            conn = self._idle.get_nowait()
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()


class PostgresStore(Store):
    """A store in a PostgreSQL database; see the module docstring."""

    def __init__(
        self,
        url: str,
        encryption_key: str | None = None,
        *,
        clock: Clock = time.time,
        dedupe_ttl: float = DEFAULT_DEDUPE_TTL,
        conversation_ttl: float = DEFAULT_CONVERSATION_TTL,
        expire_interval: float = 60.0,
        pool_size: int = POOL_SIZE,
        adopt_interval: float = ADOPT_INTERVAL,
    ) -> None:
        self.url = url
        self.where = mask_url(url)
        self.clock = clock
        self.dedupe_ttl = dedupe_ttl
        self.conversation_ttl = conversation_ttl
        self.expire_interval = expire_interval
        self.pool_size = pool_size
        self._cipher = TokenCipher(encryption_key)
        self.inbox = PostgresInbox(self._connect, adopt_interval=adopt_interval)  # type: ignore[assignment]
        self._pool: _Pool | None = None
        self._locks: psycopg.AsyncConnection | None = None  # replica + conversation locks
        self._locks_guard = asyncio.Lock()
        self._held: dict[str, dict[str, int]] = {q: {} for q in QUEUES}
        self.replica_id = 0
        self._ns: dict[str, int] = {}
        self._healthy = False
        self.last_error: str | None = None
        self._next_expire = 0.0
        self._expiring = False
        self.commits = 0
        # Enqueues and completions waiting for their next group commit (see enqueue).
        self._enqueues = _GroupCommit("store-enqueue", self._commit_enqueues)
        self._completions = _GroupCommit("store-complete", self._commit_completions)

    # -- sessions ----------------------------------------------------------------------
    async def _connect(self) -> psycopg.AsyncConnection:
        try:
            conn = await psycopg.AsyncConnection.connect(
                self.url, autocommit=True, application_name="rc-instagram", connect_timeout=10)
            # Durable before acknowledged, whatever the server's default.
            await conn.execute("SET synchronous_commit = on")
        except psycopg.Error as exc:
            raise StorageError(f"cannot connect to {self.where}: {_reason(exc)}") from exc
        return conn

    async def _call(self, fn: Callable[[psycopg.AsyncConnection], Awaitable[R]], *,
                    mutating: bool) -> R:
        pool = self._pool
        if pool is None:
            raise StorageError("the store is not open")
        if mutating and not self._expiring and self.clock() >= self._next_expire:
            await self.expire(self.clock())
        try:
            async with pool.connection() as conn:
                result = await fn(conn)
        except psycopg.Error as exc:
            self._healthy = False
            self.last_error = _reason(exc)
            raise StorageError(f"{self.where}: {self.last_error}") from exc
        except StorageError as exc:
            self._healthy = False
            self.last_error = str(exc)
            raise
        self._healthy = True
        self.last_error = None
        if mutating:
            self.commits += 1
        return result

    async def _read(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        async def run(conn: psycopg.AsyncConnection) -> list[tuple[Any, ...]]:
            cur = await conn.execute(sql, params)
            return await cur.fetchall()

        return await self._call(run, mutating=False)

    async def _write(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        async def run(conn: psycopg.AsyncConnection) -> list[tuple[Any, ...]]:
            cur = await conn.execute(sql, params)
            return await cur.fetchall() if cur.description else []

        return await self._call(run, mutating=True)

    # -- lifecycle ---------------------------------------------------------------------
    async def open(self) -> None:
        if self._pool is not None:
            raise StorageError(f"{self.where} is already open")
        locks = await self._connect()
        try:
            found = await migrate(locks, self.where)
            if found == 0:
                log.info("storage: created the rc-instagram tables in %s", self.where)
            async with locks.transaction():
                await self._check_key(locks)
            cur = await locks.execute(
                "SELECT nextval('rcig_replicas'), (SELECT oid FROM pg_namespace "
                "WHERE nspname = current_schema())")
            row = await cur.fetchone()
            assert row is not None
            self.replica_id = int(row[0])
            self._ns = lock_namespaces(int(row[1]))
            await locks.execute("SELECT pg_advisory_lock(%s, %s)",
                                (self._ns["replica"], self.replica_id))
            self._locks = locks
            self._held = {q: {} for q in QUEUES}
            self._pool = _Pool(self._connect, self.pool_size)
            await self.inbox.start(self.replica_id, self._ns["replica"])
        except BaseException as exc:
            self._pool = None
            self._locks = None
            with contextlib.suppress(Exception):
                await locks.close()
            if isinstance(exc, psycopg.Error):
                raise StorageError(f"cannot open {self.where}: {_reason(exc)}") from exc
            raise
        self._healthy = True
        self._next_expire = 0.0  # drop what expired while the bot was down
        stats = await self.stats()
        log.info("storage opened: %s, replica %d (%d pages, %d conversations, %d inbound, "
                 "%d outbound pending)", self.where, self.replica_id, stats["pages"],
                 stats["conversations"], stats["inbound"], stats["outbound"])

    async def _check_key(self, conn: psycopg.AsyncConnection) -> None:
        cur = await conn.execute("SELECT value FROM rcig_meta WHERE key = 'key_check' FOR UPDATE")
        row = await cur.fetchone()
        key_check = row[0] if row else None
        self._cipher.verify(key_check, self.where)
        if self._cipher.enabled and key_check is None:
            # First start with a key: encrypt the tokens written in plain until now.
            cur = await conn.execute("SELECT page_id, doc FROM rcig_pages FOR UPDATE")
            for page_id, doc in await cur.fetchall():
                page = self._page_record(doc)
                await conn.execute("UPDATE rcig_pages SET doc = %s WHERE page_id = %s",
                                   (Jsonb(self._page_doc(page)), page_id))
            cur = await conn.execute("SELECT state, doc FROM rcig_login_states FOR UPDATE")
            for state, doc in await cur.fetchall():
                record = self._login_record(doc)
                await conn.execute("UPDATE rcig_login_states SET doc = %s WHERE state = %s",
                                   (Jsonb(self._login_doc(record)), state))
            cur = await conn.execute(
                "SELECT value FROM rcig_meta WHERE key = 'bridge_secret' FOR UPDATE")
            row = await cur.fetchone()
            if row is not None:
                await conn.execute("UPDATE rcig_meta SET value = %s WHERE key = 'bridge_secret'",
                                   (Jsonb(self._cipher.encrypt(row[0])),))
            await conn.execute(
                "INSERT INTO rcig_meta (key, value) VALUES ('key_check', %s)",
                (Jsonb(self._cipher.key_check()),))
            log.info("storage: encrypted the stored tokens with the configured key")

    async def close(self) -> None:
        """Commit the inbox's last batch and release the sessions (and every lock)."""
        pool = self._pool
        if pool is None:
            return
        self._pool = None
        self._healthy = False
        await self.inbox.close()
        await pool.close()
        if self._locks is not None:
            with contextlib.suppress(Exception):
                await self._locks.close()
            self._locks = None

    async def healthy(self) -> bool:
        if self._pool is None:
            return False
        if not self.inbox.healthy and not await self.inbox.probe():
            return False
        if not self._healthy:
            with contextlib.suppress(StorageError):
                await self._read("SELECT 1")
        try:
            async with self._locks_guard:
                await (await self._lock_session()).execute("SELECT 1")
        except (psycopg.Error, StorageError) as exc:
            self._healthy = False
            self.last_error = str(exc)
        return self._healthy

    # -- records <-> documents ---------------------------------------------------------
    def _page_doc(self, page: Page) -> dict[str, Any]:
        doc = {name: getattr(page, name) for name in _PAGE_FIELDS}
        doc["page_token"] = self._cipher.encrypt(page.page_token)
        doc["user_token"] = self._cipher.encrypt(page.user_token)
        return doc

    def _page_record(self, doc: dict[str, Any]) -> Page:
        page = Page(**{k: v for k, v in doc.items() if k in _PAGE_FIELDS})
        page.page_token = self._cipher.decrypt(page.page_token)
        page.user_token = self._cipher.decrypt(page.user_token)
        return page

    def _login_doc(self, state: LoginState) -> dict[str, Any]:
        doc = {name: getattr(state, name) for name in _LOGIN_FIELDS}
        doc["data"] = self._cipher.encrypt_tree(json.loads(json.dumps(state.data)))
        return doc

    def _login_record(self, doc: dict[str, Any]) -> LoginState:
        state = LoginState(**{k: v for k, v in doc.items() if k in _LOGIN_FIELDS})
        state.data = self._cipher.decrypt_tree(state.data)
        return state

    @staticmethod
    def _conv_record(doc: dict[str, Any]) -> Conversation:
        return Conversation(**{k: v for k, v in doc.items() if k in _CONV_FIELDS})

    # -- the bridge secret ---------------------------------------------------------------
    async def bridge_secret(self) -> bytes:
        # Replicas starting at once race here: the first row written wins for all of them.
        await self._write(
            "INSERT INTO rcig_meta (key, value) VALUES ('bridge_secret', %s) "
            "ON CONFLICT (key) DO NOTHING",
            (Jsonb(self._cipher.encrypt(secrets.token_hex(32))),),
        )
        rows = await self._read("SELECT value FROM rcig_meta WHERE key = 'bridge_secret'")
        return bytes.fromhex(self._cipher.decrypt(rows[0][0]))

    # -- pages -------------------------------------------------------------------------
    async def save_page(self, page: Page) -> None:
        await self._write(
            "INSERT INTO rcig_pages (page_id, instagram_id, doc) VALUES (%s, %s, %s) "
            "ON CONFLICT (page_id) DO UPDATE SET instagram_id = EXCLUDED.instagram_id, "
            "doc = EXCLUDED.doc, saved = nextval('rcig_pages_saved_seq')",
            (page.page_id, page.instagram_id, Jsonb(self._page_doc(page))),
        )

    async def page(self, page_id: str) -> Page | None:
        rows = await self._read("SELECT doc FROM rcig_pages WHERE page_id = %s", (page_id,))
        return self._page_record(rows[0][0]) if rows else None

    async def page_by_instagram_id(self, instagram_id: str) -> Page | None:
        rows = await self._read(
            "SELECT doc FROM rcig_pages WHERE instagram_id = %s ORDER BY saved DESC LIMIT 1",
            (instagram_id,))
        return self._page_record(rows[0][0]) if rows else None

    async def pages(self) -> list[Page]:
        rows = await self._read("SELECT doc FROM rcig_pages ORDER BY saved")
        return [self._page_record(row[0]) for row in rows]

    async def delete_page(self, page_id: str) -> None:
        await self._write("DELETE FROM rcig_pages WHERE page_id = %s", (page_id,))

    # -- login states ------------------------------------------------------------------
    async def add_login_state(self, state: LoginState) -> None:
        await self._write(
            "INSERT INTO rcig_login_states (state, kind, expires_at, doc) VALUES (%s, %s, %s, %s) "
            "ON CONFLICT (state) DO UPDATE SET kind = EXCLUDED.kind, "
            "expires_at = EXCLUDED.expires_at, doc = EXCLUDED.doc",
            (state.state, state.kind, state.expires_at, Jsonb(self._login_doc(state))),
        )

    async def consume_login_state(self, state: str, kind: str, now: float) -> LoginState | None:
        # One statement: of two concurrent consumers (two replicas), one gets the row.
        rows = await self._write(
            "DELETE FROM rcig_login_states WHERE state = %s AND kind = %s RETURNING doc",
            (state, kind))
        if not rows:
            return None
        record = self._login_record(rows[0][0])
        return record if record.expires_at > now else None

    # -- conversations -----------------------------------------------------------------
    async def _live_conversation(self, where: str, value: str) -> Conversation | None:
        rows = await self._read(
            f"SELECT doc FROM rcig_conversations c WHERE {where} = %(value)s AND {_LIVE} LIMIT 1",
            {"value": value, "idle": self.clock() - self.conversation_ttl})
        # An expired one is gone already for its caller; expire() drops the row.
        return self._conv_record(rows[0][0]) if rows else None

    async def conversation(self, page_id: str, igsid: str) -> Conversation | None:
        return await self._live_conversation("key", f"{page_id}:{igsid}")

    async def relay_context(
        self, page_id: str, igsid: str, seen_key: str | None = None
    ) -> tuple[Page | None, bool, Conversation | None]:
        now = self.clock()
        rows = await self._read(
            "SELECT (SELECT doc FROM rcig_pages WHERE page_id = %(page)s), "
            "EXISTS (SELECT 1 FROM rcig_dedupe WHERE key = %(seen)s AND exp > %(now)s), "
            f"(SELECT doc FROM rcig_conversations c WHERE key = %(conv)s AND {_LIVE})",
            {"page": page_id, "seen": seen_key, "now": now, "conv": f"{page_id}:{igsid}",
             "idle": now - self.conversation_ttl})
        page_doc, seen, conv_doc = rows[0]
        return (self._page_record(page_doc) if page_doc is not None else None, bool(seen),
                self._conv_record(conv_doc) if conv_doc is not None else None)

    async def conversation_by_token(self, visitor_token: str) -> Conversation | None:
        return await self._live_conversation("visitor_token", visitor_token)

    async def save_conversation(self, conversation: Conversation) -> None:
        conversation.updated_at = self.clock()
        doc = {name: getattr(conversation, name) for name in _CONV_FIELDS}
        await self._write(
            "INSERT INTO rcig_conversations (key, visitor_token, updated_at, waiting, doc) "
            "VALUES (%s, %s, %s, %s, %s) ON CONFLICT (key) DO UPDATE SET "
            "visitor_token = EXCLUDED.visitor_token, updated_at = EXCLUDED.updated_at, "
            "waiting = EXCLUDED.waiting, doc = EXCLUDED.doc",
            (conversation.key, conversation.visitor_token, conversation.updated_at,
             conversation.waiting_for_agent, Jsonb(doc)),
        )

    async def conversations_waiting(self) -> list[Conversation]:
        rows = await self._read("SELECT doc FROM rcig_conversations WHERE waiting ORDER BY key")
        return [self._conv_record(row[0]) for row in rows]

    async def visitors_since(self, since: float) -> dict[str, int]:
        rows = await self._read(
            "SELECT page_id, count(*) FROM rcig_conversations "
            "WHERE last_inbound_at IS NOT NULL AND last_inbound_at >= %s GROUP BY 1",
            (since,))
        return {page_id: int(n) for page_id, n in rows}

    # -- work queues -------------------------------------------------------------------
    async def enqueue(
        self, items: list[WorkItem], dedupe_keys: list[str | None] | None = None
    ) -> list[WorkItem]:
        """See :meth:`Store.enqueue`; an ``order_ts`` of 0 becomes the arrival time."""
        if dedupe_keys is not None and len(dedupe_keys) != len(items):
            raise ValueError("dedupe_keys must have one entry per item")
        for item in items:
            if item.queue not in QUEUES:
                raise ValueError(f"unknown queue {item.queue!r}")
        # Serialise on the caller's side: a bad payload fails its own call only.
        payloads = [json.dumps(item.payload) for item in items]
        if not items:
            return []
        keys = dedupe_keys or [None] * len(items)
        now = self.clock()
        params = [
            {
                "queue": item.queue, "item_id": item.item_id,
                "key": key if key is not None else item.item_id,
                "exp": now + self.dedupe_ttl, "now": now,
                "conversation": item.conversation, "lock_key": lock_key(item.conversation),
                "kind": item.kind, "payload": Jsonb(payload, dumps=str),
                "order_ts": item.order_ts or now, "attempts": item.attempts,
                "next_try_at": item.next_try_at, "last_error": item.last_error,
                "progress": item.progress,
            }
            for item, payload, key in zip(items, payloads, keys, strict=True)
        ]

        if self._pool is None:
            raise StorageError("the store is not open")
        seqs = await self._enqueues.submit(params)
        added = []
        for item, seq in zip(items, seqs, strict=True):
            if seq is not None:
                item.seq = seq
                item.created_at = now
                if not item.order_ts:
                    item.order_ts = now
                added.append(item)
        return added

    async def _commit_enqueues(self, calls: list[list[dict[str, Any]]]) -> list[list[int | None]]:
        """One transaction for the enqueues waiting together, in call order.

        Call order is visibility order, as with TinyDB's single writer: an item enqueued
        after another (a later webhook) never becomes visible first, which concurrent
        transactions on several sessions would allow. One transaction per batch also
        shares the commit's WAL flush among all the callers.
        """
        params = [p for call in calls for p in call]

        async def run(conn: psycopg.AsyncConnection) -> list[int | None]:
            seqs: list[int | None] = []
            async with conn.transaction():
                cur = conn.cursor()
                # Pipelined: one round trip; statement n sees what 1..n-1 stored.
                await cur.executemany(_ENQUEUE, params, returning=True)
                while True:
                    row = await cur.fetchone()
                    seqs.append(row[0] if row else None)
                    if not cur.nextset():
                        break
            return seqs

        seqs = await self._call(run, mutating=True)
        out, start = [], 0
        for call in calls:
            out.append(seqs[start:start + len(call)])
            start += len(call)
        return out

    async def next_items(
        self, queue: QueueName, now: float, exclude: set[str], limit: int
    ) -> list[WorkItem]:
        if self._pool is None:
            raise StorageError("the store is not open")
        try:
            async with self._locks_guard:
                return await self._next_items(queue, now, exclude, limit)
        except psycopg.Error as exc:
            if self._locks is not None and (self._locks.closed or self._locks.broken):
                self._held = {q: {} for q in QUEUES}  # gone with the session
            self._healthy = False
            self.last_error = _reason(exc)
            raise StorageError(f"{self.where}: {self.last_error}") from exc

    async def _next_items(
        self, queue: QueueName, now: float, exclude: set[str], limit: int
    ) -> list[WorkItem]:
        ns = self._ns[queue]
        await self._unlock(queue, [c for c in self._held[queue] if c not in exclude])
        if limit <= 0:
            return []
        rows = await self._read(
            f"SELECT * FROM ({_heads()}) h WHERE next_try_at <= %(now)s "
            f"{_SETTLED if queue == 'inbound' else ''}"
            "AND NOT (conversation = ANY(%(exclude)s::text[])) "
            f"AND (lock_key::bigint & 4294967295) NOT IN ({_LOCKED}) "
            "ORDER BY next_try_at, order_ts, seq LIMIT %(limit)s",
            {"queue": queue, "now": now, "exclude": list(exclude), "limit": limit,
             "ns": ns})
        if not rows:
            return []
        wanted = {row[2]: row[_LOCK_KEY] for row in rows}  # conversation -> lock key
        locked = await self._lock(queue, wanted)
        if not locked:
            return []
        # Read again under the locks: another replica may have finished a head
        # between the first read and our lock.
        fresh = await self._read(
            "SELECT *, {} FROM ({}) h ORDER BY next_try_at, order_ts, seq".format(
                _SETTLED_VALUE, _heads("AND conversation = ANY(%(convs)s::text[])")),
            {"queue": queue, "convs": locked})
        settled = (lambda row: row[-1]) if queue == "inbound" else (lambda row: True)
        due = [_item(row) for row in fresh if row[8] <= now and settled(row)]
        stale = set(locked) - {item.conversation for item in due}
        await self._unlock(queue, sorted(stale))
        return due

    async def _lock(self, queue: QueueName, wanted: dict[str, int]) -> list[str]:
        """Take the conversation locks we can; return the conversations we now hold."""
        held = self._held[queue]
        ours = set(held.values())
        new_keys = sorted({key for key in wanted.values() if key not in ours})
        granted: set[int] = set()
        if new_keys:
            cur = await (await self._lock_session()).execute(
                "SELECT k FROM unnest(%s::int[]) AS k WHERE pg_try_advisory_lock(%s, k)",
                (new_keys, self._ns[queue]))
            granted = {row[0] for row in await cur.fetchall()}
        mine = ours | granted
        result = []
        for conversation, key in wanted.items():
            if key in mine:
                held[conversation] = key
                result.append(conversation)
        return result

    async def _unlock(self, queue: QueueName, conversations: list[str]) -> None:
        held = self._held[queue]
        keys = {held.pop(c) for c in conversations if c in held}
        keys -= set(held.values())  # a colliding key still held for another conversation
        if keys:
            await (await self._lock_session()).execute(
                "SELECT pg_advisory_unlock(%s, k) FROM unnest(%s::int[]) AS k",
                (self._ns[queue], sorted(keys)))

    async def _lock_session(self) -> psycopg.AsyncConnection:
        """The session holding this replica's locks, reconnected if it was lost."""
        locks = self._locks
        if locks is not None and not locks.closed and not locks.broken:
            return locks
        if self._pool is None:
            raise StorageError("the store is not open")
        # The session died (database restart, network): every lock went with it, so
        # other replicas may have taken our conversations; in-flight work finishes, and
        # only what is locked anew is handed out.
        self._held = {q: {} for q in QUEUES}
        if locks is not None:
            with contextlib.suppress(Exception):
                await locks.close()
        self._locks = None
        locks = await self._connect()
        try:
            await locks.execute("SELECT pg_advisory_lock(%s, %s)",
                                (self._ns["replica"], self.replica_id))
        except BaseException:
            with contextlib.suppress(Exception):
                await locks.close()
            raise
        log.warning("storage: reconnected the lock session of replica %d to %s",
                    self.replica_id, self.where)
        self._locks = locks
        return locks

    @contextlib.asynccontextmanager
    async def once(self, key: str, ttl: float) -> AsyncIterator[bool]:
        """See :meth:`Store.once`: across replicas, by an advisory lock on ``key`` held
        by the lock session while the block runs (a dead process drops it at once)."""
        # In-process first: the lock session's advisory locks are re-entrant.
        async with self._once_in_process(key), self._once_across_replicas(key, ttl) as mine:
            yield mine

    @contextlib.asynccontextmanager
    async def _once_across_replicas(self, key: str, ttl: float) -> AsyncIterator[bool]:
        k = lock_key(key)
        while True:
            async with self._locks_guard:
                cur = await (await self._lock_session()).execute(
                    "SELECT pg_try_advisory_lock(%s, %s)", (self._ns["once"], k))
                row = await cur.fetchone()
            if row and row[0]:
                break
            await asyncio.sleep(ONCE_POLL)  # another replica is inside
        try:
            if await self.seen(key):
                yield False
                return
            try:
                yield True
            finally:
                await self.remember(key, ttl)
        finally:
            with contextlib.suppress(psycopg.Error, StorageError):
                async with self._locks_guard:
                    await (await self._lock_session()).execute(
                        "SELECT pg_advisory_unlock(%s, %s)", (self._ns["once"], k))

    async def head(self, queue: QueueName, conversation: str) -> WorkItem | None:
        """See :meth:`Store.head`; an inbound head that is not settled yet (see
        ``_SETTLED``) comes with ``next_try_at`` at least ``UNSETTLED_RECHECK`` from now,
        so a worker draining the conversation stops there instead of overtaking a
        webhook that another replica has acknowledged but not queued."""
        rows = await self._read(
            f"SELECT *, {_SETTLED_VALUE} FROM ({_heads('AND conversation = %(conv)s')}) h",
            {"queue": queue, "conv": conversation})
        return self._head_item(queue, rows[0]) if rows else None

    def _head_item(self, queue: QueueName, row: tuple[Any, ...]) -> WorkItem:
        """A head row (with its ``settled`` flag last) as the item a worker may take."""
        item = _item(row)
        if queue == "inbound" and not row[-1]:
            item.next_try_at = max(item.next_try_at, self.clock() + UNSETTLED_RECHECK)
        return item

    async def pending_items(self, queue: QueueName, conversation: str) -> list[WorkItem]:
        rows = await self._read(
            f"SELECT {_ITEM_SELECT} FROM rcig_items WHERE queue = %s AND conversation = %s "
            "ORDER BY order_ts, seq", (queue, conversation))
        return [_item(row) for row in rows]

    async def complete(self, item: WorkItem, remember: list[str] | None = None) -> None:
        await self._completions.submit(_Completion(item, list(remember or ()), False))

    async def complete_then_head(
        self, item: WorkItem, remember: list[str] | None = None
    ) -> WorkItem | None:
        return await self._completions.submit(_Completion(item, list(remember or ()), True))

    async def _commit_completions(self, calls: list[_Completion]) -> list[WorkItem | None]:
        """One round trip for the completions waiting together (their order is free).

        Every finished item is a commit; alone, each would hold a pooled session for a
        WAL flush, and with dozens of conversations in flight the relay's reads queued
        behind them (bench_inbound (b): 224 ms per ``complete`` with four sessions).
        The heads asked for come back in the same pipeline, one query per queue.
        """
        exp = self.clock() + self.dedupe_ttl
        queues = [call.item.queue for call in calls]
        item_ids = [call.item.item_id for call in calls]
        # Sorted: one lock order for the dedupe rows, whichever replica commits.
        keys = sorted((key, exp) for call in calls for key in call.remember)
        wanted: dict[str, list[str]] = {}
        for call in calls:
            if call.want_head:
                wanted.setdefault(call.item.queue, []).append(call.item.conversation)

        async def run(conn: psycopg.AsyncConnection) -> dict[tuple[str, str], WorkItem]:
            delete = ("DELETE FROM rcig_items WHERE (queue, item_id) IN "
                      "(SELECT * FROM unnest(%s::text[], %s::text[]))", (queues, item_ids))
            async with conn.pipeline():
                if keys:
                    async with conn.transaction():
                        await conn.execute(*delete)
                        await conn.cursor().executemany(_REMEMBER, keys)
                else:
                    await conn.execute(*delete)  # one statement: its own transaction
                cursors = [
                    (queue, await conn.execute(
                        f"SELECT *, {_SETTLED_VALUE} FROM "
                        f"({_heads('AND conversation = ANY(%(convs)s::text[])')}) h",
                        {"queue": queue, "convs": convs}))
                    for queue, convs in wanted.items()
                ]
            heads = {}
            for queue, cur in cursors:
                for row in await cur.fetchall():
                    head = self._head_item(queue, row)
                    heads[(queue, head.conversation)] = head
            return heads

        heads = await self._call(run, mutating=True)
        return [heads.get((call.item.queue, call.item.conversation)) if call.want_head else None
                for call in calls]

    async def update_item(self, item: WorkItem) -> None:
        await self._write(
            "UPDATE rcig_items SET attempts = %s, next_try_at = %s, last_error = %s, "
            "progress = %s, sending_at = %s WHERE queue = %s AND item_id = %s",
            (item.attempts, item.next_try_at, item.last_error, item.progress,
             item.sending_at, item.queue, item.item_id))

    async def set_aside(self, item: WorkItem, reason: str) -> None:
        async def run(conn: psycopg.AsyncConnection) -> None:
            async with conn.transaction():
                cur = await conn.execute(
                    f"DELETE FROM rcig_items WHERE queue = %s AND item_id = %s "
                    f"RETURNING {_ITEM_SELECT}", (item.queue, item.item_id))
                row = await cur.fetchone()
                if row is None:
                    return  # no longer pending
                record = dataclasses.asdict(_item(row))
                record.update(attempts=item.attempts, last_error=item.last_error,
                              progress=item.progress)
                await conn.execute(
                    "INSERT INTO rcig_set_aside (queue, item_id, item, reason, set_aside_at, seq)"
                    " VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT (queue, item_id) DO UPDATE "
                    "SET item = EXCLUDED.item, reason = EXCLUDED.reason, "
                    "set_aside_at = EXCLUDED.set_aside_at, seq = EXCLUDED.seq",
                    (item.queue, item.item_id, Jsonb(record), reason, self.clock(),
                     record["seq"]))

        await self._call(run, mutating=True)

    async def set_aside_items(self) -> list[SetAsideItem]:
        rows = await self._read(
            "SELECT item, reason, set_aside_at FROM rcig_set_aside ORDER BY set_aside_at, seq")
        return [SetAsideItem(WorkItem(**row[0]), row[1], row[2]) for row in rows]

    async def queue_depth(self, queue: QueueName) -> int:
        rows = await self._read("SELECT count(*) FROM rcig_items WHERE queue = %s", (queue,))
        return int(rows[0][0])

    async def earliest_due(self, queue: QueueName) -> float | None:
        """Among heads of this replica and heads no other replica is working on."""
        if self._pool is None:
            raise StorageError("the store is not open")
        async with self._locks_guard:
            me = (await self._lock_session()).info.backend_pid
        # An unsettled inbound head (see _SETTLED) is looked at again shortly, not now.
        due = ("next_try_at" if queue != "inbound" else
               f"CASE WHEN {_SETTLED_VALUE.removesuffix(' AS settled')} THEN next_try_at "
               "ELSE greatest(next_try_at, %(later)s) END")
        rows = await self._read(
            f"SELECT min({due}) FROM ({_heads()}) h "
            f"WHERE (lock_key::bigint & 4294967295) NOT IN ({_LOCKED} AND pid <> %(me)s)",
            {"queue": queue, "ns": self._ns[queue], "me": me,
             "later": self.clock() + UNSETTLED_RECHECK})
        return rows[0][0]

    # -- dedupe keys -------------------------------------------------------------------
    async def remember(self, key: str, ttl: float | None = None) -> bool:
        now = self.clock()
        rows = await self._write(
            "INSERT INTO rcig_dedupe (key, exp) VALUES (%s, %s) ON CONFLICT (key) "
            "DO UPDATE SET exp = EXCLUDED.exp WHERE rcig_dedupe.exp <= %s RETURNING 1",
            (key, now + (self.dedupe_ttl if ttl is None else ttl), now))
        return bool(rows)

    async def seen(self, key: str) -> bool:
        rows = await self._read("SELECT 1 FROM rcig_dedupe WHERE key = %s AND exp > %s",
                                (key, self.clock()))
        return bool(rows)

    # -- marks -------------------------------------------------------------------------
    async def mark(self, name: str) -> float | None:
        rows = await self._read("SELECT value FROM rcig_marks WHERE name = %s", (name,))
        return float(rows[0][0]) if rows else None

    async def set_marks(self, values: dict[str, float]) -> None:
        async def run(conn: psycopg.AsyncConnection) -> None:
            async with conn.transaction():
                for name, value in sorted(values.items()):  # one lock order for all
                    await conn.execute(
                        "INSERT INTO rcig_marks (name, value) VALUES (%s, %s) "
                        "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
                        (name, float(value)))

        await self._call(run, mutating=True)

    async def add_marks(self, deltas: dict[str, float], *, once: str | None = None) -> bool:
        now = self.clock()

        async def run(conn: psycopg.AsyncConnection) -> bool:
            async with conn.transaction():
                if once is not None:
                    cur = await conn.execute(
                        "INSERT INTO rcig_dedupe (key, exp) VALUES (%s, %s) ON CONFLICT (key) "
                        "DO UPDATE SET exp = EXCLUDED.exp WHERE rcig_dedupe.exp <= %s "
                        "RETURNING 1", (once, now + self.dedupe_ttl, now))
                    if await cur.fetchone() is None:
                        return False
                for name, delta in sorted(deltas.items()):
                    await conn.execute(
                        "INSERT INTO rcig_marks (name, value) VALUES (%s, %s) "
                        "ON CONFLICT (name) DO UPDATE SET value = rcig_marks.value + "
                        "EXCLUDED.value", (name, float(delta)))
                return True

        return await self._call(run, mutating=True)

    # -- maintenance -------------------------------------------------------------------
    async def expire(self, now: float) -> dict[str, int]:
        self._next_expire = now + self.expire_interval
        cutoff = now - self.conversation_ttl

        async def run(conn: psycopg.AsyncConnection) -> dict[str, int]:
            counts = {}
            async with conn.transaction():
                for name, sql, params in (
                    ("dedupe", "DELETE FROM rcig_dedupe WHERE exp <= %s", (now,)),
                    ("login_states", "DELETE FROM rcig_login_states WHERE expires_at <= %s",
                     (now,)),
                    ("conversations",
                     "DELETE FROM rcig_conversations c WHERE updated_at <= %s AND NOT EXISTS "
                     "(SELECT 1 FROM rcig_items i WHERE i.conversation = c.key)", (cutoff,)),
                ):
                    cur = await conn.execute(sql, params)
                    counts[name] = cur.rowcount
            return counts

        self._expiring = True
        try:
            counts = await self._call(run, mutating=True)
        finally:
            self._expiring = False
        if any(counts.values()):
            log.info("storage expired %d dedupe keys, %d login states, %d idle conversations",
                     counts["dedupe"], counts["login_states"], counts["conversations"])
        return counts

    async def stats(self) -> dict[str, int]:
        rows = await self._read(
            "SELECT (SELECT count(*) FROM rcig_items WHERE queue = 'inbound'), "
            "(SELECT count(*) FROM rcig_items WHERE queue = 'outbound'), "
            "(SELECT count(*) FROM rcig_dedupe), (SELECT count(*) FROM rcig_conversations), "
            "(SELECT count(*) FROM rcig_pages), (SELECT count(*) FROM rcig_login_states), "
            "(SELECT count(*) FROM rcig_inbox), (SELECT count(*) FROM rcig_set_aside)")
        names = ("inbound", "outbound", "dedupe_keys", "conversations", "pages",
                 "login_states", "inbox", "set_aside")
        return {**dict(zip(names, map(int, rows[0]), strict=True)), "commits": self.commits}

    async def other_replicas(self) -> int:
        """How many other processes have this database open as a store right now."""
        rows = await self._read(
            "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid = %s::oid AND objsubid = 2 AND objid::bigint <> %s "
            "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            (self._ns["replica"], self.replica_id))
        return int(rows[0][0])

    # -- moving to another store ---------------------------------------------------------
    async def dump(self) -> StoreDump:
        now = self.clock()
        pages = await self._read("SELECT doc FROM rcig_pages ORDER BY saved")
        logins = await self._read("SELECT doc FROM rcig_login_states ORDER BY state")
        convs = await self._read("SELECT doc FROM rcig_conversations ORDER BY updated_at")
        items = await self._read(
            f"SELECT {_ITEM_SELECT} FROM rcig_items ORDER BY queue, conversation, order_ts, seq")
        dedupe = await self._read("SELECT key, exp FROM rcig_dedupe WHERE exp > %s", (now,))
        return StoreDump(
            pages=[self._page_record(row[0]) for row in pages],
            login_states=[self._login_record(row[0]) for row in logins],
            conversations=[self._conv_record(row[0]) for row in convs],
            items=[_item(row) for row in items],
            dedupe=dict(dedupe),  # type: ignore[arg-type]
            inbox=[event.raw for event in self.inbox.pending()],
            set_aside=await self.set_aside_items(),
            bridge_secret=await self.bridge_secret(),
        )

    async def restore(self, dump: StoreDump) -> None:
        async def run(conn: psycopg.AsyncConnection) -> None:
            async with conn.transaction():
                cur = conn.cursor()
                await cur.executemany(
                    "INSERT INTO rcig_pages (page_id, instagram_id, doc) VALUES (%s, %s, %s)",
                    [(p.page_id, p.instagram_id, Jsonb(self._page_doc(p))) for p in dump.pages])
                await cur.executemany(
                    "INSERT INTO rcig_login_states (state, kind, expires_at, doc) "
                    "VALUES (%s, %s, %s, %s)",
                    [(s.state, s.kind, s.expires_at, Jsonb(self._login_doc(s)))
                     for s in dump.login_states])
                await cur.executemany(
                    "INSERT INTO rcig_conversations (key, visitor_token, updated_at, waiting, "
                    "doc) VALUES (%s, %s, %s, %s, %s)",
                    [(c.key, c.visitor_token, c.updated_at, c.waiting_for_agent,
                      Jsonb({name: getattr(c, name) for name in _CONV_FIELDS}))
                     for c in dump.conversations])
                # In processing order: the new seqs keep each conversation's order.
                await cur.executemany(
                    "INSERT INTO rcig_items (queue, item_id, conversation, lock_key, kind, "
                    "payload, order_ts, attempts, next_try_at, created_at, last_error, progress,"
                    " sending_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
                    [(i.queue, i.item_id, i.conversation, lock_key(i.conversation), i.kind,
                      Jsonb(i.payload), i.order_ts, i.attempts, i.next_try_at, i.created_at,
                      i.last_error, i.progress, i.sending_at)
                     for i in sorted(dump.items,
                                     key=lambda i: (i.queue, i.conversation, i.order_ts, i.seq))])
                await cur.executemany(_REMEMBER, list(dump.dedupe.items()))
                if dump.bridge_secret:
                    await cur.execute(
                        "INSERT INTO rcig_meta (key, value) VALUES ('bridge_secret', %s) "
                        "ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
                        (Jsonb(self._cipher.encrypt(dump.bridge_secret.hex())),))
                await cur.executemany(
                    "INSERT INTO rcig_set_aside (queue, item_id, item, reason, set_aside_at, "
                    "seq) VALUES (%s, %s, %s, %s, %s, %s)",
                    [(a.item.queue, a.item.item_id, Jsonb(dataclasses.asdict(a.item)), a.reason,
                      a.set_aside_at, a.item.seq) for a in dump.set_aside])

        await self._call(run, mutating=True)
        await asyncio.gather(*(self.inbox.append(raw) for raw in dump.inbox))


def _reason(exc: BaseException) -> str:
    """A psycopg error as one line (never the URL: psycopg does not echo passwords)."""
    return " ".join(str(exc).split()) or type(exc).__name__
