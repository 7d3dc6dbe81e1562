"""Inbound relay: Instagram work items → Omnichannel rooms, once and in order.

The receiver stored one work item per Instagram messaging item; this module is the
processor of the "inbound" queue. Per item: register the visitor once, reuse (or open)
the visitor's room, post with a deterministic ``_id`` (so a redelivery or a replay after
a crash never shows twice). When Omnichannel has no agent online the visitor gets the
page's offline text once per offline spell and the items stay queued; an
:class:`AgentGate` lets one conversation at a time probe ``livechat/room`` and wakes
the others when a probe opens a room.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from bot.instagram.accounts import GraphRoutes
from bot.instagram.events import (
    ECHO,
    VISITOR_KINDS,
    agent_text,
    message_link,
    rc_message_id,
    target_mid,
    target_phrase,
    visitor_name,
    visitor_token,
)
from bot.instagram.graph import GraphError, GraphRetryable
from bot.metrics import Metrics
from bot.relay.pressure import Pacer, ReceiverLoad
from bot.relay.worker import Done, Outcome, QueueWorker, Retry, retry_delay
from bot.rocketchat.rest import (
    InvalidVisitor,
    NoAgentOnline,
    NotAllowed,
    RateLimited,
    RocketChatError,
    RocketChatREST,
    RoomClosed,
)
from storage.base import Conversation, Page, Store, WorkItem

log = logging.getLogger("bot.relay")

#: How long an unmatched echo waits for the outbound side to record our own send.
ECHO_GRACE = 3.0
#: Wake-ups of the worker after webhooks are coalesced over this many seconds.
NOTIFY_DELAY = 0.005
#: Seconds a receipt-time routing answer (account id → subscribed page) is reused.
#: Only positive answers are cached: a stale "not subscribed" would drop the messages
#: of a page just (re)connected, while a stale page id only defers the check to the
#: relay, which reads the page again before acting.
ROUTE_TTL = 5.0
#: last_inbound_at is persisted when it moves by at least this much (or with other
#: changes): the 24-hour window does not need millisecond precision, and one write less
#: per message matters under load. Lagging only ever closes the window early.
LAST_INBOUND_SLACK = 30.0
#: While the receiver is busy (bot.relay.pressure) the relay starts at most
#: BUSY_CONCURRENCY conversations: relaying and acknowledging share one interpreter, and
#: every relayed message costs the receiver CPU (bench_inbound (a), 64 → 16: acks/s
#: doubled, p99 halved). Meta needs the prompt 200; the backlog is relayed at full
#: concurrency as soon as the storm ends (bench_inbound (b): 16 throughout cost ~25% of
#: throughput at 20 ms latency, so it is not the steady cap).
BUSY_CONCURRENCY = 16
#: ... and its network calls trickle at BUSY_CALLS_PER_S, unless the item has waited
#: PATIENCE seconds already (bot.relay.pressure.Pacer).
BUSY_CALLS_PER_S = 20.0
PATIENCE = 10.0
#: Profile look-ups retried this many times on Graph throttling before the fallback name.
PROFILE_ATTEMPTS = 3


class AgentGate:
    """Keeps waiting conversations from hammering ``livechat/room`` while nobody is online.

    While the gate is open every conversation may open rooms. After a ``no-agent-online``
    it closes: one conversation at a time (the prober) may try, at a jittered, growing
    interval; the others wait until a probe succeeds and :meth:`succeeded` reports it.
    """

    def __init__(self, *, base: float = 2.0, cap: float = 30.0) -> None:
        self.base = base
        self.cap = cap
        self.offline = False
        self.prober: str | None = None
        self.next_probe_at = 0.0
        self.failures = 0

    def close(self, now: float) -> None:
        """Start closed (after a restart with conversations still waiting); probe now."""
        self.offline = True
        self.next_probe_at = now

    def may_open(self, conversation: str, now: float) -> bool:
        """Whether ``conversation`` may call ``livechat/room`` now (it becomes the prober)."""
        if not self.offline:
            return True
        if self.prober not in (None, conversation) or now < self.next_probe_at:
            return False
        self.prober = conversation
        return True

    def failed(self, conversation: str, now: float) -> float:
        """A ``no-agent-online`` answer; return when this conversation should try again."""
        if not self.offline or self.prober == conversation:
            self.offline = True
            self.prober = None
            self.failures += 1
            self.next_probe_at = now + retry_delay(self.failures, base=self.base, cap=self.cap)
        return self.next_probe_at

    def released(self, conversation: str) -> None:
        """The prober stopped for another reason (network error): let someone else probe."""
        if self.prober == conversation:
            self.prober = None

    def succeeded(self, conversation: str) -> bool:
        """A room opened; return True if this ended an offline spell (wake the others)."""
        was_offline = self.offline
        self.offline = False
        self.prober = None
        self.failures = 0
        return was_offline

    def wait_until(self, now: float) -> float:
        """When a conversation refused by :meth:`may_open` should look again.

        A successful probe wakes waiting conversations early; this is only the fallback
        (for example when the prober's work vanished), spread out so they do not stampede.
        """
        return max(self.next_probe_at, now) + random.uniform(0.5, 1.0) * self.cap


class InboundRelay:
    """The "inbound" queue's processor and worker; :meth:`notify` after enqueueing."""

    def __init__(
        self,
        store: Store,
        rest: RocketChatREST,
        graphs: GraphRoutes,
        metrics: Metrics,
        *,
        rc_url: str,
        app_id: str = "",
        clock: Callable[[], float] = time.time,
        notify_outbound: Callable[[], None] | None = None,
        concurrency: int = 64,
        gate: AgentGate | None = None,
        echo_grace: float = ECHO_GRACE,
        load: ReceiverLoad | None = None,
    ) -> None:
        self.store = store
        self.rest = rest
        self.graphs = graphs
        self.metrics = metrics
        self.rc_url = rc_url
        self.app_id = app_id
        self.clock = clock
        self.gate = gate or AgentGate()
        self.echo_grace = echo_grace
        self._notify_outbound = notify_outbound or (lambda: None)
        self._wakers: set[asyncio.Task[None]] = set()
        self._routes: dict[str, tuple[str, float]] = {}
        self.notify_delay = NOTIFY_DELAY
        self._notify_pending = False
        self.worker_concurrency = concurrency
        self.busy_concurrency = min(BUSY_CONCURRENCY, concurrency)
        self.load = load or ReceiverLoad()
        self.pacer = Pacer(self.load, busy_rate=BUSY_CALLS_PER_S, patience=PATIENCE)
        self.worker = QueueWorker(
            store, "inbound", self.process, concurrency=concurrency, clock=clock,
            on_retry=self._on_retry, limit=self._limit,
        )

    # -- receipt-time routing ---------------------------------------------------------
    async def route(self, instagram_id: str) -> str | None:
        """The page id a webhook for ``instagram_id`` belongs to (connected + subscribed).

        Answers are reused for a few seconds: the receiver must not queue behind the
        store's writer for a read on every webhook. The relay checks the page again
        when it processes the item, so a page unsubscribed meanwhile is still honoured.
        """
        now = time.monotonic()
        cached = self._routes.get(instagram_id)
        if cached is not None and cached[1] > now:
            return cached[0]
        page = await self.store.page_by_instagram_id(instagram_id)
        if page is None or not page.subscribed:
            self._routes.pop(instagram_id, None)
            return None
        if len(self._routes) > 10_000:
            self._routes.clear()  # only ever a handful of accounts; never grow unbounded
        self._routes[instagram_id] = (page.page_id, now + ROUTE_TTL)
        return page.page_id

    def forget_routes(self) -> None:
        """Drop cached routing answers (after connecting or unsubscribing a page)."""
        self._routes.clear()

    # -- lifecycle -------------------------------------------------------------------
    def notify(self) -> None:
        """New items were stored: dispatch soon instead of at the next poll.

        Wake-ups are coalesced (at most one per ``notify_delay``): every wake-up costs
        the store a queue scan, and under a burst of webhooks one scan serves them all.
        """
        if self._notify_pending:
            return
        self._notify_pending = True
        asyncio.get_running_loop().call_later(self.notify_delay, self._notify_now)

    def _limit(self) -> int:
        """Conversations the relay may have in flight now (fewer while the receiver is busy)."""
        if self.load.busy():
            return self.busy_concurrency
        return self.worker_concurrency

    def _notify_now(self) -> None:
        self._notify_pending = False
        self.worker.notify()

    async def run(self) -> None:
        """Drain the queue until cancelled (the store must be open)."""
        while True:
            try:
                if await self.store.conversations_waiting():
                    # Still inside an offline spell from before the restart: one probe.
                    self.gate.close(self.clock())
                await self.worker.run()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                # A storage hiccup must not silently end inbound relaying for good.
                log.exception("inbound worker stopped unexpectedly; restarting in 1 s")
                await asyncio.sleep(1.0)

    async def stop(self) -> None:
        await self.worker.stop()
        for task in list(self._wakers):
            task.cancel()

    def _paced(self, item: WorkItem) -> AbstractAsyncContextManager[None]:
        """Hold one network call for ``item`` back while the receiver is busy."""
        return self.pacer.call(waited=self.clock() - item.created_at)

    def _on_retry(self, item: WorkItem, reason: str) -> None:
        self.metrics.retries.labels("inbound", reason.split(":", 1)[0]).inc()

    # -- processing ------------------------------------------------------------------
    async def process(self, item: WorkItem) -> Outcome:
        """Relay one item; Done when its effect is in Omnichannel (or it is dropped)."""
        payload = item.payload
        page_id, igsid = payload["page_id"], payload["igsid"]
        event: dict[str, Any] = payload.get("event") or {}
        page = await self.store.page(page_id)
        if page is None or not page.subscribed:
            log.info("dropping %s %s: page %s is %s", item.kind, item.item_id, page_id,
                     "not connected" if page is None else "unsubscribed")
            self.metrics.dropped.labels("inbound", "unknown_page").inc()
            return Done()
        if item.kind == ECHO:
            return await self._echo(item, page, igsid, event)

        conv = await self.store.conversation(page_id, igsid)
        if conv is None:
            conv = Conversation(page_id, igsid, visitor_token(page_id, igsid))
        changed = False
        if item.kind in VISITOR_KINDS and (
            conv.last_inbound_at is None or item.order_ts > conv.last_inbound_at
        ):
            changed = (
                conv.last_inbound_at is None
                or item.order_ts - conv.last_inbound_at >= LAST_INBOUND_SLACK
            )
            conv.last_inbound_at = item.order_ts
        try:
            outcome, registered = await self._deliver(item, page, conv, event)
        except RateLimited as exc:
            outcome, registered = self._retry_rate_limited(item, exc), False
        except InvalidVisitor:
            # The server forgot the visitor (deleted contact?): register again, then retry.
            log.warning("visitor of %s unknown to Omnichannel; registering again", conv.key)
            conv.visitor_registered = False
            conv.room_id = None
            outcome, registered = Retry(self.clock() + 1.0, "invalid visitor"), True
        except RocketChatError as exc:
            delay = retry_delay(item.attempts + 1, base=2.0, cap=300.0)
            log.warning("inbound %s %s: Rocket.Chat %s; retry in %.1f s",
                        item.kind, item.item_id, exc, delay)
            reason = f"rocketchat {type(exc).__name__}"
            outcome, registered = Retry(self.clock() + delay, reason), False
        if changed or registered:
            await self.store.save_conversation(conv)
        if isinstance(outcome, Done):
            self.metrics.relayed.labels("inbound", item.kind).inc()
        return outcome

    async def _deliver(
        self, item: WorkItem, page: Page, conv: Conversation, event: dict[str, Any]
    ) -> tuple[Outcome, bool]:
        """Register, find a room, post. Returns (outcome, conversation changed)."""
        changed = False
        if not conv.visitor_registered:
            retry = await self._register(item, page, conv)
            if retry is not None:
                return retry, False
            changed = True
        if conv.room_id is None:
            retry = await self._open_room(item, page, conv)
            if retry is not None:
                return retry, changed
            changed = True
        assert conv.room_id is not None
        msg_id = rc_message_id(item.item_id)
        text = await self._text(item, conv.room_id, event)
        try:
            async with self._paced(item):
                await self.rest.post_visitor_message(
                    conv.visitor_token, conv.room_id, text, msg_id
                )
        except RoomClosed:
            log.info("room %s of %s is closed; opening a new one for %s",
                     conv.room_id, conv.key, item.item_id)
            conv.room_id = None
            retry = await self._open_room(item, page, conv)
            if retry is not None:
                return retry, True
            assert conv.room_id is not None
            text = await self._text(item, conv.room_id, event)
            async with self._paced(item):
                await self.rest.post_visitor_message(
                    conv.visitor_token, conv.room_id, text, msg_id
                )
            changed = True
        log.info("relayed %s %s into room %s as %s", item.kind, item.item_id,
                  conv.room_id, msg_id)
        return Done(), changed

    async def _register(self, item: WorkItem, page: Page, conv: Conversation) -> Retry | None:
        try:
            async with self._paced(item):
                profile = await self.graphs.for_page(page).profile(conv.igsid, page.page_token)
        except GraphRetryable as exc:
            if item.attempts + 1 < PROFILE_ATTEMPTS:
                delay = retry_delay(item.attempts + 1, base=2.0, cap=60.0)
                log.warning("profile of %s: %s; retry in %.1f s", conv.key, exc, delay)
                return Retry(self.clock() + delay, "graph profile")
            log.warning("profile of %s unavailable (%s); using a placeholder name", conv.key, exc)
            profile = None
        except GraphError as exc:
            log.info("profile of %s unavailable (%s); using a fallback name", conv.key, exc)
            profile = None
        name = visitor_name(profile, conv.igsid)
        async with self._paced(item):
            await self.rest.register_visitor(conv.visitor_token, name, page.department_id)
        conv.visitor_name = name
        conv.visitor_registered = True
        log.info("registered visitor %s for page %s (department %s)",
                 conv.visitor_token, page.page_id, page.department_id)
        return None

    async def _open_room(self, item: WorkItem, page: Page, conv: Conversation) -> Retry | None:
        """Open or reuse the visitor's room; None when ``conv.room_id`` is set."""
        now = self.clock()
        if not self.gate.may_open(conv.key, now):
            await self._offline_spell(item, page, conv)
            return Retry(self.gate.wait_until(now), "waiting for an agent")
        try:
            async with self._paced(item):
                room, new_room = await self.rest.open_room(conv.visitor_token)
        except NoAgentOnline:
            at = self.gate.failed(conv.key, self.clock())
            log.info("no agent online for %s (%s); next probe in %.1f s",
                     conv.key, item.item_id, at - self.clock())
            await self._offline_spell(item, page, conv)
            return Retry(at, "no agent online")
        except BaseException:
            self.gate.released(conv.key)
            raise
        rid = room.get("_id") or room.get("rid")
        if not rid:
            self.gate.released(conv.key)
            raise RocketChatError("livechat/room: answer without a room id")
        ended_spell = self.gate.succeeded(conv.key)
        if new_room and page.welcome_text:
            await self._queue_outbound(f"welcome:{rid}", "welcome", page.welcome_text, conv, rid)
        log.info("%s room %s for %s", "opened" if new_room else "reusing", rid, conv.key)
        conv.room_id = rid
        if conv.waiting_for_agent:
            conv.waiting_for_agent = False
            await self.store.save_conversation(conv)
        if ended_spell:
            self._wake_waiting()
        return None

    async def _offline_spell(self, item: WorkItem, page: Page, conv: Conversation) -> None:
        """Enter the offline spell once: queue the offline text, mark the conversation."""
        if conv.waiting_for_agent:
            return
        if page.offline_text:
            # Keyed by the item that met the closed door, so a replay queues it once.
            await self._queue_outbound(
                f"offline:{item.item_id}", "offline", page.offline_text, conv, None
            )
        conv.waiting_for_agent = True
        await self.store.save_conversation(conv)
        log.info("%s waits for an agent (offline text %s)", conv.key,
                 "queued" if page.offline_text else "not configured")

    async def _queue_outbound(
        self, item_id: str, kind: str, text: str, conv: Conversation, rid: str | None
    ) -> None:
        # The outbound side checks the messaging window against last_inbound_at: store
        # the conversation first, so the text never races ahead of the visitor's message.
        await self.store.save_conversation(conv)
        work = WorkItem(
            item_id=item_id,
            queue="outbound",
            conversation=conv.key,
            kind=kind,
            payload={"text": text, "page_id": conv.page_id, "igsid": conv.igsid,
                     "room_id": rid},
            order_ts=self.clock(),
        )
        if await self.store.enqueue([work]):
            self._notify_outbound()

    def _wake_waiting(self) -> None:
        """A probe opened a room: bring the other waiting conversations forward now.

        Runs twice: a conversation that was refused just before the probe succeeded may
        write its later retry time after the first pass.
        """
        async def wake() -> None:
            for delay in (0.0, 1.0):
                await asyncio.sleep(delay)
                await self._bring_forward()

        task = asyncio.create_task(wake(), name="inbound:wake")
        self._wakers.add(task)
        task.add_done_callback(self._wakers.discard)

    async def _bring_forward(self) -> None:
        now = self.clock()
        woken = 0
        try:
            for conv in await self.store.conversations_waiting():
                head = await self.store.head("inbound", conv.key)
                if head is None:
                    continue
                if head.next_try_at > now:
                    head.next_try_at = now
                    await self.store.update_item(head)
                    woken += 1
        except Exception:
            log.exception("could not wake the conversations waiting for an agent")
        if woken:
            log.info("an agent is available: woke %d waiting conversations", woken)
        self.worker.notify()

    async def _text(self, item: WorkItem, rid: str, event: dict[str, Any]) -> str:
        target = ""
        mid = target_mid(item.kind, event)
        if mid:
            ours = await self.store.seen(f"echo:{mid}")
            link = None if ours else message_link(self.rc_url, rid, rc_message_id(f"ig:{mid}"))
            target = target_phrase(ours, link)
        return agent_text(item.kind, event, target)

    def _retry_rate_limited(self, item: WorkItem, exc: RateLimited) -> Retry:
        at = max(exc.reset_at, self.clock()) + random.uniform(0.05, 1.0)
        log.warning("inbound %s %s: Rocket.Chat rate limit; retry at reset (in %.1f s)",
                    item.kind, item.item_id, at - self.clock())
        return Retry(at, "rate limited")

    async def _echo(
        self, item: WorkItem, page: Page, igsid: str, event: dict[str, Any]
    ) -> Outcome:
        """A message the business sent: ours → drop; typed in the Instagram app → show."""
        message = event.get("message") or {}
        mid = message.get("mid", "")
        sent_by_us = same_app(message.get("app_id"), self.app_id)
        if sent_by_us or await self.store.seen(f"echo:{mid}"):
            self.metrics.dropped.labels("inbound", "own_echo").inc()
            return Done()
        if self.clock() < item.created_at + self.echo_grace:
            # Our send may have succeeded without being recorded yet; look again shortly.
            return Retry(item.created_at + self.echo_grace, "echo grace")
        conv = await self.store.conversation(page.page_id, igsid)
        if conv is None or conv.room_id is None:
            log.info("echo %s (sent from the Instagram app) for %s: no open room; not shown",
                     item.item_id, conversation_label(page.page_id, igsid))
            self.metrics.dropped.labels("inbound", "echo_no_room").inc()
            return Done()
        try:
            async with self._paced(item):
                await self.rest.send_message(
                    conv.room_id, agent_text(ECHO, event), msg_id=rc_message_id(item.item_id)
                )
        except RateLimited as exc:
            return self._retry_rate_limited(item, exc)
        except (NotAllowed, RoomClosed, InvalidVisitor) as exc:
            log.info("echo %s (sent from the Instagram app) not shown in room %s: %s",
                     item.item_id, conv.room_id, exc)
            self.metrics.dropped.labels("inbound", "echo_not_allowed").inc()
            return Done()
        except RocketChatError as exc:
            delay = retry_delay(item.attempts + 1, base=2.0, cap=300.0)
            if item.attempts >= 5:
                log.warning("echo %s not shown after %d attempts: %s",
                            item.item_id, item.attempts, exc)
                return Done()
            return Retry(self.clock() + delay, f"rocketchat {type(exc).__name__}")
        self.metrics.relayed.labels("inbound", ECHO).inc()
        return Done()


def same_app(echo_app_id: object, app_id: str) -> bool:
    """Whether an echo's ``app_id`` (sent as a JSON number) names our Meta app."""
    if echo_app_id is None or isinstance(echo_app_id, bool) or not app_id:
        return False
    # A number loses leading zeros on the wire; compare the digits without them.
    return str(echo_app_id).lstrip("0") == app_id.lstrip("0")


def conversation_label(page_id: str, igsid: str) -> str:
    """How a conversation is named in log lines."""
    return f"{page_id}:{igsid}"
