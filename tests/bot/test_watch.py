"""The standing watch over a running bot: sandbox Meta drops subscriptions, kills tokens."""

from __future__ import annotations

import asyncio
import dataclasses

import aiohttp
import pytest

from bot.instagram.watch import JITTER, MetaWatch
from tests.scenarios.harness import ADMIN, BOT_USER, Bridge


def admin_dms(bridge: Bridge) -> list[str]:
    return [m["msg"] for m in bridge.rc.dm_messages(BOT_USER, ADMIN)
            if m.get("u", {}).get("username") == BOT_USER]


async def installed(bridge: Bridge) -> None:
    """Install the app on the harness page at Meta, as a login would have."""
    assert bridge.page is not None
    await bridge.bot.graph.subscribe_page(bridge.page_id, bridge.page.page_token)


async def test_standing_watch_resubscribes_dropped_page(bridge: Bridge) -> None:
    """Meta dropped the subscription: the watch installs it again and tells the admins once."""
    await installed(bridge)
    watch = bridge.bot.meta_watch
    assert (await watch.run_once()).counts["ok"] == 1
    assert admin_dms(bridge) == []

    assert bridge.meta.drop_subscription(bridge.page_id)
    assert (await watch.run_once()).counts["resubscribed"] == 1
    assert bridge.meta.subscription(bridge.page_id) == ["feed"]
    [dm] = admin_dms(bridge)
    assert "Meta had removed the bot" in dm and "`feed`" in dm and bridge.page_id in dm

    assert (await watch.run_once()).counts["ok"] == 1
    assert len(admin_dms(bridge)) == 1  # told once
    async with aiohttp.ClientSession() as http, http.get(
        f"http://127.0.0.1:{bridge.bot.port}/metrics"
    ) as resp:
        text = await resp.text()
    assert 'rcig_meta_watch_pages{outcome="ok"} 1.0' in text
    assert "rcig_meta_watch_last_round_timestamp_seconds" in text


async def test_standing_watch_starts_reauth_on_dead_token(bridge: Bridge) -> None:
    """A dead Page token (190) flags the page for re-authorization and DMs the admins once."""
    await installed(bridge)
    bridge.meta.expire_token(bridge.page_id)
    assert (await bridge.bot.meta_watch.run_once()).counts["reauth"] == 1
    page = await bridge.bot.store.page(bridge.page_id)
    assert page is not None and page.needs_reauth and page.reauth_notified
    assert (await bridge.bot.meta_watch.run_once()).counts["reauth"] == 0  # skipped now
    assert [t for t in admin_dms(bridge) if "lost its authorization" in t] == admin_dms(bridge)
    assert len(admin_dms(bridge)) == 1


async def test_standing_watch_reports_a_failed_resubscribe_once(bridge: Bridge) -> None:
    """Re-installing refused (token lacks pages_manage_metadata): admins told once, not spammed."""
    assert bridge.page is not None
    page = dataclasses.replace(
        bridge.page,
        page_token=bridge.meta.issue_page_token(bridge.page_id, scopes=["pages_show_list"]),
    )
    await bridge.bot.store.save_page(page)
    for _ in range(2):
        assert (await bridge.bot.meta_watch.run_once()).counts["resubscribe_failed"] == 1
    [dm] = admin_dms(bridge)
    assert "installing it again failed" in dm and "pages_manage_metadata" in dm
    assert bridge.meta.subscription(bridge.page_id) is None


async def test_standing_watch_waits_a_jittered_interval_between_rounds(bridge: Bridge) -> None:
    """The loop sleeps interval × (1 ± 20 %) before each round and survives a failing round."""
    waits: list[float] = []
    rounds: list[int] = []
    draws = iter([0.0, 1.0, 0.5])
    now = [1000.0]

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds
        if len(waits) > 3:
            raise asyncio.CancelledError

    watch = MetaWatch(bridge.bot.store, bridge.bot.graph, bridge.bot.notify_admins,
                      lambda page_id: asyncio.sleep(0), interval=100.0,
                      rand=lambda: next(draws, 0.5), sleep=sleep, clock=lambda: now[0])

    async def run_once() -> None:
        rounds.append(1)
        if len(rounds) == 1:
            raise RuntimeError("a broken round")

    watch.run_once = run_once  # type: ignore[method-assign]
    with pytest.raises(asyncio.CancelledError):
        await watch.run()
    assert waits[:3] == pytest.approx([100 * (1 - JITTER), 100 * (1 + JITTER), 100.0])
    assert len(rounds) == 3


async def test_two_replicas_run_one_watch_round_per_interval(bridge: Bridge) -> None:
    """Two watches on one store (two replicas) reaching the same interval: only one of
    them runs its round; in the next interval one runs again."""
    rounds: list[str] = []
    now = [5000.0]

    def watch(name: str) -> MetaWatch:
        calls = [0]

        async def sleep(seconds: float) -> None:  # one round, then stop
            calls[0] += 1
            if calls[0] > 1:
                raise asyncio.CancelledError

        w = MetaWatch(bridge.bot.store, bridge.bot.graph, bridge.bot.notify_admins,
                      lambda page_id: asyncio.sleep(0), interval=100.0, sleep=sleep,
                      clock=lambda: now[0])

        async def run_once() -> None:
            rounds.append(name)
            await asyncio.sleep(0.01)
        w.run_once = run_once  # type: ignore[method-assign]
        return w

    for interval in range(2):
        results = await asyncio.gather(watch("a").run(), watch("b").run(),
                                       return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        assert len(rounds) == interval + 1
        now[0] += 100.0
