"""The embedded web receiver: Meta webhooks, the OAuth callback, Omnichannel webhooks.

An aiohttp app factory with one routes table and typed ``web.AppKey`` state. Handlers
live next to the feature they serve; this module only assembles them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from bot import settings_form
from bot.appkeys import BOT, MAX_BODY
from bot.instagram import oauth_routes
from bot.instagram import webhook as instagram_webhook
from bot.rocketchat import webhook as rocketchat_webhook

if TYPE_CHECKING:
    from bot.app import Bot


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


def routes() -> list[web.RouteDef]:
    """The routes table (DESIGN.md "HTTP endpoints")."""
    return [
        web.get("/healthz", healthz),
        web.get("/metrics", metrics),
        *oauth_routes.routes(),
        *settings_form.routes(),
        *rocketchat_webhook.routes(),
        *instagram_webhook.routes(),
    ]


def create_app(bot: Bot) -> web.Application:
    """Build the receiver for ``bot``."""
    app = web.Application(client_max_size=MAX_BODY)
    app[BOT] = bot
    app.add_routes(routes())
    return app
