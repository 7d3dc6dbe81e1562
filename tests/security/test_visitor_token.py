"""The livechat token is the visitor's only credential: ids alone open nothing."""

from __future__ import annotations

import asyncio
from typing import Any

import requests

from storage.base import Conversation
from tests.scenarios.harness import AGENT, WEBHOOK_SECRET, Bridge
from tests.scenarios.outbound_helpers import (
    enable_omnichannel_webhooks,
    post_webhook,
    visitor_with_room,
)


def _api(bridge: Bridge) -> str:
    return f"{bridge.rc.url}/api/v1"


def _attack(bridge: Bridge, token: str, rid: str) -> dict[str, Any]:
    """What an outsider with ``token`` gets from the public livechat routes, by route."""
    base = _api(bridge)
    out: dict[str, Any] = {}
    out["history"] = requests.get(f"{base}/livechat/messages.history/{rid}",
                                  params={"token": token}, timeout=5)
    out["profile"] = requests.get(f"{base}/livechat/visitor/{token}", timeout=5)
    out["post"] = requests.post(f"{base}/livechat/message", timeout=5, json={
        "token": token, "rid": rid, "msg": "send me your address"})
    out["close"] = requests.post(f"{base}/livechat/room.close", timeout=5,
                                 json={"token": token, "rid": rid})
    return out


async def test_visitor_ids_alone_cannot_read_post_rename_or_close(bridge: Bridge) -> None:
    """With the public page id and the IGSID, the old token form reads no history, posts
    nothing, closes nothing, and a renaming registers a stranger, not the visitor."""
    igsid, rid = await visitor_with_room(bridge)
    guessed = f"instagram-{bridge.page_id}-{igsid}"
    tried = await asyncio.to_thread(_attack, bridge, guessed, rid)
    for route, answer in tried.items():
        assert answer.status_code == 400, (route, answer.text)
        assert answer.json().get("error") in ("invalid-token", "invalid-room"), route
    # Renaming needs the token too: registering the guessed token makes a new visitor.
    await asyncio.to_thread(lambda: requests.post(
        f"{_api(bridge)}/livechat/visitor", timeout=5,
        json={"visitor": {"token": guessed, "name": "Hijacked"}}).raise_for_status())
    room = next(r for r in bridge.rc.livechat_rooms() if r["_id"] == rid)
    assert room["open"] and room["v"]["token"] == bridge.token(igsid)
    assert room["v"]["token"] != guessed and bridge.texts(igsid) == ["Hello"]
    # The real token does open the history (so the refusals above are not an accident).
    real = await asyncio.to_thread(lambda: requests.get(
        f"{_api(bridge)}/livechat/messages.history/{rid}",
        params={"token": bridge.token(igsid)}, timeout=5))
    assert real.status_code == 200 and [m["msg"] for m in real.json()["messages"]
                                        if m.get("token")] == ["Hello"]


async def test_new_conversation_token_survives_a_restart_of_the_store(bridge: Bridge) -> None:
    """A conversation keeps its token for life: it is stored, and the secret is too."""
    igsid, _ = await visitor_with_room(bridge)
    conv = await bridge.bot.store.conversation(bridge.page_id, igsid)
    assert conv is not None and conv.visitor_token == bridge.token(igsid)
    assert await bridge.bot.store.bridge_secret() == bridge.secret


async def test_reply_for_a_message_without_room_id_is_not_sent(bridge: Bridge) -> None:
    """A right-secret webhook naming no room (with a ``file://`` attachment) reaches no
    Send API call: a missing room id is a foreign room."""
    enable_omnichannel_webhooks(bridge)
    igsid, _ = await visitor_with_room(bridge)
    body = {
        "_id": "", "type": "Message", "visitor": {"token": bridge.token(igsid)},
        "messages": [{"_id": "forged-1", "msg": "pay here", "agentId": "x",
                      "u": {"_id": "x", "username": AGENT},
                      "fileUpload": {"publicFilePath": "file:///etc/passwd",
                                     "type": "text/plain"}}],
    }
    assert await post_webhook(bridge, body, {"X-RocketChat-Livechat-Token": WEBHOOK_SECRET}) == 200
    await asyncio.sleep(0.5)
    dropped = bridge.bot.metrics.registry.get_sample_value(
        "rcig_events_dropped_total", {"direction": "outbound", "reason": "foreign_room"})
    assert dropped == 1
    assert bridge.meta.sent_messages(recipient=igsid) == []


async def test_file_url_outside_https_or_rocketchat_is_never_sent(bridge: Bridge) -> None:
    """An upload URL on ``file:`` or a foreign ``http`` host is left out of the Send API
    call; the caption still goes."""
    enable_omnichannel_webhooks(bridge)
    igsid, rid = await visitor_with_room(bridge)
    body = {
        "_id": rid, "type": "Message", "visitor": {"token": bridge.token(igsid)},
        "messages": [{"_id": "forged-2", "rid": rid, "msg": "see file", "agentId": "x",
                      "u": {"_id": "x", "username": AGENT},
                      "filesUpload": [
                          {"publicFilePath": "file:///etc/passwd", "type": "text/plain"},
                          {"publicFilePath": "http://169.254.169.254/latest", "type": "text/plain"},
                      ]}],
    }
    assert await post_webhook(bridge, body, {"X-RocketChat-Livechat-Token": WEBHOOK_SECRET}) == 200

    async def sent() -> list[dict[str, Any]]:
        return bridge.meta.sent_messages(recipient=igsid)

    for _ in range(200):
        if await sent():
            break
        await asyncio.sleep(0.02)
    messages = [s["body"]["message"] for s in await sent()]
    assert messages == [{"text": "see file"}]


async def test_room_opened_with_a_legacy_token_is_never_adopted(bridge: Bridge) -> None:
    """A conversation from an old store keeps its guessable token; an outsider who opened
    a room with it before the visitor writes again gets that room closed, and the
    visitor's message goes into a new room the bridge opened."""
    igsid = bridge.meta.new_igsid()
    legacy = f"instagram-{bridge.page_id}-{igsid}"
    await bridge.bot.store.save_conversation(Conversation(
        bridge.page_id, igsid, legacy, visitor_name="Old Friend", visitor_registered=True))
    base = _api(bridge)

    def squat() -> str:
        requests.post(f"{base}/livechat/visitor", timeout=5, json={
            "visitor": {"token": legacy, "name": "Old Friend",
                        "department": bridge.department_id}}).raise_for_status()
        room = requests.get(f"{base}/livechat/room", params={"token": legacy}, timeout=5)
        room.raise_for_status()
        return room.json()["room"]["_id"]

    squatted = await asyncio.to_thread(squat)
    status, _ = await bridge.deliver(bridge.meta.text_event(bridge.ig_id, igsid, "back again"))
    assert status == 200

    async def relayed() -> dict[str, Any] | None:
        conv = await bridge.bot.store.conversation(bridge.page_id, igsid)
        return conv if conv is not None and conv.room_id else None

    for _ in range(500):
        if await relayed():
            break
        await asyncio.sleep(0.02)
    conv = await relayed()
    assert conv is not None and conv.room_id != squatted
    assert conv.visitor_token == legacy  # the conversation keeps its token for life
    rooms = {r["_id"]: r for r in bridge.rc.livechat_rooms()}
    assert not rooms[squatted].get("open") and rooms[squatted].get("closedAt")
    assert [m["msg"] for m in bridge.rc.room_messages(squatted) if m.get("token")] == []
    assert [m["msg"] for m in bridge.rc.room_messages(conv.room_id)
            if m.get("token")] == ["back again"]
