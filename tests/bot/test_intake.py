"""The intake: acknowledged webhooks reach the inbound queue, after a storm at the latest."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from tests.scenarios.harness import Bridge


@contextlib.asynccontextmanager
async def storm(bridge: Bridge) -> AsyncIterator[None]:
    """Keep the receiver's load at storm rate (as a flood of webhooks would)."""

    async def flood() -> None:
        while True:
            for _ in range(25):  # above the busy threshold of any one window
                bridge.bot.receiver_load.note()
            await asyncio.sleep(0.01)

    task = asyncio.create_task(flood())
    try:
        await asyncio.sleep(0.02)
        assert bridge.bot.receiver_load.busy()
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _event(bridge: Bridge) -> tuple[dict, str]:
    igsid = bridge.meta.new_igsid()
    return bridge.meta.text_event(bridge.ig_id, igsid, "hello"), igsid


async def test_storm_holds_the_intake_back_until_it_passes(bridge: Bridge, eventually):
    """During a storm a webhook is acknowledged from the inbox and queued once it passes."""
    event, igsid = _event(bridge)
    async with storm(bridge):
        status, _ = await bridge.deliver(event)
        assert status == 200
        await asyncio.sleep(0.3)
        assert bridge.bot.store.inbox.backlog == 1
        assert await bridge.bot.store.queue_depth("inbound") == 0
    await eventually(lambda: bridge.texts(igsid) == ["hello"])
    assert bridge.bot.store.inbox.backlog == 0


async def test_long_storm_defers_the_intake_at_most_max_defer(bridge: Bridge, eventually):
    """However long the storm, a stored webhook waits at most max_defer for the intake,
    and the relay, paced, still delivers it."""
    bridge.bot.intake.max_defer = 0.4
    event, igsid = _event(bridge)
    async with storm(bridge):
        started = time.monotonic()
        status, _ = await bridge.deliver(event)
        assert status == 200
        await eventually(lambda: bridge.bot.store.inbox.backlog == 0, timeout=5)
        waited = time.monotonic() - started
        assert waited >= 0.3
        await eventually(lambda: bridge.texts(igsid) == ["hello"], timeout=10)
        assert bridge.bot.receiver_load.busy()  # all of it happened inside the storm


async def test_calm_receiver_queues_at_once(bridge: Bridge, eventually):
    """Without a storm the intake takes a webhook right away (well under max_defer)."""
    event, igsid = _event(bridge)
    started = time.monotonic()
    status, _ = await bridge.deliver(event)
    assert status == 200
    await eventually(lambda: bridge.bot.store.inbox.backlog == 0, timeout=5)
    assert time.monotonic() - started < 1.0
    await eventually(lambda: bridge.texts(igsid) == ["hello"])


async def test_a_body_the_parser_chokes_on_does_not_wedge_the_rest(
    bridge: Bridge, eventually, mocker
):
    """A parser crash (a bug) skips that one stored webhook, counted; later ones flow."""
    from bot.relay import intake

    real = intake.parse_webhook
    calls = 0

    def crash_once(body, pages):
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("parser bug")
        return real(body, pages)

    mocker.patch.object(intake, "parse_webhook", side_effect=crash_once)
    first, _ = _event(bridge)
    status, _ = await bridge.deliver(first)
    assert status == 200
    await eventually(lambda: calls >= 1)
    second, igsid = _event(bridge)
    status, _ = await bridge.deliver(second)
    assert status == 200
    await eventually(lambda: bridge.texts(igsid) == ["hello"])
    dropped = bridge.bot.metrics.registry.get_sample_value(
        "rcig_events_dropped_total", {"direction": "inbound", "reason": "unparseable"}
    )
    assert dropped == 1


async def test_forged_flood_does_not_count_as_a_storm(bridge: Bridge):
    """Hundreds of unsigned webhooks a second are refused and never slow the relay down."""
    event, _ = _event(bridge)
    statuses = await asyncio.gather(*(
        bridge.deliver(event, headers={"X-Hub-Signature-256": "sha256=" + "0" * 64})
        for _ in range(100)
    ))
    assert {status for status, _ in statuses} == {403}
    assert not bridge.bot.receiver_load.busy()
