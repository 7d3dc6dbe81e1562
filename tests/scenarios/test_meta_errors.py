"""Send API errors mean what Meta says: window vs. configuration vs. a Meta-wide incident."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.scenarios.harness import ADMIN, BOT_USER, Bridge
from tests.scenarios.outbound_helpers import (
    enable_omnichannel_webhooks,
    notes,
    reply,
    sends,
    sent_texts,
    visitor_with_room,
    wait_for,
)


@pytest.fixture
async def live(bridge: Bridge) -> Bridge:
    enable_omnichannel_webhooks(bridge)
    bridge.bot.outbound_relay.retry_base = 0.05
    bridge.bot.outbound_relay.retry_cap = 0.3
    return bridge


def admin_dms(bridge: Bridge) -> list[str]:
    return [m["msg"] for m in bridge.rc.dm_messages(BOT_USER, ADMIN)]


@pytest.mark.parametrize("error", ["window_closed", "messenger_window_closed"])
async def test_window_subcodes_tell_the_agent_the_window_closed(live: Bridge, error: str):
    """Code 10 with 2534022 or 2018278: the agent hears "window closed"; admins hear nothing."""
    igsid, rid = await visitor_with_room(live)
    live.meta.inject_send_errors(igsid, [error])
    reply(live, rid, "late answer")
    [note] = await wait_for(lambda: notes(live, rid))
    assert "window is closed" in note
    await asyncio.sleep(0.2)
    assert admin_dms(live) == []


@pytest.mark.parametrize("error", ["permission_denied", "no_advanced_access"])
async def test_code_10_without_window_subcode_goes_to_admins(live: Bridge, error: str):
    """Permission/app-setup refusals: a neutral note to the agent, one DM per kind to admins."""
    igsid, rid = await visitor_with_room(live)
    live.meta.inject_send_errors(igsid, [error, error])
    reply(live, rid, "first")
    reply(live, rid, "second")
    await wait_for(lambda: len(notes(live, rid)) == 2)
    for note in notes(live, rid):
        assert "window" not in note and "admins have been told" in note
    [dm] = await wait_for(lambda: admin_dms(live))
    assert live.page_id in dm and "Meta app" in dm
    await asyncio.sleep(0.3)
    assert len(admin_dms(live)) == 1  # the same problem kind again: no second DM
    reply(live, rid, "third")
    await wait_for(lambda: sent_texts(live, igsid) == ["third"])


async def test_meta_unsupported_request_storm_keeps_page_connected(live: Bridge):
    """A storm of code 100 "Unsupported request - method type": retried with backoff, the
    page stays connected, /healthz says meta degraded, and every reply arrives after it."""
    igsid, rid = await visitor_with_room(live)
    live.meta.inject_send_errors(igsid, ["unsupported_request"] * 6)
    reply(live, rid, "during the incident")
    await wait_for(lambda: len(sends(live, igsid, ok=False)) >= 2)
    url = f"http://127.0.0.1:{live.bot.port}/healthz"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        body = await resp.json()
    assert body["meta"] == "degraded" and body["status"] == "ok"
    await wait_for(lambda: sent_texts(live, igsid) == ["during the incident"], timeout=15)
    page = await live.bot.store.page(live.page_id)
    assert page is not None and page.subscribed and not page.needs_reauth
    assert notes(live, rid) == [] and admin_dms(live) == []
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert (await resp.json())["meta"] == "ok"
    retries = live.bot.metrics.registry.get_sample_value(
        "rcig_retries_total", {"queue": "outbound", "reason": "meta_incident"})
    assert retries and retries >= 6



async def test_reply_of_exactly_1000_characters_is_delivered(live: Bridge):
    """A 1000-character reply meets Meta's "less than 1000 characters": sent in parts."""
    igsid, rid = await visitor_with_room(live)
    text = "y" * 1000
    reply(live, rid, text)
    await wait_for(lambda: "".join(sent_texts(live, igsid)) == text)
    assert sends(live, igsid, ok=False) == [] and notes(live, rid) == []


async def test_policy_enforcement_block_reaches_admins(live: Bridge):
    """Meta's policy block (no sender) is not dropped as malformed: the admins get a DM."""
    status, _ = await live.deliver(live.meta.policy_enforcement_event(live.ig_id, "block"))
    assert status == 200
    [dm] = await wait_for(lambda: admin_dms(live))
    assert "action: *block*" in dm and live.page_id in dm
    assert live.rc.livechat_rooms() == []
