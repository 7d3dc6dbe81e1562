"""``GET``/``POST /webhooks/instagram``: Meta's verification and event delivery.

POST order (STYLE.md "The receiver"): size limit → HMAC-SHA256 over the raw bytes →
JSON → ``object == "instagram"`` → the raw body appended to the inbox, fsynced
(:mod:`storage.inbox`) → 200. Routing and parsing into work items happen afterwards
(:mod:`bot.relay.intake`). No network call happens before the answer; Meta retries
anything that is not a 200, so a storage failure answers 503 and loses nothing.
"""

from __future__ import annotations

import hmac
import json
import logging
from typing import TYPE_CHECKING

from aiohttp import web

from bot.appkeys import BOT, MAX_BODY
from bot.config import Config
from storage.base import StorageError

if TYPE_CHECKING:
    from bot.app import Bot

log = logging.getLogger("bot.web")

SOURCE = "instagram"
SIGNATURE_HEADER = "X-Hub-Signature-256"
_PREFIX = "sha256="


def _bot(request: web.Request) -> Bot:
    return request.app[BOT]


def webhook_secrets(config: Config) -> list[str]:
    """The secrets a genuine body may be signed with: the Meta app's, and with
    ``instagram.instagram_login`` the Instagram app's (that route signs with it)."""
    secrets = [config.instagram.app_secret.reveal()]
    login = config.instagram.instagram_login
    if login.enabled:
        secrets.append(login.app_secret.reveal())
    return [s for s in secrets if s]


def signature_valid(raw: bytes, header: str | None, app_secret: str) -> bool:
    """Whether ``header`` is ``sha256=<hex HMAC-SHA256(raw, app_secret)>`` (constant time)."""
    if not header or not app_secret or not header.startswith(_PREFIX):
        return False
    expected = hmac.digest(app_secret.encode("utf-8"), raw, "sha256").hex()
    return hmac.compare_digest(expected.encode("ascii"), header[len(_PREFIX):].strip().lower()
                               .encode("ascii", "replace"))


async def verify(request: web.Request) -> web.Response:
    """Meta's subscription check: echo ``hub.challenge`` when the verify token matches."""
    bot = _bot(request)
    query = request.query
    mode = query.get("hub.mode", "")
    token = query.get("hub.verify_token", "")
    challenge = query.get("hub.challenge", "")
    expected = bot.config.instagram.verify_token.reveal()
    if mode == "subscribe" and expected and hmac.compare_digest(
        token.encode("utf-8"), expected.encode("utf-8")
    ):
        log.info("Instagram webhook verification accepted")
        return web.Response(text=challenge, content_type="text/plain")
    log.warning("Instagram webhook verification refused (mode %r, token mismatch)", mode)
    bot.metrics.webhooks_rejected.labels(SOURCE, "verify_token").inc()
    return web.Response(status=403, text="Forbidden")


def _reject(bot: Bot, status: int, reason: str) -> web.Response:
    bot.metrics.webhooks_rejected.labels(SOURCE, reason).inc()
    return web.Response(status=status, text=reason)


async def receive(request: web.Request) -> web.Response:
    """Verify, store the raw body durably, answer 200."""
    bot = _bot(request)
    if request.content_length is not None and request.content_length > MAX_BODY:
        log.warning("Instagram webhook refused: body of %d bytes", request.content_length)
        return _reject(bot, 413, "too_large")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        log.warning("Instagram webhook refused: body over %d bytes", MAX_BODY)
        return _reject(bot, 413, "too_large")
    if not any(signature_valid(raw, request.headers.get(SIGNATURE_HEADER), secret)
               for secret in webhook_secrets(bot.config)):
        log.warning("Instagram webhook refused: %s signature",
                    "wrong" if SIGNATURE_HEADER in request.headers else "missing")
        return _reject(bot, 403, "signature")
    # Counted on arrival, not on answer (when the relay hogs the loop, answers stall, and
    # a count of answers would never call the storm a storm), but only when signed: a
    # flood of forgeries must not slow the relay down.
    bot.receiver_load.note()
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # too deep: not JSON for us
        return _reject(bot, 400, "not_json")
    if not isinstance(body, dict) or body.get("object") != "instagram":
        log.warning("Instagram webhook refused: object %r",
                    body.get("object") if isinstance(body, dict) else type(body).__name__)
        return _reject(bot, 400, "wrong_object")

    try:
        await bot.store.inbox.append(raw, body)
    except StorageError as exc:
        log.error("Instagram webhook not stored (%s); answering 503 so Meta retries", exc)
        return _reject(bot, 503, "storage")
    bot.metrics.webhooks_received.labels(SOURCE).inc()
    bot.intake.notify()
    return web.Response(text="EVENT_RECEIVED")


def routes() -> list[web.RouteDef]:
    """This receiver's rows of the routes table."""
    return [
        web.get("/webhooks/instagram", verify),
        web.post("/webhooks/instagram", receive),
    ]
