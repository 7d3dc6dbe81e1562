"""The storage interface: domain records and the repository API the bot uses.

Everything that must survive a restart goes through a :class:`Store`. Callers speak in
domain words (pages, conversations, work items); no caller ever builds a query. The
TinyDB implementation lives in :mod:`storage.tinydb_store`; a server-backed store (for
several bot replicas) would implement this same class.

Every mutating method returns only after its effect is durable on disk, so a webhook
may be acknowledged as soon as the ``await`` returns.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from storage.inbox import Inbox

QueueName = Literal["inbound", "outbound"]
QUEUES: tuple[QueueName, ...] = ("inbound", "outbound")

DEFAULT_DEDUPE_TTL = 24 * 3600.0  # seconds a dedupe key is remembered
DEFAULT_CONVERSATION_TTL = 90 * 24 * 3600.0  # idle seconds before a conversation expires


class StorageError(Exception):
    """The store cannot be used (corrupt file, wrong key, locked, disk failure)."""


class StoreLocked(StorageError):
    """Another process holds the store's lock file."""


@dataclass
class Page:
    """A connected Facebook Page and its linked Instagram professional account."""

    page_id: str
    name: str
    instagram_id: str
    username: str = ""
    page_token: str = ""
    user_token: str = ""
    owner_id: str = ""  # Rocket.Chat user id of the admin who connected it
    department_id: str | None = None
    department_name: str | None = None
    welcome_text: str | None = None
    finished_text: str | None = None
    offline_text: str | None = None
    subscribed: bool = True
    needs_reauth: bool = False
    reauth_notified: bool = False
    connected_at: float = 0.0
    #: How the account was connected: "facebook" (Facebook Login, through its Page) or
    #: "instagram" (Instagram Login, no Page: ``page_id`` is the Instagram account id).
    route: str = "facebook"
    #: Instagram Login tokens expire (60 days) and are refreshed: when the current one
    #: was issued and when it ends (epoch seconds; 0 for Page tokens, which do not).
    token_issued_at: float = 0.0
    token_expires_at: float = 0.0


@dataclass
class LoginState:
    """A single-use OAuth ``state`` bound to the admin who asked for it.

    ``kind`` is ``"login"`` for the Facebook Login redirect and ``"select"`` for the
    page-choice form; a select state carries the candidate pages (with their tokens)
    in ``data`` so the form itself never holds a token. ``"settings"`` is the link to a
    page's settings form that ``/instagram edit <pageId>`` DMs, ``"settings_form"`` the
    form it opens; both carry ``{"page_id": …}`` in ``data``.
    """

    state: str
    user_id: str
    username: str
    expires_at: float
    kind: Literal["login", "select", "settings", "settings_form", "instagram_login"] = "login"
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Conversation:
    """One Instagram user talking to one connected page (an Omnichannel visitor)."""

    page_id: str
    igsid: str
    visitor_token: str
    visitor_name: str = ""
    visitor_registered: bool = False
    room_id: str | None = None
    last_inbound_at: float | None = None  # epoch seconds of the visitor's last message
    waiting_for_agent: bool = False  # inside an offline spell (offline text already sent)
    updated_at: float = 0.0
    #: The department last sent with ``livechat/visitor`` (None: none, or registered
    #: before this was recorded). Rocket.Chat routes a new room by the department stored
    #: on the visitor, so the relay registers again when the page's differs.
    visitor_department: str | None = None

    @property
    def key(self) -> str:
        return conversation_key(self.page_id, self.igsid)

    @property
    def label(self) -> str:
        """How log lines name this conversation (no IGSID: :func:`conversation_label`)."""
        return conversation_label(self.page_id, self.igsid)


def conversation_label(page_id: str, igsid: str) -> str:
    """``<pageId>:~<10 hex>``: a stable log name for a conversation that leaves the IGSID
    out of INFO logs (log readers need not learn who wrote; DEBUG lines may name it)."""
    return f"{page_id}:~{hashlib.sha256(igsid.encode()).hexdigest()[:10]}"


def conversation_key(page_id: str, igsid: str) -> str:
    """The key that orders work: one conversation is processed strictly in order."""
    return f"{page_id}:{igsid}"


@dataclass
class WorkItem:
    """A durable unit of relay work, processed at least once, in conversation order.

    ``item_id`` is deterministic where the source gives an id (Instagram ``mid``,
    Rocket.Chat message ``_id``), so storing the same event twice stores it once.
    Items of one ``conversation`` are handed out ordered by ``(order_ts, seq)``:
    ``order_ts`` is the event's own timestamp (inbound) or arrival time (outbound),
    ``seq`` a store-assigned tie-breaker.
    """

    item_id: str
    queue: QueueName
    conversation: str
    kind: str
    payload: dict[str, Any]
    order_ts: float = 0.0
    seq: int = 0
    attempts: int = 0
    next_try_at: float = 0.0
    created_at: float = 0.0
    last_error: str | None = None
    progress: int = 0  # parts already done, for multi-part effects (split texts)
    #: Epoch seconds when the send of part ``progress`` started and its outcome is not
    #: recorded yet (None: no send in doubt). Set durably before the Send API call; a
    #: crash or timeout leaves it set, and the part is settled by reading the thread
    #: back (bot.relay.outbound) before anything is sent again. Persisted by update_item.
    sending_at: float | None = None


@dataclass
class SetAsideItem:
    """A work item the relay gave up on: out of its queue, kept for the admins to see.

    ``reason`` is the refusal as logged (route and error code, never a secret);
    ``set_aside_at`` is epoch seconds.
    """

    item: WorkItem
    reason: str
    set_aside_at: float

    @property
    def page_id(self) -> str:
        """The page the item belongs to (inbound and outbound items both carry it)."""
        return str(self.item.payload.get("page_id") or self.item.conversation.split(":", 1)[0])


@dataclass
class StoreDump:
    """Everything a store holds, decrypted, for moving it to another store (offline).

    ``inbox`` is the raw bodies of acknowledged webhooks not yet queued, oldest first;
    ``dedupe`` maps each unexpired key to its expiry (epoch seconds); ``bridge_secret``
    keys the visitor tokens (moved too, so a returning visitor keeps their token).
    """

    pages: list[Page] = field(default_factory=list)
    login_states: list[LoginState] = field(default_factory=list)
    conversations: list[Conversation] = field(default_factory=list)
    items: list[WorkItem] = field(default_factory=list)
    dedupe: dict[str, float] = field(default_factory=dict)
    inbox: list[bytes] = field(default_factory=list)
    set_aside: list[SetAsideItem] = field(default_factory=list)
    bridge_secret: bytes | None = None

    def counts(self) -> dict[str, int]:
        """What a migration verifies: one count per kind of record."""
        return {
            "pages": len(self.pages),
            "login_states": len(self.login_states),
            "conversations": len(self.conversations),
            "inbound": sum(1 for i in self.items if i.queue == "inbound"),
            "outbound": sum(1 for i in self.items if i.queue == "outbound"),
            "dedupe_keys": len(self.dedupe),
            "inbox": len(self.inbox),
            "set_aside": len(self.set_aside),
        }


class Store(abc.ABC):
    """The repository API. Async; implementations must not block the event loop."""

    #: Acknowledged webhook bodies on their way to the inbound queue; opened and
    #: closed with the store, under its lock (see :mod:`storage.inbox`).
    inbox: Inbox

    # -- lifecycle -------------------------------------------------------------
    @abc.abstractmethod
    async def open(self) -> None:
        """Load (or create) the store; raise StorageError/StoreLocked on failure."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush pending writes and release the lock."""

    @abc.abstractmethod
    async def healthy(self) -> bool:
        """True while the store can write (last write succeeded)."""

    # -- pages -----------------------------------------------------------------
    @abc.abstractmethod
    async def save_page(self, page: Page) -> None:
        """Insert or replace the page with ``page.page_id``."""

    @abc.abstractmethod
    async def page(self, page_id: str) -> Page | None: ...

    @abc.abstractmethod
    async def page_by_instagram_id(self, instagram_id: str) -> Page | None: ...

    @abc.abstractmethod
    async def pages(self) -> list[Page]: ...

    @abc.abstractmethod
    async def delete_page(self, page_id: str) -> None: ...

    # -- OAuth login states ------------------------------------------------------
    @abc.abstractmethod
    async def add_login_state(self, state: LoginState) -> None: ...

    @abc.abstractmethod
    async def consume_login_state(self, state: str, kind: str, now: float) -> LoginState | None:
        """Remove and return the state if it exists, has this kind and is unexpired.

        Single use: a second call with the same value returns None.
        """

    # -- the bridge's own secret ---------------------------------------------------
    @abc.abstractmethod
    async def bridge_secret(self) -> bytes:
        """The bridge's random 32-byte secret, generated and stored durably on first call.

        It keys the opaque visitor tokens (DESIGN.md "Omnichannel mapping"), so it must
        never change for a store: every replica sharing the store gets the same bytes
        (a concurrent first call must not create two). Encrypted at rest like tokens
        when the store has an encryption key.
        """

    # -- conversations -----------------------------------------------------------
    @abc.abstractmethod
    async def conversation(self, page_id: str, igsid: str) -> Conversation | None: ...

    @abc.abstractmethod
    async def conversation_by_token(self, visitor_token: str) -> Conversation | None: ...

    @abc.abstractmethod
    async def save_conversation(self, conversation: Conversation) -> None:
        """Insert or replace; sets ``updated_at``."""

    @abc.abstractmethod
    async def conversations_waiting(self) -> list[Conversation]:
        """Conversations inside an offline spell (waiting for an agent)."""

    @abc.abstractmethod
    async def visitors_since(self, since: float) -> dict[str, int]:
        """Per page id: how many of its visitors last wrote at or after ``since`` (epoch s)."""

    # -- work queues -------------------------------------------------------------
    @abc.abstractmethod
    async def enqueue(
        self, items: list[WorkItem], dedupe_keys: list[str | None] | None = None
    ) -> list[WorkItem]:
        """Durably add items; return those actually added.

        An item is skipped when an item with the same ``item_id`` is pending, or when
        its dedupe key (``dedupe_keys[i]``, default ``item_id``) was remembered and has
        not expired. Added items' dedupe keys are remembered (default TTL). Assigns
        ``seq`` and ``created_at``. One durable write for the whole list.
        """

    @abc.abstractmethod
    async def next_items(
        self, queue: QueueName, now: float, exclude: set[str], limit: int
    ) -> list[WorkItem]:
        """The head item of up to ``limit`` conversations whose head is due.

        A conversation's head is its first pending item in ``(order_ts, seq)`` order;
        it is returned only when ``next_try_at <= now`` and the conversation is not in
        ``exclude`` (conversations already being worked on).
        """

    @abc.abstractmethod
    async def head(self, queue: QueueName, conversation: str) -> WorkItem | None:
        """The first pending item of one conversation (due or not)."""

    @abc.abstractmethod
    async def complete(self, item: WorkItem, remember: list[str] | None = None) -> None:
        """Delete a finished item; optionally remember extra dedupe keys in the same write."""

    async def relay_context(
        self, page_id: str, igsid: str, seen_key: str | None = None
    ) -> tuple[Page | None, bool, Conversation | None]:
        """``page(page_id)``, ``seen(seen_key)`` (False without a key) and
        ``conversation(page_id, igsid)``: what the relay reads before every item, which
        a store may answer in one round trip."""
        page = await self.page(page_id)
        seen = seen_key is not None and await self.seen(seen_key)
        return page, seen, await self.conversation(page_id, igsid)

    async def complete_then_head(
        self, item: WorkItem, remember: list[str] | None = None
    ) -> WorkItem | None:
        """:meth:`complete`, then :meth:`head` of the item's conversation.

        A worker draining a conversation asks both after every item; a store may answer
        them in one round trip.
        """
        await self.complete(item, remember)
        return await self.head(item.queue, item.conversation)

    @abc.abstractmethod
    async def update_item(self, item: WorkItem) -> None:
        """Persist ``attempts``, ``next_try_at``, ``last_error``, ``progress`` and
        ``sending_at``."""

    @abc.abstractmethod
    async def queue_depth(self, queue: QueueName) -> int: ...

    @abc.abstractmethod
    async def earliest_due(self, queue: QueueName) -> float | None:
        """The smallest ``next_try_at`` among conversation heads, or None if empty."""

    # -- deduplication keys --------------------------------------------------------
    @abc.abstractmethod
    async def remember(self, key: str, ttl: float | None = None) -> bool:
        """Record a key; return False if it was already remembered (and unexpired)."""

    @abc.abstractmethod
    async def seen(self, key: str) -> bool: ...

    # -- maintenance -----------------------------------------------------------------
    @abc.abstractmethod
    async def expire(self, now: float) -> dict[str, int]:
        """Drop expired dedupe keys, login states and idle conversations; return counts."""

    # -- additions (non-abstract, so existing implementations keep working) -------------
    async def pending_items(self, queue: QueueName, conversation: str) -> list[WorkItem]:
        """Every pending item of one conversation, in processing order."""
        raise NotImplementedError

    async def set_aside(self, item: WorkItem, reason: str) -> None:
        """Move ``item`` out of its queue into the set-aside list, in one durable write.

        The conversation's next item becomes its head at once. Setting aside an item that
        is no longer pending does nothing. Nothing set aside ever expires: an admin reads
        the list (``/instagram pages``) and the item stays as evidence.
        """
        raise NotImplementedError

    async def set_aside_items(self) -> list[SetAsideItem]:
        """Every set-aside item, oldest first."""
        raise NotImplementedError

    async def mark(self, name: str) -> float | None:
        """A named number kept across restarts (None if never set). Reconciliation's
        bookkeeping: ``heard:<page_id>`` (when Meta was last heard from for the page),
        ``reconcile:<page_id>:<what>`` (its counts and last run, for ``/instagram pages``).
        """
        raise NotImplementedError

    async def set_marks(self, values: dict[str, float]) -> None:
        """Durably set several marks in one write (they never expire)."""
        raise NotImplementedError

    async def add_marks(self, deltas: dict[str, float], *, once: str | None = None) -> bool:
        """Durably add to several marks (a missing one counts from 0), atomically: two
        concurrent additions both count. With ``once``, a dedupe key: nothing is added
        when it is already remembered, else it is remembered (default TTL) in the same
        write, so a crash never counts one event twice or not at all. Returns whether
        the marks were added."""
        raise NotImplementedError

    async def stats(self) -> dict[str, int]:
        """Counts for metrics and ``doctor``: queue depths and table sizes."""
        return {q: await self.queue_depth(q) for q in QUEUES}

    @contextlib.asynccontextmanager
    async def once(self, key: str, ttl: float) -> AsyncIterator[bool]:
        """Do something once per ``key`` among every process on this store.

        ``async with store.once(key, ttl) as mine:`` — ``mine`` is True for the one
        caller that should do it; when that block ends (however it ends) ``key`` is
        remembered for ``ttl`` seconds and every later caller gets False. A caller
        arriving while another is inside waits for it; if that one's process dies
        inside, a waiting one gets True. This implementation is for one process (an
        in-process lock); a store shared by several processes overrides it.
        """
        async with self._once_in_process(key):
            if await self.seen(key):
                yield False
                return
            try:
                yield True
            finally:
                await self.remember(key, ttl)

    @contextlib.asynccontextmanager
    async def _once_in_process(self, key: str) -> AsyncIterator[None]:
        """Callers of :meth:`once` with one ``key`` in this process, one at a time."""
        locks: dict[str, asyncio.Lock] = self.__dict__.setdefault("_once_locks", {})
        lock = locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                yield
        finally:
            # A late caller may make a new lock: it still finds the key remembered.
            if not lock.locked() and locks.get(key) is lock:
                del locks[key]

    async def dump(self) -> StoreDump:
        """Every record, decrypted (``rc-instagram storage migrate``; run offline)."""
        raise NotImplementedError

    async def restore(self, dump: StoreDump) -> None:
        """Add a dump's records as they are (timestamps, order, expiries kept).

        For an empty store only: the caller checks, and runs it offline.
        """
        raise NotImplementedError
