"""Instagram's own record of a thread (Conversations API, protocols/instagram.md §10).

Two uses: settling a send whose outcome was never recorded (a crash or a timeout
between the Send API call and its record; :func:`settle`), and finding visitor messages
Meta never delivered (:mod:`bot.relay.backfill`). Meta's limits shape both:

- only the newest 20 messages of a thread can be read;
- there is no client message id: a send is matched by sender (the Instagram account),
  text, and ``created_time`` (one-second resolution) not before the send started;
- 2 calls per second per account (:class:`bot.instagram.graph.AccountPacer`).

Whatever the record cannot tell apart is :data:`UNKNOWN`, never "not sent": a send is
repeated only when the record shows for certain that it is missing.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from bot.instagram.accounts import GraphRoutes
from bot.instagram.graph import MESSAGE_FIELDS
from storage.base import Page

log = logging.getLogger("bot.graph")

#: How many messages of a thread Meta returns (the newest).
THREAD_WINDOW = 20
#: Two clocks are compared (ours for the send's start, Meta's for ``created_time``):
#: NTP keeps them far closer than this.
CLOCK_SKEW = 0.25

DELIVERED, ABSENT, UNKNOWN = "delivered", "absent", "unknown"


@dataclass(frozen=True)
class ThreadMessage:
    """One message of a thread as the Conversations API shows it."""

    mid: str
    created_at: float  # epoch seconds
    sender: str
    text: str


@dataclass(frozen=True)
class Settlement:
    """What the record says about one send: delivered (with its mid), absent, unknown."""

    state: str
    mid: str | None = None
    reason: str = ""


def parse_time(value: Any) -> float | None:
    """Epoch seconds from Graph's ``2026-01-02T03:04:05+0000`` (None if unreadable)."""
    if not isinstance(value, str):
        return None
    for fmt in ("%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%dT%H:%M:%S.%f%z"):
        try:
            return datetime.strptime(value, fmt).timestamp()
        except ValueError:
            continue
    return None


def parse_messages(raw: list[dict[str, Any]]) -> list[ThreadMessage]:
    """The readable messages of a ``messages`` list (newest first, as Meta sends them)."""
    out = []
    for message in raw:
        created = parse_time(message.get("created_time"))
        sender = message.get("from")
        sender_id = sender.get("id") if isinstance(sender, dict) else None
        if not message.get("id") or created is None or sender_id is None:
            continue
        text = message.get("message")
        out.append(ThreadMessage(str(message["id"]), created, str(sender_id),
                                 text if isinstance(text, str) else ""))
    return out


def settle(
    messages: list[ThreadMessage], *, account_id: str, text: str, started_at: float,
    window: int = THREAD_WINDOW,
) -> Settlement:
    """Whether a send of ``text`` (an attachment: ``""``) started at ``started_at``
    reached the thread, judged from its newest messages.

    ``created_time`` is whole seconds (floored), so the send, had it arrived, carries a
    time of at least ``earliest`` = the start's second (less the clock skew).

    Delivered: exactly one message from the account with this text, and not older than
    ``earliest``. Unknown: that text from the account appears more than once with one
    of them since ``earliest`` (identical texts cannot be told apart), or the thread
    shows a full window whose oldest message is not older than ``earliest`` (the send
    may sit just behind what Meta lets us read). Absent otherwise: the window reaches
    back past the moment the send began and it is not there. Texts are compared
    without surrounding whitespace (split parts keep their trailing space, which Meta
    may not store).
    """
    wanted = text.strip()
    earliest = float(math.floor(started_at - CLOCK_SKEW))
    same = [m for m in messages if m.sender == account_id and m.text.strip() == wanted]
    after = [m for m in same if m.created_at >= earliest]
    if len(after) == 1 and len(same) == 1:
        return Settlement(DELIVERED, after[0].mid)
    if after:
        return Settlement(UNKNOWN, reason="identical_texts")
    if len(messages) >= window and min(m.created_at for m in messages) >= earliest:
        return Settlement(UNKNOWN, reason="thread_moved_on")
    return Settlement(ABSENT)


#: Threads one snapshot lists (pages of :data:`SNAPSHOT_LIMIT`): the recently updated
#: ones, where sends in doubt are; an older thread is read on its own.
SNAPSHOT_PAGES = 4
SNAPSHOT_LIMIT = 25


@dataclass
class _Snapshot:
    started: float
    task: asyncio.Task[dict[str, list[ThreadMessage]]]


class ThreadReader:
    """Reads people's threads with a page, sparing the account's 2 calls/s.

    After a restart many conversations may have a send in doubt at once. Their reads are
    coalesced: one listing of the page's recently updated threads, with participants and
    newest messages (``fields=participants,messages{…}``), answers all of them; a thread
    not in it is read on its own (thread id by ``user_id``, cached: ids never change). A
    caller says how fresh the read must be (``fresh_after``, this reader's clock): the
    moment its send's outcome was sealed (the start of this process for a send the
    previous one left in doubt, the failed call's return for a timeout); only a listing
    started after that answers it.
    """

    def __init__(
        self, graphs: GraphRoutes, clock: Callable[[], float] = time.monotonic
    ) -> None:
        #: The Graph client of each account's route (Facebook or Instagram Login).
        self.graphs = graphs
        self._clock = clock
        self._ids: dict[tuple[str, str], str] = {}
        self._snapshots: dict[str, _Snapshot] = {}

    async def thread_id(self, page: Page, igsid: str) -> str | None:
        """The conversation id of ``igsid``'s thread with the page, None if there is none."""
        key = (page.page_id, igsid)
        if key not in self._ids:
            body = await self.graphs.for_page(page).conversations(
                page.page_id, page.page_token, user_id=igsid)
            data = body.get("data") if isinstance(body.get("data"), list) else []
            found = next((t.get("id") for t in data if isinstance(t, dict) and t.get("id")), None)
            if found is None:
                return None
            self._ids[key] = str(found)
        return self._ids[key]

    def now(self) -> float:
        """This reader's clock (for ``fresh_after``)."""
        return self._clock()

    async def messages(
        self, page: Page, igsid: str, fresh_after: float | None = None
    ) -> list[ThreadMessage]:
        """The newest messages of ``igsid``'s thread (none when there is no thread yet),
        read after ``fresh_after`` (default: now)."""
        asked = self._clock() if fresh_after is None else fresh_after
        snapshot = self._snapshots.get(page.page_id)
        if snapshot is None or snapshot.started < asked:
            if snapshot is not None and not snapshot.task.done():
                # One listing at a time per page: wait for it, then list again for us.
                await asyncio.wait([snapshot.task])
                snapshot = self._snapshots.get(page.page_id)
            if snapshot is None or snapshot.started < asked:
                snapshot = _Snapshot(self._clock(), asyncio.ensure_future(self._list(page)))
                self._snapshots[page.page_id] = snapshot
        threads = await asyncio.shield(snapshot.task)
        if igsid in threads:
            return threads[igsid]
        thread = await self.thread_id(page, igsid)
        if thread is None:
            return []
        return await self.messages_of(page, thread)

    async def _list(self, page: Page) -> dict[str, list[ThreadMessage]]:
        """IGSID → newest messages, for the page's recently updated threads."""
        out: dict[str, list[ThreadMessage]] = {}
        after: str | None = None
        for _ in range(SNAPSHOT_PAGES):
            body = await self.graphs.for_page(page).conversations(
                page.page_id, page.page_token, after=after, limit=SNAPSHOT_LIMIT,
                fields=f"id,updated_time,participants,messages{{{MESSAGE_FIELDS}}}",
            )
            for thread in body.get("data") or []:
                if not isinstance(thread, dict):
                    continue
                people = (thread.get("participants") or {}).get("data") or []
                others = [str(p.get("id")) for p in people
                          if isinstance(p, dict) and str(p.get("id")) != page.instagram_id]
                messages = (thread.get("messages") or {}).get("data") or []
                if len(others) == 1 and thread.get("id"):
                    self._ids[(page.page_id, others[0])] = str(thread["id"])
                    out[others[0]] = parse_messages(messages)
            paging = body.get("paging") if isinstance(body.get("paging"), dict) else {}
            cursors = paging.get("cursors") if isinstance(paging.get("cursors"), dict) else {}
            after = cursors.get("after")
            if not paging.get("next") or not after:
                break
        return out

    async def messages_of(self, page: Page, thread: str) -> list[ThreadMessage]:
        """The newest messages of a thread by id."""
        raw = await self.graphs.for_page(page).thread_messages(
            page.page_id, page.page_token, thread)
        return parse_messages(raw)
