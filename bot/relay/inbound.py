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
import re
import time
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

from bot import messages
from bot.instagram.accounts import GraphRoutes
from bot.instagram.events import (
    ECHO,
    MESSAGE,
    POLICY,
    REACTION,
    UNSEND,
    VISITOR_KINDS,
    agent_text,
    legacy_token,
    message_link,
    policy_text,
    rc_message_id,
    target_mid,
    target_phrase,
    unsend_item_id,
    visitor_name,
    visitor_token,
)
from bot.instagram.graph import GraphError, GraphRetryable
from bot.metrics import Metrics
from bot.relay.outbound import split_text
from bot.relay.pressure import Pacer, ReceiverLoad
from bot.relay.worker import Done, Outcome, QueueWorker, Retry, SetAside, retry_delay
from bot.rocketchat.rest import (
    AuthenticationFailed,
    InvalidDepartment,
    InvalidVisitor,
    MessageTooLong,
    NoAgentOnline,
    NotAllowed,
    RateLimited,
    RocketChatError,
    RocketChatREST,
    RoomClosed,
    Unavailable,
)
from storage.base import (
    Conversation,
    Page,
    Store,
    WorkItem,
    conversation_key,
    conversation_label,
)

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
#: A refusal Rocket.Chat gives for reasons the relay does not know is tried this many
#: times (backoff REFUSAL_BASE·2ⁿ, ≤ REFUSAL_CAP: about two minutes in all), then the
#: item is set aside so the visitor's later messages are not held behind it forever.
REFUSAL_ATTEMPTS = 5
REFUSAL_BASE = 5.0
REFUSAL_CAP = 60.0
#: The refusal count rides in the item's persisted ``last_error`` (survives restarts).
_REFUSALS = re.compile(r"\[refusal (\d+)\]$")
#: Admins hear about set-aside items once per page and cause in this many seconds.
SET_ASIDE_DM_TTL = 24 * 3600.0
#: "Department is gone" DMs are remembered this long (per page and department).
DEPARTMENT_GONE_TTL = 365 * 24 * 3600.0
#: Visitor text quoted in a set-aside note is clipped to this many characters.
NOTE_EXCERPT = 300
#: Used when ``Livechat_message_character_limit`` cannot be read (the bot may read only
#: public settings, and 6.x's settings.public ignores ``_id``).
FALLBACK_CHARACTER_LIMIT = 250
#: Site_Url (quote links must contain it) is read again after this many seconds.
SITE_URL_TTL = 600.0

#: ``@all``/``@here`` as Rocket.Chat's mention parser sees them: not after a name
#: character, not followed by one (Mentions.ts; name pattern ``[0-9a-zA-Z-_.]``).
_MENTION_ALL = re.compile(r"(?<![0-9A-Za-z_.@-])@(all|here)(?![0-9A-Za-z_-])")
#: FULLWIDTH COMMERCIAL AT: reads as "@" but is no mention to any parser.
FULLWIDTH_AT = "\uff20"


def neutralise_mentions(text: str) -> str:
    """``@all``/``@here`` → ``＠all``/``＠here``, so a visitor's text notifies nobody.

    Rocket.Chat refuses a visitor's ``@all``/``@here`` (6.5+: ``error-action-not-allowed``
    from BeforeSavePreventMention; 6.0–6.4 fail in ``filterATAllTag``), and the bot lacks
    ``mention-all`` for echoes. Everything else, including user mentions, stays as is.
    """
    return _MENTION_ALL.sub(lambda m: FULLWIDTH_AT + m.group(1), text)


def part_id(msg_id: str, index: int) -> str:
    """The ``_id`` of part ``index`` of a split visitor text (part 0 keeps ``msg_id``)."""
    return msg_id if index == 0 else rc_message_id(f"{msg_id}#part{index}")


def refusals(item: WorkItem) -> int:
    """How many permanent-looking refusals ``item`` met in a row so far."""
    found = _REFUSALS.search(item.last_error or "")
    return int(found.group(1)) if found else 0


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
        notify_admins: Callable[[str], Awaitable[None]] | None = None,
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
        #: DMs every admin (``Bot.notify_admins``): Meta's policy-enforcement notices.
        self.notify_admins = notify_admins
        self._notify_outbound = notify_outbound or (lambda: None)
        self._notify_admins = notify_admins
        #: Departments ``livechat/visitor`` refused as unknown (this process): not sent again.
        self._gone_departments: set[str] = set()
        self._site_url: tuple[str, float] | None = None
        self._character_limit: int | None = None
        #: The store's bridge secret (keys visitor tokens), read on first need.
        self._token_secret: bytes | None = None
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
        if page is None:
            # Meta's own ig_post sample labels entry and recipient ids {PAGE_ID}: accept
            # the Facebook Page id as an alias of the Instagram account id.
            page = await self.store.page(instagram_id)
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
        unsent_key = (unsend_item_id(str((event.get("message") or {}).get("mid", "")))
                      if item.kind == MESSAGE else None)
        page, unsent, conv = await self.store.relay_context(page_id, igsid, unsent_key)
        if page is None or not page.subscribed:
            log.info("dropping %s %s: page %s is %s", item.kind, item.item_id, page_id,
                     "not connected" if page is None else "unsubscribed")
            self.metrics.dropped.labels("inbound", "unknown_page").inc()
            return Done()
        if item.kind == ECHO:
            return await self._echo(item, page, igsid, event)
        if item.kind == UNSEND:
            return await self._unsend(item, page, igsid, event)
        if item.kind == POLICY:
            log.warning("page %s: Meta policy enforcement notice %s", page_id, event)
            if self.notify_admins is not None:
                await self.notify_admins(policy_text(event, page.name, page_id))
            self.metrics.relayed.labels("inbound", POLICY).inc()
            return Done()
        if unsent:
            # The visitor unsent it before we showed it (the unsend is queued behind it,
            # or came first): never show it (Meta's App Review checks unsend).
            log.info("not showing %s: the visitor unsent it", item.item_id)
            self.metrics.dropped.labels("inbound", "unsent").inc()
            return Done()

        if item.kind == REACTION and (conv is None or conv.room_id is None):
            # A reaction is about a conversation in a room; on its own it never opens one.
            log.info("reaction %s for %s: no open room; not shown", item.item_id,
                     conversation_label(page_id, igsid))
            self.metrics.dropped.labels("inbound", "reaction_no_room").inc()
            return Done()
        if conv is None:
            conv = await self._new_conversation(page_id, igsid)
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
            log.warning("visitor of %s unknown to Omnichannel; registering again", conv.label)
            conv.visitor_registered = False
            conv.room_id = None
            outcome, registered = Retry(self.clock() + 1.0, "invalid visitor"), True
        except (Unavailable, AuthenticationFailed, RoomClosed) as exc:
            # Rocket.Chat is down, the bot's login is broken, or a new room closed at once
            # (the next try opens another): nothing about this item, so never set aside.
            delay = retry_delay(item.attempts + 1, base=2.0, cap=300.0)
            log.warning("inbound %s %s: Rocket.Chat %s; retry in %.1f s",
                        item.kind, item.item_id, exc, delay)
            reason = f"rocketchat {type(exc).__name__}"
            outcome, registered = Retry(self.clock() + delay, reason), False
        except RocketChatError as exc:
            outcome, registered = await self._refused(item, page, conv, exc), False
        if changed or registered:
            await self.store.save_conversation(conv)
        if isinstance(outcome, Done):
            self.metrics.relayed.labels("inbound", item.kind).inc()
        return outcome

    async def _refused(
        self, item: WorkItem, page: Page, conv: Conversation, exc: RocketChatError
    ) -> Outcome:
        """A refusal the relay has no answer for: a few retries, then set the item aside.

        Setting aside keeps the item in the store (``/instagram pages``, a metric), posts
        a note with the visitor's text to the agent when there is a room, DMs the admins
        (once per page and cause a day), and lets the conversation's next item go.
        """
        count = refusals(item) + 1
        if count < REFUSAL_ATTEMPTS:
            delay = retry_delay(count, base=REFUSAL_BASE, cap=REFUSAL_CAP)
            log.warning("inbound %s %s: Rocket.Chat refused (%s); try %d of %d in %.1f s",
                        item.kind, item.item_id, exc, count, REFUSAL_ATTEMPTS, delay)
            return Retry(self.clock() + delay, f"refused: {exc} [refusal {count}]")
        reason = str(exc)
        log.error("inbound %s %s of %s: Rocket.Chat refused it %d times (%s); setting it aside",
                  item.kind, item.item_id, conv.key, count, reason)
        if conv.room_id:
            excerpt = neutralise_mentions(await self._text(item, conv.room_id,
                                                           item.payload.get("event") or {}))
            if len(excerpt) > NOTE_EXCERPT:
                excerpt = excerpt[: NOTE_EXCERPT - 1] + "…"
            text = messages.render(messages.IN_SET_ASIDE_NOTE,
                visitor=conv.visitor_name or "the visitor", reason=reason, excerpt=excerpt
            )
            await self._queue_outbound(f"setaside:{item.item_id}", "note", text, conv,
                                       conv.room_id, note=True)
        code = exc.error_type or type(exc).__name__
        if await self.store.remember(f"set-aside-dm:{page.page_id}:{code}", SET_ASIDE_DM_TTL):
            await self._tell_admins(messages.render(messages.IN_SET_ASIDE_DM,
                username=page.username or page.instagram_id, name=page.name,
                page_id=page.page_id, reason=reason,
            ))
        self.metrics.set_aside.labels("inbound", code).inc()
        return SetAside(reason)

    async def _tell_admins(self, text: str) -> None:
        if self._notify_admins is None:
            log.warning("no way to tell the admins: %s", text)
            return
        try:
            await self._notify_admins(text)
        except Exception:
            log.exception("could not tell the admins")

    async def _new_conversation(self, page_id: str, igsid: str) -> Conversation:
        """A conversation with an opaque token, stored before the token is ever used: the
        Omnichannel webhook knows our rooms only by the tokens the store holds."""
        if self._token_secret is None:
            self._token_secret = await self.store.bridge_secret()
        conv = Conversation(page_id, igsid, visitor_token(self._token_secret, page_id, igsid))
        await self.store.save_conversation(conv)
        return conv

    async def _deliver(
        self, item: WorkItem, page: Page, conv: Conversation, event: dict[str, Any]
    ) -> tuple[Outcome, bool]:
        """Register, find a room, post. Returns (outcome, conversation changed)."""
        changed = False
        if conv.room_id is None:
            retry, changed = await self._room(item, page, conv)
            if retry is not None:
                return retry, changed
        assert conv.room_id is not None
        try:
            await self._post(item, conv, event)
        except RoomClosed:
            if item.kind == REACTION:
                log.info("reaction %s: room %s of %s is closed; not shown (no new room)",
                         item.item_id, conv.room_id, conv.key)
                self.metrics.dropped.labels("inbound", "reaction_no_room").inc()
                return Done(), changed
            log.info("room %s of %s is closed; opening a new one for %s",
                     conv.room_id, conv.label, item.item_id)
            conv.room_id = None
            retry, _ = await self._room(item, page, conv)
            if retry is not None:
                return retry, True
            await self._post(item, conv, event)
            changed = True
        log.info("relayed %s %s into room %s as %s", item.kind, item.item_id,
                  conv.room_id, rc_message_id(item.item_id))
        return Done(), changed

    async def _room(
        self, item: WorkItem, page: Page, conv: Conversation
    ) -> tuple[Retry | None, bool]:
        """Register (again, if the page's department moved) and open a room.

        Returns (retry or None, conversation changed). Rocket.Chat routes a new room by
        the department stored on the visitor record, which only ``livechat/visitor``
        sets, so a visitor registered under another department is registered again
        before a new room is opened (an open room keeps its department anyway).
        """
        changed = False
        wanted = self._department(page)
        stale = wanted is not None and wanted != conv.visitor_department
        if not conv.visitor_registered or stale:
            if conv.visitor_registered:
                log.info("department of page %s is now %s (visitor %s had %s); registering "
                         "again", page.page_id, wanted, conv.key, conv.visitor_department)
            retry = await self._register(item, page, conv)
            if retry is not None:
                return retry, False
            changed = True
        retry = await self._open_room(item, page, conv)
        return retry, changed or retry is None

    def _department(self, page: Page) -> str | None:
        """The department to register visitors with: the page's, unless known deleted."""
        wanted = page.department_id or None
        return None if wanted in self._gone_departments else wanted

    async def _post(self, item: WorkItem, conv: Conversation, event: dict[str, Any]) -> None:
        """Post the item's text as the visitor, split if over the livechat character limit.

        A split text's parts get their own deterministic ids and ``item.progress`` counts
        those already posted (persisted), so a retry continues where it stopped.
        """
        assert conv.room_id is not None
        msg_id = rc_message_id(item.item_id)
        text = neutralise_mentions(await self._text(item, conv.room_id, event))
        if item.progress == 0:
            try:
                async with self._paced(item):
                    await self.rest.post_visitor_message(
                        conv.visitor_token, conv.room_id, text, msg_id
                    )
                return
            except MessageTooLong:
                log.info("inbound %s %s is over the livechat character limit; splitting",
                         item.kind, item.item_id)
        parts = split_text(text, await self._limit_characters())
        for index in range(item.progress, len(parts)):
            async with self._paced(item):
                await self.rest.post_visitor_message(
                    conv.visitor_token, conv.room_id, parts[index], part_id(msg_id, index)
                )
            item.progress = index + 1
            await self.store.update_item(item)

    async def _limit_characters(self) -> int:
        """``Livechat_message_character_limit`` (read once), or a safe fallback."""
        if self._character_limit is None:
            try:
                value = await self.rest.get_setting("Livechat_message_character_limit")
                self._character_limit = max(16, int(value))  # type: ignore[call-overload]
            except (RocketChatError, TypeError, ValueError) as exc:
                log.warning("Livechat_message_character_limit unreadable (%s); splitting at "
                            "%d characters", exc, FALLBACK_CHARACTER_LIMIT)
                return FALLBACK_CHARACTER_LIMIT
        return self._character_limit

    async def _register(self, item: WorkItem, page: Page, conv: Conversation) -> Retry | None:
        try:
            async with self._paced(item):
                profile = await self.graphs.for_page(page).profile(conv.igsid, page.page_token)
        except GraphRetryable as exc:
            if item.attempts + 1 < PROFILE_ATTEMPTS:
                delay = retry_delay(item.attempts + 1, base=2.0, cap=60.0)
                log.warning("profile of %s: %s; retry in %.1f s", conv.label, exc, delay)
                return Retry(self.clock() + delay, "graph profile")
            log.warning("profile of %s unavailable (%s); using a placeholder name", conv.label, exc)
            profile = None
        except GraphError as exc:
            log.info("profile of %s unavailable (%s); using a fallback name", conv.label, exc)
            profile = None
        name = visitor_name(profile, conv.igsid)
        department = self._department(page)
        try:
            async with self._paced(item):
                await self.rest.register_visitor(conv.visitor_token, name, department)
        except InvalidDepartment:
            assert department is not None
            await self._department_gone(page, department)
            department = None
            async with self._paced(item):
                await self.rest.register_visitor(conv.visitor_token, name, None)
        conv.visitor_name = name
        conv.visitor_registered = True
        conv.visitor_department = department
        log.info("registered visitor %s (department %s)", conv.label, department)
        return None

    async def _department_gone(self, page: Page, department: str) -> None:
        """``livechat/visitor`` says the page's department does not exist: go without one.

        Visitors registered earlier keep the dead id on their record; Rocket.Chat drops it
        when it opens their next room (Livechat.getRoom), so they are routed without a
        department too. The admins are told once per page and department.
        """
        self._gone_departments.add(department)
        log.warning("department %s of page %s does not exist; registering visitors without "
                    "a department", department, page.page_id)
        if await self.store.remember(f"department-gone:{page.page_id}:{department}",
                                     DEPARTMENT_GONE_TTL):
            await self._tell_admins(messages.render(messages.IN_DEPARTMENT_GONE_DM,
                department=page.department_name or department, name=page.name,
                page_id=page.page_id,
            ))

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
                     conv.label, item.item_id, at - self.clock())
            await self._offline_spell(item, page, conv)
            return Retry(at, "no agent online")
        except BaseException:
            self.gate.released(conv.key)
            raise
        rid = room.get("_id") or room.get("rid")
        if not rid:
            self.gate.released(conv.key)
            raise RocketChatError("livechat/room: answer without a room id")
        if not new_room and legacy_token(conv.visitor_token):
            # A guessable token (a store from before opaque tokens): anyone may have
            # opened this room with it. Never adopt it; close it as staff and open ours.
            self.gate.released(conv.key)
            log.warning("room %s for %s was not opened by the bridge; closing it",
                        rid, conv.label)
            self.metrics.dropped.labels("inbound", "foreign_room_closed").inc()
            async with self._paced(item):
                await self.rest.close_room(rid)
            return Retry(self.clock(), "foreign room closed")
        ended_spell = self.gate.succeeded(conv.key)
        if new_room and page.welcome_text:
            await self._queue_outbound(f"welcome:{rid}", "welcome", page.welcome_text, conv, rid)
        log.info("%s room %s for %s", "opened" if new_room else "reusing", rid, conv.label)
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
        log.info("%s waits for an agent (offline text %s)", conv.label,
                 "queued" if page.offline_text else "not configured")

    async def _queue_outbound(
        self, item_id: str, kind: str, text: str, conv: Conversation, rid: str | None,
        *, note: bool = False,
    ) -> None:
        """Queue a text for the visitor, or (``note``) a note for the agent in room ``rid``."""
        # The outbound side checks the messaging window against last_inbound_at: store
        # the conversation first, so the text never races ahead of the visitor's message.
        await self.store.save_conversation(conv)
        work = WorkItem(
            item_id=item_id,
            queue="outbound",
            # Notes go in their room's own lane, as the outbound relay's own notes do.
            conversation=f"note:{rid}" if note else conv.key,
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
            link = None if ours else message_link(
                await self.site_url(), rid, rc_message_id(f"ig:{mid}")
            )
            target = target_phrase(ours, link)
        return agent_text(item.kind, event, target)

    async def site_url(self) -> str:
        """Rocket.Chat's public ``Site_Url`` (cached), else the configured ``rocketchat.url``.

        A permalink becomes a quote only when it contains Site_Url
        (BeforeSaveJumpToMessage), and the bot may reach the server at an internal address.
        """
        now = time.monotonic()
        if self._site_url is not None and self._site_url[1] > now:
            return self._site_url[0]
        try:
            value = await self.rest.get_setting("Site_Url")
        except RocketChatError as exc:
            log.info("Site_Url unreadable (%s); quote links use %s", exc, self.rc_url)
            value = None
        url = value.rstrip("/") if isinstance(value, str) and value.strip() else self.rc_url
        self._site_url = (url, now + SITE_URL_TTL)
        return url

    def _retry_rate_limited(self, item: WorkItem, exc: RateLimited) -> Retry:
        at = max(exc.reset_at, self.clock()) + random.uniform(0.05, 1.0)
        log.warning("inbound %s %s: Rocket.Chat rate limit; retry at reset (in %.1f s)",
                    item.kind, item.item_id, at - self.clock())
        return Retry(at, "rate limited")

    async def _unsend(
        self, item: WorkItem, page: Page, igsid: str, event: dict[str, Any]
    ) -> Outcome:
        """The visitor unsent a message: take the original out of the room, post nothing.

        The original's ``_id`` is deterministic. Deleting needs ``Message_AllowDeleting``
        (on by default); where it is off, the text is replaced by a short notice instead
        (``Message_AllowEditing``). An unsend never registers a visitor or opens a room:
        when the original was never shown, this item's own dedupe key (remembered on
        enqueue) keeps a late or still-queued original from being shown.
        """
        mid = target_mid(UNSEND, event) or ""
        conv = await self.store.conversation(page.page_id, igsid)
        if conv is None or conv.room_id is None or not conv.visitor_registered:
            log.info("unsend %s for %s: the original was never shown", item.item_id,
                     conversation_label(page.page_id, igsid))
            self.metrics.dropped.labels("inbound", "unsend_not_shown").inc()
            return Done()
        msg_id = rc_message_id(f"ig:{mid}")
        try:
            try:
                async with self._paced(item):
                    await self.rest.delete_visitor_message(conv.visitor_token, conv.room_id,
                                                           msg_id)
                log.info("unsend %s: deleted %s from room %s", item.item_id, msg_id, conv.room_id)
            except RocketChatError as exc:
                if exc.error_type != "error-action-not-allowed":
                    raise
                log.info("unsend %s: deleting is off on this server (%s); replacing the text",
                         item.item_id, exc)
                async with self._paced(item):
                    await self.rest.update_visitor_message(
                        conv.visitor_token, conv.room_id, msg_id, messages.IN_UNSENT_NOTICE
                    )
        except RateLimited as exc:
            return self._retry_rate_limited(item, exc)
        except (RoomClosed, InvalidVisitor) as exc:
            log.info("unsend %s: room or visitor gone (%s); nothing to take down",
                     item.item_id, exc)
            self.metrics.dropped.labels("inbound", "unsend_not_shown").inc()
            return Done()
        except RocketChatError as exc:
            if exc.error_type == "invalid-message":
                # Never posted (or already deleted by an earlier attempt).
                log.info("unsend %s: %s is not in the room", item.item_id, msg_id)
                self.metrics.dropped.labels("inbound", "unsend_not_shown").inc()
                return Done()
            if exc.error_type == "error-action-not-allowed":
                log.error("unsend %s: the server allows neither deleting nor editing messages "
                          "(Message_AllowDeleting, Message_AllowEditing); the unsent message "
                          "%s stays visible in room %s", item.item_id, msg_id, conv.room_id)
                self.metrics.dropped.labels("inbound", "unsend_not_allowed").inc()
                return Done()
            delay = retry_delay(item.attempts + 1, base=2.0, cap=300.0)
            log.warning("unsend %s: Rocket.Chat %s; retry in %.1f s", item.item_id, exc, delay)
            return Retry(self.clock() + delay, f"rocketchat {type(exc).__name__}")
        self.metrics.relayed.labels("inbound", UNSEND).inc()
        return Done()

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
            if await self.store.head("inbound", conversation_key(page.page_id, igsid)):
                # The visitor's messages are still on their way in (a first contact, a
                # room waiting for an agent): the room they open is where this belongs.
                delay = retry_delay(item.attempts + 1, base=1.0, cap=10.0)
                return Retry(self.clock() + delay, "echo waits for the visitor's room")
            log.info("echo %s (sent from the Instagram app) for %s: no open room; not shown",
                     item.item_id, conversation_label(page.page_id, igsid))
            self.metrics.dropped.labels("inbound", "echo_no_room").inc()
            return Done()
        try:
            async with self._paced(item):
                await self.rest.send_message(
                    conv.room_id, neutralise_mentions(agent_text(ECHO, event)),
                    msg_id=rc_message_id(item.item_id),
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

