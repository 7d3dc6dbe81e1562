"""Reconciling with Instagram's own record (the Conversations API of the sandbox Meta).

Backfill: visitor messages Meta never delivered reach the room once each, in order.
Read-back: an outbound part whose send was interrupted is settled from the thread
before anything is sent again; what the record cannot settle is never resent, the
agent is told. Order: replies typed while the bridge was down go out in typing order.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from bot import messages
from bot.relay import backfill as backfill_module
from bot.relay.outbound import note_id
from sandbox.meta import SandboxMeta
from sandbox.rocketchat import SandboxRocketChat
from storage.base import WorkItem, conversation_key
from tests.scenarios.harness import AGENT, Bridge, running_bridge, start_bot, stop_bot
from tests.scenarios.outbound_helpers import (
    enable_omnichannel_webhooks,
    replies_in_turn,
    sends,
    visitor_with_room,
    wait_for,
)


def sent_texts(bridge: Bridge, igsid: str) -> list[str]:
    return [s["body"]["message"].get("text") for s in sends(bridge, igsid)]


async def restart(bridge: Bridge, **options: object) -> None:
    """Stop the bot (a clean stop) and start a new one on the same store."""
    await stop_bot(bridge.bot, bridge.task)  # type: ignore[arg-type]
    bridge.bot, bridge.task = await start_bot(bridge.config, **options)
    bridge.meta.set_webhook(bridge.webhook_url, echoes=True)


# --- backfill ------------------------------------------------------------------------------


async def test_messages_sent_while_bridge_was_stopped_arrive_once_in_order(
    bridge: Bridge,
) -> None:
    """Bridge stopped; five DMs reach Instagram with no webhook; on start (after more than
    the grace) the five reach the room once each, in order, and a late webhook adds nothing."""
    igsid, _ = await visitor_with_room(bridge)
    await stop_bot(bridge.bot, bridge.task)  # type: ignore[arg-type]
    texts = [f"while you were away {n}" for n in range(5)]
    posted = len(bridge.meta.deliveries())
    mids = [bridge.meta.record_visitor_message(bridge.page_id, igsid, t) for t in texts]
    assert len(bridge.meta.deliveries()) == posted  # recorded, no webhook
    bridge.bot, bridge.task = await start_bot(bridge.config, backfill_grace=0.0)
    bridge.meta.set_webhook(bridge.webhook_url, echoes=True)
    await wait_for(lambda: len(bridge.texts(igsid)) >= 6)
    # Meta's late retry of one of them changes nothing (same ig:<mid> id).
    late = bridge.meta.text_event(bridge.ig_id, igsid, texts[2], mid=mids[2])
    assert (await bridge.deliver(late))[0] == 200
    await bridge.taken()
    await wait_for(lambda: bridge.bot.metrics.backfilled.labels("message")._value.get() == 5)
    assert bridge.texts(igsid) == ["Hello", *texts]
    assert await bridge.bot.store.mark(f"reconcile:{bridge.page_id}:backfilled") == 5


async def test_throttled_backfill_is_tried_again(
    bridge: Bridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Meta throttling the listing (613 past the client's own retries) does not drop the
    backfill: it runs again after a backoff and the messages arrive."""
    monkeypatch.setattr(backfill_module, "RETRY_BASE", 0.2)
    igsid, _ = await visitor_with_room(bridge)
    await stop_bot(bridge.bot, bridge.task)  # type: ignore[arg-type]
    bridge.meta.record_visitor_message(bridge.page_id, igsid, "still there?")
    bridge.meta.inject_errors("conversations", [613, 613, 613])
    bridge.bot, bridge.task = await start_bot(bridge.config, backfill_grace=0.0)
    await wait_for(lambda: bridge.texts(igsid) == ["Hello", "still there?"], timeout=15)
    assert bridge.bot.metrics.backfill_runs.labels("start", "failed")._value.get() == 1


async def test_short_stop_is_left_to_meta_retries(bridge: Bridge) -> None:
    """A restart within the grace reads no threads: Meta's own retries cover it."""
    await restart(bridge)
    await wait_for(lambda: bridge.bot.port)
    calls = [c for c in bridge.meta.calls() if c["path"].endswith("/conversations")]
    assert calls == []


async def test_messages_sent_while_meta_dropped_the_subscription_arrive_once_in_order(
    rocketchat: SandboxRocketChat, meta: SandboxMeta, tmp_path: Path
) -> None:
    """Meta unsubscribes the app while the bridge runs; five DMs are recorded but never
    delivered; the standing watch re-subscribes and the backfill brings all five, in order."""
    async with running_bridge(rocketchat, meta, tmp_path, watch_interval=0.3) as bridge:
        await wait_for(lambda: meta.subscription(bridge.page_id) is not None)
        igsid, _ = await visitor_with_room(bridge)
        assert meta.drop_subscription(bridge.page_id)
        texts = [f"are you there {n}" for n in range(5)]
        for text in texts:
            _, status = await meta.visitor_writes(bridge.page_id, igsid, text)
            assert status is None  # not delivered: no subscription
        await wait_for(lambda: bridge.texts(igsid) == ["Hello", *texts], timeout=15)
        await wait_for(lambda: meta.subscription(bridge.page_id) is not None)
        # Delivery works again, and nothing came twice.
        _, status = await meta.visitor_writes(bridge.page_id, igsid, "back to normal")
        assert status == 200
        await wait_for(lambda: bridge.texts(igsid) == ["Hello", *texts, "back to normal"])
        assert bridge.bot.metrics.backfill_runs.labels("watch", "ok")._value.get() >= 1


async def test_echo_typed_in_the_instagram_app_while_down_is_shown(bridge: Bridge) -> None:
    """A message the business typed in the Instagram app while the bridge was down comes
    back from the thread as an echo and is shown in the room, as a delivered echo is."""
    igsid, rid = await visitor_with_room(bridge)
    await stop_bot(bridge.bot, bridge.task)  # type: ignore[arg-type]
    mid = bridge.meta.new_mid()
    bridge.meta.record_message(bridge.ig_id, igsid, mid, "Typed on my phone",
                               from_business=True)
    bridge.bot, bridge.task = await start_bot(bridge.config, backfill_grace=0.0)
    await wait_for(lambda: any("Typed on my phone" in m.get("msg", "")
                               for m in bridge.rc.room_messages(rid)), timeout=15)


# --- read-back of sends in doubt ------------------------------------------------------------


async def doubtful_reply(bridge: Bridge, igsid: str, rid: str, text: str) -> WorkItem:
    """Queue an agent reply as if a crash came right after its send started."""
    item = WorkItem(
        item_id=f"rc-msg:doubt-{time.monotonic_ns()}", queue="outbound",
        conversation=conversation_key(bridge.page_id, igsid), kind="agent_message",
        payload={"room_id": rid, "text": text, "files": [], "agent_id": "agent",
                 "message_id": "m"},
        order_ts=time.time(), sending_at=time.time() - 0.5,
    )
    [stored] = await bridge.bot.store.enqueue([item])
    stored.sending_at = item.sending_at
    await bridge.bot.store.update_item(stored)
    bridge.bot.outbound.notify()
    return stored


def unknown_note(bridge: Bridge, rid: str, item: WorkItem) -> str | None:
    found = bridge.rc.message(note_id(f"note:{item.item_id}:unknown:0"))
    return found["msg"] if found else None


async def test_send_found_in_thread_is_not_sent_again(bridge: Bridge) -> None:
    """A part Meta accepted before the crash is found in the thread: delivered, no resend."""
    igsid, rid = await visitor_with_room(bridge)
    bridge.meta.record_message(bridge.ig_id, igsid, bridge.meta.new_mid(), "Your order shipped",
                               from_business=True)
    item = await doubtful_reply(bridge, igsid, rid, "Your order shipped")
    await wait_for(lambda: bridge.bot.metrics.outbound_settled.labels("delivered")._value.get())
    await wait_for(lambda: not bridge.bot.store.inbox.backlog)
    assert sent_texts(bridge, igsid) == []
    assert unknown_note(bridge, rid, item) is None


async def test_send_missing_from_thread_is_sent_once(bridge: Bridge) -> None:
    """A part the thread does not hold (the thread reaches back past its start) is sent once."""
    igsid, rid = await visitor_with_room(bridge)
    await doubtful_reply(bridge, igsid, rid, "Sent after the crash")
    await wait_for(lambda: sent_texts(bridge, igsid) == ["Sent after the crash"])
    assert bridge.bot.metrics.outbound_settled.labels("resent")._value.get() == 1


async def test_thread_past_20_messages_is_unknown_never_resent(bridge: Bridge) -> None:
    """Twenty newer messages hide what the send would have been: unknown, the agent is
    told, nothing is sent."""
    igsid, rid = await visitor_with_room(bridge)
    for n in range(20):
        bridge.meta.record_visitor_message(bridge.page_id, igsid, f"spam {n}")
    item = await doubtful_reply(bridge, igsid, rid, "Lost in the scroll?")
    await wait_for(lambda: unknown_note(bridge, rid, item))
    assert "20" in unknown_note(bridge, rid, item)
    assert sent_texts(bridge, igsid) == []


async def test_identical_texts_are_unknown_never_resent(bridge: Bridge) -> None:
    """The same text twice in the thread cannot be told apart: unknown, no resend."""
    igsid, rid = await visitor_with_room(bridge)
    for _ in range(2):
        bridge.meta.record_message(bridge.ig_id, igsid, bridge.meta.new_mid(), "ok",
                                   from_business=True)
    item = await doubtful_reply(bridge, igsid, rid, "ok")
    await wait_for(lambda: unknown_note(bridge, rid, item))
    note = unknown_note(bridge, rid, item)
    assert note == messages.OUTBOUND_OUTCOME_UNKNOWN.format(
        partial="", visitor="Jane Visitor",
        reason=messages.OUTCOME_UNKNOWN_REASONS["identical_texts"])
    assert sent_texts(bridge, igsid) == []


async def test_api_refusing_the_read_is_unknown_never_resent(bridge: Bridge) -> None:
    """Meta refusing the read-back (a permission error) leaves the part unknown: no resend."""
    igsid, rid = await visitor_with_room(bridge)
    bridge.meta.inject_errors("conversations", [10, 10, 10])
    item = await doubtful_reply(bridge, igsid, rid, "Can you read me?")
    await wait_for(lambda: unknown_note(bridge, rid, item))
    assert sent_texts(bridge, igsid) == []
    assert bridge.bot.metrics.outbound_settled.labels("unknown")._value.get() == 1


# --- order across restarts -------------------------------------------------------------------


async def test_replies_typed_while_down_go_out_in_typing_order(bridge: Bridge) -> None:
    """Replies typed while the bridge was down whose webhooks Rocket.Chat gave up on are
    read from the room when the next reply comes, and sent before it, in typing order."""
    enable_omnichannel_webhooks(bridge)
    igsid, rid = await visitor_with_room(bridge)
    bridge.rc.agent_reply(AGENT, rid, "first, before the stop")
    await wait_for(lambda: sent_texts(bridge, igsid) == ["first, before the stop"])
    await stop_bot(bridge.bot, bridge.task)  # type: ignore[arg-type]
    attempts = bridge.rc.webhook_max_attempts
    bridge.rc.webhook_max_attempts = 1  # Rocket.Chat gives up on these at once
    typed = [f"typed while down {n}" for n in range(3)]
    await replies_in_turn(bridge, rid, typed)
    await wait_for(lambda: sum(1 for w in bridge.rc.webhooks_sent()
                               if w["type"] == "Message" and w["status"] != 200) >= 3)
    bridge.rc.webhook_max_attempts = attempts
    bridge.bot, bridge.task = await start_bot(bridge.config)
    enable_omnichannel_webhooks(bridge)
    bridge.rc.agent_reply(AGENT, rid, "after the start")
    expected = ["first, before the stop", *typed, "after the start"]
    await wait_for(lambda: sent_texts(bridge, igsid) == expected)
