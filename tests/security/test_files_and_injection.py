"""Data files are private (0600 files, 0700 directories); user-controlled ids and names
cannot traverse paths, inject into URLs or break the relay."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

from bot.app import CommandContext
from commands.base import Issuer
from commands.router import dispatch, parse
from storage import Page, open_store
from tests.scenarios.harness import ADMIN, BOT_USER, Bridge


def _modes(root: Path) -> dict[str, int]:
    out = {}
    for path in [root, *root.rglob("*")]:
        out[str(path.relative_to(root.parent))] = stat.S_IMODE(path.stat().st_mode)
    return out


def _assert_private(root: Path) -> None:
    modes = _modes(root)
    assert len(modes) > 1, modes
    for name, mode in modes.items():
        expected = 0o700 if Path(root.parent, name).is_dir() else 0o600
        assert mode == expected, f"{name}: {oct(mode)}"


async def test_data_files_of_a_running_bot_are_private(bridge: Bridge, tmp_path: Path) -> None:
    """After the bot stored a page and relayed a message, every data file is 0600 and the
    data directory 0700."""
    status, _ = await bridge.deliver(bridge.meta.text_event(bridge.ig_id, "6543210987654321",
                                                            "hello"))
    assert status == 200
    for _ in range(500):
        if bridge.rooms("6543210987654321"):
            break
        await asyncio.sleep(0.02)
    _assert_private(tmp_path / "data")


async def test_data_files_are_private_even_with_a_permissive_umask(tmp_path: Path) -> None:
    """With umask 000 a new store still creates 0700 directories and 0600 files."""
    old = os.umask(0)
    try:
        store = open_store(str(tmp_path / "data" / "deep" / "store.json"))
        await store.open()
        await store.save_page(Page("1", "P", "2", page_token="EAAsecret"))
        await store.close()
    finally:
        os.umask(old)
    _assert_private(tmp_path / "data" / "deep")


async def _admin(bridge: Bridge, line: str) -> str:
    rc = bridge.rc
    before = len(rc.dm_messages(BOT_USER, ADMIN))
    invocation = parse(line, direct=True)
    assert invocation is not None
    issuer = Issuer(rc.user_id(ADMIN), ADMIN, "rid-sec", "d")
    await dispatch(bridge.bot.registry, CommandContext(bridge.bot, issuer), invocation)
    texts = [m["msg"] for m in rc.dm_messages(BOT_USER, ADMIN)[before:]
             if m.get("u", {}).get("username") == BOT_USER]
    assert texts, line
    return texts[-1]


async def test_traversal_page_ids_in_commands_reach_no_one(bridge: Bridge) -> None:
    """Page ids like ../../me or with query characters are unknown pages: the admin is told,
    Meta is never called, nothing changes."""
    bridge.meta.clear_records()
    for page_id in ("../../me/accounts", f"{bridge.page_id}/../me", f"{bridge.page_id}?x=1",
                    "%2e%2e%2fme", f"{bridge.page_id}\r\nX-Evil: 1"):
        for verb in ("subscribe", "unsubscribe", "edit"):
            reply = await _admin(bridge, f"/instagram {verb} '{page_id}'")
            assert "I know no connected page" in reply, reply
    assert bridge.meta.calls() == []
    page = await bridge.bot.store.page(bridge.page_id)
    assert page is not None and page.subscribed


async def test_odd_sender_ids_stay_one_path_segment(bridge: Bridge) -> None:
    """A sender id with '/', '?' or '..' (only Meta can sign one, but still) is looked up
    as one URL-encoded path segment, never another Graph endpoint."""
    bridge.meta.clear_records()
    odd = ["../me/accounts", "1?fields=access_token&x=", "1#frag", "..", "a b"]
    for n, igsid in enumerate(odd):
        event = bridge.meta.text_event(bridge.ig_id, igsid, "hi", mid=f"odd-{n}")
        status, _ = await bridge.deliver(event)
        assert status == 200
    for _ in range(500):
        if not bridge.bot.store.inbox.backlog and not await bridge.bot.store.queue_depth("inbound"):
            break
        await asyncio.sleep(0.02)
    # The server saw (after decoding) exactly /v24.0/<the id>: one segment, no query, no
    # dot-segment resolved into /me/accounts.
    paths = sorted(c["path"] for c in bridge.meta.calls() if c.get("method") == "GET")
    assert paths == sorted(f"/v24.0/{igsid}" for igsid in odd), paths


async def test_visitor_profile_names_with_markup_and_newlines_are_relayed(
    bridge: Bridge, eventually
) -> None:
    """A profile name full of CR/LF, HTML and markdown registers a visitor and relays the
    message; the text reaches the room unchanged, the name stays a single line."""
    igsid = "6543210987654999"
    name = "Eve\r\nX-Injected: 1 <img src=x onerror=alert(1)> [x](javascript:alert(1))"
    bridge.meta.set_profile(igsid, name=name, username="eve")
    status, _ = await bridge.deliver(bridge.meta.text_event(bridge.ig_id, igsid, "<b>hi</b>"))
    assert status == 200
    await eventually(lambda: bridge.texts(igsid))
    assert bridge.texts(igsid) == ["<b>hi</b>"]

    async def registered():  # saved by the bot just after it posts the message
        found = await bridge.bot.store.conversation(bridge.page_id, igsid)
        return found if found is not None and found.visitor_registered else None
    conv = await eventually(registered)
    assert "\r" not in conv.visitor_name and "\n" not in conv.visitor_name


async def test_department_names_with_newlines_and_markup_are_harmless(bridge: Bridge) -> None:
    """Department names are matched exactly; unknown ones are refused with the known list,
    and a department with markup in its name can be chosen without breaking anything."""
    reply = await _admin(bridge, f"/instagram edit {bridge.page_id} department Sales\r\nX: 1")
    assert "no Omnichannel department" in reply
    odd = bridge.rc.create_department("Ops <b>*x*</b>", agents=[])
    reply = await _admin(bridge, f"/instagram edit {bridge.page_id} department Ops <b>*x*</b>")
    page = await bridge.bot.store.page(bridge.page_id)
    assert page is not None and page.department_id == odd, reply
