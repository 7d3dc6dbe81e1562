"""A Meta signature never expires: the replay window is what bounds replays."""

from __future__ import annotations

import asyncio
import time

from tests.scenarios.harness import Bridge

DAY = 24 * 3600


def _dropped(bridge: Bridge, reason: str) -> float:
    return bridge.bot.metrics.registry.get_sample_value(
        "rcig_events_dropped_total", {"direction": "inbound", "reason": reason}) or 0.0


async def test_replayed_webhook_signed_days_ago_is_not_relayed(bridge: Bridge, eventually) -> None:
    """A correctly signed body whose event is two days old (its dedupe key long expired)
    is dropped and counted as ``too_old``; a fresh message of the same visitor relays."""
    igsid = bridge.meta.new_igsid()
    old = bridge.meta.text_event(bridge.ig_id, igsid, "old news", ts=time.time() - 2 * DAY)
    status, _ = await bridge.deliver(old)
    assert status == 200
    await eventually(lambda: _dropped(bridge, "too_old") == 1)
    fresh = bridge.meta.text_event(bridge.ig_id, igsid, "hello now")
    assert (await bridge.deliver(fresh))[0] == 200
    await eventually(lambda: bridge.texts(igsid) == ["hello now"])
    await asyncio.sleep(0.2)
    assert bridge.texts(igsid) == ["hello now"]
