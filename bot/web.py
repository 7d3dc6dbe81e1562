"""The embedded web receiver: Meta webhooks, the OAuth callback, Omnichannel webhooks.

An aiohttp app factory with one routes table and typed ``web.AppKey`` state. Handlers
live next to the feature they serve; this module assembles them and serves them.

Serving is hardened against clients that hold connections (README "Security"): every
connection must deliver a complete request head within ``HEAD_TIMEOUT`` and its body
within ``BODY_TIMEOUT``, an idle keep-alive connection is closed after
``KEEPALIVE_TIMEOUT``, and at most ``max_connections`` are held (below the process's
file limit, so ``accept()`` never runs out of descriptors). A new connection over the
cap evicts the connection held longest that is not running a handler, so an attacker
holding many idle or slow connections cannot keep Meta's webhooks out.
``/metrics`` and ``/healthz`` may get a listener of their own (``server.metrics_listen``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import resource
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.web_protocol import RequestPayloadError

from bot import settings_form
from bot.appkeys import BOT, MAX_BODY
from bot.instagram import oauth_routes
from bot.instagram import webhook as instagram_webhook
from bot.rocketchat import webhook as rocketchat_webhook

if TYPE_CHECKING:
    from bot.app import Bot

log = logging.getLogger("bot.web")

#: Seconds a connection has to deliver a complete request line and headers.
HEAD_TIMEOUT = 10.0
#: Seconds a request body has to arrive (Meta's bodies are small and sent at once).
BODY_TIMEOUT = 20.0
#: Seconds an idle keep-alive connection is kept for its next request.
KEEPALIVE_TIMEOUT = 15.0
#: Connections held at most (lowered to fit the process's descriptor limit).
MAX_CONNECTIONS = 1000
#: Descriptors left for the store, the clients' sockets and the listeners.
FD_RESERVE = 128
#: How often held connections are checked against their deadlines (seconds).
SWEEP_INTERVAL = 0.5

GUARD: web.AppKey[ConnectionGuard] = web.AppKey("connection_guard")


async def healthz(request: web.Request) -> web.Response:
    """``{"status", "realtime", "storage", "meta"}``; 503 when realtime or storage is down.

    ``meta`` is "degraded" during a Meta-side incident (bot.instagram.graph.MetaHealth):
    shown, but not a 503, since restarting the bridge cannot help and nothing is lost.
    """
    bot = request.app[BOT]
    realtime = bot.realtime_connected
    storage = await bot.store.healthy()
    ok = realtime and storage
    body = {"status": "ok" if ok else "degraded", "realtime": realtime, "storage": storage,
            "meta": "degraded" if bot.graph.health.degraded else "ok"}
    return web.json_response(body, status=200 if ok else 503)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text exposition."""
    bot = request.app[BOT]
    await bot.refresh_gauges()
    return web.Response(
        body=bot.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"}
    )


def monitoring_routes() -> list[web.RouteDef]:
    """``/healthz`` and ``/metrics`` (on ``server.metrics_listen`` when that is set)."""
    return [web.get("/healthz", healthz), web.get("/metrics", metrics)]


def public_routes() -> list[web.RouteDef]:
    """What Meta, Rocket.Chat and the admin's browser reach."""
    return [
        *oauth_routes.routes(),
        *settings_form.routes(),
        *rocketchat_webhook.routes(),
        *instagram_webhook.routes(),
    ]


def routes() -> list[web.RouteDef]:
    """The routes table (DESIGN.md "HTTP endpoints"), all on one listener."""
    return [*monitoring_routes(), *public_routes()]


# --- connection guard -------------------------------------------------------------------


class _Held:
    """One held connection: its protocol, transport and current deadline."""

    __slots__ = ("deadline", "inner", "opened", "phase", "request", "transport")

    def __init__(self, inner: asyncio.Protocol, opened: float) -> None:
        self.inner = inner
        self.transport: asyncio.Transport | None = None
        self.opened = opened
        #: "head" (waiting for a request) or "request" (one is being handled).
        self.phase = "head"
        self.deadline = 0.0
        self.request: web.Request | None = None

    @property
    def busy(self) -> bool:
        """A request whose body has fully arrived: our handler runs, never cut it off."""
        return self.request is not None and self.request.content.is_eof()


class _GuardedProtocol(asyncio.Protocol):
    """Delegates to aiohttp's request handler; tells the guard when it opens and closes."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol) -> None:
        self._guard = guard
        self._held = _Held(inner, guard.clock())

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._held.transport = transport  # type: ignore[assignment]
        self._held.inner.connection_made(transport)
        self._guard.opened(self._held)

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.closed(self._held)
        self._held.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._held.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._held.inner.eof_received()

    def pause_writing(self) -> None:
        self._held.inner.pause_writing()

    def resume_writing(self) -> None:
        self._held.inner.resume_writing()


class ConnectionGuard:
    """A protocol factory around aiohttp's that enforces deadlines and a connection cap."""

    def __init__(
        self,
        factory: Callable[[], asyncio.Protocol] | None = None,
        *,
        max_connections: int,
        head_timeout: float = HEAD_TIMEOUT,
        body_timeout: float = BODY_TIMEOUT,
        keepalive_timeout: float = KEEPALIVE_TIMEOUT,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        #: aiohttp's protocol factory (``AppRunner.server``, known once the runner is set up).
        self.factory = factory
        self.max_connections = max_connections
        self.head_timeout = head_timeout
        self.body_timeout = body_timeout
        self.keepalive_timeout = keepalive_timeout
        self.clock = clock
        self._held: dict[int, _Held] = {}  # id(transport) -> connection
        self.evicted = 0
        self.timed_out = 0
        self._sweeper: asyncio.Task[None] | None = None

    def __call__(self) -> asyncio.Protocol:
        assert self.factory is not None, "ConnectionGuard used before its runner was set up"
        return _GuardedProtocol(self, self.factory())

    @property
    def held(self) -> int:
        return len(self._held)

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="connection-guard")

    async def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    # -- bookkeeping --------------------------------------------------------------------
    def opened(self, conn: _Held) -> None:
        conn.deadline = conn.opened + self.head_timeout
        if len(self._held) >= self.max_connections and not self._evict():
            # Every held connection is running a handler: this one waits for none.
            self._close(conn)
            return
        self._held[id(conn.transport)] = conn

    def closed(self, conn: _Held) -> None:
        self._held.pop(id(conn.transport), None)

    def _evict(self) -> bool:
        """Close the connection held longest that is not running a handler."""
        candidates = [c for c in self._held.values() if not c.busy]
        if not candidates:
            return False
        victim = min(candidates, key=lambda c: c.opened)
        self.evicted += 1
        self._close(victim)
        self._held.pop(id(victim.transport), None)
        return True

    def request_started(self, request: web.Request) -> None:
        """A request head arrived: its body now has ``body_timeout`` to arrive."""
        conn = self._held.get(id(request.transport))
        if conn is not None:
            conn.phase, conn.request = "request", request
            conn.deadline = self.clock() + self.body_timeout

    def request_done(self, request: web.Request) -> None:
        conn = self._held.get(id(request.transport))
        if conn is not None:
            # The next request on a kept-alive connection counts from now.
            now = self.clock()
            conn.phase, conn.request, conn.opened = "head", None, now
            conn.deadline = now + min(self.keepalive_timeout, self.head_timeout)

    @staticmethod
    def _close(conn: _Held) -> None:
        if conn.transport is not None:
            conn.transport.abort()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            now = self.clock()
            late = [c for c in self._held.values() if c.deadline < now and not c.busy]
            for conn in late:
                self.timed_out += 1
                self._close(conn)
                self._held.pop(id(conn.transport), None)
            if late:
                log.debug("closed %d connection(s) that sent no complete request in time",
                          len(late))


def connection_limit(requested: int = MAX_CONNECTIONS) -> int:
    """``requested``, lowered so held connections fit under the descriptor limit."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return requested
    return max(16, min(requested, soft - FD_RESERVE))


def _source(path: str) -> str | None:
    if path.startswith("/webhooks/instagram"):
        return instagram_webhook.SOURCE
    if path.startswith("/webhooks/rocketchat"):
        return rocketchat_webhook.SOURCE
    return None


@web.middleware
async def guard_middleware(request: web.Request, handler: Any) -> web.StreamResponse:
    """Tell the guard a request runs (its body is on the clock until it has arrived;
    the guard cuts off a body still missing at the deadline) and when it is done."""
    guard = request.app[GUARD]
    guard.request_started(request)
    try:
        return await handler(request)
    except (ConnectionError, RequestPayloadError):
        # The client went away (or was cut off) mid-body: nobody is left to answer.
        source = _source(request.path)
        if source is not None:
            request.app[BOT].metrics.webhooks_rejected.labels(source, "aborted").inc()
        log.debug("request to %s aborted mid-body", request.path)
        return web.Response(status=400, text="aborted")
    finally:
        guard.request_done(request)


def create_app(bot: Bot, table: list[web.RouteDef] | None = None) -> web.Application:
    """Build a receiver app for ``bot`` serving ``table`` (default: every route)."""
    app = web.Application(client_max_size=MAX_BODY, middlewares=[guard_middleware])
    app[BOT] = bot
    app.add_routes(routes() if table is None else table)
    return app


class Listener:
    """One app on one HOST:PORT behind a :class:`ConnectionGuard`."""

    def __init__(self, app: web.Application, host: str, port: int, max_connections: int) -> None:
        self.app = app
        self.host, self.requested_port = host, port
        self.max_connections = max_connections
        self.runner = web.AppRunner(app, access_log=None, keepalive_timeout=KEEPALIVE_TIMEOUT,
                                    handle_signals=False)
        self.guard = ConnectionGuard(max_connections=max_connections)
        app[GUARD] = self.guard
        self._server: asyncio.Server | None = None
        self.port: int | None = None

    async def start(self) -> None:
        await self.runner.setup()
        self.guard.factory = self.runner.server
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(self.guard, self.host, self.requested_port,
                                                reuse_address=True)
        self.port = self._server.sockets[0].getsockname()[1] if self._server.sockets else None
        self.guard.start()

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        await self.guard.stop()
        await self.runner.cleanup()  # closes the held connections gracefully


class Receiver:
    """The bot's listeners: the public one, and ``server.metrics_listen`` if set."""

    def __init__(self, bot: Bot) -> None:
        server = bot.config.server
        limit = connection_limit()
        separate = server.metrics_host_port is not None
        self.public = Listener(create_app(bot, public_routes() if separate else None),
                               server.host, server.port, limit)
        self.monitoring: Listener | None = None
        if server.metrics_host_port is not None:
            host, port = server.metrics_host_port
            self.monitoring = Listener(create_app(bot, monitoring_routes()), host, port, 64)

    async def start(self) -> None:
        await self.public.start()
        if self.monitoring is not None:
            await self.monitoring.start()

    async def stop(self) -> None:
        for listener in (self.monitoring, self.public):
            if listener is not None:
                await listener.stop()
