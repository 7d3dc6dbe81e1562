"""Unsend and reactions through both sandboxes: the original disappears, no room opens."""

from __future__ import annotations

import asyncio

import pytest

from bot import messages
from bot.instagram.events import rc_message_id
from tests.scenarios.harness import AGENT, Bridge


def visitor(bridge: Bridge) -> str:
    igsid = bridge.meta.new_igsid()
    bridge.meta.set_profile(igsid, name="Uma Visitor")
    return igsid


async def shown(bridge: Bridge, eventually, igsid: str, text: str) -> str:
    """Deliver a text and wait until it is in the room; return its mid."""
    event = bridge.meta.text_event(bridge.ig_id, igsid, text)
    assert (await bridge.deliver(event))[0] == 200
    await eventually(lambda: text in bridge.texts(igsid))
    return event["entry"][0]["messaging"][0]["message"]["mid"]


@pytest.mark.parametrize("as_string", [False, True])
async def test_unsend_removes_original_from_room(bridge: Bridge, eventually, as_string):
    """is_deleted (true or Meta's "true") deletes the original; nothing is posted instead."""
    igsid = visitor(bridge)
    await shown(bridge, eventually, igsid, "keep me")
    mid = await shown(bridge, eventually, igsid, "my card number is 1234")
    status, _ = await bridge.deliver(
        bridge.meta.unsend_event(bridge.ig_id, igsid, mid, as_string=as_string))
    assert status == 200
    original = rc_message_id(f"ig:{mid}")
    await eventually(lambda: bridge.rc.deleted_messages() == [original])
    assert bridge.rc.message(original) is None
    await shown(bridge, eventually, igsid, "after")
    assert bridge.texts(igsid) == ["keep me", "after"]
    assert len(bridge.rooms(igsid)) == 1


async def test_unsend_with_deleting_disabled_replaces_the_text(bridge: Bridge, eventually):
    """Message_AllowDeleting off: the original's text becomes the unsent notice, in place."""
    bridge.rc.set_setting("Message_AllowDeleting", False)
    igsid = visitor(bridge)
    mid = await shown(bridge, eventually, igsid, "oops")
    await bridge.deliver(bridge.meta.unsend_event(bridge.ig_id, igsid, mid))
    await eventually(lambda: bridge.texts(igsid) == [messages.IN_UNSENT_NOTICE])
    assert bridge.rc.message(rc_message_id(f"ig:{mid}"))["editedAt"]


async def test_unsend_never_opens_a_room(bridge: Bridge, eventually):
    """An unsend from a visitor with no room registers nobody and opens nothing; a late
    original with that mid is then never shown, and the conversation goes on."""
    meta, ig, igsid = bridge.meta, bridge.ig_id, visitor(bridge)
    mid = meta.new_mid()
    assert (await bridge.deliver(meta.unsend_event(ig, igsid, mid)))[0] == 200
    await bridge.taken()
    await asyncio.sleep(0.3)
    assert bridge.rooms(igsid) == []
    assert bridge.rc.visitor(bridge.token(igsid)) is None
    await bridge.deliver(meta.text_event(ig, igsid, "unsent, delivered late", mid=mid))
    await shown(bridge, eventually, igsid, "hello")
    assert bridge.texts(igsid) == ["hello"]


async def test_unsend_queued_behind_undelivered_original_keeps_it_out(
    bridge: Bridge, eventually
):
    """Original still waiting for an agent when the unsend comes: it is never shown."""
    bot, meta, ig = bridge.bot, bridge.meta, bridge.ig_id
    bot.inbound.gate.base, bot.inbound.gate.cap = 0.1, 0.3
    bridge.rc.set_agent_status(AGENT, "offline")
    igsid = visitor(bridge)
    event = meta.text_event(ig, igsid, "delete me before anyone reads it")
    mid = event["entry"][0]["messaging"][0]["message"]["mid"]
    await bridge.deliver(event)
    await bridge.deliver(meta.unsend_event(ig, igsid, mid))
    await bridge.deliver(meta.text_event(ig, igsid, "still there?"))
    await asyncio.sleep(0.3)
    bridge.rc.set_agent_status(AGENT, "online")
    await eventually(lambda: bridge.texts(igsid) == ["still there?"], timeout=10)
    assert rc_message_id(f"ig:{mid}") not in bridge.rc.deleted_messages()  # never posted


async def test_reaction_on_closed_room_opens_no_room(bridge: Bridge, eventually):
    """A reaction after the agent closed the room is not shown and opens no new room."""
    meta, ig, igsid = bridge.meta, bridge.ig_id, visitor(bridge)
    mid = await shown(bridge, eventually, igsid, "thanks!")
    [room] = bridge.rooms(igsid)
    bridge.rc.close_room(room["_id"], by=AGENT)
    assert (await bridge.deliver(meta.reaction_event(ig, igsid, mid, emoji="❤️")))[0] == 200
    await bridge.taken()
    await asyncio.sleep(0.3)
    assert len(bridge.rooms(igsid)) == 1
    await shown(bridge, eventually, igsid, "one more question")
    assert bridge.texts(igsid) == ["thanks!", "one more question"]
    assert len(bridge.rooms(igsid)) == 2


async def test_reaction_from_visitor_without_room_opens_no_room(bridge: Bridge):
    """A reaction from someone who never wrote (a reaction to a business post) opens nothing."""
    meta, ig, igsid = bridge.meta, bridge.ig_id, visitor(bridge)
    assert (await bridge.deliver(meta.reaction_event(ig, igsid, meta.new_mid())))[0] == 200
    await bridge.taken()
    await asyncio.sleep(0.3)
    assert bridge.rooms(igsid) == []
    assert bridge.rc.visitor(bridge.token(igsid)) is None
