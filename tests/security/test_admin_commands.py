"""Every admin command refuses a non-admin and does nothing: no Meta call, no change to
the pages, no login link."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import requests

from bot.app import CommandContext
from commands.base import Issuer
from commands.router import dispatch, parse
from tests.scenarios.harness import ADMIN, BOT_USER, Bridge

#: Arguments that would make each command act for an admin ({page} = the connected page).
ARGS = {
    "authorize": "",
    "unauthorize": "",
    "pages": "",
    "subscribe": "{page}",
    "unsubscribe": "{page}",
    "edit": "{page} welcome Hacked by a visitor",
}
PEOPLE = {
    "plain.user": ["user"],
    "near.admin": ["user", "Admin", "admin "],  # look-alike role names are not admin
    "staff.manager": ["user", "livechat-manager", "livechat-agent", "bot"],
}


def _dms(bridge: Bridge, username: str) -> list[str]:
    return [m["msg"] for m in bridge.rc.dm_messages(BOT_USER, username)
            if m.get("u", {}).get("username") == BOT_USER]


@pytest.mark.parametrize("room_type", ["d", "c"])
async def test_every_admin_command_refuses_non_admins(bridge: Bridge, room_type: str) -> None:
    """Iterating the registry: each requires_admin command, typed by a user without an
    admin role, gets a refusal DM and changes nothing."""
    bot = bridge.bot
    admin_commands = [c for c in bot.registry if c.requires_admin]
    assert {c.name for c in admin_commands} >= set(ARGS) - {"help"}
    pages_before = [dataclasses.asdict(p) for p in await bot.store.pages()]
    bridge.meta.clear_records()
    for username, roles in PEOPLE.items():
        user_id = bridge.rc.create_user(username, f"{username}-pw-123", roles=roles)
        issuer = Issuer(user_id, username, "rid-sec", room_type)
        for command in admin_commands:
            args = ARGS.get(command.name, "{page}").format(page=bridge.page_id)
            before = len(_dms(bridge, username))
            invocation = parse(f"/instagram {command.name} {args}".strip(), direct=False)
            assert invocation is not None
            await dispatch(bot.registry, CommandContext(bot, issuer), invocation)
            texts = _dms(bridge, username)[before:]
            assert len(texts) == 1, (username, command.name, texts)
            assert "for administrators only" in texts[0], texts[0]
            assert "dialog/oauth" not in texts[0]
    assert [dataclasses.asdict(p) for p in await bot.store.pages()] == pages_before
    assert bridge.meta.calls() == []
    assert await bot.store.queue_depth("outbound") == 0


async def test_help_is_open_to_everyone(bridge: Bridge) -> None:
    """The one command without requires_admin answers a plain user normally."""
    user_id = bridge.rc.create_user("plain.user", "plain-pw-123", roles=["user"])
    issuer = Issuer(user_id, "plain.user", "rid-sec", "d")
    invocation = parse("instagram help", direct=True)
    assert invocation is not None
    await dispatch(bridge.bot.registry, CommandContext(bridge.bot, issuer), invocation)
    [text] = _dms(bridge, "plain.user")
    assert "Instagram bridge commands" in text


async def test_livechat_visitor_named_like_an_admin_gets_no_dm_sent_to_the_admin(
    bridge: Bridge, eventually
) -> None:
    """A widget visitor registered as ``username: admin.alice`` types a command in a room
    the bot is in: the bot ignores visitors (and answers by user id), so the real
    admin.alice gets no DM for it."""
    base = f"{bridge.rc.url}/api/v1"

    def visitor_room() -> str:
        requests.post(f"{base}/livechat/visitor", timeout=5, json={
            "visitor": {"token": "widget-visitor-1", "username": ADMIN, "name": "Alice"},
        }).raise_for_status()
        room = requests.get(f"{base}/livechat/room", params={"token": "widget-visitor-1"},
                            timeout=5)
        room.raise_for_status()
        return room.json()["room"]["_id"]

    rid = await asyncio.to_thread(visitor_room)
    bridge.rc.add_member(rid, BOT_USER)
    before = len(bridge.rc.dm_messages(BOT_USER, ADMIN))

    def post(text: str) -> None:
        requests.post(f"{base}/livechat/message", timeout=5, json={
            "token": "widget-visitor-1", "rid": rid, "msg": text}).raise_for_status()

    await asyncio.to_thread(post, "/instagram authorize")
    await asyncio.sleep(0.5)
    # The real admin's own command is heard (so the silence above is not an accident).
    bridge.rc.send_dm(ADMIN, BOT_USER, "instagram help")
    await eventually(lambda: len(bridge.rc.dm_messages(BOT_USER, ADMIN)) > before)
    await asyncio.sleep(0.3)
    replies = [m["msg"] for m in bridge.rc.dm_messages(BOT_USER, ADMIN)[before:]
               if m["u"]["username"] == BOT_USER]
    assert len(replies) == 1 and "commands" in replies[0], replies
