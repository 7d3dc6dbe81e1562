"""Agents' replies reach the Instagram visitor through the Send API, within Meta's rules."""

from __future__ import annotations

import pytest

from tests.scenarios.harness import AGENT, WEBHOOK_SECRET, Bridge, every_rc_version
from tests.scenarios.media_samples import png
from tests.scenarios.outbound_helpers import (
    age_conversation,
    enable_omnichannel_webhooks,
    notes,
    post_webhook,
    replies_in_turn,
    reply,
    sends,
    sent_texts,
    visitor_with_room,
    wait_for,
    webhook_bodies,
)


@pytest.fixture
async def live(bridge: Bridge) -> Bridge:
    enable_omnichannel_webhooks(bridge)
    return bridge


@every_rc_version
async def test_agent_reply_reaches_visitor_as_response(live: Bridge) -> None:
    """A fresh conversation's reply is sent with messaging_type RESPONSE and the page token."""
    igsid, rid = await visitor_with_room(live)
    reply(live, rid, "How can I help?")
    await wait_for(lambda: sent_texts(live, igsid) == ["How can I help?"])
    [sent] = sends(live, igsid)
    assert sent["body"]["messaging_type"] == "RESPONSE" and "tag" not in sent["body"]
    assert sent["proof_valid"] is True


async def test_long_reply_arrives_as_ordered_parts(live: Bridge) -> None:
    """A 2,500-character reply arrives as parts ≤ 1000 bytes that concatenate to the text."""
    igsid, rid = await visitor_with_room(live)
    text = " ".join(f"sentence{i:03d} ünïcode" for i in range(200))[:2500]
    reply(live, rid, text)
    await wait_for(lambda: len(sends(live, igsid)) == 3)
    parts = sent_texts(live, igsid)
    assert "".join(parts) == text
    assert all(len(p.encode()) <= 1000 for p in parts)


async def test_agent_image_is_sent_as_attachment_then_caption(live: Bridge) -> None:
    """A file from an agent is uploaded to Meta, sent by attachment_id, its caption after."""
    igsid, rid = await visitor_with_room(live)
    live.rc.agent_send_file(AGENT, rid, "photo.png", "image/png", png(), caption="Our catalogue")
    await wait_for(lambda: len(sends(live, igsid)) == 2)
    first, second = (s["body"]["message"] for s in sends(live, igsid))
    [upload] = live.meta.uploads()
    assert (upload["type"], upload["format"], upload["filename"]) == ("image", "png", "photo.png")
    assert first == {"attachment": {"type": "image",
                                    "payload": {"attachment_id": upload["attachment_id"]}}}
    assert second == {"text": "Our catalogue"}


async def test_replies_keep_their_order(live: Bridge) -> None:
    """Several quick replies arrive at the visitor in the order the agent wrote them."""
    igsid, rid = await visitor_with_room(live)
    texts = [f"reply {i}" for i in range(8)]
    await replies_in_turn(live, rid, texts)
    await wait_for(lambda: sent_texts(live, igsid) == texts)


async def test_duplicate_webhook_delivers_once(live: Bridge) -> None:
    """Rocket.Chat's retry of the same Message webhook sends nothing more."""
    igsid, rid = await visitor_with_room(live)
    reply(live, rid, "only once")
    await wait_for(lambda: sent_texts(live, igsid) == ["only once"])
    [body] = [b for b in webhook_bodies(live, "Message") if b["messages"][0]["msg"] == "only once"]
    for _ in range(3):
        status = await post_webhook(live, body, {"X-RocketChat-Livechat-Token": WEBHOOK_SECRET})
        assert status == 200
    assert await live.bot.store.queue_depth("outbound") == 0  # nothing new was stored
    await wait_for(lambda: live.bot.outbound.in_flight == 0)
    assert sent_texts(live, igsid) == ["only once"]


@pytest.mark.parametrize("header", [None, "wrong-secret", ""])
async def test_wrong_or_missing_secret_is_refused_and_nothing_sent(
    live: Bridge, header: str | None
) -> None:
    """Without the right X-RocketChat-Livechat-Token the webhook gets 403 and sends nothing."""
    igsid, rid = await visitor_with_room(live)
    body = {"_id": rid, "type": "Message",
            "visitor": {"token": live.token(igsid)},
            "messages": [{"_id": "forged-1", "rid": rid, "msg": "forged", "agentId": "x",
                          "u": {"_id": "x", "username": "x"}}]}
    headers = {} if header is None else {"X-RocketChat-Livechat-Token": header}
    assert await post_webhook(live, body, headers) == 403
    assert await live.bot.store.queue_depth("outbound") == 0
    assert sends(live, igsid, ok=None) == []


async def test_foreign_rooms_and_other_events_are_acknowledged_and_ignored(live: Bridge) -> None:
    """A web-widget room's message and an unused event type get 200 and no send."""
    headers = {"X-RocketChat-Livechat-Token": WEBHOOK_SECRET}
    widget = {"_id": "r-web", "type": "Message", "visitor": {"token": "vis-4f9c"},
              "messages": [{"_id": "w-1", "msg": "hi", "agentId": "a", "u": {"_id": "a"}}]}
    taken = {"_id": "r-x", "type": "LivechatSessionTaken",
             "visitor": {"token": "instagram-1-2"}}
    assert await post_webhook(live, widget, headers) == 200
    assert await post_webhook(live, taken, headers) == 200
    assert await post_webhook(live, b"not json", headers) == 400
    assert await live.bot.store.queue_depth("outbound") == 0
    assert live.meta.sent_messages() == []


@every_rc_version
async def test_close_sends_finished_text_once_even_if_retried(live: Bridge) -> None:
    """Closing the room sends the page's finished text once, however often the webhook comes."""
    page = await live.bot.store.page(live.page_id)
    assert page is not None
    page.finished_text = "Thanks for talking to us!"
    await live.bot.store.save_page(page)
    igsid, rid = await visitor_with_room(live)
    live.rc.close_room(rid, by=AGENT)
    await wait_for(lambda: sent_texts(live, igsid) == ["Thanks for talking to us!"])
    [body] = webhook_bodies(live, "LivechatSession")
    for _ in range(2):
        status = await post_webhook(live, body, {"X-RocketChat-Livechat-Token": WEBHOOK_SECRET})
        assert status == 200
    await wait_for(lambda: live.bot.outbound.in_flight == 0)
    assert sent_texts(live, igsid) == ["Thanks for talking to us!"]


async def test_welcome_text_goes_before_the_agent_reply(live: Bridge) -> None:
    """The welcome text queued by the inbound side uses the same ordered path."""
    page = await live.bot.store.page(live.page_id)
    assert page is not None
    page.welcome_text = "Welcome! An agent will be with you shortly."
    await live.bot.store.save_page(page)
    igsid, rid = await visitor_with_room(live)
    await wait_for(lambda: sent_texts(live, igsid) == [page.welcome_text])
    reply(live, rid, "Hi, I am Ana")
    await wait_for(lambda: sent_texts(live, igsid) == [page.welcome_text, "Hi, I am Ana"])


# --- the messaging window ----------------------------------------------------------------


@every_rc_version
async def test_reply_after_30_hours_uses_human_agent_tag_when_enabled(live: Bridge) -> None:
    """24 h–7 d with instagram.human_agent_tag: MESSAGE_TAG + HUMAN_AGENT from a person."""
    live.bot.outbound_relay.human_agent_tag = True
    igsid, rid = await visitor_with_room(live)
    await age_conversation(live, igsid, 30)
    reply(live, rid, "Sorry for the delay")
    await wait_for(lambda: sent_texts(live, igsid) == ["Sorry for the delay"])
    [sent] = sends(live, igsid)
    assert (sent["body"]["messaging_type"], sent["body"]["tag"]) == ("MESSAGE_TAG", "HUMAN_AGENT")


@every_rc_version
async def test_bot_agent_reply_is_never_tagged_human_agent(live: Bridge) -> None:
    """24 h–7 d with the tag on, from an agent account holding the ``bot`` role: the
    webhook says nothing about bots and ``bot`` is never a public role, yet the reply is
    not sent as HUMAN_AGENT (users.list shows the role); the agent is told instead."""
    live.bot.outbound_relay.human_agent_tag = True
    live.rc.set_role(AGENT, ["user", "livechat-agent", "bot"])
    igsid, rid = await visitor_with_room(live)
    await age_conversation(live, igsid, 30)
    reply(live, rid, "Automated follow-up")
    [note] = await wait_for(lambda: notes(live, rid))
    assert sends(live, igsid, ok=None) == []
    assert "24 hours" in note


async def test_reply_after_30_hours_without_tag_setting_tells_agent(live: Bridge) -> None:
    """24 h–7 d without the tag setting: nothing is sent and the agent gets a note."""
    igsid, rid = await visitor_with_room(live)
    await age_conversation(live, igsid, 30)
    reply(live, rid, "Are you still there?")
    [note] = await wait_for(lambda: notes(live, rid))
    assert "24 hours" in note and "human agent tag" in note
    assert sends(live, igsid, ok=None) == []


async def test_reply_after_8_days_is_not_sent_and_agent_told(live: Bridge) -> None:
    """Beyond 7 days nothing is sent, even with the tag enabled; the agent is told."""
    live.bot.outbound_relay.human_agent_tag = True
    igsid, rid = await visitor_with_room(live)
    await age_conversation(live, igsid, 8 * 24)
    reply(live, rid, "Hello again")
    [note] = await wait_for(lambda: notes(live, rid))
    assert "7 days" in note
    assert sends(live, igsid, ok=None) == []
    # The note itself comes back as an agent Message webhook: it must not be relayed.
    await wait_for(lambda: any(
        b["messages"][0]["msg"] == note for b in webhook_bodies(live, "Message")))
    await wait_for(lambda: live.bot.outbound.in_flight == 0)
    assert sends(live, igsid, ok=None) == []
