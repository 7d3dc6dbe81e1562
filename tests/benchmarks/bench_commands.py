"""Command round trip: a command posted at the sandbox → the bot's DM reaches the user.

The user is a real realtime (DDP) client, so the figure includes both directions of the
websocket plumbing, the router, and the REST DM send. Run:

    python -m tests.benchmarks.bench_commands [--count 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from bot.app import Bot
from bot.config import from_dict
from bot.rocketchat.realtime import IncomingMessage, RealtimeClient
from bot.rocketchat.rest import RocketChatREST
from sandbox.meta import SandboxMeta
from sandbox.rocketchat import SandboxRocketChat
from tests.scenarios.harness import BOT_USER, config_dict, in_process, setup_rocketchat


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


async def measure(count: int) -> dict[str, float]:
    rc = SandboxRocketChat().start()
    meta = SandboxMeta().start()
    rc.set_setting("API_Enable_Rate_Limiter", False)
    setup_rocketchat(rc)
    rc.create_user("carol", "carol-pw", roles=["user"])
    rid = rc.create_channel("bench", members=[BOT_USER, "carol"])
    with tempfile.TemporaryDirectory() as tmp:
        raw = config_dict(rc.url, meta, str(Path(tmp) / "s.json"), "127.0.0.1:8080")
        bot = Bot(in_process(from_dict(raw, env={})))
        bot_task = asyncio.create_task(bot.run())
        await bot.realtime.wait_connected(10)

        replies: dict[str, float] = {}
        arrived = asyncio.Event()

        async def on_reply(message: IncomingMessage) -> None:
            if message.username == BOT_USER and "`" in message.text:
                replies[message.text.split("`")[1]] = time.perf_counter()
                arrived.set()

        carol_rest = RocketChatREST(rc.url, user="carol", password="carol-pw")
        carol = RealtimeClient(
            rc.url, rest=carol_rest, user="carol", password="carol-pw", user_id=None,
            token=None, on_message=on_reply,
        )
        carol_task = asyncio.create_task(carol.run())
        await carol.wait_connected(10)

        latencies: list[float] = []
        started = time.perf_counter()
        for i in range(count):
            name = f"bench{i}"
            arrived.clear()
            sent_at = time.perf_counter()
            await asyncio.to_thread(rc.post_message, "carol", rid, f"/instagram {name}")
            while name not in replies:
                await asyncio.wait_for(arrived.wait(), 10)
                arrived.clear()
            latencies.append(replies[name] - sent_at)
        elapsed = time.perf_counter() - started

        await carol.stop()
        carol_task.cancel()
        await carol_rest.close()
        bot.stop()
        await bot_task
    rc.stop()
    meta.stop()
    return {
        "commands": count,
        "p50_ms": percentile(latencies, 50) * 1000,
        "p99_ms": percentile(latencies, 99) * 1000,
        "mean_ms": statistics.fmean(latencies) * 1000,
        "commands_per_s": count / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000)
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    figures = asyncio.run(measure(args.count))
    print("command round trip (posted → DM received), sequential")
    for key, value in figures.items():
        print(f"  {key:16} {value:10.2f}" if isinstance(value, float) else f"  {key:16} {value}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
