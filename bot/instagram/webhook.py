"""``GET``/``POST /webhooks/instagram``: Meta's verification and event delivery.

POST order (STYLE.md "The receiver"): size limit → HMAC-SHA256 over the raw bytes →
JSON → ``object == "instagram"`` → the raw body appended to the inbox, fsynced
(:mod:`storage.inbox`) → 200. Routing and parsing into work items happen afterwards
(:mod:`bot.relay.intake`). No network call happens before the answer.

Every non-200 to a correctly signed request counts towards Meta disabling the webhook
and unsubscribing the app from the Page after an hour (messenger-platform/webhooks,
"Webhooks Delivery Retry"), so each one is deliberate:

- 403 (bad or missing signature): not Meta, by definition.
- 413 over 1 MiB (DESIGN.md's contract), checked before anything is read past it: Graph
  batches "up to 1000 updates" in one POST, but an update is a few hundred bytes, so a
  real batch stays well under the limit, and reading an unauthenticated body of any size
  first would hand an attacker the receiver's memory.
- 400 (signed but not JSON): Meta only sends JSON, so this is a delivery cut short or
  corrupted on the way; a redelivery of the same update is what can repair it.
- 200 and dropped (signed, another ``object``, e.g. ``page`` when the app's Page webhook
  shares this URL): nothing for us in it, and a refusal would get the app unsubscribed.
- 503 (storage failure): the only way not to lose the event is Meta's retry; /healthz
  shows the storage as down so the operator has the hour Meta allows.
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
#: Signed (Meta) bodies are read up to this size; see the module docstring.


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
    raw = await _read_capped(request, MAX_BODY)
    if raw is None:
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
        # Signed by Meta, so answered 200 (see the module docstring), but not ours.
        log.info("Instagram webhook: dropping a signed body with object %r",
                 body.get("object") if isinstance(body, dict) else type(body).__name__)
        bot.metrics.dropped.labels("inbound", "other_object").inc()
        return web.Response(text="EVENT_RECEIVED")

    try:
        await bot.store.inbox.append(raw, body)
    except StorageError as exc:
        log.error("Instagram webhook not stored (%s); answering 503 so Meta retries", exc)
        return _reject(bot, 503, "storage")
    bot.metrics.webhooks_received.labels(SOURCE).inc()
    bot.intake.notify()
    return web.Response(text="EVENT_RECEIVED")


async def _read_capped(request: web.Request, limit: int) -> bytes | None:
    """The whole body, or None once it passes ``limit`` bytes.

    Read from the stream rather than ``request.read()``, whose cap is the app-wide
    ``client_max_size`` (1 MiB), below what a signed Meta batch may need.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def routes() -> list[web.RouteDef]:
    """This receiver's rows of the routes table."""
    return [
        web.get("/webhooks/instagram", verify),
        web.post("/webhooks/instagram", receive),
    ]
