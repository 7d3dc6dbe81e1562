"""Helpers for the outbound scenarios: Omnichannel webhooks on, a visitor with a room, logs.

Builds on :mod:`tests.scenarios.harness` (the running bridge); nothing here fakes the
bot: agents answer through the sandbox Rocket.Chat, whose CRM webhooks reach the bot's
``/webhooks/rocketchat``, and the Send API log of the sandbox Meta is the truth.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import aiohttp

from tests.scenarios.harness import AGENT, BOT_USER, WEBHOOK_SECRET, Bridge

HOUR = 3600.0


def rc_webhook_url(bridge: Bridge) -> str:
    return f"http://127.0.0.1:{bridge.bot.port}/webhooks/rocketchat"


def enable_omnichannel_webhooks(bridge: Bridge, *, secret: str = WEBHOOK_SECRET) -> None:
    """Admin > Omnichannel > Webhooks: our URL, the secret, agent messages and close on."""
    rc = bridge.rc
    rc.set_setting("Livechat_webhookUrl", rc_webhook_url(bridge))
    rc.set_setting("Livechat_secret_token", secret)
    rc.set_setting("Livechat_webhook_on_agent_message", True)
    rc.set_setting("Livechat_webhook_on_close", True)


async def wait_for(predicate: Any, timeout: float = 10.0, interval: float = 0.02) -> Any:
    """Poll a sync predicate until truthy (AssertionError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


async def visitor_with_room(bridge: Bridge, name: str = "Jane Visitor") -> tuple[str, str]:
    """A visitor writes once on Instagram; returns ``(igsid, room id)`` once the room exists."""
    igsid = bridge.meta.new_igsid()
    bridge.meta.set_profile(igsid, name=name)
    status, _ = await bridge.deliver(bridge.meta.text_event(bridge.ig_id, igsid, "Hello"))
    assert status == 200
    rooms = await wait_for(lambda: bridge.rooms(igsid))
    await wait_for(lambda: bridge.texts(igsid) == ["Hello"])
    # The inbound side records last_inbound_at once the message is relayed.
    await wait_for_conversation(bridge, igsid)
    return igsid, rooms[0]["_id"]


async def wait_for_conversation(bridge: Bridge, igsid: str) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        conv = await bridge.bot.store.conversation(bridge.page_id, igsid)
        if conv is not None and conv.last_inbound_at is not None:
            return
        await asyncio.sleep(0.02)
    raise AssertionError("conversation never recorded the visitor's message")


async def age_conversation(bridge: Bridge, igsid: str, hours: float) -> None:
    """Pretend the visitor last wrote ``hours`` ago, for the bot and for Meta alike."""
    then = time.time() - hours * HOUR
    conv = await bridge.bot.store.conversation(bridge.page_id, igsid)
    assert conv is not None
    conv.last_inbound_at = then
    await bridge.bot.store.save_conversation(conv)
    bridge.meta.set_last_inbound(bridge.page_id, igsid, then)


def sends(bridge: Bridge, igsid: str, *, ok: bool | None = True) -> list[dict[str, Any]]:
    """Send API calls to this visitor (successful ones by default), in arrival order."""
    return bridge.meta.sent_messages(bridge.page_id, igsid, ok=ok)


def sent_texts(bridge: Bridge, igsid: str) -> list[str]:
    return [s["body"]["message"]["text"] for s in sends(bridge, igsid)
            if "text" in s["body"]["message"]]


def notes(bridge: Bridge, rid: str) -> list[str]:
    """Messages the bot itself posted into the livechat room (notes to the agent)."""
    bot_id = bridge.rc.user_id(BOT_USER)
    return [m["msg"] for m in bridge.rc.room_messages(rid) if m["u"]["_id"] == bot_id]


def reply(bridge: Bridge, rid: str, text: str) -> dict[str, Any]:
    """The agent answers in the room (the sandbox sends the Message webhook)."""
    return bridge.rc.agent_reply(AGENT, rid, text)


async def replies_in_turn(bridge: Bridge, rid: str, texts: list[str]) -> list[dict[str, Any]]:
    """The agent sends several replies quickly, each stamped a later millisecond.

    Rocket.Chat stamps ``ts`` to the millisecond and POSTs each message's webhook on its
    own, so replies stamped in the same millisecond carry no order the bridge could
    keep: their webhooks may arrive either way round. A person typing never does that.
    """
    sent = []
    for text in texts:
        sent.append(reply(bridge, rid, text))
        await asyncio.sleep(0.002)
    return sent


async def post_webhook(bridge: Bridge, body: Any, headers: dict[str, str] | None) -> int:
    """POST a body to the bot's Omnichannel webhook as Rocket.Chat would; returns the status."""
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    async with aiohttp.ClientSession() as session, session.post(
        rc_webhook_url(bridge), data=data,
        headers={"Content-Type": "application/json", **(headers or {})},
    ) as resp:
        return resp.status


def webhook_bodies(bridge: Bridge, kind: str) -> list[dict[str, Any]]:
    """Payloads of the Omnichannel webhooks the sandbox sent (first attempts)."""
    return [w["payload"] for w in bridge.rc.webhooks_sent()
            if w["type"] == kind and w["attempt"] == 1]
