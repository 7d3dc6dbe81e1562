"""/metrics and /healthz can leave the public listener; the bot says what it costs."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator

import aiohttp
import pytest

from bot.app import Bot
from bot.config import ServerConfig
from tests.scenarios.harness import Bridge, free_port, start_bot, stop_bot
from tests.scenarios.outbound_helpers import visitor_with_room


@pytest.fixture
async def split_bot(bridge: Bridge) -> AsyncIterator[Bot]:
    """A second bot on the same sandboxes with ``server.metrics_listen`` set."""
    await stop_bot(bridge.bot, bridge.task)  # type: ignore[arg-type]
    server = ServerConfig("127.0.0.1:0", "http://127.0.0.1",
                          metrics_listen=f"127.0.0.1:{free_port()}")
    bot, task = await start_bot(dataclasses.replace(bridge.config, server=server))
    try:
        yield bot
    finally:
        await stop_bot(bot, task)


async def _status(url: str) -> int:
    async with aiohttp.ClientSession() as http, http.get(url) as resp:
        return resp.status


async def test_metrics_listen_takes_metrics_and_healthz_off_the_public_port(
    split_bot: Bot,
) -> None:
    """With ``server.metrics_listen`` the webhook port answers 404 for /metrics and
    /healthz, the metrics port serves both and nothing else."""
    public = f"http://127.0.0.1:{split_bot.port}"
    private = f"http://127.0.0.1:{split_bot.metrics_port}"
    assert split_bot.metrics_port and split_bot.metrics_port != split_bot.port
    assert await _status(f"{public}/metrics") == 404
    assert await _status(f"{public}/healthz") == 404
    assert await _status(f"{private}/metrics") == 200
    assert await _status(f"{private}/healthz") in (200, 503)
    assert await _status(f"{private}/webhooks/instagram?hub.mode=subscribe") == 404
    assert await _status(f"{public}/webhooks/instagram?hub.mode=subscribe") == 403


async def test_conversation_count_is_a_metric(bridge: Bridge) -> None:
    """Every conversation costs memory and a livechat visitor: rcig_conversations counts
    them (README "Security" has the alert)."""
    await visitor_with_room(bridge)
    await visitor_with_room(bridge)
    async with aiohttp.ClientSession() as http, http.get(
        f"http://127.0.0.1:{bridge.bot.port}/metrics"
    ) as resp:
        text = await resp.text()
    assert "rcig_conversations 2.0" in text


async def test_start_without_encryption_key_warns(
    caplog: pytest.LogCaptureFixture, bridge: Bridge
) -> None:
    """A store without an encryption key is named at start: tokens are in plain text."""
    warnings = [r for r in caplog.get_records("setup")
                if r.levelno == logging.WARNING and "encryption_key is not set" in r.getMessage()]
    assert len(warnings) == 1
