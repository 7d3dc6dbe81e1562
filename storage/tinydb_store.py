"""The TinyDB implementation of :class:`storage.base.Store`.

Files, for ``storage.path = data/rc-instagram.json`` (the ``.json`` suffix is
optional; siblings are derived from the path without it):

=============================== =========================================================
``data/rc-instagram.json``       cold family snapshot (TinyDB JSON): ``pages``,
                                 ``login_states``, ``conversations``, ``_meta``
``data/rc-instagram.journal``    cold family journal (changes since the snapshot)
``data/rc-instagram.queues.json`` hot family snapshot: ``inbound``, ``outbound``,
                                 ``dedupe``, ``set_aside``
``data/rc-instagram.queues.journal`` hot family journal
``data/rc-instagram.inbox.*``    acknowledged webhook bodies not yet queued
                                 (:mod:`storage.inbox`; none left after a clean close)
``data/rc-instagram.lock``       ``flock``-ed while a bot process uses the files
=============================== =========================================================

Each family is a :class:`~storage.journal.JournalStorage` (snapshot + append-only
journal, see there): a write costs what changed, not what exists, and the hot family's
compactions never rewrite conversations, nor the cold family's the dedupe keys. Work
items and the dedupe keys they leave behind share the hot family, so one enqueue is
one append and one fsync. On a clean ``close`` both families are compacted, leaving
two plain TinyDB files and two header-only journals.

Everything TinyDB happens on one writer thread (:mod:`storage.writer`), which runs
operations in batches and answers reads at once; each family has its own sync thread
that appends and fsyncs the encoded batches in order, so a mutating call returns once
it is durable while reads and later operations never wait for a disk flush.

In-memory indexes answer every lookup without a query: pages by Instagram id,
conversations by visitor token and by idleness, queue heads per conversation and due
heads (:mod:`storage.queues`), dedupe keys by expiry. Expiry of dedupe keys, login
states and idle conversations runs by itself every ``expire_interval`` seconds of the
injected clock (and on demand via :meth:`expire`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import json
import logging
import os
import secrets
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from tinydb.table import Document, Table

from storage.atomic import ensure_private_dir
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
from storage.inbox import Inbox
from storage.journal import JournalDB, JournalStorage
from storage.lock import ProcessLock
from storage.queues import QueueIndex
from storage.writer import GroupCommitter

log = logging.getLogger("storage")

STORE_FORMAT = 1
_META_ID = "store"
#: The ``_meta`` document holding the bridge secret (Store.bridge_secret).
_BRIDGE_ID = "bridge"

Clock = Callable[[], float]
R = TypeVar("R")


@dataclass(frozen=True)
class StoreFiles:
    """The files of one store, all derived from ``storage.path``."""

    config: str
    config_journal: str
    queues: str
    queues_journal: str
    lock: str
    inbox: str  # prefix of the inbox's segment files

    @classmethod
    def for_path(cls, path: str) -> StoreFiles:
        base = path[: -len(".json")] if path.endswith(".json") else path
        return cls(
            config=path,
            config_journal=base + ".journal",
            queues=base + ".queues.json",
            queues_journal=base + ".queues.journal",
            lock=base + ".lock",
            inbox=base + ".inbox.",
        )

    def all(self) -> list[str]:
        """Every file of the store (the inbox's segments as they exist now)."""
        return [self.config, self.config_journal, self.queues, self.queues_journal, self.lock,
                *Inbox(self.inbox).segments()]


def _fields(cls: type) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(cls))


_PAGE_FIELDS = _fields(Page)
_LOGIN_FIELDS = _fields(LoginState)
_CONV_FIELDS = _fields(Conversation)
_ITEM_FIELDS = _fields(WorkItem)


def _clone(value: Any) -> Any:
    """A deep copy that also proves the value is JSON (a bad payload fails its caller)."""
    return json.loads(json.dumps(value))


def _replace_with(doc: dict[str, Any]) -> Callable[[dict[str, Any]], None]:
    def replace(current: dict[str, Any]) -> None:
        current.clear()
        current.update(doc)

    return replace


def _wrote_since(doc: dict[str, Any], since: float) -> bool:
    """Whether the conversation's visitor last wrote at or after ``since``."""
    last = doc.get("last_inbound_at")
    return isinstance(last, (int, float)) and last >= since


def _put(table: Table, doc_id: str, doc: dict[str, Any]) -> None:
    """Insert or replace one document by id (O(1) on a JournalTable)."""
    if not table.update(_replace_with(doc), doc_ids=[doc_id]):
        table.insert(Document(doc, doc_id=doc_id))


class TinyDBStore(Store):
    """A durable, crash-safe store on TinyDB files; see the module docstring."""

    def __init__(
        self,
        path: str,
        encryption_key: str | None = None,
        *,
        clock: Clock = time.time,
        dedupe_ttl: float = DEFAULT_DEDUPE_TTL,
        conversation_ttl: float = DEFAULT_CONVERSATION_TTL,
        expire_interval: float = 60.0,
        compact_min_bytes: int = 4 << 20,
        compact_ratio: float = 2.0,
        fsync: Callable[[int], None] = os.fdatasync,
    ) -> None:
        self.path = path
        self.files = StoreFiles.for_path(path)
        self.clock = clock
        self.dedupe_ttl = dedupe_ttl
        self.conversation_ttl = conversation_ttl
        self.expire_interval = expire_interval
        self._cipher = TokenCipher(encryption_key)
        self._lock = ProcessLock(self.files.lock, path)
        self._cold = JournalStorage(
            self.files.config,
            self.files.config_journal,
            compact_min_bytes=compact_min_bytes,
            compact_ratio=compact_ratio,
            fsync=fsync,
        )
        self._hot = JournalStorage(
            self.files.queues,
            self.files.queues_journal,
            compact_min_bytes=compact_min_bytes,
            compact_ratio=compact_ratio,
            fsync=fsync,
        )
        self.inbox = Inbox(self.files.inbox, fsync=fsync)
        self._writer: GroupCommitter | None = None
        self._loaded = False
        self._next_expire = 0.0
        self._reset_indexes()

    def _reset_indexes(self) -> None:
        self._page_by_ig: dict[str, str] = {}
        self._conv_by_token: dict[str, str] = {}
        self._conv_activity: OrderedDict[str, float] = OrderedDict()  # oldest first
        self._waiting: set[str] = set()
        # Conversations whose visitor wrote since ``_visitors_from`` (their page ids):
        # the month's visitors, counted on every /metrics scrape, without a scan of
        # every conversation (rebuilt when asked from another instant: once a month).
        self._visitors_from: float | None = None
        self._visitors: dict[str, str] = {}
        self._queues: dict[str, QueueIndex] = {q: QueueIndex() for q in QUEUES}
        self._dedupe_heap: list[tuple[float, str]] = []
        self._seq = 0

    # -- plumbing ----------------------------------------------------------------------
    async def _read(self, fn: Callable[..., R], *args: Any) -> R:
        return await self._require_writer().call(lambda: fn(*args), mutating=False)

    async def _write(self, fn: Callable[..., R], *args: Any) -> R:
        return await self._require_writer().call(lambda: fn(*args), mutating=True)

    def _require_writer(self) -> GroupCommitter:
        if self._writer is None or not self._writer.running:
            raise StorageError("the store is not open")
        return self._writer

    def _housekeeping(self) -> None:
        if self._loaded and (self._writer is None or self._writer.healthy):
            now = self.clock()
            if now >= self._next_expire:
                self._expire_sync(now)

    # -- lifecycle ---------------------------------------------------------------------
    async def open(self) -> None:
        if self._writer is not None and self._writer.running:
            raise StorageError(f"{self.path} is already open")
        try:
            ensure_private_dir(os.path.dirname(self.path))
        except OSError as exc:
            raise StorageError(
                f"cannot create the directory of {self.path}: {exc.strerror}"
            ) from exc
        self._lock.acquire()
        # Hot first: it holds what webhooks wait for. No invariant spans the families,
        # so they are synced concurrently (storage.writer).
        writer = GroupCommitter((self._hot, self._cold), self._housekeeping)
        writer.start()
        self._writer = writer
        try:
            await writer.call(self._load, mutating=True)
            await asyncio.to_thread(self.inbox.open, asyncio.get_running_loop())
        except BaseException:
            writer.stop()
            self._writer = None
            self._hot.close()
            self._cold.close()
            self._lock.release()
            raise

    def _load(self) -> None:
        self._loaded = False
        try:
            self._hot.load()
            self._cold.load()
        except OSError as exc:
            raise StorageError(f"cannot open {self.path}: {exc}") from exc
        self._cold_db = JournalDB(self._cold)
        self._hot_db = JournalDB(self._hot)
        self._pages_t = self._cold_db.table("pages")
        self._logins_t = self._cold_db.table("login_states")
        self._convs_t = self._cold_db.table("conversations")
        self._meta_t = self._cold_db.table("_meta")
        self._items_t = {q: self._hot_db.table(q) for q in QUEUES}
        self._dedupe_t = self._hot_db.table("dedupe")
        self._marks_t = self._hot_db.table("marks")
        # Same family as the queues: moving an item here is one append, one fsync.
        self._set_aside_t = self._hot_db.table("set_aside")
        self._reset_indexes()
        self._check_key()
        for doc in self._pages_t:
            self._page_by_ig[doc["instagram_id"]] = doc.doc_id
        convs = sorted(self._convs_t, key=lambda d: d.get("updated_at", 0.0))
        for doc in convs:
            self._index_conversation(doc.doc_id, doc)
        for queue, table in self._items_t.items():
            index = self._queues[queue]
            for doc in table:
                index.add(
                    doc["conversation"],
                    doc["order_ts"],
                    doc["seq"],
                    doc.doc_id,
                    doc["next_try_at"],
                )
                self._seq = max(self._seq, doc["seq"])
        self._dedupe_heap = [(doc["exp"], doc.doc_id) for doc in self._dedupe_t]
        heapq.heapify(self._dedupe_heap)
        self._next_expire = 0.0  # drop what expired while the bot was down
        self._loaded = True
        log.info(
            "storage opened: %s (%d pages, %d conversations, %d inbound, %d outbound pending)",
            self.path,
            len(self._pages_t),
            len(self._convs_t),
            len(self._queues["inbound"]),
            len(self._queues["outbound"]),
        )

    def _check_key(self) -> None:
        meta = self._meta_t.get(doc_id=_META_ID)
        if meta is None:
            meta = {"format": STORE_FORMAT, "key_check": None}
        if meta.get("format", STORE_FORMAT) > STORE_FORMAT:
            raise StorageError(
                f"{self.path} was written by a newer rc-instagram (format "
                f"{meta['format']}); upgrade the bot"
            )
        self._cipher.verify(meta.get("key_check"), self.path)
        if self._cipher.enabled and meta.get("key_check") is None:
            # First start with a key: encrypt the tokens written in plain until now.
            for doc in list(self._pages_t):
                _put(self._pages_t, doc.doc_id, self._page_doc(self._page_record(doc)))
            for doc in list(self._logins_t):
                _put(self._logins_t, doc.doc_id, self._login_doc(self._login_record(doc)))
            bridge = self._meta_t.get(doc_id=_BRIDGE_ID)
            if bridge is not None:
                _put(self._meta_t, _BRIDGE_ID, {"secret": self._cipher.encrypt(bridge["secret"])})
            log.info("storage: encrypted the stored tokens with the configured key")
            meta = {**meta, "key_check": self._cipher.key_check()}
            _put(self._meta_t, _META_ID, dict(meta))
            self._cold.request_snapshot()  # no plain token left behind in the journal
        elif self._meta_t.get(doc_id=_META_ID) is None:
            _put(self._meta_t, _META_ID, dict(meta))

    async def close(self, *, compact: bool = True) -> None:
        """Flush, release the lock; ``compact=False`` skips the final compaction.

        Without compaction the files are left as a crash would leave them (what was
        acknowledged is in the journals), which makes shutdown O(1).
        """
        writer = self._writer
        if writer is None or not writer.running:
            return
        try:
            # A mutation: returns once the final writes are durable (or failed).
            await writer.call(lambda: self._shutdown(compact), mutating=True)
        except StorageError as exc:
            log.error("storage: final write of %s failed: %s", self.path, exc)
        finally:
            writer.stop()  # joins the sync threads: nothing touches the files after it
            self._writer = None
            await asyncio.to_thread(self.inbox.close)
            self._hot.close()
            self._cold.close()
            self._lock.release()

    def _shutdown(self, compact: bool) -> None:
        self._loaded = False  # no more housekeeping
        if compact:
            # The .json files become complete TinyDB databases at rest.
            self._hot.request_snapshot()
            self._cold.request_snapshot()

    async def healthy(self) -> bool:
        writer = self._writer
        if writer is None or not writer.running:
            return False
        if not self.inbox.healthy and not await self.inbox.probe():
            return False
        if not writer.healthy:
            # Nudge a commit so a disk that recovered is noticed without other traffic.
            try:
                await writer.call(lambda: None, mutating=True)
            except StorageError:
                return False
        return writer.healthy

    @property
    def last_error(self) -> str | None:
        """Why the last commit failed (None while healthy)."""
        if self.inbox.last_error is not None:
            return self.inbox.last_error
        return self._writer.last_error if self._writer else None

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
        doc["data"] = self._cipher.encrypt_tree(_clone(state.data))
        return doc

    def _login_record(self, doc: dict[str, Any]) -> LoginState:
        state = LoginState(**{k: v for k, v in doc.items() if k in _LOGIN_FIELDS})
        state.data = self._cipher.decrypt_tree(_clone(state.data))
        return state

    @staticmethod
    def _conv_record(doc: dict[str, Any]) -> Conversation:
        return Conversation(**{k: v for k, v in doc.items() if k in _CONV_FIELDS})

    @staticmethod
    def _item_doc(item: WorkItem, payload: Any) -> dict[str, Any]:
        doc = {name: getattr(item, name) for name in _ITEM_FIELDS}
        doc["payload"] = payload
        return doc

    @staticmethod
    def _item_record(doc: dict[str, Any]) -> WorkItem:
        item = WorkItem(**{k: v for k, v in doc.items() if k in _ITEM_FIELDS})
        item.payload = _clone(item.payload)
        return item

    # -- the bridge secret ---------------------------------------------------------------
    async def bridge_secret(self) -> bytes:
        return await self._write(self._bridge_secret)

    def _bridge_secret(self) -> bytes:
        doc = self._meta_t.get(doc_id=_BRIDGE_ID)
        if doc is None:
            doc = {"secret": self._cipher.encrypt(secrets.token_hex(32))}
            _put(self._meta_t, _BRIDGE_ID, doc)
        return bytes.fromhex(self._cipher.decrypt(doc["secret"]))

    # -- pages -------------------------------------------------------------------------
    async def save_page(self, page: Page) -> None:
        await self._write(self._save_page, page)

    def _save_page(self, page: Page) -> None:
        doc = self._page_doc(page)
        old = self._pages_t.get(doc_id=page.page_id)
        if old is not None and self._page_by_ig.get(old["instagram_id"]) == page.page_id:
            del self._page_by_ig[old["instagram_id"]]
        _put(self._pages_t, page.page_id, doc)
        self._page_by_ig[page.instagram_id] = page.page_id
        if old is not None and (
            (old["page_token"] and not page.page_token)
            or (old["user_token"] and not page.user_token)
        ):
            self._cold.request_snapshot()  # tokens revoked: drop them from the journal

    async def page(self, page_id: str) -> Page | None:
        return await self._read(self._page, page_id)

    def _page(self, page_id: str) -> Page | None:
        doc = self._pages_t.get(doc_id=page_id)
        return self._page_record(doc) if doc is not None else None

    async def page_by_instagram_id(self, instagram_id: str) -> Page | None:
        return await self._read(lambda: self._page(self._page_by_ig.get(instagram_id, "")))

    async def pages(self) -> list[Page]:
        return await self._read(lambda: [self._page_record(d) for d in self._pages_t])

    async def delete_page(self, page_id: str) -> None:
        await self._write(self._delete_page, page_id)

    def _delete_page(self, page_id: str) -> None:
        old = self._pages_t.get(doc_id=page_id)
        if old is None:
            return
        if self._page_by_ig.get(old["instagram_id"]) == page_id:
            del self._page_by_ig[old["instagram_id"]]
        self._pages_t.remove(doc_ids=[page_id])
        self._cold.request_snapshot()  # its tokens must not linger in the journal

    # -- login states ------------------------------------------------------------------
    async def add_login_state(self, state: LoginState) -> None:
        await self._write(lambda: _put(self._logins_t, state.state, self._login_doc(state)))

    async def consume_login_state(self, state: str, kind: str, now: float) -> LoginState | None:
        return await self._write(self._consume_login_state, state, kind, now)

    def _consume_login_state(self, state: str, kind: str, now: float) -> LoginState | None:
        doc = self._logins_t.get(doc_id=state)
        if doc is None or doc.get("kind") != kind:
            return None
        self._logins_t.remove(doc_ids=[state])
        if doc["expires_at"] <= now:
            return None
        return self._login_record(doc)

    # -- conversations -----------------------------------------------------------------
    def _index_conversation(self, key: str, doc: dict[str, Any]) -> None:
        self._conv_by_token[doc["visitor_token"]] = key
        self._conv_activity.pop(key, None)
        self._conv_activity[key] = doc.get("updated_at", 0.0)
        if doc.get("waiting_for_agent"):
            self._waiting.add(key)
        else:
            self._waiting.discard(key)
        if self._visitors_from is not None and _wrote_since(doc, self._visitors_from):
            self._visitors[key] = doc["page_id"]

    def _unindex_conversation(self, key: str, doc: dict[str, Any]) -> None:
        if self._conv_by_token.get(doc["visitor_token"]) == key:
            del self._conv_by_token[doc["visitor_token"]]
        self._conv_activity.pop(key, None)
        self._waiting.discard(key)
        self._visitors.pop(key, None)

    def _has_work(self, key: str) -> bool:
        return any(index.has_conversation(key) for index in self._queues.values())

    def _live_conversation(self, key: str | None) -> Conversation | None:
        if key is None:
            return None
        doc = self._convs_t.get(doc_id=key)
        if doc is None:
            return None
        idle_since = self.clock() - self.conversation_ttl
        if doc.get("updated_at", 0.0) <= idle_since and not self._has_work(key):
            return None  # expired; expire() will drop it, a returning visitor starts anew
        return self._conv_record(doc)

    async def conversation(self, page_id: str, igsid: str) -> Conversation | None:
        return await self._read(self._live_conversation, f"{page_id}:{igsid}")

    async def conversation_by_token(self, visitor_token: str) -> Conversation | None:
        return await self._read(
            lambda: self._live_conversation(self._conv_by_token.get(visitor_token))
        )

    async def save_conversation(self, conversation: Conversation) -> None:
        await self._write(self._save_conversation, conversation)

    def _save_conversation(self, conversation: Conversation) -> None:
        key = conversation.key
        conversation.updated_at = self.clock()
        doc = {name: getattr(conversation, name) for name in _CONV_FIELDS}
        old = self._convs_t.get(doc_id=key)
        if old is not None:
            self._unindex_conversation(key, old)
        _put(self._convs_t, key, doc)
        self._index_conversation(key, doc)

    async def conversations_waiting(self) -> list[Conversation]:
        return await self._read(
            lambda: [
                self._conv_record(self._convs_t.get(doc_id=key)) for key in sorted(self._waiting)
            ]
        )

    async def visitors_since(self, since: float) -> dict[str, int]:
        def count() -> dict[str, int]:
            if since != self._visitors_from:
                self._visitors = {doc.doc_id: doc["page_id"] for doc in self._convs_t
                                  if _wrote_since(doc, since)}
                self._visitors_from = since
            return dict(Counter(self._visitors.values()))

        return await self._read(count)

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
        # Copy (and prove JSON-serialisable) on the caller's side: a bad payload fails
        # its own call, never the shared commit.
        payloads = [_clone(item.payload) for item in items]
        keys = dedupe_keys or [None] * len(items)
        return await self._write(self._enqueue, items, payloads, keys)

    def _enqueue(
        self, items: list[WorkItem], payloads: list[Any], keys: list[str | None]
    ) -> list[WorkItem]:
        now = self.clock()
        added = []
        for item, payload, key in zip(items, payloads, keys, strict=True):
            index = self._queues[item.queue]
            dedupe_key = key if key is not None else item.item_id
            if item.item_id in index or self._seen(dedupe_key, now):
                continue
            self._seq += 1
            item.seq = self._seq
            item.created_at = now
            if not item.order_ts:
                item.order_ts = now
            self._items_t[item.queue].insert(
                Document(self._item_doc(item, payload), doc_id=item.item_id)
            )
            index.add(item.conversation, item.order_ts, item.seq, item.item_id, item.next_try_at)
            self._remember(dedupe_key, now, self.dedupe_ttl)
            added.append(item)
        return added

    async def next_items(
        self, queue: QueueName, now: float, exclude: set[str], limit: int
    ) -> list[WorkItem]:
        return await self._read(self._next_items, queue, now, frozenset(exclude), limit)

    def _next_items(
        self, queue: QueueName, now: float, exclude: frozenset[str], limit: int
    ) -> list[WorkItem]:
        table = self._items_t[queue]
        return [
            self._item_record(table.get(doc_id=item_id))
            for item_id in self._queues[queue].due(now, exclude, limit)
        ]

    async def head(self, queue: QueueName, conversation: str) -> WorkItem | None:
        return await self._read(self._head, queue, conversation)

    def _head(self, queue: QueueName, conversation: str) -> WorkItem | None:
        item_id = self._queues[queue].head(conversation)
        if item_id is None:
            return None
        return self._item_record(self._items_t[queue].get(doc_id=item_id))

    async def pending_items(self, queue: QueueName, conversation: str) -> list[WorkItem]:
        return await self._read(
            lambda: [
                self._item_record(self._items_t[queue].get(doc_id=item_id))
                for item_id in self._queues[queue].items_of(conversation)
            ]
        )

    async def complete(self, item: WorkItem, remember: list[str] | None = None) -> None:
        await self._write(self._complete, item.queue, item.item_id, list(remember or ()))

    async def relay_context(
        self, page_id: str, igsid: str, seen_key: str | None = None
    ) -> tuple[Page | None, bool, Conversation | None]:
        def run() -> tuple[Page | None, bool, Conversation | None]:
            seen = seen_key is not None and self._seen(seen_key, self.clock())
            return (self._page(page_id), seen,
                    self._live_conversation(f"{page_id}:{igsid}"))

        return await self._read(run)

    async def complete_then_head(
        self, item: WorkItem, remember: list[str] | None = None
    ) -> WorkItem | None:
        def run() -> WorkItem | None:
            self._complete(item.queue, item.item_id, list(remember or ()))
            return self._head(item.queue, item.conversation)

        return await self._write(run)

    def _complete(self, queue: QueueName, item_id: str, remember: list[str]) -> None:
        if self._queues[queue].remove(item_id):
            self._items_t[queue].remove(doc_ids=[item_id])
        now = self.clock()
        for key in remember:
            self._remember(key, now, self.dedupe_ttl)

    async def update_item(self, item: WorkItem) -> None:
        await self._write(self._update_item, item)

    def _update_item(self, item: WorkItem) -> None:
        index = self._queues[item.queue]
        if item.item_id not in index:
            log.debug("update of item %s that is no longer pending ignored", item.item_id)
            return
        self._items_t[item.queue].update(
            {
                "attempts": item.attempts,
                "next_try_at": item.next_try_at,
                "last_error": item.last_error,
                "progress": item.progress,
                "sending_at": item.sending_at,
            },
            doc_ids=[item.item_id],
        )
        index.reschedule(item.item_id, item.next_try_at)

    async def set_aside(self, item: WorkItem, reason: str) -> None:
        await self._write(self._set_aside, item, reason)

    def _set_aside(self, item: WorkItem, reason: str) -> None:
        if not self._queues[item.queue].remove(item.item_id):
            return
        doc = self._items_t[item.queue].get(doc_id=item.item_id)
        self._items_t[item.queue].remove(doc_ids=[item.item_id])
        if doc is None:
            return
        record = dict(doc)
        record.update(attempts=item.attempts, last_error=item.last_error, progress=item.progress)
        _put(
            self._set_aside_t,
            f"{item.queue}:{item.item_id}",
            {"item": record, "reason": reason, "set_aside_at": self.clock()},
        )

    async def set_aside_items(self) -> list[SetAsideItem]:
        def collect() -> list[SetAsideItem]:
            found = [
                SetAsideItem(self._item_record(d["item"]), d["reason"], d["set_aside_at"])
                for d in self._set_aside_t
            ]
            return sorted(found, key=lambda s: (s.set_aside_at, s.item.seq))

        return await self._read(collect)

    async def queue_depth(self, queue: QueueName) -> int:
        return await self._read(lambda: len(self._queues[queue]))

    async def earliest_due(self, queue: QueueName) -> float | None:
        return await self._read(lambda: self._queues[queue].earliest_due())

    # -- dedupe keys -------------------------------------------------------------------
    def _seen(self, key: str, now: float) -> bool:
        doc = self._dedupe_t.get(doc_id=key)
        return doc is not None and doc["exp"] > now

    def _remember(self, key: str, now: float, ttl: float) -> None:
        expires = now + ttl
        _put(self._dedupe_t, key, {"exp": expires})
        heapq.heappush(self._dedupe_heap, (expires, key))

    async def remember(self, key: str, ttl: float | None = None) -> bool:
        return await self._write(self._remember_new, key, ttl)

    def _remember_new(self, key: str, ttl: float | None) -> bool:
        now = self.clock()
        if self._seen(key, now):
            return False
        self._remember(key, now, self.dedupe_ttl if ttl is None else ttl)
        return True

    async def seen(self, key: str) -> bool:
        return await self._read(lambda: self._seen(key, self.clock()))

    # -- marks -------------------------------------------------------------------------
    async def mark(self, name: str) -> float | None:
        def get() -> float | None:
            doc = self._marks_t.get(doc_id=name)
            return float(doc["value"]) if doc is not None else None

        return await self._read(get)

    async def set_marks(self, values: dict[str, float]) -> None:
        def put() -> None:
            for name, value in values.items():
                _put(self._marks_t, name, {"value": float(value)})

        await self._write(put)

    async def add_marks(self, deltas: dict[str, float], *, once: str | None = None) -> bool:
        def add() -> bool:
            if once is not None and not self._remember_new(once, None):
                return False
            for name, delta in deltas.items():
                doc = self._marks_t.get(doc_id=name)
                current = float(doc["value"]) if doc is not None else 0.0
                _put(self._marks_t, name, {"value": current + float(delta)})
            return True

        return await self._write(add)

    # -- maintenance -------------------------------------------------------------------
    async def expire(self, now: float) -> dict[str, int]:
        return await self._write(self._expire_sync, now)

    def _expire_sync(self, now: float) -> dict[str, int]:
        self._next_expire = now + self.expire_interval
        counts = {"dedupe": 0, "login_states": 0, "conversations": 0}
        heap = self._dedupe_heap
        expired: list[str] = []
        while heap and heap[0][0] <= now:
            expires, key = heapq.heappop(heap)
            doc = self._dedupe_t.get(doc_id=key)
            if doc is not None and doc["exp"] == expires:
                expired.append(key)  # else: re-remembered later; a newer entry exists
        if expired:
            counts["dedupe"] = len(self._dedupe_t.remove(doc_ids=expired))
        stale = [doc.doc_id for doc in self._logins_t if doc["expires_at"] <= now]
        if stale:
            counts["login_states"] = len(self._logins_t.remove(doc_ids=stale))
        cutoff = now - self.conversation_ttl
        idle = []
        for key, active_at in self._conv_activity.items():
            if active_at > cutoff:
                break  # ordered by last save: everything after is newer
            if not self._has_work(key):
                idle.append(key)
        for key in idle:
            doc = self._convs_t.get(doc_id=key)
            if doc is not None:
                self._unindex_conversation(key, doc)
        if idle:
            counts["conversations"] = len(self._convs_t.remove(doc_ids=idle))
        if any(counts.values()):
            log.info(
                "storage expired %d dedupe keys, %d login states, %d idle conversations",
                counts["dedupe"],
                counts["login_states"],
                counts["conversations"],
            )
        return counts

    async def stats(self) -> dict[str, int]:
        def collect() -> dict[str, int]:
            return {
                "inbound": len(self._queues["inbound"]),
                "outbound": len(self._queues["outbound"]),
                "dedupe_keys": len(self._dedupe_t),
                "set_aside": len(self._set_aside_t),
                "conversations": len(self._convs_t),
                "pages": len(self._pages_t),
                "login_states": len(self._logins_t),
                "compactions": self._hot.compactions + self._cold.compactions,
                "journal_bytes": self._hot.journal_bytes + self._cold.journal_bytes,
                "commits": self._writer.commits if self._writer else 0,
            }

        return await self._read(collect)

    # -- moving to another store ---------------------------------------------------------
    async def dump(self) -> StoreDump:
        def collect() -> StoreDump:
            now = self.clock()
            items = [self._item_record(doc) for q in QUEUES for doc in self._items_t[q]]
            items.sort(key=lambda i: (i.queue, i.conversation, i.order_ts, i.seq))
            return StoreDump(
                pages=[self._page_record(doc) for doc in self._pages_t],
                login_states=[self._login_record(doc) for doc in self._logins_t],
                conversations=[self._conv_record(doc) for doc in self._convs_t],
                items=items,
                dedupe={doc.doc_id: doc["exp"] for doc in self._dedupe_t if doc["exp"] > now},
            )

        dump = await self._read(collect)
        dump.inbox = [event.raw for event in self.inbox.pending()]
        dump.set_aside = await self.set_aside_items()
        dump.bridge_secret = await self.bridge_secret()
        return dump

    async def restore(self, dump: StoreDump) -> None:
        payloads = [_clone(item.payload) for item in dump.items]
        await self._write(self._restore, dump, payloads)
        # One batch, in order: appends join the open batch in call order.
        await asyncio.gather(*(self.inbox.append(raw) for raw in dump.inbox))

    def _restore(self, dump: StoreDump, payloads: list[Any]) -> None:
        if dump.bridge_secret:
            _put(self._meta_t, _BRIDGE_ID,
                 {"secret": self._cipher.encrypt(dump.bridge_secret.hex())})
        for page in dump.pages:
            self._save_page(page)
        for state in dump.login_states:
            _put(self._logins_t, state.state, self._login_doc(state))
        # By last activity: the idleness index expects the oldest first.
        for conversation in sorted(dump.conversations, key=lambda c: c.updated_at):
            doc = {name: getattr(conversation, name) for name in _CONV_FIELDS}
            _put(self._convs_t, conversation.key, doc)
            self._index_conversation(conversation.key, doc)
        for item, payload in zip(dump.items, payloads, strict=True):
            self._seq += 1
            doc = self._item_doc(dataclasses.replace(item, seq=self._seq), payload)
            self._items_t[item.queue].insert(Document(doc, doc_id=item.item_id))
            self._queues[item.queue].add(
                item.conversation, item.order_ts, self._seq, item.item_id, item.next_try_at)
        for key, expires in dump.dedupe.items():
            _put(self._dedupe_t, key, {"exp": expires})
            heapq.heappush(self._dedupe_heap, (expires, key))
        for kept in dump.set_aside:
            record = {name: getattr(kept.item, name) for name in _ITEM_FIELDS}
            _put(self._set_aside_t, f"{kept.item.queue}:{kept.item.item_id}",
                 {"item": _clone(record), "reason": kept.reason,
                  "set_aside_at": kept.set_aside_at})
