"""The standing watch: does Meta still deliver for every bridged page?

Meta announces neither of the two silent ways a page stops working: after about an hour
of failed webhook deliveries it disables the webhook and unsubscribes the app from the
Page (messenger-platform/webhooks, "Webhooks Delivery Retry"), and a dead token is only
learnt from the next 190 (protocols §5.6). ``doctor`` checks both, but only when someone
runs it. This task checks every ``interval`` seconds (jittered, so replicas and restarts
spread out) with one cheap call per page, ``GET /{page}/subscribed_apps`` with the Page
token, which answers both questions:

- 190: the token died; the re-authorization flow starts (:func:`mark_needs_reauth`).
- our app missing: Meta removed the subscription; the watch installs it again (with the
  permitted fields, :mod:`bot.instagram.subscription`) and tells the admins once per
  spell, also when the re-install fails; after a re-install the page is backfilled
  from Instagram's threads (``on_resubscribed``, :mod:`bot.relay.backfill`).
- any other error: the state is unknown; nothing is changed, the next round asks again.

Pages an admin unsubscribed, or already waiting for re-authorization, are skipped. The
last round's outcome is kept in :attr:`MetaWatch.last` for the metrics.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bot import messages
from bot.instagram.graph import GraphAuthError, GraphClient, GraphError
from bot.instagram.subscription import install
from storage.base import Page, Store

log = logging.getLogger("bot.watch")

DEFAULT_INTERVAL = 15 * 60.0  # seconds between rounds
JITTER = 0.2  # each wait is interval × (1 ± JITTER)

#: The outcomes a round counts, one per checked page.
OUTCOMES = ("ok", "resubscribed", "resubscribe_failed", "reauth", "unknown")


@dataclass
class WatchRound:
    """What one round found: when it ran and how many pages had each outcome."""

    at: float = 0.0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))


@dataclass
class MetaWatch:
    """Checks token and subscription of every bridged page, periodically."""

    store: Store
    graph: GraphClient
    notify_admins: Callable[[str], Awaitable[None]]
    mark_needs_reauth: Callable[[str], Awaitable[object]]
    clock: Callable[[], float] = time.time
    interval: float = DEFAULT_INTERVAL
    rand: Callable[[], float] = random.random
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    #: Awaited after each round (the metrics gauges).
    on_round: Callable[[WatchRound], None] | None = None
    #: Told the page id after its subscription was installed again: Meta delivered
    #: nothing meanwhile, so the bridge backfills from the threads (bot.relay.backfill).
    on_resubscribed: Callable[[str], None] | None = None
    last: WatchRound | None = None
    _told: set[str] = field(default_factory=set)  # pages whose dropped spell was reported

    def next_wait(self) -> float:
        """Seconds until the next round: the interval, jittered by ±:data:`JITTER`."""
        return self.interval * (1 - JITTER + 2 * JITTER * self.rand())

    async def run(self) -> None:
        """Rounds forever (cancel to stop); a failing round never ends the watch.

        With several replicas on one store, each interval's round runs on one of them:
        the first to reach it claims the interval's slot (:meth:`Store.once`).
        """
        while True:
            await self.sleep(self.next_wait())
            try:
                slot = int(self.clock() // self.interval)
                async with self.store.once(f"meta-watch:{slot}", 2 * self.interval) as mine:
                    if mine:
                        await self.run_once()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("standing watch round failed; next round as planned")

    async def run_once(self) -> WatchRound:
        """One round over every bridged page; returns (and keeps) what it found."""
        result = WatchRound(at=self.clock())
        for page in await self.store.pages():
            if not page.subscribed or page.needs_reauth:
                continue
            result.counts[await self._check(page)] += 1
        self.last = result
        if self.on_round is not None:
            self.on_round(result)
        log.info("standing watch: %s", ", ".join(f"{k}={v}" for k, v in result.counts.items()))
        return result

    async def _check(self, page: Page) -> str:
        try:
            fields = await self.graph.for_page(page).app_subscription(page.page_id,
                                                                     page.page_token)
        except GraphAuthError:
            log.warning("standing watch: page %s token is dead (190)", page.page_id)
            await self.mark_needs_reauth(page.page_id)
            return "reauth"
        except GraphError as exc:
            log.warning("standing watch: page %s unknown: %s", page.page_id, exc)
            return "unknown"
        if fields is not None:
            self._told.discard(page.page_id)
            return "ok"
        log.warning("standing watch: Meta lists no subscription on page %s", page.page_id)
        return await self._resubscribe(page)

    async def _resubscribe(self, page: Page) -> str:
        fmt = dict(name=page.name, page_id=page.page_id, username=page.username)
        try:
            fields = await install(self.graph.for_page(page), page.page_id, page.page_token)
        except GraphAuthError:
            await self.mark_needs_reauth(page.page_id)
            return "reauth"
        except GraphError as exc:
            await self._tell_once(
                page.page_id, messages.render(messages.WATCH_RESUBSCRIBE_FAILED, reason=exc, **fmt)
            )
            return "resubscribe_failed"
        listed = messages.Markup(
            ", ".join(messages.render(messages.CODE, value=f) for f in fields)
            if fields else "the requested fields")
        self._told.discard(page.page_id)  # a new spell may be reported again
        await self._notify(messages.render(messages.WATCH_RESUBSCRIBED, fields=listed, **fmt))
        log.info("standing watch: page %s subscribed again (%s)", page.page_id, fields)
        if self.on_resubscribed is not None:
            self.on_resubscribed(page.page_id)
        return "resubscribed"

    async def _tell_once(self, page_id: str, text: str) -> None:
        if page_id in self._told:
            return
        self._told.add(page_id)
        await self._notify(text)

    async def _notify(self, text: str) -> None:
        try:
            await self.notify_admins(text)
        except Exception:
            log.exception("standing watch: could not notify the admins")
