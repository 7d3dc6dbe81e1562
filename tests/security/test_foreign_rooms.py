"""Livechat tokens are public API input: only rooms the bridge opened reach Instagram."""

from __future__ import annotations

import asyncio

import requests

from tests.scenarios.harness import ADMIN, AGENT, BOT_USER, WEBHOOK_SECRET, Bridge
from tests.scenarios.outbound_helpers import (
    enable_omnichannel_webhooks,
    notes,
    post_webhook,
    visitor_with_room,
)


async def test_agent_reply_in_a_room_the_bridge_did_not_open_is_not_sent(
    bridge: Bridge, eventually
) -> None:
    """A widget visitor who picks the guessable ``instagram-<page>-<igsid>`` token gets no
    bridge: the agent's reply in that room never reaches the Instagram user."""
    enable_omnichannel_webhooks(bridge)
    igsid = bridge.meta.new_igsid()
    token = f"instagram-{bridge.page_id}-{igsid}"
    base = f"{bridge.rc.url}/api/v1"

    def impersonate() -> str:
        requests.post(f"{base}/livechat/visitor", json={"visitor": {"token": token}},
                      timeout=5).raise_for_status()
        room = requests.get(f"{base}/livechat/room", params={"token": token}, timeout=5)
        room.raise_for_status()
        return room.json()["room"]["_id"]

    rid = await asyncio.to_thread(impersonate)
    bridge.rc.agent_reply(AGENT, rid, "Here is your order status")

    def dropped() -> float:
        return bridge.bot.metrics.registry.get_sample_value(
            "rcig_events_dropped_total", {"direction": "outbound", "reason": "not_ours"}
        ) or 0.0

    await eventually(lambda: dropped() >= 1)
    assert bridge.meta.sent_messages(recipient=igsid) == []


async def test_webhook_for_a_disconnected_page_posts_no_note_into_another_room(
    bridge: Bridge, eventually
) -> None:
    """A right-secret webhook naming a real visitor (whose page was disconnected) but
    another room gets no "page not connected" note into that room: the room is checked
    before the page, and notes go only into rooms the bridge opened."""
    enable_omnichannel_webhooks(bridge)
    igsid, rid = await visitor_with_room(bridge)
    other = bridge.rc.create_channel("general-chat", members=[BOT_USER, ADMIN])
    await bridge.bot.store.delete_page(bridge.page_id)

    def forged(room: str, msg_id: str) -> dict:
        return {"_id": room, "type": "Message", "visitor": {"token": bridge.token(igsid)},
                "messages": [{"_id": msg_id, "rid": room, "msg": "hi", "agentId": "x",
                              "u": {"_id": "x", "username": AGENT}}]}

    headers = {"X-RocketChat-Livechat-Token": WEBHOOK_SECRET}
    assert await post_webhook(bridge, forged(other, "forged-other"), headers) == 200
    assert await post_webhook(bridge, forged(rid, "forged-own"), headers) == 200
    # The bridge's own room does get the note (so the check above is not vacuous) ...
    await eventually(lambda: notes(bridge, rid))
    # ... the other room never does.
    bot_id = bridge.rc.user_id(BOT_USER)
    assert [m for m in bridge.rc.room_messages(other) if m["u"]["_id"] == bot_id] == []
