"""Command round trip side by side: rc-instagram vs a minimal bot on the official Node SDK.

Run: ``python -m tests.benchmarks.bench_command_anchor [--count 1000] [--json PATH]``

One sandbox Rocket.Chat (in this process) and one measuring user, ``carol``, on a real
DDP client. Each bot in turn, as its own child process, logs in as the same bot account
and answers ``/instagram help`` posted by carol in a channel with a DM. A round trip is
measured from just before the message is posted to carol receiving the DM over her
websocket; commands are sequential. The two bots send the same reply text.

- ``rc-instagram``: ``rc-instagram run`` (DDP in, router, REST ``chat.sendMessage`` out).
- ``node-sdk``: ``tests/benchmarks/node_anchor/bot.js`` on ``@rocket.chat/sdk`` (pinned in
  its package.json), installed on demand into its own ``node_modules``. Skipped, with
  the reason printed and recorded, when node/npm are missing or the install fails.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bot.rocketchat.realtime import IncomingMessage, RealtimeClient
from bot.rocketchat.rest import RocketChatREST
from sandbox.meta import SandboxMeta
from sandbox.rocketchat import SandboxRocketChat
from tests.scenarios.harness import (
    BOT_PASSWORD,
    BOT_USER,
    config_dict,
    free_port,
    setup_rocketchat,
)

ROOT = Path(__file__).resolve().parents[2]
ANCHOR_DIR = Path(__file__).resolve().parent / "node_anchor"
COMMAND = "/instagram help"
REPLY_TIMEOUT = 10.0


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def sdk_version() -> str:
    spec = json.loads((ANCHOR_DIR / "package.json").read_text())["dependencies"]
    return str(spec["@rocket.chat/sdk"])


def install_anchor() -> str | None:
    """Install the Node bot's dependencies if needed; None when ready, else why not."""
    if shutil.which("node") is None or shutil.which("npm") is None:
        return "node/npm not found on PATH"
    installed = ANCHOR_DIR / "node_modules" / "@rocket.chat" / "sdk" / "package.json"
    if installed.exists() and json.loads(installed.read_text())["version"] == sdk_version():
        return None
    # npm ci installs exactly the committed lockfile (registry packages, integrity-checked).
    command = ["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"]
    try:
        done = subprocess.run(command, cwd=ANCHOR_DIR, capture_output=True, text=True,
                              timeout=300, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"npm ci failed: {exc}"
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        return f"npm ci failed (exit {done.returncode}): {tail[0]}"
    return None


class Measurer:
    """carol: posts the command in the channel and timestamps the bot's DMs to her."""

    def __init__(self, rc: SandboxRocketChat, rid: str) -> None:
        self.rc = rc
        self.rid = rid
        self.replies: asyncio.Queue[tuple[float, str]] = asyncio.Queue()
        self.rest = RocketChatREST(rc.url, user="carol", password="carol-pw")
        self.client = RealtimeClient(
            rc.url, rest=self.rest, user="carol", password="carol-pw", user_id=None,
            token=None, on_message=self._on_message,
        )
        self.task: asyncio.Task[None] | None = None

    async def _on_message(self, message: IncomingMessage) -> None:
        if message.username == BOT_USER and message.room_type == "d":
            self.replies.put_nowait((time.perf_counter(), message.text))

    async def start(self) -> None:
        self.task = asyncio.create_task(self.client.run())
        await self.client.wait_connected(10)

    async def stop(self) -> None:
        await self.client.stop()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        await self.rest.close()

    async def round_trip(self) -> tuple[float, str]:
        while not self.replies.empty():  # a late reply must not count for this command
            self.replies.get_nowait()
        sent_at = time.perf_counter()
        await asyncio.to_thread(self.rc.post_message, "carol", self.rid, COMMAND)
        received_at, text = await asyncio.wait_for(self.replies.get(), REPLY_TIMEOUT)
        return received_at - sent_at, text

    async def run(self, count: int, warmup: int) -> tuple[list[float], str]:
        text = ""
        for _ in range(warmup):
            _, text = await self.round_trip()
        latencies = []
        for _ in range(count):
            latency, text = await self.round_trip()
            latencies.append(latency)
        return latencies, text


async def wait_realtime(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    """Until the bot's /healthz reports its realtime link up."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"rc-instagram exited with {proc.returncode}")
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    if (await resp.json()).get("realtime"):
                        return
            await asyncio.sleep(0.05)
    raise RuntimeError("rc-instagram did not connect")


def stop(proc: subprocess.Popen[Any]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def measure_rc_instagram(rc: SandboxRocketChat, meta: SandboxMeta, measurer: Measurer,
                               workdir: Path, count: int, warmup: int) -> tuple[list[float], str]:
    port = free_port()
    config = workdir / "config.yaml"
    config.write_text(yaml.safe_dump(
        config_dict(rc.url, meta, str(workdir / "store.json"), f"127.0.0.1:{port}")))
    exe = Path(sys.executable).parent / "rc-instagram"
    with (workdir / "bot.log").open("ab") as log:
        proc = subprocess.Popen(
            [str(exe), "run", "--config", str(config), "--log-level", "WARNING"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
        )
    try:
        await wait_realtime(port, proc)
        return await measurer.run(count, warmup)
    finally:
        stop(proc)


async def measure_node(rc: SandboxRocketChat, measurer: Measurer, reply: str, count: int,
                       warmup: int) -> list[float]:
    env = {**os.environ, "ROCKETCHAT_URL": rc.url, "ROCKETCHAT_USER": BOT_USER,
           "ROCKETCHAT_PASSWORD": BOT_PASSWORD, "ANCHOR_REPLY": reply}
    proc = await asyncio.create_subprocess_exec(
        "node", "bot.js", cwd=ANCHOR_DIR, env=env, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), 30)
        if not line.startswith(b"ready"):
            raise RuntimeError(f"node bot did not start (exit {await proc.wait()})")
        latencies, _ = await measurer.run(count, warmup)
        return latencies
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def summarise(prefix: str, latencies: list[float]) -> dict[str, float]:
    return {
        f"{prefix}_p50_ms": percentile(latencies, 50) * 1000,
        f"{prefix}_p99_ms": percentile(latencies, 99) * 1000,
        f"{prefix}_mean_ms": statistics.fmean(latencies) * 1000,
    }


async def measure(count: int, warmup: int) -> dict[str, Any]:
    rc = SandboxRocketChat().start()
    meta = SandboxMeta().start()
    figures: dict[str, Any] = {"commands": count}
    try:
        rc.set_setting("API_Enable_Rate_Limiter", False)
        setup_rocketchat(rc)
        rc.create_user("carol", "carol-pw", roles=["user"])
        rid = rc.create_channel("bench", members=[BOT_USER, "carol"])
        measurer = Measurer(rc, rid)
        await measurer.start()
        try:
            with tempfile.TemporaryDirectory(prefix="bench-anchor-") as tmp:
                ours, reply = await measure_rc_instagram(
                    rc, meta, measurer, Path(tmp), count, warmup)
            figures.update(summarise("rc_instagram", ours))
            skipped = await asyncio.to_thread(install_anchor)
            if skipped is None:
                try:
                    theirs = await measure_node(rc, measurer, reply, count, warmup)
                except (RuntimeError, OSError, TimeoutError) as exc:
                    skipped = f"node bot failed: {exc}"
            if skipped is None:
                figures.update(summarise("node_sdk", theirs))
                figures["p50_ratio_node_over_ours"] = (
                    figures["node_sdk_p50_ms"] / figures["rc_instagram_p50_ms"])
                figures["node_sdk_version"] = sdk_version()
            else:
                figures["node_sdk_skipped"] = skipped
        finally:
            await measurer.stop()
    finally:
        rc.stop()
        meta.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1000, help="measured commands per bot")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured commands first")
    parser.add_argument("--quick", action="store_true", help="200 commands per bot")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    count = 200 if args.quick else args.count
    figures = asyncio.run(measure(count, args.warmup))
    print(f"command round trip: '{COMMAND}' posted in a channel -> DM received, "
          f"{count} sequential commands per bot")
    print(f"  {'bot':<34}{'p50 ms':>9}{'p99 ms':>9}{'mean ms':>9}")
    rows = [("rc-instagram", "rc_instagram")]
    if "node_sdk_p50_ms" in figures:
        rows.append((f"@rocket.chat/sdk {figures['node_sdk_version']}", "node_sdk"))
    for label, key in rows:
        print(f"  {label:<34}{figures[key + '_p50_ms']:>9.2f}{figures[key + '_p99_ms']:>9.2f}"
              f"{figures[key + '_mean_ms']:>9.2f}")
    if "node_sdk_skipped" in figures:
        print(f"  Node SDK anchor SKIPPED: {figures['node_sdk_skipped']}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
