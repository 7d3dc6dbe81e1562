"""Backfill: visitor messages Meta never delivered, found in Instagram's own threads.

Meta retries a failed webhook for a while, then disables the subscription; a bridge
that was down longer, or whose subscription Meta dropped, never hears of the messages
sent meanwhile. The Conversations API still has them (protocols/instagram.md §10). A
backfill of a page lists its threads updated since the bridge last heard from Meta
(most recently updated first, one call per 25 threads, each with its newest 20
messages) and turns every message since then into the very work item its webhook
would have made: the messaging event is rebuilt and parsed by
:func:`bot.instagram.events.parse_webhook`, so ids are the same (``ig:<mid>``,
``ig-echo:<mid>``), the store keeps each once, and a webhook that arrives later for the
same ``mid`` is harmless. Messages the business typed in the Instagram app come back
as echoes and are shown as today; our own sends are recognised by their echo keys.

When: on start when the bridge was stopped longer than :data:`START_GRACE` (shorter
gaps are covered by Meta's own retries), when the standing watch found the page's
subscription gone (:meth:`Backfill.request`), and when the intake had to skip an
acknowledged body it could not read (an intake gap, every page).

"Last heard" is kept per page in the store (``heard:<page_id>``), written at most every
:data:`FLUSH_INTERVAL` seconds; the listing starts :data:`MARGIN` before it. It never
reaches further back than :data:`MAX_LOOKBACK`, inside the 24 h the store remembers
relayed ids for, so nothing already relayed can come back as new.

Limits, said plainly: only the newest 20 messages of a thread are readable, so a
visitor who wrote more than 20 messages (counting the business's) during a gap loses
the older ones (counted, logged as ``truncated``); an attachment is readable only as an
empty text and is relayed as Meta's "unsupported" placeholder; times are whole seconds,
so messages of one second keep the thread's order but a same-second neighbour that
arrived by webhook may sort either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from bot.instagram.accounts import GraphRoutes
from bot.instagram.conversations import MESSAGE_FIELDS, parse_messages, parse_time
from bot.instagram.events import parse_webhook
from bot.instagram.graph import GraphAuthError, GraphError
from bot.relay.worker import retry_delay
from storage.base import DEFAULT_DEDUPE_TTL, Page, Store

if TYPE_CHECKING:
    from bot.metrics import Metrics

log = logging.getLogger("bot.relay")

#: A stop shorter than this is covered by Meta's own webhook retries (seconds).
START_GRACE = 60.0
#: How often "last heard" and "alive" are written (seconds).
FLUSH_INTERVAL = 10.0
#: The listing starts this long before the last-heard time (flush lag, clock skew).
MARGIN = FLUSH_INTERVAL + 50.0
#: Never further back than this: the store remembers relayed ids for 24 h.
MAX_LOOKBACK = DEFAULT_DEDUPE_TTL - 3600.0
#: Threads listed per call, and the most calls one backfill makes per page.
PAGE_SIZE = 25
MAX_LIST_CALLS = 40
#: Marks: when the process was last known alive; per page when Meta was last heard.
ALIVE = "alive"
#: A failed backfill is tried again this many times, with backoff (seconds).
RETRIES = 5
RETRY_BASE, RETRY_CAP = 5.0, 300.0
THREAD_FIELDS = f"id,updated_time,participants,messages{{{MESSAGE_FIELDS}}}"


def heard_mark(page_id: str) -> str:
    return f"heard:{page_id}"


def count_mark(page_id: str, what: str) -> str:
    """``reconcile:<page>:<what>``: settled, unknown, backfilled, last_backfill."""
    return f"reconcile:{page_id}:{what}"


def rebuild_events(
    raw_messages: list[dict[str, Any]], *, account_id: str, since: float
) -> tuple[list[dict[str, Any]], int]:
    """Messaging events (oldest first) for a thread's messages created at or after
    ``since``, as the webhook would have carried them; and how many were unreadable."""
    events: list[dict[str, Any]] = []
    unreadable = len(raw_messages)
    messages = parse_messages(raw_messages)
    unreadable -= len(messages)
    recipients = {str(m.get("id")): m.get("to") for m in raw_messages}
    for message in reversed(messages):  # Meta lists newest first
        if message.created_at < since:
            continue
        ms = int(message.created_at * 1000)
        if message.sender == account_id:
            to = recipients.get(message.mid) or {}
            people = to.get("data") if isinstance(to, dict) else None
            person = next((str(p.get("id")) for p in people or [] if isinstance(p, dict)), "")
            if not person:
                unreadable += 1
                continue
            events.append({
                "sender": {"id": account_id}, "recipient": {"id": person}, "timestamp": ms,
                "message": {"mid": message.mid, "text": message.text, "is_echo": True},
            })
        else:
            body: dict[str, Any] = {"mid": message.mid}
            if message.text:
                body["text"] = message.text
            else:
                body["is_unsupported"] = True  # an attachment: not readable here
            events.append({
                "sender": {"id": message.sender}, "recipient": {"id": account_id},
                "timestamp": ms, "message": body,
            })
    return events, unreadable


class Backfill:
    """Finds and relays what Meta never delivered; see the module docstring."""

    def __init__(
        self,
        store: Store,
        graphs: GraphRoutes,
        metrics: Metrics,
        *,
        notify_inbound: Callable[[], None],
        clock: Callable[[], float] = time.time,
        start_grace: float = START_GRACE,
        flush_interval: float = FLUSH_INTERVAL,
    ) -> None:
        self.store = store
        #: The Graph client of each account's route (Facebook or Instagram Login).
        self.graphs = graphs
        self.metrics = metrics
        self.notify_inbound = notify_inbound
        self.clock = clock
        self.start_grace = start_grace
        self.flush_interval = flush_interval
        self._heard: dict[str, float] = {}
        self._requests: asyncio.Queue[tuple[str | None, str]] = asyncio.Queue()
        self._failures: dict[str, int] = {}  # page id -> failed runs in a row

    # -- what the rest of the bridge tells us ----------------------------------------------
    def heard(self, page_id: str) -> None:
        """A webhook for the page was taken (kept in memory, written by the flush)."""
        self._heard[page_id] = self.clock()

    def request(self, page_id: str | None, trigger: str) -> None:
        """Backfill one page (None: every page) soon; ``trigger`` names why."""
        self._requests.put_nowait((page_id, trigger))

    # -- the task ----------------------------------------------------------------------------
    async def run(self, alive: float | None) -> None:
        """Start-up backfill if the stop was long (``alive``: when the previous run was
        last known alive, None for a first run), then requests and flushes until
        cancelled."""
        now = self.clock()
        await self.store.set_marks({ALIVE: now})
        if alive is not None and now - alive > self.start_grace:
            log.info("backfill: the bridge was stopped for %.0f s; reading the threads",
                     now - alive)
            self.request(None, "start")
        elif alive is None:
            # First run with this store: every page's history starts now.
            await self.store.set_marks({heard_mark(p.page_id): now
                                        for p in await self.store.pages()})
        while True:
            with contextlib.suppress(TimeoutError):
                page_id, trigger = await asyncio.wait_for(
                    self._requests.get(), timeout=self.flush_interval
                )
                await self._run_request(page_id, trigger)
            await self.flush()

    async def flush(self) -> None:
        """Write "alive" and the pages' last-heard times."""
        marks = {ALIVE: self.clock()}
        marks.update({heard_mark(p): t for p, t in self._heard.items()})
        self._heard.clear()
        try:
            await self.store.set_marks(marks)
        except Exception:  # the next flush writes the newer times anyway
            log.exception("backfill: could not record when Meta was last heard")

    def _retry_later(self, page_id: str, trigger: str, exc: Exception) -> None:
        """Ask again after a backoff (throttling, an outage); give up after a few tries."""
        failures = self._failures[page_id] = self._failures.get(page_id, 0) + 1
        if failures > RETRIES:
            log.error("backfill of page %s failed %d times (%s); waiting for the next "
                      "trigger", page_id, failures, exc)
            self._failures.pop(page_id, None)
            return
        delay = retry_delay(failures, base=RETRY_BASE, cap=RETRY_CAP)
        log.warning("backfill of page %s failed (%s); retry in %.0f s", page_id, exc, delay)
        asyncio.get_running_loop().call_later(delay, self.request, page_id, trigger)

    async def _run_request(self, page_id: str | None, trigger: str) -> None:
        pages = await self.store.pages()
        for page in pages:
            if page_id is not None and page.page_id != page_id:
                continue
            if not page.subscribed or page.needs_reauth or not page.page_token:
                continue
            try:
                await self.backfill_page(page, trigger)
            except asyncio.CancelledError:
                raise
            except GraphAuthError as exc:
                log.warning("backfill of page %s: token rejected (%s)", page.page_id, exc)
                self.metrics.backfill_runs.labels(trigger, "failed").inc()
            except GraphError as exc:
                # Nothing was marked as heard: the retry reads from the same point.
                self.metrics.backfill_runs.labels(trigger, "failed").inc()
                self._retry_later(page.page_id, trigger, exc)
            except Exception:
                log.exception("backfill of page %s failed", page.page_id)
                self.metrics.backfill_runs.labels(trigger, "failed").inc()

    # -- one page ------------------------------------------------------------------------------
    async def backfill_page(self, page: Page, trigger: str) -> int:
        """Relay what the page's threads hold since it was last heard; returns new items."""
        started = self.clock()
        heard = await self.store.mark(heard_mark(page.page_id))
        since = max(heard if heard is not None else page.connected_at or started,
                    started - MAX_LOOKBACK) - MARGIN
        events: list[dict[str, Any]] = []
        threads = truncated = unreadable = 0
        after: str | None = None
        for _ in range(MAX_LIST_CALLS):
            body = await self.graphs.for_page(page).conversations(
                page.page_id, page.page_token, after=after, limit=PAGE_SIZE,
                fields=THREAD_FIELDS,
            )
            data = [t for t in body.get("data") or [] if isinstance(t, dict)]
            older = False
            for thread in data:
                updated = parse_time(thread.get("updated_time"))
                if updated is not None and updated < since:
                    older = True  # most recently updated first: the rest is older still
                    break
                threads += 1
                raw = (thread.get("messages") or {}).get("data") or []
                found, bad = rebuild_events(raw, account_id=page.instagram_id, since=since)
                events.extend(found)
                unreadable += bad
                stamps = [t for t in (parse_time(m.get("created_time")) for m in raw) if t]
                if len(raw) >= 20 and stamps and min(stamps) >= since:
                    truncated += 1
            paging = body.get("paging") if isinstance(body.get("paging"), dict) else {}
            cursors = paging.get("cursors") if isinstance(paging.get("cursors"), dict) else {}
            after = cursors.get("after")
            if older or not data or not paging.get("next") or not after:
                break
        events.sort(key=lambda e: e["timestamp"])  # stable: a thread's order is kept
        parsed = parse_webhook(
            {"object": "instagram", "entry": [
                {"id": page.instagram_id, "time": int(started * 1000), "messaging": events}
            ]},
            {page.instagram_id: page.page_id},
        )
        added = await self.store.enqueue(parsed.items) if parsed.items else []
        for item in added:
            self.metrics.backfilled.labels(item.kind).inc()
        marks = {heard_mark(page.page_id): started, count_mark(page.page_id, "last_backfill"):
                 started}
        await self.store.set_marks(marks)
        if added:
            await self.store.add_marks({count_mark(page.page_id, "backfilled"): len(added)})
            self.notify_inbound()
        self.metrics.backfill_runs.labels(trigger, "ok").inc()
        self._failures.pop(page.page_id, None)
        if truncated:
            log.warning("backfill of page %s: %d thread(s) had more than 20 messages since "
                        "the bridge last heard from Meta; older ones cannot be read",
                        page.page_id, truncated)
        log.info("backfill of page %s (%s): %d thread(s) since %.0f, %d message(s), %d new, "
                 "%d unreadable", page.page_id, trigger, threads, since, len(events),
                 len(added), unreadable)
        return len(added)
