"""Connections held open by an attacker do not keep Meta's webhooks out."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import aiohttp

from sandbox.meta import DEFAULT_IG_ID, DEFAULT_PAGE_ID, DEFAULT_PAGE_NAME, SandboxMeta
from sandbox.rocketchat import SandboxRocketChat
from storage import Page
from tests.reliability.drills import BotProcess, save_page
from tests.scenarios.harness import config_dict, free_port, setup_rocketchat, write_config

HELD = 1100  # more than the bot's 1,024 descriptors
#: The longest a signed webhook or /healthz may take while the connections are held.
ANSWER_WITHIN = 3.0


async def _hold(port: int, n: int) -> list[asyncio.StreamWriter]:
    """Open ``n`` connections: idle ones, and ones sending a request head byte by byte."""
    writers: list[asyncio.StreamWriter] = []
    for i in range(n):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            continue
        if i % 2:
            writer.write(b"POST /webhooks/instagram HTTP/1.1\r\nHost: x\r\nX-Sl")  # slow head
        writers.append(writer)
    return writers


async def test_meta_webhook_answered_while_1100_connections_are_held(
    rocketchat: SandboxRocketChat, meta: SandboxMeta, tmp_path: Path
) -> None:
    """With 1,100 idle and slow connections held against a bot limited to 1,024 file
    descriptors, signed webhooks and /healthz are answered within a few seconds, and
    ``accept() out of system resource`` is never logged."""
    department = setup_rocketchat(rocketchat)
    port = free_port()
    store_path = str(tmp_path / "data" / "store.json")
    config = write_config(tmp_path / "config.yaml",
                          config_dict(rocketchat.url, meta, store_path, f"127.0.0.1:{port}"))
    await save_page(store_path, Page(
        page_id=DEFAULT_PAGE_ID, name=DEFAULT_PAGE_NAME, instagram_id=DEFAULT_IG_ID,
        username="sandboxshop", page_token=meta.issue_page_token(DEFAULT_PAGE_ID),
        department_id=department, subscribed=True,
    ))
    bot = BotProcess(config, tmp_path / "bot.log", port, nofile=1024)
    await bot.start()
    writers: list[asyncio.StreamWriter] = []
    try:
        writers = await _hold(port, HELD)
        timings: list[float] = []
        async with aiohttp.ClientSession() as http:
            for n in range(5):
                started = time.monotonic()
                payload = meta.text_event(DEFAULT_IG_ID, meta.new_igsid(), f"hello {n}")
                status, _ = await asyncio.wait_for(
                    meta.adeliver(f"{bot.base}/webhooks/instagram", payload), ANSWER_WITHIN)
                assert status == 200
                async with http.get(f"{bot.base}/healthz",
                                    timeout=aiohttp.ClientTimeout(total=ANSWER_WITHIN)) as resp:
                    assert resp.status in (200, 503)
                timings.append(time.monotonic() - started)
                # More connections keep arriving meanwhile.
                writers += await _hold(port, 50)
        assert max(timings) < ANSWER_WITHIN, timings
    finally:
        for writer in writers:
            writer.transport.abort()
        bot.stop()
    log = bot.tail(10**7)
    assert "out of system resource" not in log, log[-3000:]
