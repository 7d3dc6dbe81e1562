"""The bot process: one asyncio loop running the realtime client, the web receiver
and the relay workers, around one store.

Read top to bottom, :meth:`Bot.run` is the whole lifecycle: open the store, log in over
REST, start the web receiver and the workers, then run the realtime client until it
fails fatally (bad credentials) or :meth:`Bot.stop` is called.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from bot.backoff import BackoffFactory, exponential_backoff
from bot.config import Config
from bot.contacts import month_start
from bot.instagram.accounts import GraphRoutes
from bot.instagram.graph import GraphClient, GraphThrottled
from bot.instagram.instagram_login import InstagramLoginClient, TokenRefresher
from bot.instagram.reauth import mark_needs_reauth
from bot.instagram.watch import DEFAULT_INTERVAL, MetaWatch, WatchRound
from bot.metrics import Metrics
from bot.relay.backfill import ALIVE, START_GRACE, Backfill
from bot.relay.inbound import InboundRelay
from bot.relay.intake import Intake
from bot.relay.order import ReplyOrder
from bot.relay.outbound import OutboundRelay
from bot.relay.pressure import ReceiverLoad
from bot.relay.worker import QueueWorker
from bot.rocketchat.actions import button_attachments
from bot.rocketchat.realtime import IncomingMessage, RealtimeClient
from bot.rocketchat.rest import RocketChatREST, Unavailable, random_id
from bot.web import Receiver
from commands.base import ButtonRow, Issuer
from commands.registry import Registry, default_registry
from commands.router import dispatch, parse
from storage import open_store
from storage.base import Page, Store

log = logging.getLogger("bot")

_ID_SEGMENT = re.compile(r"/\d+(?=/|$| )")

T = TypeVar("T")

#: How long a command's answer (and the admin check before it) waits out a Rocket.Chat
#: REST outage. The command was heard over the realtime socket; without this wait the
#: answer was dropped after the REST client's own ~2 s of retries: silence.
REPLY_PATIENCE = 300.0
#: How long a command message's claim is kept: longer than a replica could see it again
#: (a reconnect's catch-up reads back to the moment of the disconnect).
COMMAND_CLAIM_TTL = 7 * 24 * 3600.0
REPLY_BACKOFF: BackoffFactory = exponential_backoff(initial=0.5, factor=2.0, max_delay=15.0)


#: Replies echo what the user typed (an unknown command, page id, department...); Rocket.Chat
#: refuses messages over Message_MaxAllowedSize (default 5000 characters), which would turn
#: a reply into silence. Longer replies are cut below that.
MAX_REPLY_CHARS = 4000


def clip_reply(text: str, limit: int = MAX_REPLY_CHARS) -> str:
    """``text``, cut to at most ``limit`` characters (ending in "…") when longer."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class CommandContext:
    """The runtime's implementation of :class:`commands.base.CommandContext`."""

    bot: Bot
    issuer: Issuer
    #: The command message's ``_id``: the replies' ids derive from it, so a replica that
    #: answers again after another died mid-answer posts nothing twice.
    command_id: str = ""
    _admin: bool | None = field(default=None, repr=False)
    _replies: int = field(default=0, repr=False)

    @property
    def store(self) -> Store:
        return self.bot.store

    @property
    def graph(self) -> GraphClient:
        return self.bot.graph

    @property
    def graphs(self) -> GraphRoutes:
        return self.bot.graphs

    @property
    def rest(self) -> RocketChatREST:
        return self.bot.rest

    @property
    def config(self) -> Config:
        return self.bot.config

    async def reply(self, text: str, rows: Sequence[ButtonRow] = ()) -> None:
        # The same _id on every attempt (and, with command_id, on every replica): a retry
        # never posts twice.
        self._replies += 1
        msg_id = (random_id() if not self.command_id else "cmd-" + hashlib.sha256(
            f"{self.command_id}:{self._replies}".encode()).hexdigest()[:24])
        attachments = button_attachments(rows) or None
        await self._patiently(
            f"reply to {self.issuer.username}",
            # By user id: the username in a message is only what the sender is called.
            lambda: self.bot.rest.send_dm_to_user(
                self.issuer.user_id, clip_reply(text), msg_id, attachments
            ),
        )

    async def issuer_is_admin(self) -> bool:
        if self._admin is None:
            self._admin = await self._patiently(
                f"roles of {self.issuer.username}",
                lambda: self.bot.is_admin(self.issuer.user_id),
            )
        return self._admin

    async def _patiently(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call()``, retried with backoff while Rocket.Chat is unavailable (bounded)."""
        delays = REPLY_BACKOFF()
        deadline = time.monotonic() + REPLY_PATIENCE
        while True:
            try:
                return await call()
            except Unavailable as exc:
                delay = next(delays)
                if time.monotonic() + delay > deadline:
                    raise
                log.warning("%s: Rocket.Chat unavailable (%s); retrying in %.1f s",
                            what, exc, delay)
                await asyncio.sleep(delay)

    async def notify_admins(self, text: str) -> None:
        await self.bot.notify_admins(text)


class Bot:
    """Owns the shared clients and the tasks of one bridge process."""

    def __init__(
        self,
        config: Config,
        *,
        clock: Callable[[], float] = time.time,
        backoff: Callable[[], Iterator[float]] | None = None,
        registry: Registry | None = None,
        watch_interval: float = DEFAULT_INTERVAL,
        backfill_grace: float = START_GRACE,
    ) -> None:
        self.config = config
        self.clock = clock
        self.metrics = Metrics()
        self.registry = registry or default_registry()
        rc = config.rocketchat
        self.store: Store = open_store(
            config.storage.location, config.storage.encryption_key.reveal() or None, clock=clock
        )
        self.rest = RocketChatREST(
            rc.url,
            user=rc.user or None,
            password=rc.password.reveal() or None,
            user_id=rc.user_id or None,
            token=rc.token.reveal() or None,
            observe=self._observe_rocketchat,
            # The inbound relay keeps up to 64 conversations in flight, each waiting on
            # network latency: 8 threads capped end-to-end throughput near 8/latency.
            max_workers=32,
        )
        ig = config.instagram
        self.graph = GraphClient(
            ig.graph_url, ig.api_version, ig.app_id, ig.app_secret.reveal(),
            observe=self._observe_graph, on_retry=self._graph_retried,
        )
        # Accounts connected with Instagram Login (no Page) are served by graph.instagram.com.
        self.ig_graph: InstagramLoginClient | None = None
        if ig.instagram_login.enabled:
            self.ig_graph = InstagramLoginClient(
                config, observe=self._observe_graph, on_retry=self._graph_retried)
        self.graphs = GraphRoutes(self.graph, self.ig_graph)
        realtime_options: dict[str, Any] = {"backoff": backoff} if backoff else {}
        self.realtime = RealtimeClient(
            rc.url,
            rest=self.rest,
            user=rc.user or None,
            password=rc.password.reveal() or None,
            user_id=rc.user_id or None,
            token=rc.token.reveal() or None,
            on_message=self.on_message,
            **realtime_options,
        )
        # Servers without roles.getUsersInPublicRoles (early 6.x) offer the DDP twin.
        self.rest.public_roles_fallback = lambda: self.realtime.call("getUserRoles", [])
        # Outbound relay: agents' replies and the page texts to Instagram, notes to agents.
        self.outbound_relay = OutboundRelay(
            store=self.store,
            graphs=self.graphs,
            rest=self.rest,
            human_agent_tag=ig.human_agent_tag,
            mark_needs_reauth=lambda page_id: mark_needs_reauth(
                self.store, self.notify_admins, page_id
            ),
            notify_admins=self.notify_admins,
            metrics=self.metrics,
            clock=clock,
            wake=lambda: self.outbound.notify(),
        )
        self.outbound = QueueWorker(
            self.store, "outbound", self.outbound_relay.process, clock=clock,
            on_retry=lambda item, reason: self.metrics.retries.labels(
                "outbound", reason.split(":", 1)[0]
            ).inc(),
        )
        # Inbound: the webhook stores raw bodies in the inbox, the intake turns them into
        # work items, the relay posts those into Omnichannel rooms.
        self.receiver_load = ReceiverLoad()
        self.inbound = InboundRelay(
            self.store, self.rest, self.graphs, self.metrics,
            rc_url=rc.url, app_id=ig.app_id, clock=clock,
            notify_outbound=lambda: self.outbound.notify(), load=self.receiver_load,
            notify_admins=self.notify_admins,
        )
        # Reconciliation with Instagram's own record: visitor messages Meta never
        # delivered (backfill), replies Rocket.Chat redelivers after a restart (order).
        self.backfill = Backfill(
            self.store, self.graphs, self.metrics, notify_inbound=lambda: self.inbound.notify(),
            clock=clock, start_grace=backfill_grace,
        )
        self.reply_order = ReplyOrder(self.store, self.rest, clock=clock)
        self.outbound_relay.order = self.reply_order
        self.intake = Intake(
            self.store, self.inbound, self.metrics, self.receiver_load,
            on_heard=self.backfill.heard,
            on_gap=lambda: self.backfill.request(None, "intake_gap"),
        )
        self.token_refresher = (
            TokenRefresher(self.store, self.ig_graph, self._reauth_page, clock=clock)
            if self.ig_graph is not None else None
        )
        # Standing watch: token and Page subscription of every bridged page, periodically.
        self.meta_watch = MetaWatch(
            self.store, self.graphs, self.notify_admins,
            lambda page_id: mark_needs_reauth(self.store, self.notify_admins, page_id),
            clock=clock, interval=watch_interval, on_round=self._watch_round,
            on_resubscribed=lambda page_id: self.backfill.request(page_id, "watch"),
        )
        self.receiver = Receiver(self)
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopped = asyncio.Event()
        self.port: int | None = None
        self.metrics_port: int | None = None  # server.metrics_listen's port, when set
        self._reconnects_counted = 0

    # -- lifecycle ---------------------------------------------------------------------
    async def start(self) -> None:
        """Open the store, log in, and start serving; the realtime client starts in run()."""
        await self.store.open()
        if not self.config.storage.encryption_key.reveal():
            storage = self.config.storage
            log.warning("storage.encryption_key is not set: page and user access tokens are "
                        "stored in plain text in %s%s; see README \"Security\"", storage.where,
                        "" if storage.url else " (mode 0600)")
        # When the previous run was last known alive: what a restart may have missed.
        alive = await self.store.mark(ALIVE)
        self.reply_order.resume(alive)
        await self.rest.login()
        await self.receiver.start()
        self.port = self.receiver.public.port
        log.info("web receiver listening on %s (port %s, at most %d connections)",
                 self.config.server.listen, self.port, self.receiver.public.max_connections)
        if self.receiver.monitoring is not None:
            self.metrics_port = self.receiver.monitoring.port
            log.info("/metrics and /healthz listening on %s (port %s)",
                     self.config.server.metrics_listen, self.metrics_port)
        self._tasks.append(asyncio.create_task(self.outbound.run(), name="outbound"))
        self._tasks.append(asyncio.create_task(self.inbound.run(), name="inbound"))
        self._tasks.append(asyncio.create_task(self.intake.run(), name="intake"))
        if self.token_refresher is not None:
            self._tasks.append(asyncio.create_task(self.token_refresher.run(),
                                                   name="instagram-tokens"))
        self._tasks.append(asyncio.create_task(self.meta_watch.run(), name="meta-watch"))
        self._tasks.append(asyncio.create_task(self.backfill.run(alive), name="backfill"))

    async def run(self) -> None:
        """The whole process lifetime; raises AuthenticationFailed on bad credentials."""
        await self.start()
        try:
            realtime = asyncio.create_task(self.realtime.run(), name="realtime")
            stopped = asyncio.create_task(self._stopped.wait(), name="stop")
            done, _ = await asyncio.wait({realtime, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if realtime in done:
                realtime.result()  # re-raise a fatal error
            else:
                await self.realtime.stop()
                realtime.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await realtime
        finally:
            await self._shutdown()

    def stop(self) -> None:
        """Ask :meth:`run` to return (safe to call from a signal handler)."""
        self._stopped.set()

    async def _shutdown(self) -> None:
        await self.outbound.stop()
        await self.inbound.stop()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.backfill.flush()  # when Meta was last heard, for the next start
        await self.receiver.stop()
        await self.graphs.close()
        await self.rest.close()
        await self.store.close()
        log.info("stopped")

    async def _reauth_page(self, page: Page) -> None:
        await mark_needs_reauth(self.store, self.notify_admins, page.page_id)

    async def on_page_reauthorized(self, page_id: str) -> None:
        """A page was (re)connected: route its webhooks afresh and deliver held replies now."""
        self.inbound.forget_routes()
        await self.outbound_relay.on_page_reauthorized(page_id)

    # -- state for /healthz and /metrics ------------------------------------------------
    @property
    def realtime_connected(self) -> bool:
        return bool(self.realtime.connected)

    async def refresh_gauges(self) -> None:
        """Update gauges that are read from state rather than counted."""
        self.metrics.realtime_connected.set(1 if self.realtime_connected else 0)
        self.metrics.meta_degraded.set(1 if self.graph.health.degraded else 0)
        # The realtime client counts reconnects itself; carry the increase over.
        reconnects = self.realtime.reconnects
        if reconnects > self._reconnects_counted:
            self.metrics.realtime_reconnects.inc(reconnects - self._reconnects_counted)
            self._reconnects_counted = reconnects
        for queue in ("inbound", "outbound"):
            self.metrics.queue_depth.labels(queue).set(await self.store.queue_depth(queue))
        self.metrics.inbox_backlog.set(self.store.inbox.backlog)
        self.metrics.waiting_for_agent.set(len(await self.store.conversations_waiting()))
        visitors = await self.store.visitors_since(month_start(self.clock()))
        self.metrics.monthly_visitors.set(sum(visitors.values()))
        self.metrics.set_aside_items.set(len(await self.store.set_aside_items()))
        stats = await self.store.stats()
        if "conversations" in stats:
            self.metrics.conversations.set(stats["conversations"])

    def _watch_round(self, result: WatchRound) -> None:
        self.metrics.meta_watch_last_round.set(result.at)
        for outcome, count in result.counts.items():
            self.metrics.meta_watch_pages.labels(outcome).set(count)

    def _observe_rocketchat(self, route: str, seconds: float) -> None:
        self.metrics.rocketchat_latency.labels(route).observe(seconds)

    def _graph_retried(self, call: str, error: Exception) -> None:
        # The Graph client retries throttled calls itself before a queue sees a failure:
        # uncounted, a throttling storm left rcig_retries_total nearly flat.
        reason = "throttled" if isinstance(error, GraphThrottled) else "transient"
        self.metrics.retries.labels("graph", reason).inc()

    def _observe_graph(self, call: str, seconds: float) -> None:
        # "POST /1234/messages" -> "POST /{id}/messages": ids would explode the label set.
        self.metrics.graph_latency.labels(_ID_SEGMENT.sub("/{id}", call)).observe(seconds)

    # -- commands ------------------------------------------------------------------------
    async def on_message(self, message: IncomingMessage) -> None:
        """A chat message addressed to the bot (already filtered by the realtime client)."""
        invocation = parse(message.text or "", direct=message.room_type == "d")
        if invocation is None:
            return
        # Answered once per message _id across every process on the store: with several
        # replicas on one database each logged-in replica sees the message; one answers
        # it, and if it dies before it is done another one does (also: this process
        # seeing the message again, e.g. caught up after a reconnect, answers nothing).
        async with self.store.once(f"command:{message.id}", COMMAND_CLAIM_TTL) as mine:
            if not mine:
                log.info("command message %s already answered; skipped", message.id)
                return
            issuer = Issuer(message.user_id, message.username, message.rid, message.room_type)
            # Label by known command only: anyone can type /instagram <anything>.
            known = self.registry.get(invocation.name) is not None
            self.metrics.commands.labels(invocation.name if known else "unknown").inc()
            log.info("command %s from %s (message %s)", invocation.name, issuer.username,
                     message.id)
            await dispatch(self.registry, CommandContext(self, issuer, message.id), invocation)

    async def is_admin(self, user_id: str, *, fresh: bool = False) -> bool:
        """Whether the user holds an admin role (``fresh``: not from the roles cache)."""
        roles = await self.rest.user_roles(user_id, fresh=fresh)
        return bool(roles & set(self.config.rocketchat.admin_roles))

    async def notify_admins(self, text: str) -> None:
        """DM every user holding an admin role; failures are logged, not raised."""
        try:
            usernames = await self.rest.users_with_roles(self.config.rocketchat.admin_roles)
        except Exception:
            log.exception("could not list the admins to notify")
            return
        for username in usernames:
            try:
                await self.rest.send_dm(username, text)
            except Exception:
                log.exception("could not notify admin %s", username)
