"""Nothing from outside forges, floods or tracebacks the bot's log."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator
from urllib.parse import parse_qs, quote, urlsplit

import aiohttp
import pytest

from bot.logs import make_handler
from tests.scenarios.harness import Bridge
from tests.scenarios.oauth_harness import OAuthBridge


@pytest.fixture
def log_text() -> Iterator[io.StringIO]:
    """What the bot's own handler (as ``rc-instagram run`` sets it up) writes, at INFO."""
    stream = io.StringIO()
    handler = make_handler(stream)
    root = logging.getLogger()
    old_level = root.level
    root.addHandler(handler)
    root.setLevel(logging.INFO)
    try:
        yield stream
    finally:
        root.removeHandler(handler)
        root.setLevel(old_level)


async def test_crlf_in_error_reason_forges_no_log_line(
    oauth: OAuthBridge, log_text: io.StringIO
) -> None:
    """A cancelled login whose ``error_reason`` carries CR/LF and a fake log line is
    logged on one line, the CR/LF escaped."""
    url = await oauth.authorize()
    state = parse_qs(urlsplit(url).query)["state"][0]
    forged = "user_denied\r\n2026-01-01 00:00:00 ERROR   bot: admin password is hunter2"
    status, _ = await oauth.get(f"{oauth.base_url}/oauth/callback?state={state}"
                                f"&error=access_denied&error_reason={quote(forged)}")
    assert status == 200
    lines = log_text.getvalue().splitlines()
    assert not [line for line in lines if line.startswith("2026-01-01")], lines
    assert any("user_denied\\r\\n2026-01-01" in line for line in lines), lines


async def test_unauthenticated_junk_is_logged_briefly_and_rate_limited(
    bridge: Bridge, log_text: io.StringIO
) -> None:
    """300 forged webhooks and 300 garbage requests log far fewer bytes than were sent,
    and a handful of lines at most."""
    sent = 0
    async with aiohttp.ClientSession() as http:
        for n in range(300):
            body = b'{"object": "instagram", "entry": []}' + b" " * n
            sent += len(body)
            async with http.post(bridge.webhook_url, data=body,
                                 headers={"X-Hub-Signature-256": "sha256=00"}) as resp:
                assert resp.status == 403
    for _ in range(300):
        reader, writer = await asyncio.open_connection("127.0.0.1", bridge.bot.port)
        junk = b"\x16\x03\x01 GARBAGE \xff\xfe /../ HTTP/9\r\n\r\n"
        writer.write(junk)
        sent += len(junk)
        await writer.drain()
        await reader.read()
        writer.close()
    logged = log_text.getvalue()
    assert len(logged.encode()) < sent / 20, logged
    assert logged.count("signature") <= 6, logged


async def test_aborted_upload_logs_no_traceback(bridge: Bridge, log_text: io.StringIO) -> None:
    """A client announcing a large body that hangs up half-way leaves no traceback and
    no error in the log; the receiver keeps answering."""
    for _ in range(5):
        _, writer = await asyncio.open_connection("127.0.0.1", bridge.bot.port)
        writer.write(b"POST /webhooks/instagram HTTP/1.1\r\nHost: x\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 500000\r\n\r\n{\"a\":")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.transport.abort()
    await asyncio.sleep(0.3)
    async with aiohttp.ClientSession() as http, http.get(
        f"http://127.0.0.1:{bridge.bot.port}/healthz"
    ) as resp:
        assert resp.status == 200
    logged = log_text.getvalue()
    assert "Traceback" not in logged and "ERROR" not in logged, logged
