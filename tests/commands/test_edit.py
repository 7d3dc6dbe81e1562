"""``/instagram edit``: show settings, set department and texts, and every refusal path."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from bot.config import from_dict
from bot.rocketchat.rest import RocketChatREST
from commands.base import Issuer
from commands.registry import default_registry
from commands.router import dispatch, parse
from sandbox.rocketchat import SandboxRocketChat
from storage import Page, Store, open_store

BOT_USER, BOT_PASSWORD = "instagram.bot", "bot-password-123"
PAGE_ID = "100000000000001"


@dataclass
class Context:
    """A CommandContext over a real store and the sandbox Rocket.Chat; replies recorded."""

    store: Store
    rest: RocketChatREST
    config: Any
    issuer: Issuer = field(default_factory=lambda: Issuer("u-admin", "admin.alice", "dm-1", "d"))
    graph: Any = None
    replies: list[str] = field(default_factory=list)
    buttons: list[Any] = field(default_factory=list)

    async def reply(self, text: str, rows: Any = ()) -> None:
        self.replies.append(text)
        self.buttons.append(list(rows))

    async def issuer_is_admin(self) -> bool:
        return True

    async def notify_admins(self, text: str) -> None:
        raise AssertionError("edit never notifies admins")


@pytest.fixture
async def ctx(rocketchat: SandboxRocketChat, tmp_path: Path) -> AsyncIterator[Context]:
    rocketchat.create_user(BOT_USER, BOT_PASSWORD, roles=["bot", "livechat-manager"])
    rocketchat.create_department("Sales")
    rocketchat.create_department("Customer Care")
    config = from_dict({
        "rocketchat": {"url": rocketchat.url, "user": BOT_USER, "password": BOT_PASSWORD,
                       "webhook_secret": "s"},
        "instagram": {"app_id": "1", "app_secret": "x", "verify_token": "v"},
        "server": {"public_url": "http://127.0.0.1"},
    }, env={})
    store = open_store(str(tmp_path / "store.json"))
    await store.open()
    await store.save_page(Page(page_id=PAGE_ID, name="Sandbox Shop", instagram_id="1784",
                               username="sandboxshop", page_token="t"))
    rest = RocketChatREST(rocketchat.url, user=BOT_USER, password=BOT_PASSWORD)
    try:
        yield Context(store, rest, config)
    finally:
        await rest.close()
        await store.close()


async def run(ctx: Context, line: str) -> str:
    """Dispatch one command line as the router would; return the single reply."""
    invocation = parse(line, direct=False)
    assert invocation is not None
    before = len(ctx.replies)
    await dispatch(default_registry(), ctx, invocation)
    assert len(ctx.replies) == before + 1, "every command ends in exactly one DM"
    return ctx.replies[-1]


async def page(ctx: Context) -> Page:
    found = await ctx.store.page(PAGE_ID)
    assert found is not None
    return found


async def test_edit_without_setting_shows_settings_and_usage(ctx: Context) -> None:
    """`edit <pageId>` DMs the current settings and how to change them."""
    text = await run(ctx, f"/instagram edit {PAGE_ID}")
    assert "Sandbox Shop" in text and "department:" in text and "welcome:" in text
    assert f"/instagram edit {PAGE_ID} <setting>" in text


async def test_set_department_stores_id_and_shows_name(ctx: Context) -> None:
    """A department named case-insensitively is stored by _id and shown by name."""
    text = await run(ctx, f'/instagram edit {PAGE_ID} department "customer care"')
    stored = await page(ctx)
    assert stored.department_name == "Customer Care"
    assert stored.department_id == next(
        d["_id"] for d in await ctx.rest.departments() if d["name"] == "Customer Care")
    assert "Customer Care" in text
    assert "Customer Care" in await run(ctx, f"/instagram edit {PAGE_ID}")


async def test_department_words_without_quotes_are_joined(ctx: Context) -> None:
    """`department Customer Care` (unquoted) names the two-word department."""
    await run(ctx, f"/instagram edit {PAGE_ID} department Customer Care")
    assert (await page(ctx)).department_name == "Customer Care"


async def test_unknown_department_is_refused_with_the_list(ctx: Context) -> None:
    """A department that does not exist changes nothing and lists the existing ones."""
    text = await run(ctx, f"/instagram edit {PAGE_ID} department Billing")
    assert "Billing" in text and "`Sales`" in text and "Usage:" in text
    assert (await page(ctx)).department_id is None


async def test_department_none_clears_it(ctx: Context) -> None:
    """`department none` clears the department."""
    await run(ctx, f"/instagram edit {PAGE_ID} department Sales")
    await run(ctx, f"/instagram edit {PAGE_ID} department none")
    stored = await page(ctx)
    assert stored.department_id is None and stored.department_name is None


@pytest.mark.parametrize(("setting", "attribute"),
                         [("welcome", "welcome_text"), ("finished", "finished_text"),
                          ("offline", "offline_text"), ("WELCOME", "welcome_text")])
async def test_text_settings_are_stored_and_cleared(
    ctx: Context, setting: str, attribute: str
) -> None:
    """welcome/finished/offline take the rest of the line as the text; `none` clears it."""
    text = await run(ctx, f"/instagram edit {PAGE_ID} {setting} Hello there, how can we help?")
    assert getattr(await page(ctx), attribute) == "Hello there, how can we help?"
    assert "Hello there" in text
    await run(ctx, f"/instagram edit {PAGE_ID} {setting} none")
    assert getattr(await page(ctx), attribute) is None


async def test_text_at_the_byte_limit_is_accepted(ctx: Context) -> None:
    """Exactly 1000 UTF-8 bytes is allowed."""
    await run(ctx, f"/instagram edit {PAGE_ID} welcome {'é' * 500}")
    assert (await page(ctx)).welcome_text == "é" * 500


async def test_over_long_text_is_refused_clearly(ctx: Context) -> None:
    """Over 1000 UTF-8 bytes (here 501 two-byte letters) is a clear error; nothing stored."""
    text = await run(ctx, f"/instagram edit {PAGE_ID} finished {'é' * 501}")
    assert "1002 bytes" in text and "1000" in text
    assert (await page(ctx)).finished_text is None


@pytest.mark.parametrize(
    ("line", "phrase"),
    [
        ("/instagram edit", "page id"),
        ("/instagram edit 999", "999"),
        (f"/instagram edit {PAGE_ID} colour blue", "`colour` is not a setting"),
        (f"/instagram edit {PAGE_ID} welcome", "Give a value"),
        (f"/instagram edit {PAGE_ID} department", "Give a value"),
    ],
)
async def test_wrong_arguments_get_a_usage_dm(ctx: Context, line: str, phrase: str) -> None:
    """Unknown page, unknown setting or a missing value: a usage DM naming the problem."""
    text = await run(ctx, line)
    assert phrase in text and "Usage: `/instagram edit <pageId>" in text
