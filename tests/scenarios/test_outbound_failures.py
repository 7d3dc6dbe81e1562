"""Send API failures: throttling and transient errors retried in order, 190 held until
re-authorization, errors the agent can act on reported in the room."""

from __future__ import annotations

import asyncio

import pytest

from tests.scenarios.harness import ADMIN, BOT_USER, WEBHOOK_SECRET, Bridge
from tests.scenarios.outbound_helpers import (
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
    bridge.bot.outbound_relay.retry_base = 0.05  # durable retries in tens of milliseconds
    return bridge


async def test_throttled_once_then_delivered_once_in_order(live: Bridge) -> None:
    """613 then success: every reply is delivered once, in the order written."""
    igsid, rid = await visitor_with_room(live)
    live.meta.inject_send_errors(igsid, [613])
    texts = ["first", "second", "third"]
    await replies_in_turn(live, rid, texts)
    await wait_for(lambda: sent_texts(live, igsid) == texts)
    assert [s["error_code"] for s in sends(live, igsid, ok=False)] == [613]


async def test_earlier_reply_arriving_during_a_throttled_pause_goes_first(live: Bridge) -> None:
    """A reply whose webhook arrives while a later one waits out a throttle is sent first:
    the later one, held in the Graph client's pause, does not overtake it."""
    igsid, rid = await visitor_with_room(live)
    live.bot.graph.backoff = lambda attempt: 1.0  # a pause long enough to act in
    live.rc.set_setting("Livechat_webhook_on_agent_message", False)
    first = reply(live, rid, "first")  # its webhook is late: we post it below
    live.rc.set_setting("Livechat_webhook_on_agent_message", True)
    await asyncio.sleep(0.01)  # typed later: never in the same millisecond
    live.meta.inject_send_errors(igsid, [613])
    reply(live, rid, "second")
    await wait_for(lambda: len(sends(live, igsid, ok=False)) == 1)  # "second" is pausing
    (body,) = webhook_bodies(live, "Message")
    body["messages"] = [dict(body["messages"][0], _id=first["_id"], msg="first",
                             ts=first["ts"])]
    assert await post_webhook(live, body, {"X-RocketChat-Livechat-Token": WEBHOOK_SECRET}) == 200
    await wait_for(lambda: sorted(sent_texts(live, igsid)) == ["first", "second"], timeout=10)
    assert sent_texts(live, igsid) == ["first", "second"]


@pytest.mark.parametrize("codes", [[613, 613, 613, 613], [2], [1200, 1], [4, 32, 17]])
async def test_persistent_throttling_and_transient_errors_retry_durably_in_order(
    live: Bridge, codes: list[int]
) -> None:
    """Errors beyond the client's own retries reschedule the item; order is kept, nothing lost."""
    igsid, rid = await visitor_with_room(live)
    live.meta.inject_send_errors(igsid, codes)
    texts = [f"message {i}" for i in range(4)]
    await replies_in_turn(live, rid, texts)
    await wait_for(lambda: sent_texts(live, igsid) == texts, timeout=15)
    assert sorted(s["error_code"] for s in sends(live, igsid, ok=False)) == sorted(codes)
    assert notes(live, rid) == []


async def test_window_closed_code_10_is_not_retried_and_agent_told(live: Bridge) -> None:
    """Meta's code 10: one attempt, a note to the agent, and the next reply still goes out."""
    igsid, rid = await visitor_with_room(live)
    live.meta.inject_send_errors(igsid, [10])
    reply(live, rid, "too late")
    [note] = await wait_for(lambda: notes(live, rid))
    assert "window is closed" in note and "Jane Visitor" in note
    reply(live, rid, "next one")
    await wait_for(lambda: sent_texts(live, igsid) == ["next one"])
    assert [s["error_code"] for s in sends(live, igsid, ok=False)] == [10]


@pytest.mark.parametrize(
    ("error", "phrase"),
    [(551, "cannot receive messages"), (36103, "messaging is not available"),
     ((100, 2018001), "refused the message")],
)
async def test_permanent_errors_finish_the_item_and_tell_the_agent(
    live: Bridge, error: object, phrase: str
) -> None:
    """User unavailable, account unavailable, other refusals: agent told, no retry."""
    igsid, rid = await visitor_with_room(live)
    live.meta.inject_send_errors(igsid, [error])
    reply(live, rid, "hello?")
    [note] = await wait_for(lambda: notes(live, rid))
    assert phrase in note
    await asyncio.sleep(0.2)
    assert len(sends(live, igsid, ok=None)) == 1


async def test_expired_token_holds_replies_tells_admins_once_and_delivers_after_reauth(
    live: Bridge,
) -> None:
    """190: page flagged, admins DM'd once, replies held (no burned retries), then delivered."""
    first, rid1 = await visitor_with_room(live, "First Visitor")
    second, rid2 = await visitor_with_room(live, "Second Visitor")
    live.meta.expire_token(live.page_id)
    reply(live, rid1, "one")
    reply(live, rid1, "two")

    def refused_190() -> int:
        return sum(1 for c in live.meta.calls() if c["error_code"] == 190)

    await wait_for(refused_190)
    reply(live, rid2, "three")

    def admin_dms() -> list[str]:
        return [m["msg"] for m in live.rc.dm_messages(BOT_USER, ADMIN)]

    await wait_for(admin_dms)
    await asyncio.sleep(0.5)
    page = await live.bot.store.page(live.page_id)
    assert page is not None and page.needs_reauth
    assert len(admin_dms()) == 1 and "authorize" in admin_dms()[0]
    # One refused call only: held items do not call Meta again while the page is flagged.
    assert refused_190() == 1
    assert sent_texts(live, first) == [] and sent_texts(live, second) == []
    assert notes(live, rid1) == [] and notes(live, rid2) == []

    # An admin re-authorizes (what the OAuth flow does), then the bot is told.
    page.page_token = live.meta.issue_page_token(live.page_id)
    page.needs_reauth = page.reauth_notified = False
    await live.bot.store.save_page(page)
    await live.bot.on_page_reauthorized(live.page_id)
    await wait_for(lambda: sent_texts(live, first) == ["one", "two"])
    await wait_for(lambda: sent_texts(live, second) == ["three"])
    assert len(admin_dms()) == 1


async def test_unconnected_page_tells_agent(live: Bridge) -> None:
    """A reply for a page that was disconnected meanwhile is not sent; the agent is told."""
    igsid, rid = await visitor_with_room(live)
    await live.bot.store.delete_page(live.page_id)
    reply(live, rid, "anyone?")
    [note] = await wait_for(lambda: notes(live, rid))
    assert "no longer connected" in note
    assert sends(live, igsid, ok=None) == []
