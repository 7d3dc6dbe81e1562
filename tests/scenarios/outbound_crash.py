"""The outbound crash experiment, shared by the scenario test and the benchmark script.

300 agent messages across 30 rooms are acknowledged by a bot running as a subprocess
(``rc-instagram run``); the bot is SIGKILLed while sends are in flight, restarted, and
the sandbox Meta's Send API log is checked: every part delivered once, per-room order
kept. The sends in flight at the kill (Meta accepted them, the bot never recorded it)
are settled after the restart by reading the threads back, so none is repeated.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from bot.relay.outbound import split_text
from bot.rocketchat.rest import RocketChatREST
from sandbox.meta import DEFAULT_IG_ID, DEFAULT_PAGE_ID, DEFAULT_PAGE_NAME, SandboxMeta
from sandbox.rocketchat import SandboxRocketChat
from storage import Conversation, Page, open_store
from tests.scenarios.harness import (
    AGENT,
    WEBHOOK_SECRET,
    config_dict,
    free_port,
    setup_rocketchat,
    write_config,
)

ROOT = Path(__file__).resolve().parents[2]
EXECUTABLE = Path(sys.executable).with_name("rc-instagram")


@dataclass
class CrashResult:
    """What one run measured."""

    expected_parts: int = 0
    delivered_parts: int = 0
    duplicates: int = 0
    accepted_after_kill: int = 0  # sends Meta completed after the SIGKILL (body already in)
    max_per_room: int = 0
    sent_at_kill: int = 0
    webhook_failures: list[str] = field(default_factory=list)  # attempts Rocket.Chat retried
    lost: list[str] = field(default_factory=list)
    out_of_order: list[str] = field(default_factory=list)
    duplicate_rooms: int = 0
    #: For each duplicate, when Meta accepted the first copy, relative to the SIGKILL (s).
    duplicate_offsets: list[float] = field(default_factory=list)
    seconds: float = 0.0
    #: Parts settled by reading the thread back after the restart, and those left unknown.
    settled: int = 0
    unknown: int = 0


def _message_text(room: int, index: int) -> str:
    """Every 5th message is long (three parts), so resumption by progress is exercised."""
    base = f"room {room:02d} message {index:02d}"
    if index % 5 == 4:
        words = " ".join(f"r{room:02d}m{index:02d}w{k:03d}" for k in range(300))
        return (base + " " + words)[:2500]
    return base


async def _wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise AssertionError(f"bot exited early with {proc.returncode}")
            try:
                async with session.get(url) as resp:
                    if resp.status in (200, 503):
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("bot did not come up")


def _start(config: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("ab") as out:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(
            [str(EXECUTABLE), "run", "--config", str(config)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )


async def run_crash_experiment(
    rc: SandboxRocketChat,
    meta: SandboxMeta,
    workdir: Path,
    *,
    rooms: int = 30,
    per_room: int = 10,
    latency: float = 0.15,
    kill_after_fraction: float = 0.4,
    timeout: float = 60.0,
) -> CrashResult:
    """Run the experiment once against fresh sandboxes; return the measurements."""
    started = time.monotonic()
    result = CrashResult()
    setup_rocketchat(rc)
    port = free_port()
    store_path = workdir / "data" / "store.json"
    config = write_config(
        workdir / "config.yaml",
        config_dict(rc.url, meta, str(store_path), f"127.0.0.1:{port}"),
    )
    base = f"http://127.0.0.1:{port}"

    # Rooms and conversations exist already (the inbound side's work, not under test).
    rest = RocketChatREST(rc.url)
    store = open_store(str(store_path))
    await store.open()
    await store.save_page(Page(
        page_id=DEFAULT_PAGE_ID, name=DEFAULT_PAGE_NAME, instagram_id=DEFAULT_IG_ID,
        username="sandboxshop", page_token=meta.issue_page_token(DEFAULT_PAGE_ID),
    ))
    visitors: list[tuple[str, str]] = []  # (igsid, rid)
    for n in range(rooms):
        igsid = meta.new_igsid()
        token = f"instagram-{DEFAULT_PAGE_ID}-{igsid}"
        await rest.register_visitor(token, f"Visitor {n:02d}")
        room, _ = await rest.open_room(token)
        meta.set_last_inbound(DEFAULT_PAGE_ID, igsid)
        await store.save_conversation(Conversation(
            page_id=DEFAULT_PAGE_ID, igsid=igsid, visitor_token=token,
            visitor_name=f"Visitor {n:02d}", visitor_registered=True, room_id=room["_id"],
            last_inbound_at=time.time(),
        ))
        visitors.append((igsid, room["_id"]))
    await store.close()
    await rest.close()

    rc.set_setting("Livechat_webhookUrl", f"{base}/webhooks/rocketchat")
    rc.set_setting("Livechat_secret_token", WEBHOOK_SECRET)
    rc.set_setting("Livechat_webhook_on_agent_message", True)
    meta.set_latency(latency)

    expected: dict[str, list[str]] = {}
    log = workdir / "bot.log"
    proc = _start(config, log)
    try:
        await _wait_http(f"{base}/healthz", proc)
        # Round-robin over rooms, so every room has work queued when the kill comes. The
        # rounds are paced a little like agents typing: Rocket.Chat's webhooks are
        # fire-and-forget and unordered, so messages of one room created within the
        # same millisecond could reach any receiver in either order.
        for index in range(per_room):
            for n, (igsid, rid) in enumerate(visitors):
                text = _message_text(n, index)
                rc.agent_reply(AGENT, rid, text)
                expected.setdefault(igsid, []).extend(split_text(text))
            await asyncio.sleep(0.02)
        total = rooms * per_room
        result.expected_parts = sum(len(v) for v in expected.values())

        def acked() -> int:
            return len({w["payload"]["messages"][0]["_id"] for w in rc.webhooks_sent()
                        if w["type"] == "Message" and w["status"] == 200})

        deadline = time.monotonic() + timeout
        while acked() < total:
            if time.monotonic() > deadline:
                raise AssertionError(f"only {acked()} of {total} webhooks acknowledged")
            await asyncio.sleep(0.02)
        kill_at = int(result.expected_parts * kill_after_fraction)
        while len(meta.sent_messages(ok=True)) < kill_at:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise AssertionError("sends did not progress before the kill")
            await asyncio.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        killed_at = meta.now()
        proc.wait()
        result.sent_at_kill = len(meta.sent_messages(ok=True))
        # Requests whose body Meta had already received still complete after the kill.
        await asyncio.sleep(latency * 2 + 0.2)
        result.accepted_after_kill = len(meta.sent_messages(ok=True)) - result.sent_at_kill

        proc = _start(config, log)
        await _wait_http(f"{base}/healthz", proc)

        def delivered() -> dict[str, list[str]]:
            out: dict[str, list[str]] = {}
            for s in meta.sent_messages(DEFAULT_PAGE_ID, ok=True):
                out.setdefault(s["recipient"], []).append(s["body"]["message"]["text"])
            return out

        def complete() -> bool:
            got = delivered()
            return all(set(parts) <= set(got.get(igsid, [])) for igsid, parts in expected.items())

        while not complete():
            if time.monotonic() > deadline + timeout:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # let any stray re-send land before counting
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        meta.set_latency(0)

    result.webhook_failures = sorted({
        f"{w['status'] or w['error']}" for w in rc.webhooks_sent() if w["status"] != 200
    })
    got = delivered()
    for igsid, parts in expected.items():
        seen = got.get(igsid, [])
        result.delivered_parts += len(seen)
        missing = [p for p in parts if p not in seen]
        if missing:
            result.lost.append(f"{igsid}: {len(missing)} part(s) missing")
        # First occurrences must follow the agent's order; a duplicate is a repeat.
        first: list[str] = []
        for text in seen:
            if text not in first:
                first.append(text)
        if first != [p for p in parts if p in first]:
            wanted = [p for p in parts if p in first]
            at = next(i for i, (a, b) in enumerate(zip(first, wanted, strict=True)) if a != b)
            result.out_of_order.append(f"{igsid}: got {first[at][:24]!r} for {wanted[at][:24]!r}")
        extra = len(seen) - len(set(seen))
        result.max_per_room = max(result.max_per_room, extra)
        if extra:
            records = meta.sent_messages(DEFAULT_PAGE_ID, igsid, ok=True)
            for text in {t for t in seen if seen.count(t) > 1}:
                first_at = next(r["time"] for r in records if r["body"]["message"]["text"] == text)
                result.duplicate_offsets.append(round(first_at - killed_at, 3))
        result.duplicates += extra
        result.duplicate_rooms += 1 if extra else 0
    result.settled, result.unknown = await reconcile_counts(str(store_path), DEFAULT_PAGE_ID)
    result.seconds = time.monotonic() - started
    return result


async def reconcile_counts(store_path: str, page_id: str) -> tuple[int, int]:
    """(parts settled by read-back, parts left unknown) as the stopped bot recorded them."""
    store = open_store(store_path)
    await store.open()
    try:
        settled = await store.mark(f"reconcile:{page_id}:settled") or 0
        unknown = await store.mark(f"reconcile:{page_id}:unknown") or 0
    finally:
        await store.close()
    return int(settled), int(unknown)
