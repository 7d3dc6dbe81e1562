"""HTTP side of the OAuth flows: ``GET /oauth/callback``, ``POST /oauth/select`` and,
with ``instagram.instagram_login``, ``GET /oauth/instagram/callback``.

Thin adapters over :class:`bot.instagram.oauth.OAuthFlow`; :func:`routes` is included in
:func:`bot.web.routes`. Every page is sent with headers that keep the ``code`` and
``state`` in the URL out of referrers and caches and forbid framing and any external
resource.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aiohttp import web

from bot import messages
from bot.appkeys import BOT
from bot.instagram.instagram_login import CALLBACK_PATH, InstagramLoginFlow
from bot.instagram.oauth import SELECT_PATH, OAuthFlow

if TYPE_CHECKING:
    from bot.app import Bot

log = logging.getLogger("bot.web")

PAGE_HEADERS = {
    "Cache-Control": "no-store",
    # same-origin, not no-referrer: with no-referrer the browser sends "Origin: null" on
    # the choice form's POST, which would make the origin check below useless.
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
}
MAX_FORM = 16 * 1024  # the choice form is a state and a page id


def _bot(request: web.Request) -> Bot:
    return request.app[BOT]


def flow_for(bot: Bot) -> OAuthFlow:
    """The OAuth flow over the running bot's store, Graph client and config."""
    return OAuthFlow(
        bot.store, bot.graph, bot.config, bot.rest.send_dm,
        clock=bot.clock, on_connected=bot.on_page_reauthorized,
    )


def html_response(status: int, body: str) -> web.Response:
    return web.Response(
        status=status, text=body, content_type="text/html", charset="utf-8",
        headers=PAGE_HEADERS,
    )


async def oauth_callback(request: web.Request) -> web.Response:
    """Facebook Login redirect target (``code``+``state``, or ``error``+``state``)."""
    status, page = await flow_for(_bot(request)).handle_callback(request.query)
    return html_response(status, page)


def same_origin(request: web.Request, public_url: str) -> bool:
    """False for a cross-site POST (an Origin, or "null", that is neither ours nor public_url's)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True  # not sent (older browsers, curl); the single-use state still guards
    public = urlsplit(public_url)
    allowed = {f"{public.scheme}://{public.netloc}", f"{request.scheme}://{request.host}"}
    return origin in allowed


async def oauth_select(request: web.Request) -> web.Response:
    """The page-choice form's target."""
    bot = _bot(request)
    if not same_origin(request, bot.config.server.public_url):
        log.warning("page choice refused: cross-origin POST from %s", request.headers["Origin"])
        return html_response(403, messages.oauth_invalid_state_page())
    if request.content_length is not None and request.content_length > MAX_FORM:
        return html_response(413, messages.oauth_invalid_state_page())
    form = await request.post()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    status, page = await flow_for(bot).handle_select(fields)
    return html_response(status, page)


async def instagram_callback(request: web.Request) -> web.Response:
    """Instagram Login redirect target (``code``+``state``, or ``error``+``state``)."""
    bot = _bot(request)
    if bot.ig_graph is None:
        return html_response(404, messages.oauth_invalid_state_page())
    flow = InstagramLoginFlow(
        bot.store, bot.ig_graph, bot.config, bot.rest.send_dm, bot.is_admin,
        clock=bot.clock, on_connected=bot.on_page_reauthorized,
    )
    status, page = await flow.handle_callback(request.query)
    return html_response(status, page)


def routes() -> list[web.RouteDef]:
    """The OAuth routes for :func:`bot.web.routes`."""
    return [
        web.get("/oauth/callback", oauth_callback),
        web.post(SELECT_PATH, oauth_select),
        web.get(CALLBACK_PATH, instagram_callback),
    ]
