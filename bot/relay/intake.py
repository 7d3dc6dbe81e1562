"""From the inbox to the inbound queue: route, parse, enqueue, release.

The receiver (:mod:`bot.instagram.webhook`) acknowledges a webhook as soon as its raw
body is in the inbox (:mod:`storage.inbox`). Here those bodies become work items, oldest
first: every entry's Instagram account is routed to its connected, subscribed page,
every ``messaging``/``standby`` item is parsed (:mod:`bot.instagram.events`, no I/O),
the items of a batch of bodies are stored with one durable ``store.enqueue``, and only
then does the inbox forget the bodies. A crash in between makes the next start take them
again; item ids are deterministic, so the store keeps each item once.

While the receiver is busy (:mod:`bot.relay.pressure`) a batch waits, but its oldest
body never waits longer than ``max_defer`` seconds: a storm's acknowledgements get the
CPU first, and the relay still makes progress during a long one.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from bot.instagram.events import account_ids, parse_webhook
from bot.relay.pressure import ReceiverLoad
from bot.relay.worker import retry_delay
from storage.base import DEFAULT_DEDUPE_TTL, Store, WorkItem
from storage.inbox import InboxEvent

if TYPE_CHECKING:
    from bot.metrics import Metrics
    from bot.relay.inbound import InboundRelay

log = logging.getLogger("bot.relay")

#: The longest a stored body waits for the intake while the receiver is busy (seconds).
MAX_DEFER = 2.0
#: Bodies looked at per batch, and the work items one enqueue stops growing at: Meta
#: batches up to hundreds of items per body, and one enqueue holds the store's writer.
BATCH_BODIES = 256
BATCH_ITEMS = 512
#: Events older than this (by their own timestamp) are dropped as replays: an item's
#: dedupe key is remembered this long after it was queued (which is after it happened),
#: so within the window a replay is a known duplicate and beyond it nothing is relayed.
REPLAY_WINDOW = DEFAULT_DEDUPE_TTL


class Intake:
    """Turns the inbox's events into the inbound queue's work items; see the module doc."""

    def __init__(
        self,
        store: Store,
        inbound: InboundRelay,
        metrics: Metrics,
        load: ReceiverLoad,
        *,
        max_defer: float = MAX_DEFER,
        replay_window: float = REPLAY_WINDOW,
        clock: Callable[[], float] = time.time,
        on_heard: Callable[[str], None] | None = None,
        on_gap: Callable[[], None] | None = None,
    ) -> None:
        self.store = store
        self.inbox = store.inbox
        # Events taken over from a replica that died arrive without a webhook's notify.
        self.inbox.on_adopted = self.notify
        self.inbound = inbound
        self.metrics = metrics
        self.load = load
        self.max_defer = max_defer
        self.replay_window = replay_window
        self.clock = clock
        #: Told each page id a taken body was for (when Meta was last heard, backfill).
        self.on_heard = on_heard or (lambda page_id: None)
        #: Told when an acknowledged body had to be skipped: Meta will not send it again,
        #: only Instagram's threads still hold its messages (an intake gap, backfill).
        self.on_gap = on_gap or (lambda: None)
        self._wake = asyncio.Event()

    def notify(self) -> None:
        """A body was stored in the inbox."""
        self._wake.set()

    async def run(self) -> None:
        """Take events until cancelled (the store must be open)."""
        failures = 0
        while True:
            events = self.inbox.pending(BATCH_BODIES)
            if not events:
                self._wake.clear()
                await self._wake.wait()
                continue
            wait = self._deferral(events[0])
            if wait > 0:
                await asyncio.sleep(wait)
                continue
            try:
                await self.take(events)
            except asyncio.CancelledError:
                raise
            except Exception:
                # The events stay in the inbox: nothing is lost, the next pass retries.
                failures += 1
                delay = retry_delay(failures, base=0.5, cap=30.0)
                log.exception("intake: %d webhook(s) not queued; retry in %.1f s",
                              len(events), delay)
                await asyncio.sleep(delay)
            else:
                failures = 0
                await asyncio.sleep(0)  # the receiver's turn between batches

    def _deferral(self, oldest: InboxEvent) -> float:
        """Seconds to hold the next batch back (0: take it now)."""
        # Only while webhooks pour in, not in the linger after a wave: the intake is
        # short work on this loop (no calls in flight to stall the next wave), and
        # the relay it feeds is paced anyway.
        if not self.load.busy(lingering=False):
            return 0.0
        left = oldest.received_at + self.max_defer - time.monotonic()
        return min(left, self.load.window) if left > 0 else 0.0

    async def take(self, events: list[InboxEvent]) -> int:
        """Queue the work items of ``events`` (a prefix of them, up to BATCH_ITEMS items).

        Returns how many events were taken; they are released from the inbox.
        """
        items: list[WorkItem] = []
        dropped: list[tuple[str, str]] = []
        taken = 0
        for event in events:
            if taken and len(items) >= BATCH_ITEMS:
                break
            taken += 1
            body = event.body
            if body is None:  # recovered after a restart: only the bytes were kept
                try:
                    body = json.loads(event.raw)
                except (ValueError, RecursionError):
                    log.error("intake: stored webhook %d is not JSON; skipped", event.seq)
                    dropped.append(("malformed", "stored body"))
                    continue
            pages: dict[str, str] = {}
            for account in account_ids(body):
                page_id = await self.inbound.route(account)
                if page_id is not None:
                    pages[account] = page_id
            for page_id in set(pages.values()):
                self.on_heard(page_id)
            try:
                parsed = parse_webhook(body, pages)
            except Exception:
                # A parser bug must not wedge every later webhook behind this one (it
                # was acknowledged: Meta will not send it again). Loud, counted, skipped.
                log.exception("intake: stored webhook %d (%d bytes) could not be parsed; "
                              "skipped", event.seq, len(event.raw))
                dropped.append(("unparseable", str(event.seq)))
                continue
            oldest = self.clock() - self.replay_window
            for item in parsed.items:
                if item.order_ts < oldest:
                    # A signature does not expire: a body signed long ago is a replay.
                    dropped.append(("too_old", item.item_id))
                else:
                    items.append(item)
            dropped.extend(parsed.dropped)
        added = await self.store.enqueue(items) if items else []
        self.inbox.release(events[taken - 1].seq)
        if any(reason == "unparseable" or (reason, detail) == ("malformed", "stored body")
               for reason, detail in dropped):
            self.on_gap()
        for reason, _detail in dropped:
            self.metrics.dropped.labels("inbound", reason).inc()
        if items:
            # Also when nothing was new: items stored before a crash wait to be relayed.
            self.inbound.notify()
        if log.isEnabledFor(logging.DEBUG):
            log.debug("intake: %d webhook(s), %d items, %d new, %d dropped",
                      taken, len(items), len(added), len(dropped))
        return taken
