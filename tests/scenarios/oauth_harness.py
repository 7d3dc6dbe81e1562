"""Harness for the connect-an-account tests: a running Bot with NO page connected yet.

:func:`running_unconnected` yields an :class:`OAuthBridge`: both sandboxes (Meta requires
``appsecret_proof``, accepts only our redirect URI), a real :class:`bot.app.Bot` whose
``server.public_url`` is its own loopback address (so the dialog's redirect really lands
on it), and helpers to play the admin: ask for the link by DM, follow Meta's redirect,
submit the page-choice form, read the bot's DMs. Used by tests/bot, tests/commands and
tests/scenarios.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import aiohttp

from bot.app import Bot, CommandContext
from bot.config import Config, from_dict
from commands.base import Issuer
from commands.router import dispatch, parse
from sandbox.meta import SandboxMeta
from sandbox.rocketchat import SandboxRocketChat
from tests.scenarios.harness import (
    ADMIN,
    BOT_USER,
    config_dict,
    free_port,
    setup_rocketchat,
    stop_bot,
)

LINK = re.compile(r"https?://\S+/dialog/oauth\?\S+")
#: The Facebook Login for Business configuration of the ``business_oauth`` fixture.
CONFIG_ID = "424242424242"
#: Every token the sandbox Meta issues to users and pages looks like this.
SANDBOX_TOKEN = re.compile(r"EAA[\w-]{40,}")


class FakeClock:
    """A settable clock (epoch seconds) shared by the Bot and its store."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class _Forms(HTMLParser):
    """Collects the hidden inputs and radio values of the choice form."""

    def __init__(self) -> None:
        super().__init__()
        self.hidden: dict[str, str] = {}
        self.radios: list[str] = []
        self.action: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.action = a.get("action")
        elif tag == "input" and a.get("type") == "hidden":
            self.hidden[a["name"]] = a["value"]
        elif tag == "input" and a.get("type") == "radio":
            self.radios.append(a["value"])


def parse_form(page: str) -> _Forms:
    parser = _Forms()
    parser.feed(page)
    return parser


@dataclass
class OAuthBridge:
    """A running, unconnected bridge and the admin's moves."""

    rc: SandboxRocketChat
    meta: SandboxMeta
    bot: Bot
    config: Config
    clock: FakeClock
    http: aiohttp.ClientSession
    pages_seen: list[str] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return self.config.server.public_url

    @property
    def admin_id(self) -> str:
        return self.rc.user_id(ADMIN)

    # -- Rocket.Chat side ----------------------------------------------------------------
    def dms(self, username: str = ADMIN) -> list[str]:
        """Texts the bot sent to ``username`` by DM, oldest first."""
        return [
            m["msg"] for m in self.rc.dm_messages(BOT_USER, username)
            if m.get("u", {}).get("username") == BOT_USER
        ]

    async def wait_dms(self, count: int, username: str = ADMIN, timeout: float = 10.0) -> list[str]:
        """Wait until the bot has DMed ``username`` at least ``count`` messages."""
        deadline = time.monotonic() + timeout
        while True:
            texts = self.dms(username)
            if len(texts) >= count:
                return texts
            if time.monotonic() > deadline:
                raise AssertionError(f"expected {count} DMs to {username}, got {texts}")
            await asyncio.sleep(0.02)

    async def command(self, text: str, username: str = ADMIN, room_type: str = "d") -> None:
        """Run a command line as ``username`` through the router and a real context."""
        invocation = parse(text, direct=room_type == "d")
        assert invocation is not None, text
        issuer = Issuer(self.rc.user_id(username), username, "rid-of-test", room_type)
        await dispatch(self.bot.registry, CommandContext(self.bot, issuer), invocation)

    async def authorize(self) -> str:
        """``/instagram authorize`` as the admin; returns the dialog URL from the DM."""
        before = len(self.dms())
        await self.command("/instagram authorize")
        texts = await self.wait_dms(before + 1)
        match = LINK.search(texts[-1])
        assert match, texts[-1]
        return match.group(0)

    # -- browser side --------------------------------------------------------------------
    async def get(self, url: str) -> tuple[int, str]:
        async with self.http.get(url, allow_redirects=False) as resp:
            page = await resp.text()
        self.pages_seen.append(page)
        return resp.status, page

    async def login(self, *, approve: bool = True) -> tuple[int, str]:
        """Authorize, let Meta's dialog approve (or cancel), follow the redirect."""
        url = await self.authorize()
        location = self.meta.approve_url(url) if approve else self.meta.cancel_url(url)
        return await self.get(location)

    async def select(
        self, state: str, page_id: str, *, origin: str | None = None
    ) -> tuple[int, str]:
        headers = {"Origin": origin} if origin else {}
        async with self.http.post(
            f"{self.base_url}/oauth/select", data={"state": state, "page_id": page_id},
            headers=headers,
        ) as resp:
            page = await resp.text()
        self.pages_seen.append(page)
        return resp.status, page

    def graph_calls(self, suffix: str) -> list[dict[str, Any]]:
        return [c for c in self.meta.calls() if c["path"].endswith(suffix)]

    def assert_every_token_call_proved(self) -> None:
        calls = [c for c in self.meta.calls() if c["token_kind"] in ("user", "page")]
        assert calls, "no Graph call with a user or page token was made"
        bad = [c for c in calls if not (c["had_proof"] and c["proof_valid"])]
        assert not bad, bad


def two_pages() -> list[dict[str, Any]]:
    return [
        {"id": "301", "name": "Shop North",
         "instagram_business_account": {"id": "17841000000000301", "username": "shopnorth"}},
        {"id": "302", "name": "Shop South",
         "instagram_business_account": {"id": "17841000000000302", "username": "shopsouth"}},
    ]


@contextlib.asynccontextmanager
async def running_business_app(
    rocketchat: SandboxRocketChat, meta: SandboxMeta, tmp_path: Path
) -> AsyncIterator[OAuthBridge]:
    """:func:`running_unconnected` for a Business-type Meta app: Meta needs config_id,
    the bot has ``instagram.login_config_id`` = :data:`CONFIG_ID` (asking for SCOPES)."""
    from bot.instagram.oauth import SCOPES

    meta.set_app_type("business")
    meta.add_login_configuration(CONFIG_ID, SCOPES)

    def configure(raw: dict) -> None:
        raw["instagram"]["login_config_id"] = CONFIG_ID

    async with running_unconnected(rocketchat, meta, tmp_path, configure=configure) as running:
        yield running


@contextlib.asynccontextmanager
async def running_unconnected(
    rocketchat: SandboxRocketChat, meta: SandboxMeta, tmp_path: Path,
    *, configure: Callable[[dict], None] | None = None,
) -> AsyncIterator[OAuthBridge]:
    """A Bot on a real loopback port, public_url = that port, no page connected."""
    setup_rocketchat(rocketchat)
    port = free_port()
    raw = config_dict(rocketchat.url, meta, str(tmp_path / "data" / "store.json"),
                      f"127.0.0.1:{port}")
    raw["server"]["public_url"] = f"http://127.0.0.1:{port}"
    if configure is not None:
        configure(raw)
    config = from_dict(raw, env={})
    meta.set_redirect_uris([config.redirect_uri])
    clock = FakeClock()
    bot = Bot(config, clock=clock)
    task = asyncio.create_task(bot.run(), name="bot")
    for _ in range(500):
        if bot.port is not None:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        # Commands typed in rooms only reach the bot once its subscription is ready.
        await bot.realtime.wait_connected(timeout=10)
        async with aiohttp.ClientSession() as http:
            yield OAuthBridge(rocketchat, meta, bot, config, clock, http)
    finally:
        await stop_bot(bot, task)
