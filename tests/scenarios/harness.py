"""End-to-end harness: both sandboxes, a configured Rocket.Chat, and a running Bot.

:func:`running_bridge` yields a :class:`Bridge`: the sandbox Rocket.Chat (bot user with
roles bot + livechat-manager, an online agent in a department), the sandbox Meta
(webhooks signed with the configured app secret), and a real :class:`bot.app.Bot`
running in-process on 127.0.0.1:0 with the sandbox page connected directly in its store.
The fixtures in ``conftest.py`` wrap it; other test packages may import it too.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from bot.app import Bot
from bot.config import Config, ServerConfig, from_dict
from bot.instagram.events import visitor_token
from sandbox.meta import DEFAULT_IG_ID, DEFAULT_PAGE_ID, DEFAULT_PAGE_NAME, SandboxMeta
from sandbox.rocketchat import PROFILES, SandboxRocketChat
from storage import Page, open_store

BOT_USER, BOT_PASSWORD = "instagram.bot", "bot-password-123"
AGENT = "agent.ana"
ADMIN, ADMIN_PASSWORD = "admin.alice", "admin-password-123"
APP_SECRET = "sandbox-app-secret"
VERIFY_TOKEN = "verify-me-please"
WEBHOOK_SECRET = "rc-webhook-secret"


#: Run a test once per Rocket.Chat version profile (current 7.x, and 6.x): decorate it with
#: ``@every_rc_version``. Its ``rocketchat`` / ``rc`` sandbox (and so ``bridge``) then
#: impersonates that release; the test may also take ``rc_version`` (the version string).
every_rc_version = pytest.mark.parametrize(
    "rc_version", [p.version for p in PROFILES.values()], ids=list(PROFILES), indirect=True
)


def free_port() -> int:
    """A loopback port that was free a moment ago (for subprocess bots)."""
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def config_dict(rc_url: str, meta: SandboxMeta, store_path: str, listen: str) -> dict[str, Any]:
    """A complete config (as parsed YAML) pointing at the sandboxes."""
    return {
        "rocketchat": {
            "url": rc_url,
            "user": BOT_USER,
            "password": BOT_PASSWORD,
            "webhook_secret": WEBHOOK_SECRET,
            "admin_roles": ["admin"],
        },
        "instagram": {
            "app_id": meta.app_id,
            "app_secret": APP_SECRET,
            "verify_token": VERIFY_TOKEN,
            "graph_url": meta.graph_url,
            "dialog_url": meta.dialog_url,
            "api_version": meta.api_version,
        },
        "server": {"listen": listen, "public_url": "http://127.0.0.1:8080"},
        "storage": {"path": store_path, "encryption_key": ""},
    }


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return path


@dataclass
class Bridge:
    """The system under test plus handles to steer and observe it."""

    rc: SandboxRocketChat
    meta: SandboxMeta
    bot: Bot
    config: Config
    department_id: str
    page_id: str = DEFAULT_PAGE_ID
    ig_id: str = DEFAULT_IG_ID
    page: Page | None = None
    task: asyncio.Task[None] | None = field(default=None, repr=False)
    #: The store's bridge secret (keys the opaque visitor tokens).
    secret: bytes = field(default=b"", repr=False)

    @property
    def webhook_url(self) -> str:
        return f"http://127.0.0.1:{self.bot.port}/webhooks/instagram"

    async def deliver(self, payload: dict[str, Any] | None, **kwargs: Any) -> tuple[int, str]:
        """POST a webhook exactly as Meta would (signed with the app secret)."""
        return await self.meta.adeliver(self.webhook_url, payload, **kwargs)

    async def taken(self, timeout: float = 10.0) -> None:
        """Wait until every acknowledged webhook has left the inbox for the queues."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self.bot.store.inbox.backlog:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{self.bot.store.inbox.backlog} webhook(s) never taken")
            await asyncio.sleep(0.01)

    def token(self, igsid: str) -> str:
        """The visitor token the bridge gives ``igsid`` (opaque: needs the store's secret)."""
        return visitor_token(self.secret, self.page_id, igsid)

    def rooms(self, igsid: str) -> list[dict[str, Any]]:
        """The visitor's livechat rooms, oldest first."""
        token = self.token(igsid)
        return [r for r in self.rc.livechat_rooms() if r["v"]["token"] == token]

    def visitor_messages(self, igsid: str) -> list[dict[str, Any]]:
        """Every message posted as this visitor, across their rooms, in room order."""
        token = self.token(igsid)
        out: list[dict[str, Any]] = []
        for room in self.rooms(igsid):
            out.extend(
                m for m in self.rc.room_messages(room["_id"])
                if m.get("token") == token and not m.get("t")
            )
        return out

    def texts(self, igsid: str) -> list[str]:
        return [m["msg"] for m in self.visitor_messages(igsid)]


def in_process(config: Config) -> Config:
    """The config with the receiver on 127.0.0.1 port 0 (config files refuse port 0)."""
    return dataclasses.replace(config, server=ServerConfig("127.0.0.1:0", "http://127.0.0.1"))


async def start_bot(config: Config, **options: Any) -> tuple[Bot, asyncio.Task[None]]:
    """Run a Bot (``options``: Bot keyword arguments) until its web receiver listens;
    return it and its run() task."""
    bot = Bot(config, **options)
    task = asyncio.create_task(bot.run(), name="bot")
    for _ in range(500):
        if bot.port is not None:
            break
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    else:
        raise AssertionError("bot did not start listening")
    return bot, task


async def store_secret(path: str) -> bytes:
    """The bridge secret of the store at ``path`` (created now if new): for tests that run
    the bot as a subprocess and must know its visitor tokens. The store must be closed."""
    store = open_store(path)
    await store.open()
    try:
        return await store.bridge_secret()
    finally:
        await store.close()


async def stop_bot(bot: Bot, task: asyncio.Task[None]) -> None:
    bot.stop()
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.wait_for(task, 30)


def setup_rocketchat(rc: SandboxRocketChat) -> str:
    """Bot user, an admin, an online agent in a department; returns the department id."""
    rc.create_user(BOT_USER, BOT_PASSWORD, roles=["bot", "livechat-manager"], name="Instagram")
    rc.create_user(ADMIN, ADMIN_PASSWORD, roles=["user", "admin"])
    rc.create_user(AGENT, "agent-password-123", roles=["user", "livechat-agent"], name="Ana")
    department = rc.create_department("Instagram", agents=[AGENT])
    rc.set_agent_status(AGENT, "online")
    return department


@contextlib.asynccontextmanager
async def running_bridge(
    rocketchat: SandboxRocketChat, meta: SandboxMeta, tmp_path: Path, *, store_url: str = "",
    **bot_options: Any,
) -> AsyncIterator[Bridge]:
    """A running Bot against both sandboxes, with the sandbox page connected.

    ``store_url`` (``storage.url``) runs it on PostgreSQL instead of a TinyDB file;
    ``bot_options`` are Bot keyword arguments.
    """
    department = setup_rocketchat(rocketchat)
    raw = config_dict(rocketchat.url, meta, str(tmp_path / "data" / "store.json"),
                      "127.0.0.1:8080")
    raw["storage"]["url"] = store_url
    config = in_process(from_dict(raw, env={}))
    bot, task = await start_bot(config, **bot_options)
    page = Page(
        page_id=DEFAULT_PAGE_ID,
        name=DEFAULT_PAGE_NAME,
        instagram_id=DEFAULT_IG_ID,
        username="sandboxshop",
        page_token=meta.issue_page_token(DEFAULT_PAGE_ID),
        department_id=department,
        department_name="Instagram",
        subscribed=True,
    )
    await bot.store.save_page(page)
    bridge = Bridge(rocketchat, meta, bot, config, department, page=page, task=task,
                    secret=await bot.store.bridge_secret())
    meta.set_webhook(bridge.webhook_url, echoes=True)
    try:
        yield bridge
    finally:
        await stop_bot(bridge.bot, bridge.task)  # type: ignore[arg-type]
