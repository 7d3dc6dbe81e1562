"""Crash tests: kill -9 mid-relay or mid-storm, restart — every acknowledged message
exactly once, in order."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from bot.instagram.events import visitor_token
from sandbox.meta import DEFAULT_IG_ID, DEFAULT_PAGE_ID, DEFAULT_PAGE_NAME, SandboxMeta
from sandbox.rocketchat import SandboxRocketChat
from storage import Inbox, Page, StoreFiles, open_store
from storage.inbox import RELEASED, decode_records
from tests.scenarios.harness import (
    APP_SECRET,
    config_dict,
    free_port,
    setup_rocketchat,
    store_secret,
    write_config,
)

VISITORS = 50
PER_VISITOR = 10
TOTAL = VISITORS * PER_VISITOR
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def meta() -> Iterator[SandboxMeta]:
    server = SandboxMeta(app_secret=APP_SECRET).start()
    try:
        yield server
    finally:
        server.stop()


def connect_page(store_path: str, page: Page) -> None:
    """Save the page before the bot runs (the store allows one process at a time)."""

    async def save() -> None:
        store = open_store(store_path)
        await store.open()
        try:
            await store.save_page(page)
        finally:
            await store.close()

    asyncio.run(save())


def start_bot(config_path: Path, log_path: Path, port: int) -> subprocess.Popen[bytes]:
    """``rc-instagram run --config <path>`` as a child process; returns once it listens."""
    exe = Path(sys.executable).parent / "rc-instagram"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "bot.cli"]
    log = log_path.open("ab")
    proc = subprocess.Popen(
        [*command, "run", "--config", str(config_path), "--log-level", "INFO"],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ},
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"bot exited with {proc.returncode}: {log_path.read_text()}")
        try:
            requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
            return proc
        except requests.ConnectionError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("bot did not start listening")


def visitor_messages(rc: SandboxRocketChat) -> dict[str, list[dict]]:
    """Visitor token → the messages posted as that visitor, across rooms, in order."""
    out: dict[str, list[dict]] = {}
    for room in rc.livechat_rooms():
        token = room["v"]["token"]
        out.setdefault(token, []).extend(
            m for m in rc.room_messages(room["_id"]) if m.get("token") == token and not m.get("t")
        )
    return out


@dataclass(frozen=True)
class Deployment:
    """A bot's files and address, its page connected, before its first start."""

    config_path: Path
    store_path: str
    log_path: Path
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/webhooks/instagram"

    def start(self) -> subprocess.Popen[bytes]:
        return start_bot(self.config_path, self.log_path, self.port)


def deploy(rocketchat: SandboxRocketChat, meta: SandboxMeta, tmp_path: Path) -> Deployment:
    department = setup_rocketchat(rocketchat)
    port = free_port()
    store_path = str(tmp_path / "data" / "store.json")
    config_path = write_config(
        tmp_path / "config.yaml",
        config_dict(rocketchat.url, meta, store_path, f"127.0.0.1:{port}"),
    )
    connect_page(store_path, Page(
        page_id=DEFAULT_PAGE_ID, name=DEFAULT_PAGE_NAME, instagram_id=DEFAULT_IG_ID,
        page_token=meta.issue_page_token(DEFAULT_PAGE_ID), department_id=department,
    ))
    return Deployment(config_path, store_path, tmp_path / "bot.log", port)


def wait_until_delivered(rocketchat: SandboxRocketChat, total: int, log_path: Path) -> None:
    """Every one of ``total`` messages in a room within 60 s; then a moment for late copies."""
    deadline = time.monotonic() + 60
    while (delivered := sum(len(m) for m in visitor_messages(rocketchat).values())) < total:
        assert time.monotonic() < deadline, (
            f"not every message was delivered after restart: {delivered} of {total}, "
            f"{rocketchat.call_counts()}, log: {log_path.read_text()[-3000:]}"
        )
        time.sleep(0.1)
    time.sleep(0.5)  # anything duplicated late would show up now


def stop(bot: subprocess.Popen[bytes]) -> None:
    bot.send_signal(signal.SIGTERM)
    try:
        bot.wait(10)
    except subprocess.TimeoutExpired:
        bot.kill()


def test_kill_9_mid_relay_delivers_every_message_exactly_once_in_order(
    rocketchat: SandboxRocketChat, meta: SandboxMeta, tmp_path: Path
):
    """500 acknowledged messages, SIGKILL mid-relay, restart: each exactly once, in order."""
    deployment = deploy(rocketchat, meta, tmp_path)
    rocketchat.rest_latency = 0.005  # slow enough that the kill lands mid-relay

    visitors = [meta.new_igsid() for _ in range(VISITORS)]
    for n, igsid in enumerate(visitors):
        meta.set_profile(igsid, name=f"Visitor {n}")
    base = int(time.time() * 1000) - 600_000
    items = [
        meta.text_event(DEFAULT_IG_ID, igsid, f"{igsid} #{k}", ts=base + k * 1000 + v)
        ["entry"][0]["messaging"][0]
        for k in range(PER_VISITOR) for v, igsid in enumerate(visitors)
    ]

    bot = deployment.start()
    try:
        for start in range(0, TOTAL, 10):
            body = {"object": "instagram",
                    "entry": [{"id": DEFAULT_IG_ID, "time": base, "messaging":
                               items[start:start + 10]}]}
            status, _ = meta.deliver(deployment.url, body)
            assert status == 200
        deadline = time.monotonic() + 30
        while rocketchat.call_counts().get("livechat/message", 0) < TOTAL // 5:
            assert time.monotonic() < deadline, "relay did not start"
            time.sleep(0.005)
        bot.send_signal(signal.SIGKILL)
        bot.wait(10)
        delivered_before = sum(len(m) for m in visitor_messages(rocketchat).values())
        assert delivered_before < TOTAL, "the kill came too late to test anything"

        bot = deployment.start()
        wait_until_delivered(rocketchat, TOTAL, deployment.log_path)
    finally:
        stop(bot)

    by_visitor = visitor_messages(rocketchat)
    assert len(by_visitor) == VISITORS
    all_ids = [m["_id"] for msgs in by_visitor.values() for m in msgs]
    assert len(all_ids) == len(set(all_ids)) == TOTAL
    secret = asyncio.run(store_secret(deployment.store_path))  # the bot has stopped
    for igsid in visitors:
        texts = [m["msg"] for m in by_visitor[visitor_token(secret, DEFAULT_PAGE_ID, igsid)]]
        assert texts == [f"{igsid} #{k}" for k in range(PER_VISITOR)]


def unreleased_inbox_events(store_path: str) -> int:
    """Events in the inbox's files that no release record covers (read after a kill)."""
    inbox = Inbox(StoreFiles.for_path(store_path).inbox)
    events, released = [], 0
    for path in inbox.segments():
        records, _ = decode_records(Path(path).read_bytes())
        for kind, seq, _body in records:
            if kind == RELEASED:
                released = max(released, seq)
            else:
                events.append(seq)
    return sum(1 for seq in events if seq > released)


def test_kill_9_during_a_storm_loses_no_acknowledged_webhook(
    rocketchat: SandboxRocketChat, meta: SandboxMeta, tmp_path: Path
):
    """A storm of webhooks is acknowledged from the inbox alone (the intake waits while
    the receiver is busy); SIGKILL right after the last 200: after a restart every
    message is delivered exactly once, in order."""
    deployment = deploy(rocketchat, meta, tmp_path)
    rocketchat.set_setting("API_Enable_Rate_Limiter", False)
    visitors = [meta.new_igsid() for _ in range(20)]
    base = int(time.time() * 1000) - 600_000
    per_visitor = 20
    bodies = [
        {"object": "instagram", "entry": [{"id": DEFAULT_IG_ID, "time": base, "messaging": [
            meta.text_event(DEFAULT_IG_ID, igsid, f"{igsid} #{k}", ts=base + k * 1000 + v)
            ["entry"][0]["messaging"][0]]}]}
        for k in range(per_visitor) for v, igsid in enumerate(visitors)
    ]

    bot = deployment.start()
    try:
        # A storm (far above ReceiverLoad's busy rate) from 16 threads. Each visitor's
        # bodies go out one after another, as Meta sends one conversation's updates:
        # bodies of one visitor racing each other would test the senders, not the bot.
        def send_visitor(v: int) -> list[int]:
            return [meta.deliver(deployment.url, body)[0]
                    for body in bodies[v::len(visitors)]]

        with ThreadPoolExecutor(16) as pool:
            statuses = [s for chunk in pool.map(send_visitor, range(len(visitors)))
                        for s in chunk]
        bot.send_signal(signal.SIGKILL)
        bot.wait(10)
        assert statuses == [200] * len(bodies)
        assert unreleased_inbox_events(deployment.store_path) > 0, (
            "the kill came too late to test anything")

        bot = deployment.start()
        wait_until_delivered(rocketchat, len(bodies), deployment.log_path)
    finally:
        stop(bot)

    by_visitor = visitor_messages(rocketchat)
    all_ids = [m["_id"] for msgs in by_visitor.values() for m in msgs]
    assert len(all_ids) == len(set(all_ids)) == len(bodies)
    secret = asyncio.run(store_secret(deployment.store_path))  # the bot has stopped
    for igsid in visitors:
        texts = [m["msg"] for m in by_visitor[visitor_token(secret, DEFAULT_PAGE_ID, igsid)]]
        assert texts == [f"{igsid} #{k}" for k in range(per_visitor)]
