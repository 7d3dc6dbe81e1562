"""``POST /webhooks/rocketchat``: the Omnichannel webhook (protocols/rocketchat.md §5).

Order (STYLE.md "The receiver"): size limit → ``X-RocketChat-Livechat-Token`` compared
in constant time with ``rocketchat.webhook_secret`` (403 otherwise) → JSON → parse into
outbound work items (pure; only a page look-up for the finished text) → ONE durable
``store.enqueue`` → exactly HTTP 200 (Rocket.Chat counts anything else, even 204, as a
failure and retries up to 10 times). Retries are harmless: items have deterministic
ids (type + message ``_id``, or type + room ``_id`` for a close), so a repeated webhook
stores nothing new.

We use two event types: ``Message`` (agents' replies → Instagram) and
``LivechatSession`` with ``closedAt`` (→ the page's finished text). Rooms whose visitor
token is not ``instagram-<pageId>-<igsid>`` are someone else's and are ignored.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from bot.appkeys import BOT, MAX_BODY, ROCKETCHAT_MAX_BODY
from bot.relay.outbound import parse_timestamp
from storage.base import WorkItem, conversation_key

if TYPE_CHECKING:
    from bot.app import Bot

log = logging.getLogger("bot.web")

SOURCE = "rocketchat"
SECRET_HEADER = "X-RocketChat-Livechat-Token"
TOKEN_PREFIX = "instagram-"


def _bot(request: web.Request) -> Bot:
    return request.app[BOT]


def secret_valid(header: str | None, secret: str) -> bool:
    """Whether the header equals the configured secret (constant time; empty never matches)."""
    if not header or not secret:
        return False
    return hmac.compare_digest(header.encode("utf-8"), secret.encode("utf-8"))


def parse_visitor_token(token: Any) -> tuple[str, str] | None:
    """``(page_id, igsid)`` from ``instagram-<pageId>-<igsid>``; None for other rooms."""
    if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX):
        return None
    page_id, sep, igsid = token[len(TOKEN_PREFIX):].partition("-")
    if not sep or not page_id or not igsid:
        return None
    return page_id, igsid


@dataclass
class Parsed:
    """What one webhook body yields: work items, plus why other parts were left out."""

    items: list[WorkItem] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    page_id: str | None = None
    room_id: str | None = None
    close: bool = False  # a close event: the handler adds the page's finished text


def _list(value: Any) -> list[Any]:
    """``value`` if it is a JSON array, else nothing (a number or object is malformed)."""
    return value if isinstance(value, list) else []


def _files(message: dict[str, Any]) -> list[dict[str, Any]]:
    """The message's uploads as ``{"url", "type", "name", "size"}``.

    Real servers fill only ``fileUpload`` (audit W5); ``filesUpload`` is read too so a
    server that ever sends several files loses none.
    """
    uploads = message.get("filesUpload")
    if not isinstance(uploads, list) or not uploads:
        single = message.get("fileUpload")
        uploads = [single] if isinstance(single, dict) else []
    names = [f.get("name", "") for f in _list(message.get("files")) if isinstance(f, dict)]
    file_doc = message.get("file")
    if not names and isinstance(file_doc, dict):
        names = [file_doc.get("name", "")]
    out = []
    for index, upload in enumerate(uploads):
        if isinstance(upload, dict) and upload.get("publicFilePath"):
            size = upload.get("size")
            out.append({
                "url": str(upload["publicFilePath"]),
                "type": str(upload.get("type") or ""),
                "name": names[index] if index < len(names) else "",
                # Lets the relay refuse a file over Instagram's limits without fetching it.
                "size": size if isinstance(size, int) and not isinstance(size, bool) else None,
            })
    return out


def _caption(message: dict[str, Any]) -> str:
    """The text to send: ``msg``, or a file's description (6.x puts captions there)."""
    text = message.get("msg")
    if isinstance(text, str) and text.strip():
        return text
    for attachment in _list(message.get("attachments")):
        description = attachment.get("description") if isinstance(attachment, dict) else None
        if isinstance(description, str) and description.strip():
            return description
    return ""


def parse_webhook(body: dict[str, Any], *, bot_user_id: str | None, now: float) -> Parsed:
    """Turn one Omnichannel webhook body into outbound work items (pure)."""
    parsed = Parsed()
    event = body.get("type")
    visitor = body.get("visitor") if isinstance(body.get("visitor"), dict) else {}
    ours = parse_visitor_token(visitor.get("token"))
    if ours is None:
        parsed.dropped.append("not_ours")
        return parsed
    page_id, igsid = ours
    key = conversation_key(page_id, igsid)
    room_id = str(body.get("_id") or "")
    parsed.page_id, parsed.room_id = page_id, room_id

    if event == "LivechatSession" and body.get("closedAt") and room_id:
        parsed.close = True
        parsed.items.append(WorkItem(
            item_id=f"rc-close:{room_id}",
            queue="outbound",
            conversation=key,
            kind="finished",
            payload={"room_id": room_id, "text": ""},
            order_ts=parse_timestamp(body.get("closedAt")) or now,
        ))
        return parsed
    if event != "Message":
        parsed.dropped.append("unused_type")
        return parsed

    for message in _list(body.get("messages")):
        if not isinstance(message, dict) or not message.get("_id"):
            parsed.dropped.append("malformed")
            continue
        author = message.get("u") if isinstance(message.get("u"), dict) else {}
        if not message.get("agentId"):
            parsed.dropped.append("visitor_message")
        elif message.get("t") or message.get("closingMessage") or message.get("navigation"):
            parsed.dropped.append("system_message")
        elif bot_user_id and (author.get("_id") == bot_user_id
                              or message.get("agentId") == bot_user_id):
            parsed.dropped.append("own_note")  # our notes to the agent come back here
        else:
            parsed.items.append(WorkItem(
                item_id=f"rc-msg:{message['_id']}",
                queue="outbound",
                conversation=key,
                kind="agent_message",
                payload={
                    "message_id": str(message["_id"]),
                    "room_id": str(message.get("rid") or room_id),
                    "text": _caption(message),
                    "files": _files(message),
                    "agent_id": str(message.get("agentId")),
                    "agent_username": str(author.get("username") or message.get("username") or ""),
                    "bot": bool(message.get("bot")),
                },
                # Webhooks are fire-and-forget and may arrive out of order: order by the
                # message's own time, the store's sequence breaking ties.
                order_ts=parse_timestamp(message.get("ts")) or now,
            ))
    return parsed


async def receive(request: web.Request) -> web.Response:
    """Verify the secret, durably enqueue the event's outbound work, answer exactly 200."""
    bot = _bot(request)
    if not secret_valid(request.headers.get(SECRET_HEADER),
                        bot.config.rocketchat.webhook_secret.reveal()):
        log.warning("Omnichannel webhook refused: %s secret token",
                    "wrong" if SECRET_HEADER in request.headers else "missing")
        bot.metrics.webhooks_rejected.labels(SOURCE, "secret").inc()
        return web.Response(status=403, text="Forbidden")
    if request.content_length is not None and request.content_length > ROCKETCHAT_MAX_BODY:
        bot.metrics.webhooks_rejected.labels(SOURCE, "too_large").inc()
        return web.Response(status=413, text="too large")
    raw = await _read_bounded(request, ROCKETCHAT_MAX_BODY)
    if raw is None:
        bot.metrics.webhooks_rejected.labels(SOURCE, "too_large").inc()
        log.warning("Omnichannel webhook refused: body over %d bytes", ROCKETCHAT_MAX_BODY)
        return web.Response(status=413, text="too large")
    try:
        if len(raw) > MAX_BODY:
            # A long room's close: skip its messages off the event loop (see below).
            body = await asyncio.to_thread(parse_large_body, raw)
        else:
            body = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):  # too deep: not JSON for us
        bot.metrics.webhooks_rejected.labels(SOURCE, "not_json").inc()
        return web.Response(status=400, text="not JSON")
    if not isinstance(body, dict):
        bot.metrics.webhooks_rejected.labels(SOURCE, "not_object").inc()
        return web.Response(status=400, text="not a JSON object")

    parsed = parse_webhook(body, bot_user_id=bot.rest.user_id, now=bot.clock())
    try:
        if parsed.close:
            await _add_finished_text(bot, parsed)
        added = await bot.store.enqueue(parsed.items) if parsed.items else []
    except Exception:
        log.exception("Omnichannel webhook (room %s) not stored; answering 503 so it is retried",
                      parsed.room_id)
        bot.metrics.webhooks_rejected.labels(SOURCE, "storage").inc()
        return web.Response(status=503, text="storage unavailable")

    bot.metrics.webhooks_received.labels(SOURCE).inc()
    for reason in parsed.dropped:
        bot.metrics.dropped.labels("outbound", reason).inc()
    if parsed.items:
        # Also for items already known: after a failed write (answered 503) they sat in
        # memory, and this retry is what made them durable; work on them now.
        bot.outbound.notify()
    log.info("Omnichannel webhook %s (room %s): %d item(s), %d new: %s",
             body.get("type"), parsed.room_id, len(parsed.items), len(added),
             ", ".join(i.item_id for i in added) or "-")
    return web.Response(status=200, text="ok")


_WS = re.compile(r"[ \t\n\r]*")
_DECODER = json.JSONDecoder()


def parse_large_body(raw: bytes) -> Any:
    """``json.loads`` for big bodies, without building a close event's ``messages``.

    A ``LivechatSession`` close carries every message of the room, and none is needed
    (only the room, visitor and ``closedAt``): parsed whole, 32 MiB of messages take
    about 150 MiB and a second of CPU. Here each message is decoded and dropped one by
    one, so memory stays near the body's size, and the caller runs this in a thread so
    the event loop keeps answering. ``messages`` is kept whenever the body does not say
    it is a ``LivechatSession`` before the array (Rocket.Chat writes ``type`` first), so
    no message webhook can lose its messages. Raises ValueError for invalid JSON.
    """
    text = raw.decode("utf-8")
    at = _WS.match(text, 0).end()
    if text[at:at + 1] != "{":
        return json.loads(text)
    out: dict[str, Any] = {}
    at = _WS.match(text, at + 1).end()
    while text[at:at + 1] != "}":
        if text[at:at + 1] != '"':
            raise ValueError(f"expected a key at {at}")
        key, at = json.decoder.scanstring(text, at + 1)
        at = _WS.match(text, at).end()
        if text[at:at + 1] != ":":
            raise ValueError(f"expected ':' at {at}")
        at = _WS.match(text, at + 1).end()
        if key == "messages" and out.get("type") == "LivechatSession" and text[at] == "[":
            out[key], at = [], _skip_array(text, at)
        else:
            out[key], at = _DECODER.raw_decode(text, at)
        at = _WS.match(text, at).end()
        if text[at:at + 1] == ",":
            at = _WS.match(text, at + 1).end()
            if text[at:at + 1] != '"':
                raise ValueError(f"expected a key after ',' at {at}")
        elif text[at:at + 1] != "}":
            raise ValueError(f"expected ',' or '}}' at {at}")
    if text[at + 1:].strip():
        raise ValueError("extra data after the object")
    return out


def _skip_array(text: str, at: int) -> int:
    """Validate the JSON array starting at ``at`` element by element; return its end."""
    at = _WS.match(text, at + 1).end()
    if text[at:at + 1] == "]":
        return at + 1
    while True:
        _, at = _DECODER.raw_decode(text, at)
        at = _WS.match(text, at).end()
        if text[at:at + 1] == "]":
            return at + 1
        if text[at:at + 1] != ",":
            raise ValueError(f"expected ',' or ']' at {at}")
        at = _WS.match(text, at + 1).end()


async def _read_bounded(request: web.Request, limit: int) -> bytes | None:
    """The body, or None once it passes ``limit`` bytes (chunked bodies have no length).

    Read from the stream rather than ``request.read()``, whose cap is the app-wide
    ``MAX_BODY`` meant for Meta's webhooks.
    """
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.content.iter_chunked(256 * 1024):
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


async def _add_finished_text(bot: Bot, parsed: Parsed) -> None:
    """Fill in the page's finished text now ("changes apply to the next message"); no text,
    nothing to send."""
    page = await bot.store.page(parsed.page_id or "")
    text = page.finished_text if page is not None else None
    if not text:
        parsed.items.clear()
        parsed.dropped.append("no_finished_text")
        return
    for item in parsed.items:
        item.payload["text"] = text


def routes() -> list[web.RouteDef]:
    """This receiver's rows of the routes table."""
    return [web.post("/webhooks/rocketchat", receive)]
