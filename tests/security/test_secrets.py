"""Secrets never reach the logs (at DEBUG, with the production logging setup), the pages
or the DMs: config secrets, the Rocket.Chat session, Meta codes, user and page tokens,
OAuth states. Message text is not logged at INFO."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest

from bot import logs
from bot.instagram.events import visitor_token
from tests.scenarios.harness import (
    APP_SECRET,
    BOT_PASSWORD,
    VERIFY_TOKEN,
    WEBHOOK_SECRET,
)
from tests.scenarios.oauth_harness import LINK, OAuthBridge, parse_form, two_pages

VISITOR_TEXT = "my-private-words-4711"
AGENT_TEXT = "agent-private-answer-0815"


class Records(logging.Handler):
    """Keeps every record as (level, full text including any traceback)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[tuple[int, str]] = []
        self.setFormatter(logging.Formatter(logs.TEXT_FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.levelno, self.format(record)))


@pytest.fixture
def debug_log() -> Iterator[Records]:
    """The production logging setup at DEBUG (library loggers as ``run`` sets them), with
    NO redaction list, so only what our code writes is tested; restored afterwards."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level,
             {n: logging.getLogger(n).level for n in ("aiohttp.access", "websockets", "urllib3")})
    logs.setup("DEBUG", "text", secrets=())
    records = Records()
    root.addHandler(records)
    try:
        yield records
    finally:
        root.handlers[:], root.level = saved[0], saved[1]
        for name, level in saved[2].items():
            logging.getLogger(name).setLevel(level)


async def _run_flows(bridge: OAuthBridge) -> dict[str, str]:
    """Connect a page (two-page choice), relay a message each way, run the commands.

    Returns every secret value that came up, by name.
    """
    bot, meta, rc = bridge.bot, bridge.meta, bridge.rc
    secrets = {"bot password": BOT_PASSWORD, "app secret": APP_SECRET,
               "verify token": VERIFY_TOKEN, "webhook secret": WEBHOOK_SECRET,
               "rocket.chat session": str(bot.rest._api.headers.get("X-Auth-Token"))}

    meta.set_login_user("Owner", pages=two_pages())
    url = await bridge.authorize()
    secrets["login state"] = parse_qs(urlsplit(url).query)["state"][0]
    location = meta.approve_url(url)
    secrets["oauth code"] = parse_qs(urlsplit(location).query)["code"][0]
    status, page = await bridge.get(location)
    assert status == 200
    secrets["select state"] = parse_form(page).hidden["state"]
    status, _ = await bridge.select(secrets["select state"], "301")
    assert status == 200
    connected = await bot.store.page("301")
    assert connected is not None
    secrets["page token"] = connected.page_token
    secrets["user token"] = connected.user_token

    # Inbound: a visitor writes; outbound: an agent answers through the Omnichannel webhook.
    webhook = f"{bridge.base_url}/webhooks/instagram"
    igsid = meta.new_igsid()
    status, _ = await meta.adeliver(webhook, meta.text_event(connected.instagram_id, igsid,
                                                             VISITOR_TEXT))
    assert status == 200
    bridge_secret = await bot.store.bridge_secret()
    token = visitor_token(bridge_secret, "301", igsid)
    # The livechat token is the visitor's credential; the secret derives every token.
    secrets["visitor token"] = token
    secrets["bridge secret"] = bridge_secret.hex()
    for _ in range(500):
        rooms = [r for r in rc.livechat_rooms() if r["v"]["token"] == token]
        if rooms:
            break
        await asyncio.sleep(0.02)
    assert rooms, "the visitor's message never reached Omnichannel"
    body = {"_id": rooms[0]["_id"], "type": "Message", "visitor": {"token": token},
            "messages": [{"_id": "agent-msg-1", "rid": rooms[0]["_id"], "msg": AGENT_TEXT,
                          "agentId": "agent-1", "u": {"_id": "agent-1", "username": "ana"}}]}
    async with aiohttp.ClientSession() as http, http.post(
        f"{bridge.base_url}/webhooks/rocketchat", data=json.dumps(body),
        headers={"X-RocketChat-Livechat-Token": WEBHOOK_SECRET},
    ) as resp:
        assert resp.status == 200
    for _ in range(500):
        if any(AGENT_TEXT in json.dumps(m["body"]) for m in meta.sent_messages(ok=True)):
            break
        await asyncio.sleep(0.02)
    else:
        raise AssertionError("the agent's answer never reached Instagram")

    for line in ("/instagram pages", "/instagram edit 301", "/instagram edit 301 welcome Hi",
                 "/instagram subscribe 301", "/instagram unsubscribe 301", "/instagram nope"):
        await bridge.command(line)
    async with aiohttp.ClientSession() as http:
        for path in ("/healthz", "/metrics", "/oauth/callback?state=x&code=y"):
            async with http.get(bridge.base_url + path) as resp:
                bridge.pages_seen.append(await resp.text())
    return secrets


def _leaks(secrets: dict[str, str], texts: list[str]) -> list[str]:
    return [f"{name} in {text[:200]!r}" for name, value in secrets.items() if value
            for text in texts if value in text]


async def test_no_secret_in_debug_logs_pages_or_dms(
    debug_log: Records, oauth: OAuthBridge
) -> None:
    """After every flow, no secret or token value appears in any log line (DEBUG),
    any page served, or any DM other than the login link itself."""
    secrets = await _run_flows(oauth)
    assert all(len(v) >= 6 for v in secrets.values()), secrets.keys()
    log_texts = [text for _, text in debug_log.lines]
    assert len(log_texts) > 20  # the capture really saw the flows
    assert _leaks(secrets, log_texts) == []
    # The choice form carries its own single-use state (a hidden field), nothing else.
    assert _leaks({k: v for k, v in secrets.items() if k != "select state"},
                  oauth.pages_seen) == []
    dms = [t for t in oauth.dms() if not LINK.search(t)]
    assert _leaks(secrets, dms) == []
    # The login link DM carries its own state, and nothing else secret.
    link_dms = [t for t in oauth.dms() if LINK.search(t)]
    assert link_dms
    others: dict[str, Any] = {k: v for k, v in secrets.items() if k != "login state"}
    assert _leaks(others, link_dms[:1]) == []


async def test_message_text_is_not_logged_at_info(
    debug_log: Records, oauth: OAuthBridge
) -> None:
    """Visitors' and agents' words appear in no log line at INFO or above."""
    await _run_flows(oauth)
    loud = [text for level, text in debug_log.lines if level >= logging.INFO]
    assert [t for t in loud if VISITOR_TEXT in t or AGENT_TEXT in t] == []
