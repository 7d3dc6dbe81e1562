"""Relay Omnichannel → Instagram: the processor of the ``outbound`` queue.

One sender for everything the visitor receives from us — agents' replies
(``agent_message``), the page's ``welcome``, ``offline`` and ``finished`` texts — so
one ordering rule holds: per conversation strictly in queue order. Notes to the agent
(``note``) go the other way, into the Rocket.Chat room, on their own per-room key.

Meta's rules, applied before every send (protocols/instagram.md §3):

- Text is at most 1000 UTF-8 bytes per message: longer texts are split at whitespace
  into ordered parts whose concatenation is the original text.
- The visitor's last inbound message opens a 24-hour window (``RESPONSE``); from 24 h to
  7 days only a human agent may reply, with ``MESSAGE_TAG``/``HUMAN_AGENT``, and only
  when ``instagram.human_agent_tag`` is configured (it needs Meta's approval); beyond
  7 days nothing may be sent.

Failures: throttling and transient errors are retried durably with jittered
exponential backoff (the item stays at the head of its conversation, so order is
kept); code 190 holds the page's items until it is re-authorized; anything the agent
can act on (window closed, user unavailable, blocked) becomes a note in the room.

Exactly once, though the Send API has no idempotency key: before each part is sent,
``item.sending_at`` is written durably; after the send, ``item.progress`` (or the item's
completion). A part found with ``sending_at`` still set (a crash or a timeout came in
between) is settled by reading the thread back (:mod:`bot.instagram.conversations`),
once Meta must have handled the request (:data:`SEND_SEALED_AFTER`), before anything
is sent again: a matching message from the account → delivered, not
sent again; certainly missing → sent once; the record cannot tell (identical texts, the
thread moved past the 20 messages Meta shows, the read refused) → unknown: never resent,
the agent gets a note in the room and can send it again by hand. Every part therefore
ends delivered, failed (a note with Meta's reason) or unknown (a note).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from bot import messages
from bot.instagram.conversations import (
    ABSENT,
    DELIVERED,
    UNKNOWN,
    Settlement,
    ThreadReader,
    settle,
)
from bot.instagram.graph import (
    GraphAuthError,
    GraphConfigError,
    GraphError,
    GraphIncident,
    GraphRetryable,
    GraphThrottled,
    GraphWindowClosed,
)
from bot.relay.media import MAX_FETCH, MediaRefused, prepare
from bot.relay.worker import Done, Outcome, Retry, retry_delay

if TYPE_CHECKING:
    from bot.relay.order import ReplyOrder
from bot.rocketchat.ddp import parse_date
from bot.rocketchat.rest import (
    FileRefused,
    NotAllowed,
    RateLimited,
    RocketChatError,
    RoomClosed,
    Unavailable,
)
from storage.base import Conversation, Page, Store, WorkItem

log = logging.getLogger("bot.relay")

#: Meta's limit on one text message (protocols/instagram.md §3.2): the send-message page
#: says "1000 bytes or less" and, under Limitations, "less than 1000 characters"; 999
#: bytes satisfies both readings (audit row 43).
MAX_TEXT_BYTES = 999
#: The standard messaging window after the visitor's last message.
RESPONSE_WINDOW = 24 * 3600.0
#: How long a human agent may still answer with the HUMAN_AGENT tag.
HUMAN_AGENT_WINDOW = 7 * 24 * 3600.0

#: Seconds after a send started by which Meta has handled it, or never will: the
#: earliest a send in doubt is read back. Meta answers a send well within this; one it
#: handled later still (a request stuck at Meta for longer) could be sent twice.
SEND_SEALED_AFTER = 2.0
#: Item kinds this processor sends to the visitor.
VISITOR_KINDS = frozenset({"agent_message", "welcome", "offline", "finished"})

#: Graph error codes that mean "the visitor cannot be reached"; the agent is told.
UNAVAILABLE_CODES = frozenset({551})
BLOCKED_SUBCODES = frozenset({1545041})
ACCOUNT_UNAVAILABLE_CODES = frozenset({36103})
#: Admins hear about one configuration problem kind per page at most this often.
CONFIG_ALERT_INTERVAL = 24 * 3600.0

#: How long one file download from Rocket.Chat may wait per read (25 MB on a slow link).
DOWNLOAD_TIMEOUT = 120.0
#: Files held in memory at once (each up to 25 MB, plus a converted copy), whatever the
#: number of conversations sending in parallel.
MEDIA_SLOTS = 4


# --- pure helpers ---------------------------------------------------------------------


def split_text(text: str, limit: int = MAX_TEXT_BYTES) -> list[str]:
    """Split ``text`` into ordered parts of at most ``limit`` UTF-8 bytes.

    Parts break after whitespace (preferring a line break in the second half of a
    part), so words stay whole; the whitespace stays at the end of the earlier part
    and ``"".join(parts) == text`` always holds. A word longer than ``limit`` is cut
    at a character boundary. Empty text gives no parts.
    """
    if limit < 4:
        raise ValueError("limit must hold at least one UTF-8 character (4 bytes)")
    parts: list[str] = []
    rest = text
    while len(rest.encode("utf-8")) > limit:
        # The longest prefix that fits, never cutting a character in two.
        window = rest.encode("utf-8")[:limit].decode("utf-8", "ignore")
        cut = _break_point(window)
        parts.append(rest[:cut])
        rest = rest[cut:]
    if rest:
        parts.append(rest)
    return parts


def _break_point(window: str) -> int:
    """Where to end a part taken from ``window`` (a prefix that fits)."""
    newline = window.rfind("\n")
    if newline >= len(window) // 2:
        return newline + 1
    for index in range(len(window) - 1, 0, -1):
        if window[index].isspace():
            return index + 1
    return len(window)


def build_parts(text: str, files: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The parts of one item, in sending order: ``{"file": …}`` then Send API texts.

    Files first (each its own upload and send), then the text (the caption) split into
    parts. Whitespace-only parts are dropped: Meta refuses empty texts. A file part is
    turned into a Send API message only when it is sent (see ``_media_message``).
    """
    parts: list[dict[str, Any]] = [{"file": file} for file in files if file.get("url")]
    parts.extend({"text": chunk} for chunk in split_text(text or "") if chunk.strip())
    return parts


def upload_path(url: str) -> str | None:
    """The ``/file-upload/…`` path and query of a Rocket.Chat file link, or None.

    ``publicFilePath`` is built on ``Site_Url``, which may be a name the bridge cannot
    reach (or one Meta cannot): only the path is kept, and fetched from
    ``rocketchat.url`` with the bot's credentials. The query keeps the link's JWT.
    """
    parts = urlsplit(url)
    at = parts.path.find("/file-upload/")
    if at < 0:
        return None
    return parts.path[at:] + (f"?{parts.query}" if parts.query else "")


@dataclass(frozen=True)
class WindowDecision:
    """Whether and how Meta's messaging window lets us send now."""

    send: bool
    messaging_type: str = "RESPONSE"
    tag: str | None = None
    reason: str = ""  # why not: "human_only", "tag_disabled", "expired"


def window_decision(
    last_inbound_at: float | None, now: float, *, human: bool, human_agent_tag: bool
) -> WindowDecision:
    """Apply the 24-hour / 7-day rule (protocols/instagram.md §3.3).

    An unknown last-inbound time is sent as a ``RESPONSE`` and left to Meta: it refuses
    with code 10 when the window is closed, and the agent is told then.
    """
    if last_inbound_at is None:
        return WindowDecision(True)
    age = now - last_inbound_at
    if age <= RESPONSE_WINDOW:
        return WindowDecision(True)
    if age > HUMAN_AGENT_WINDOW:
        return WindowDecision(False, reason="expired")
    if not human:
        return WindowDecision(False, reason="human_only")
    if not human_agent_tag:
        return WindowDecision(False, reason="tag_disabled")
    return WindowDecision(True, "MESSAGE_TAG", "HUMAN_AGENT")


def note_id(key: str) -> str:
    """A deterministic Rocket.Chat message ``_id`` for a note (retries never duplicate)."""
    return "igx" + hashlib.sha256(key.encode()).hexdigest()[:20]


#: Kinds that come from an Omnichannel webhook, i.e. name a room someone else reported.
RC_WEBHOOK_KINDS = frozenset({"agent_message", "finished"})
#: How often a reply for an unknown room is looked at again (a second apart) before it
#: is dropped as not the bridge's.
FOREIGN_ROOM_CHECKS = 3


def parse_timestamp(value: Any) -> float | None:
    """Epoch seconds from an ISO string (REST/webhooks) or EJSON ``{"$date": ms}``."""
    parsed = parse_date(value)
    return parsed.timestamp() if parsed is not None else None


def split_conversation(key: str) -> tuple[str, str]:
    """``(page_id, igsid)`` of a conversation key ``page_id:igsid``."""
    page_id, _, igsid = key.partition(":")
    return page_id, igsid


# --- the processor ----------------------------------------------------------------------


class OutboundRelay:
    """Processes ``outbound`` work items (see the module docstring)."""

    def __init__(
        self,
        *,
        store: Store,
        graphs: Any,  # bot.instagram.accounts.GraphRoutes
        rest: Any,  # bot.rest.RocketChatREST
        human_agent_tag: bool,
        mark_needs_reauth: Callable[[str], Awaitable[Any]],
        notify_admins: Callable[[str], Awaitable[None]] | None = None,
        metrics: Any = None,  # bot.metrics.Metrics
        clock: Callable[[], float] = time.time,
        wake: Callable[[], None] | None = None,
        retry_base: float = 2.0,
        retry_cap: float = 600.0,
        hold_interval: float = 300.0,
    ) -> None:
        self.store = store
        self.graphs = graphs
        self.rest = rest
        self.human_agent_tag = human_agent_tag
        #: ``bot.instagram.reauth.mark_needs_reauth`` bound to the bot: flags the page, DMs admins.
        self.mark_needs_reauth = mark_needs_reauth
        #: DMs every admin (``Bot.notify_admins``): Meta configuration problems.
        self.notify_admins = notify_admins
        self.metrics = metrics
        self.clock = clock
        #: Called after enqueueing a note or re-scheduling held items (worker.notify).
        self.wake = wake or (lambda: None)
        self.retry_base = retry_base
        self.retry_cap = retry_cap
        #: How long items of a page waiting for re-authorization sleep between looks.
        self.hold_interval = hold_interval
        self._media_slots = asyncio.Semaphore(MEDIA_SLOTS)
        # page_id -> conversations whose head is held for re-authorization (in memory:
        # after a restart held items are found again within hold_interval).
        self._held: dict[str, set[str]] = {}
        #: Reads threads back to settle sends in doubt (paced by the graph client).
        self.reader = ThreadReader(graphs)
        #: A send in doubt from an earlier process is sealed by now: any read from here on
        #: will do. Timeouts in this process are sealed when their call returned.
        self._started = self.reader.now()
        self._sealed: dict[str, float] = {}  # item id -> when its timed-out call returned
        #: Orders replies Rocket.Chat redelivers after a restart (bot.relay.order).
        self.order: ReplyOrder | None = None

    # -- entry point ---------------------------------------------------------------------
    async def process(self, item: WorkItem) -> Outcome:
        """Do one item's effect; never raises for an expected failure."""
        if item.kind == "note":
            return await self._post_note(item)
        if item.kind not in VISITOR_KINDS:
            log.warning("outbound item %s has unknown kind %r; dropped", item.item_id, item.kind)
            self._dropped("unknown_kind")
            return Done()
        page_id, igsid = split_conversation(item.conversation)
        # The room first, then the page: a note about an unconnected page goes only into
        # a room the bridge opened, never into one a forged webhook names.
        conversation = await self.store.conversation(page_id, igsid)
        if item.kind in RC_WEBHOOK_KINDS:
            room_id = item.payload.get("room_id")
            if not room_id or conversation is None or conversation.room_id != room_id:
                # A room the bridge did not open (or none named) must not be able to make
                # the page message an Instagram user. A room opened a moment ago may not
                # be recorded yet, so look again a few times before giving up.
                if room_id and item.attempts < FOREIGN_ROOM_CHECKS:
                    return Retry(self.clock() + 1.0, "room not known yet")
                log.warning("outbound item %s: room %s was not opened by the bridge; not sent",
                            item.item_id, room_id or "(none)")
                self._dropped("foreign_room")
                return Done()
        page = await self.store.page(page_id)
        if page is None or not page.page_token or not page.subscribed:
            log.warning(
                "outbound item %s (%s): page %s is not connected; not sent",
                item.item_id, item.kind, page_id,
            )
            await self._tell_agent(item, messages.OUTBOUND_PAGE_NOT_CONNECTED)
            self._dropped("page_not_connected")
            return Done()
        if page.needs_reauth:
            return self._hold(item, page_id)
        parts = build_parts(item.payload.get("text") or "", item.payload.get("files") or [])
        if item.progress >= len(parts):
            # Nothing (left) to send: an empty text, or every part went out before a crash.
            return Done()
        room_id = item.payload.get("room_id") if item.kind in RC_WEBHOOK_KINDS else None
        if (room_id and item.kind == "agent_message" and self.order is not None
                and item.progress == 0 and item.sending_at is None
                and await self.order.earlier_replies_queued(item, room_id)):
            # Replies typed before this one were still on Rocket.Chat's retry timer:
            # they are queued now, ahead of it; the queue hands them out first.
            return Retry(self.clock(), "earlier replies queued first")
        last_inbound = conversation.last_inbound_at if conversation else None
        now = self.clock()
        decision = window_decision(
            last_inbound, now, human=True, human_agent_tag=self.human_agent_tag
        )
        try:
            human = bool(decision.tag) and await self._sent_by_human(item)
        except (Unavailable, RateLimited) as exc:
            return Retry(self.clock() + retry_delay(item.attempts + 1),
                         f"agent roles unavailable: {type(exc).__name__}")
        if decision.tag and not human:
            # Only the tag window needs to know who wrote it (a roles look-up): ask late.
            decision = window_decision(
                last_inbound, now, human=False, human_agent_tag=self.human_agent_tag
            )
        if not decision.send:
            return await self._outside_window(item, conversation, decision)
        if item.progress == 0 and item.sending_at is None and await self._overtaken(item):
            return Retry(self.clock(), "an earlier item arrived meanwhile")
        return await self._send_parts(item, page, igsid, parts, decision)

    async def _still_first(self, item: WorkItem) -> bool:
        """Before a throttled send is tried again: False when an earlier reply was queued
        during the pause (and none of this item's parts has gone yet), so the queue hands
        that one out first instead of this one overtaking it."""
        return item.progress > 0 or not await self._overtaken(item)

    async def _overtaken(self, item: WorkItem) -> bool:
        """Whether an item ordered before this one was queued while this one was being
        looked at (a late webhook, or replies the order check just found): the queue
        then hands that one out first."""
        head = await self.store.head("outbound", item.conversation)
        return head is not None and head.item_id != item.item_id and (
            (head.order_ts, head.seq) < (item.order_ts, item.seq)
        )

    async def on_page_reauthorized(self, page_id: str) -> int:
        """Make the page's held items due now; returns how many were re-scheduled."""
        woken = 0
        now = self.clock()
        for conversation in sorted(self._held.pop(page_id, set())):
            item = await self.store.head("outbound", conversation)
            if item is not None and item.next_try_at > now:
                item.next_try_at = now
                await self.store.update_item(item)
                woken += 1
        log.info("page %s re-authorized: %d held conversation(s) resumed", page_id, woken)
        self.wake()
        return woken

    # -- sending ---------------------------------------------------------------------------
    async def _send_parts(
        self,
        item: WorkItem,
        page: Page,
        igsid: str,
        parts: list[dict[str, Any]],
        decision: WindowDecision,
    ) -> Outcome:
        remember: list[str] = []
        index = item.progress
        while index < len(parts):
            if item.sending_at is not None:
                # This part's send started before a crash or a timeout and its outcome
                # was never recorded: ask Instagram's record before sending anything.
                settled = await self._settle(item, page, igsid, parts[index], index, len(parts))
                if isinstance(settled, Retry):
                    return settled
                if settled is not None:  # delivered, or unknown: never sent again
                    remember.extend(settled)
                    index = await self._advance(item, index, len(parts), remember)
                    continue
            message = parts[index]
            if "file" in message:
                # Download and upload first: nothing reaches the visitor before the send.
                try:
                    message = await self._media_message(page, message["file"])
                except MediaRefused as exc:
                    # This file cannot go; the agent is told why and the rest still goes.
                    await self._file_refused(item, index, parts[index]["file"], exc)
                    index = await self._advance(item, index, len(parts), remember)
                    continue
                except (Unavailable, RateLimited) as exc:  # downloading from Rocket.Chat
                    delay = retry_delay(item.attempts + 1, base=self.retry_base,
                                        cap=self.retry_cap)
                    log.warning("outbound item %s part %d/%d: file download failed (%s); "
                                "retry in %.1f s", item.item_id, index + 1, len(parts), exc,
                                delay)
                    return Retry(self.clock() + delay, f"file download: {exc}")
                except GraphError as exc:
                    return await self._graph_failure(item, page, exc, index, len(parts))
            # Durable before the call: a crash from here on leaves a part to settle.
            item.sending_at = self.clock()
            await self.store.update_item(item)
            try:
                mid = await self.graphs.for_page(page).send_message(
                    page.page_id,
                    page.page_token,
                    igsid,
                    message,
                    messaging_type=decision.messaging_type,
                    tag=decision.tag,
                    still_wanted=lambda: self._still_first(item),
                )
            except GraphError as exc:
                return await self._graph_failure(item, page, exc, index, len(parts))
            log.info(
                "outbound item %s part %d/%d sent as %s (%s)",
                item.item_id, index + 1, len(parts), mid, decision.messaging_type,
            )
            remember.append(f"echo:{mid}")
            index = await self._advance(item, index, len(parts), remember)
        self._relayed(item.kind)
        return Done(remember=remember)

    async def _graph_failure(
        self, item: WorkItem, page: Page, exc: GraphError, index: int, total: int
    ) -> Outcome:
        """What a failed upload or send of part ``index`` means for the item.

        Only a send that may have reached Meta (a timeout, a 5xx, a network error) keeps
        ``sending_at``: the next attempt settles it by reading the thread back.
        """
        if isinstance(exc, GraphAuthError):
            item.sending_at = None  # refused: nothing was sent
            log.warning("outbound item %s: page %s token rejected (%s)",
                        item.item_id, page.page_id, exc)
            await self._needs_reauth(page)
            return self._hold(item, page.page_id)
        if isinstance(exc, GraphRetryable):
            delay = retry_delay(item.attempts + 1, base=self.retry_base, cap=self.retry_cap)
            if isinstance(exc, GraphThrottled):
                item.sending_at = None  # Meta refused the call: certainly not sent
            elif item.sending_at is not None:
                self._sealed[item.item_id] = self.reader.now()
            kind = ("throttled" if isinstance(exc, GraphThrottled)
                    else "meta_incident" if isinstance(exc, GraphIncident) else "transient")
            log.warning(
                "outbound item %s part %d/%d %s (%s); retry in %.1f s%s",
                item.item_id, index + 1, total, kind, exc, delay,
                "" if item.sending_at is None else ", settled by read-back first",
            )
            return Retry(self.clock() + delay, f"{kind}: {exc}")
        item.sending_at = None
        return await self._refused(item, page, exc, index, total)

    async def _advance(
        self, item: WorkItem, index: int, total: int, remember: list[str]
    ) -> int:
        """Record part ``index`` as done (its outcome is known); returns the next index."""
        item.sending_at = None
        item.progress = index + 1
        if index + 1 < total:
            # This write is what keeps a crash from settling the part again; the echo
            # keys follow (they only hide our own echoes).
            await self.store.update_item(item)
            for key in remember:
                await self.store.remember(key)
            remember.clear()
        return index + 1

    async def _settle(
        self, item: WorkItem, page: Page, igsid: str, part: dict[str, Any], index: int,
        total: int,
    ) -> list[str] | Retry | None:
        """Settle a part whose send was started but never recorded, from the thread.

        Returns the keys to remember when it was delivered or stays unknown (either way
        it is not sent again), None when the record shows it missing (send it once), or
        a Retry while Meta throttles the read.
        """
        started = item.sending_at or 0.0
        text = part.get("text", "")
        # Meta may still be handling a request whose connection died with us: read the
        # thread only once such a request must have been handled.
        sealed_in = started + SEND_SEALED_AFTER - self.clock()
        if sealed_in > 0:
            return Retry(self.clock() + sealed_in, "send in doubt: waiting to read back")
        fresh_after = max(self._sealed.get(item.item_id, self._started),
                          self.reader.now() + sealed_in)
        try:
            thread = await self.reader.messages(page, igsid, fresh_after)
        except GraphThrottled as exc:
            delay = retry_delay(item.attempts + 1, base=self.retry_base, cap=self.retry_cap)
            log.warning("outbound item %s part %d/%d: read-back throttled (%s); retry in %.1f s",
                        item.item_id, index + 1, total, exc, delay)
            return Retry(self.clock() + delay, f"read-back throttled: {exc}")
        except GraphError as exc:
            verdict = Settlement(UNKNOWN, reason="api_refused")
            log.warning("outbound item %s part %d/%d: Instagram's record could not be read "
                        "(%s)", item.item_id, index + 1, total, exc)
        else:
            verdict = settle(thread, account_id=page.instagram_id, text=text,
                             started_at=started)
        self._sealed.pop(item.item_id, None)
        # Counted once per send in doubt, even when a crash makes the next run settle it
        # again (a part sent once more after "absent" and interrupted again is a new one).
        if await self._count(page.page_id, "unknown" if verdict.state == UNKNOWN
                             else "settled", once=f"settled:{item.item_id}:{index}:{started}"):
            self._settled(verdict.state if verdict.state != ABSENT else "resent")
        if verdict.state == DELIVERED:
            log.info("outbound item %s part %d/%d: delivered before the interruption "
                     "(%s, read back); not sent again", item.item_id, index + 1, total,
                     verdict.mid)
            return [f"echo:{verdict.mid}"]
        if verdict.state == ABSENT:
            log.info("outbound item %s part %d/%d: not in Instagram's thread; sending it once",
                     item.item_id, index + 1, total)
            item.sending_at = None
            return None
        log.warning("outbound item %s part %d/%d: outcome unknown (%s); not sent again, "
                    "the agent is told", item.item_id, index + 1, total, verdict.reason)
        await self._tell_agent(
            item, messages.OUTBOUND_OUTCOME_UNKNOWN,
            reason=messages.OUTCOME_UNKNOWN_REASONS.get(verdict.reason, verdict.reason),
            sent=index, total=total, key=f"{item.item_id}:unknown:{index}",
            partial_template=messages.OUTBOUND_UNKNOWN_PART if total > 1 else "",
        )
        return []

    async def _count(self, page_id: str, what: str, *, once: str) -> bool:
        """Add one to a per-page reconciliation count (shown by ``/instagram pages``),
        once per ``once`` key; True when it was added."""
        try:
            return await self.store.add_marks({f"reconcile:{page_id}:{what}": 1}, once=once)
        except Exception:  # a count must never decide an item's fate
            log.exception("could not count %s for page %s", what, page_id)
            return False

    async def _media_message(self, page: Page, file: dict[str, Any]) -> dict[str, Any]:
        """Download one agent file, check/convert it, upload it to Meta: the Send API message.

        Raises MediaRefused for anything the agent must hear about; Unavailable and
        RateLimited (Rocket.Chat) and GraphRetryable/GraphAuthError (Meta) to retry or hold.
        """
        name = str(file.get("name") or "file")
        path = upload_path(str(file.get("url") or ""))
        if path is None:
            raise MediaRefused("fetch", messages.MEDIA_NOT_ROCKETCHAT)
        declared = file.get("size")
        if isinstance(declared, int) and declared > MAX_FETCH:
            raise MediaRefused("size", messages.MEDIA_FETCH_TOO_LARGE)
        async with self._media_slots:
            return await self._transfer(page, file, path, name)

    async def _transfer(
        self, page: Page, file: dict[str, Any], path: str, name: str
    ) -> dict[str, Any]:
        """Download, prepare and upload one file (see ``_media_message``)."""
        try:
            data, served_mime = await self.rest.download(
                path, max_bytes=MAX_FETCH, timeout=DOWNLOAD_TIMEOUT)
        except FileRefused as exc:
            if exc.status == 413:
                raise MediaRefused("size", messages.MEDIA_FETCH_TOO_LARGE) from None
            if exc.status == 404:
                raise MediaRefused("fetch", messages.MEDIA_FETCH_MISSING) from None
            raise MediaRefused(
                "fetch", messages.MEDIA_FETCH_REFUSED.format(status=exc.status)) from None
        media = await asyncio.to_thread(prepare, data, str(file.get("type") or served_mime), name)
        if media.converted_from:
            log.info("file %s converted from %s for Instagram (%d bytes)",
                     media.filename, media.converted_from, len(media.data))
        try:
            attachment_id = await self.graphs.for_page(page).upload_attachment(
                page.page_id, page.page_token, media.kind, media.data, media.filename, media.mime)
        except (GraphAuthError, GraphRetryable, GraphWindowClosed, GraphConfigError):
            raise  # about the page or the conversation, not this file: handled as for sends
        except GraphError as exc:
            raise MediaRefused("meta", messages.MEDIA_META_REFUSED.format(error=exc)) from None
        return {"attachment": {"type": media.kind, "payload": {"attachment_id": attachment_id}}}

    async def _file_refused(
        self, item: WorkItem, index: int, file: dict[str, Any], exc: MediaRefused
    ) -> None:
        log.warning("outbound item %s part %d: file not sent (%s): %s",
                    item.item_id, index + 1, exc.key, exc.reason)
        await self._tell_agent(item, messages.OUTBOUND_FILE_REFUSED, error=exc.reason,
                               name=str(file.get("name") or "file"), key=f"{item.item_id}:{index}")
        self._dropped(f"media_{exc.key}")

    async def _refused(
        self, item: WorkItem, page: Page, exc: GraphError, index: int, total: int
    ) -> Outcome:
        """A permanent Send API error: tell the agent what happened; the item is finished."""
        code, subcode = exc.code, exc.subcode
        if isinstance(exc, GraphWindowClosed):
            text, reason = messages.OUTBOUND_META_WINDOW, "window_closed"
        elif isinstance(exc, GraphConfigError):
            text, reason = messages.OUTBOUND_META_CONFIG, "meta_config"
            await self._config_problem(page, exc)
        elif code in UNAVAILABLE_CODES or subcode in BLOCKED_SUBCODES:
            text, reason = messages.OUTBOUND_USER_UNAVAILABLE, "user_unavailable"
        elif code in ACCOUNT_UNAVAILABLE_CODES:
            text, reason = messages.OUTBOUND_ACCOUNT_UNAVAILABLE, "account_unavailable"
        else:
            text, reason = messages.OUTBOUND_REFUSED, "refused"
        log.warning(
            "outbound item %s (%s) part %d/%d refused by Meta: %s",
            item.item_id, item.kind, index + 1, total, exc,
        )
        await self._tell_agent(item, text, error=str(exc), sent=index, total=total)
        self._dropped(reason)
        return Done()

    async def _outside_window(
        self, item: WorkItem, conversation: Conversation | None, decision: WindowDecision
    ) -> Outcome:
        log.info(
            "outbound item %s (%s) not sent: outside the messaging window (%s)",
            item.item_id, item.kind, decision.reason,
        )
        text = {
            "expired": messages.OUTBOUND_WINDOW_EXPIRED,
            "tag_disabled": messages.OUTBOUND_WINDOW_TAG_DISABLED,
            "human_only": messages.OUTBOUND_WINDOW_HUMAN_ONLY,
        }[decision.reason]
        await self._tell_agent(item, text, conversation=conversation)
        self._dropped(f"window_{decision.reason}")
        return Done()

    async def _sent_by_human(self, item: WorkItem) -> bool:
        """Whether a person (not a bot agent, not an automatic text) wrote the item.

        Webhook entries carry no ``bot`` flag and ``bot`` is never a public role (audit
        D4), so the sender is looked up in the list of ``bot``-role accounts
        (``rest.bot_accounts``, from ``users.list``). When that list cannot be read the
        answer is "not a person": a bot's message must never carry ``HUMAN_AGENT``.
        Unavailable / RateLimited propagate (the caller retries later).
        """
        if item.kind != "agent_message" or item.payload.get("bot"):
            return False
        agent_id = item.payload.get("agent_id")
        if not agent_id:
            return False
        try:
            bots = await self.rest.bot_accounts()
        except (Unavailable, RateLimited):
            raise
        except RocketChatError as exc:
            log.warning("cannot tell whether agent %s is a bot (%s); not using HUMAN_AGENT",
                        agent_id, exc)
            return False
        return agent_id not in bots

    async def _config_problem(self, page: Page, exc: GraphConfigError) -> None:
        """Tell the admins about a Meta configuration refusal, once per kind, page and day."""
        if self.notify_admins is None:
            return
        if not await self.store.remember(f"meta-config:{page.page_id}:{exc.kind}",
                                         ttl=CONFIG_ALERT_INTERVAL):
            return
        log.warning("page %s: Meta configuration problem (%s); telling the admins",
                    page.page_id, exc)
        text = messages.render(messages.META_CONFIG_PROBLEM,
            username=page.username or page.instagram_id, name=page.name,
            page_id=page.page_id, error=exc,
        )
        try:
            await self.notify_admins(text)
        except Exception:  # the agent's note and the item's end must not depend on a DM
            log.exception("could not tell the admins about page %s's Meta problem",
                          page.page_id)

    # -- re-authorization ---------------------------------------------------------------------
    def _hold(self, item: WorkItem, page_id: str) -> Retry:
        self._held.setdefault(page_id, set()).add(item.conversation)
        log.info("outbound item %s held: page %s needs re-authorization", item.item_id, page_id)
        return Retry(self.clock() + self.hold_interval, "held: page needs re-authorization")

    async def _needs_reauth(self, page: Page) -> None:
        """Mark the page as needing re-authorization; the callback tells admins once."""
        try:
            await self.mark_needs_reauth(page.page_id)
        except Exception:  # the hold must happen even if marking or the DM failed
            log.exception("could not mark page %s as needing re-authorization", page.page_id)

    # -- notes to the agent ---------------------------------------------------------------------
    async def _tell_agent(
        self,
        item: WorkItem,
        template: str,
        *,
        conversation: Conversation | None = None,
        error: str = "",
        sent: int = 0,
        total: int = 0,
        name: str = "",
        key: str | None = None,
        reason: str = "",
        partial_template: str | None = None,
    ) -> None:
        """Queue a note into the item's room (agents' messages only; others are logged).

        ``key`` tells apart several notes about one item (one per refused file, one per
        part of unknown outcome); ``partial_template`` replaces the "only the first n
        parts" phrase.
        """
        room_id = item.payload.get("room_id")
        if item.kind != "agent_message" or not room_id:
            return
        if conversation is None:
            page_id, igsid = split_conversation(item.conversation)
            conversation = await self.store.conversation(page_id, igsid)
        visitor = (conversation.visitor_name if conversation else "") or "the visitor"
        if partial_template is not None:
            partial = messages.render(partial_template, part=sent + 1, total=total)
        else:
            partial = (messages.render(messages.OUTBOUND_PARTIAL, sent=sent, total=total)
                       if sent else "")
        text = messages.render(template, visitor=visitor, error=error,
                               partial=messages.Markup(partial), name=name, reason=reason)
        note = WorkItem(
            item_id=f"note:{key or item.item_id}",
            queue="outbound",
            conversation=f"note:{room_id}",
            kind="note",
            payload={"room_id": room_id, "text": text, "about": item.item_id},
            order_ts=self.clock(),
        )
        await self.store.enqueue([note])
        self.wake()

    async def _post_note(self, item: WorkItem) -> Outcome:
        room_id = item.payload.get("room_id", "")
        text = item.payload.get("text", "")
        try:
            await self.rest.send_message(room_id, text, note_id(item.item_id))
        except (Unavailable, RateLimited) as exc:
            delay = retry_delay(item.attempts + 1, base=self.retry_base, cap=self.retry_cap)
            log.warning("note %s to room %s failed (%s); retry in %.1f s",
                        item.item_id, room_id, exc, delay)
            return Retry(self.clock() + delay, f"note: {exc}")
        except RoomClosed:
            log.info("note %s not posted: room %s is closed", item.item_id, room_id)
        except NotAllowed as exc:
            log.error(
                "note %s not posted: the bot may not post in livechat room %s (%s); "
                "give it the livechat-manager role", item.item_id, room_id, exc,
            )
        except RocketChatError as exc:
            log.error("note %s not posted to room %s: %s", item.item_id, room_id, exc)
        else:
            log.info("note %s posted to room %s", item.item_id, room_id)
        return Done()

    # -- metrics ------------------------------------------------------------------------------
    def _relayed(self, kind: str) -> None:
        if self.metrics is not None:
            self.metrics.relayed.labels("outbound", kind).inc()

    def _settled(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.outbound_settled.labels(outcome).inc()

    def _dropped(self, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.dropped.labels("outbound", reason).inc()
