"""Livechat tokens are public API input: only rooms the bridge opened reach Instagram."""

from __future__ import annotations

import asyncio

import requests

from tests.scenarios.harness import AGENT, Bridge
from tests.scenarios.outbound_helpers import enable_omnichannel_webhooks


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
