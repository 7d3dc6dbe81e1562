"""Drill 2: Rocket.Chat websocket drops while people type commands.

A real :class:`bot.app.Bot` (fast reconnect backoff) listens over DDP. Two users type
``/instagram <name>`` commands — in a channel and in a DM to the bot — at random
moments, while the sandbox drops every DDP socket at random moments; at some drops it
also refuses new connections for a while, so commands are typed while the bot is away
and must be caught up over REST. Every command must be answered exactly once.

Fast variant (default): 150 commands, 15 drops. Long variant (``--run-slow`` or
``RCIG_LONG_DRILLS=1``): 1,000 commands, 100 drops. ``-s`` shows the figures.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.app import Bot
from bot.backoff import exponential_backoff
from bot.config import from_dict
from sandbox.meta import SandboxMeta
from sandbox.rocketchat import SandboxRocketChat
from tests.scenarios.harness import (
    ADMIN,
    BOT_USER,
    config_dict,
    in_process,
    setup_rocketchat,
    stop_bot,
)

TINY_BACKOFF = exponential_backoff(initial=0.01, factor=2.0, max_delay=0.1, jitter=0.5)
TYPISTS = ("carol", "dave")


@pytest.fixture
async def bot(
    rocketchat: SandboxRocketChat, meta: SandboxMeta, tmp_path: Path
) -> AsyncIterator[Bot]:
    """A running bot with fast reconnects; two plain users who type commands."""
    setup_rocketchat(rocketchat)
    for name in TYPISTS:
        rocketchat.create_user(name, f"{name}-pw", roles=["user"])
    raw = config_dict(rocketchat.url, meta, str(tmp_path / "data" / "s.json"), "127.0.0.1:8080")
    bot = Bot(in_process(from_dict(raw, env={})), backoff=TINY_BACKOFF)
    task = asyncio.create_task(bot.run())
    await bot.realtime.wait_connected(10)
    try:
        yield bot
    finally:
        await stop_bot(bot, task)


def answered(rc: SandboxRocketChat) -> Counter[str]:
    """Command name → how many times the bot answered it (by DM to the typist)."""
    counts: Counter[str] = Counter()
    for user in TYPISTS:
        for message in rc.dm_messages(user, BOT_USER):
            if message["u"]["username"] == BOT_USER and "`" in message["msg"]:
                counts[message["msg"].split("`")[1]] += 1
    return counts


async def test_commands_typed_across_socket_drops_are_answered_exactly_once(
    bot: Bot, rocketchat: SandboxRocketChat, long_drills: bool
) -> None:
    """Commands typed while the socket drops at random (and stays down for a while at
    some drops) are each answered exactly once."""
    commands, drops = (1000, 100) if long_drills else (150, 15)
    rng = random.Random(2)
    rc = rocketchat
    channel = rc.create_channel("drills", members=[BOT_USER, ADMIN, *TYPISTS])
    dms = {user: rc.create_dm(user, BOT_USER) for user in TYPISTS}
    typed: list[str] = []
    away_typed = 0
    # Spread the drops over the typing time: about one drop per commands/drops commands.
    gap = 0.03
    started = time.monotonic()

    async def typist() -> None:
        nonlocal away_typed
        for n in range(commands):
            user = TYPISTS[n % len(TYPISTS)]
            name = f"c{n:04d}"
            if rng.random() < 0.5:
                rc.post_message(user, channel, f"/instagram {name}")
            else:
                rc.send_dm(user, BOT_USER, f"instagram {name}")
            typed.append(name)
            if not bot.realtime.connected:
                away_typed += 1
            await asyncio.sleep(rng.uniform(0.5, 1.5) * gap)

    async def dropper() -> None:
        interval = commands * gap / drops
        for _ in range(drops):
            await asyncio.sleep(rng.uniform(0.5, 1.0) * interval)
            away = rng.random() < 0.4
            if away:
                rc.block_connections(True)
            rc.drop_all_sockets()
            if away:
                await asyncio.sleep(rng.uniform(0.05, 0.3))
                rc.block_connections(False)

    await asyncio.gather(typist(), dropper())
    typing_done = time.monotonic()
    deadline = time.monotonic() + (120 if long_drills else 20)
    while set(answered(rc)) < set(typed) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.5)  # a late duplicate would show up now
    counts = answered(rc)
    missing = sorted(set(typed) - set(counts))
    twice = sorted(name for name, n in counts.items() if n > 1)
    unexpected = sorted(set(counts) - set(typed))
    print(f"\n[drill 2] {len(typed)} commands ({away_typed} typed while disconnected), "
          f"{drops} socket drops, {bot.realtime.reconnects} reconnects, "
          f"typed in {typing_done - started:.1f} s, all answered "
          f"{time.monotonic() - typing_done - 0.5:.1f} s later; "
          f"unanswered {len(missing)}, answered twice or more {len(twice)}, "
          f"answers to something never typed {len(unexpected)}")
    assert dms  # both DM rooms exist (commands were typed there too)
    assert missing == [], missing[:10]
    assert twice == [], twice[:10]
    assert unexpected == []
    assert bot.realtime.reconnects >= drops
