"""Fuzzed command lines: parse() properties, and every line through the real router and
handlers of a running bot ends in a DM to the issuer (or is not for us), never an
exception."""

from __future__ import annotations

import asyncio
import logging

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bot.app import CommandContext
from commands.base import Issuer
from commands.registry import default_registry
from commands.router import dispatch, parse
from tests.fuzz.conftest import FUZZ, LoopBridge, internal_errors, run_property, scaled
from tests.fuzz.strategies import odd_text
from tests.scenarios.harness import ADMIN, BOT_USER, Bridge

NAMES = [c.name for c in default_registry()]
PLAIN_USER = "visitor.vic"

prefixes = st.sampled_from(["/instagram", "/Instagram", "/INSTAGRAM", "instagram", " /instagram",
                            "/instagram\n", "/instagram\t", "/instagramx", "", "/ instagram"])
words = st.one_of(
    st.sampled_from([*NAMES, "none", "department", "welcome", "finished", "offline", "'", '"',
                     "\\", "'a b'", '"unclosed', "100000000000001", "../../etc/passwd",
                     "a\r\nX-Injected: 1", "`code`", "*bold*", "<b>x</b>", "Instagram"]),
    odd_text,
)
lines = st.builds(
    lambda prefix, parts, seps: prefix + "".join(s + p for s, p in zip(seps, parts, strict=False)),
    prefixes,
    st.lists(words, max_size=6),
    st.lists(st.sampled_from([" ", "  ", "\n", "\t", " \u00a0", ""]), min_size=6, max_size=6),
)
any_lines = st.one_of(lines, lines, st.text(max_size=300))


@FUZZ
@given(text=any_lines, direct=st.booleans())
@example(text="/instagram edit 1 welcome 'unclosed", direct=False)
@example(text="instagram " + "x" * 20_000, direct=True)
def test_parse_never_raises_and_is_consistent(text: str, direct: bool) -> None:
    """parse() never raises; a result names a lower-case word; a room message parses the
    same in a DM; the handler's arguments are always computable."""
    invocation = parse(text, direct=direct)
    if invocation is None:
        assert parse(text, direct=False) is None
        return
    assert invocation.name == invocation.name.lower() and invocation.name
    assert not any(ch.isspace() for ch in invocation.name)
    assert parse(text, direct=True) == invocation
    assert text.lstrip().lower().lstrip("/").startswith("instagram")
    for command in default_registry():
        args = invocation.arguments_for(command)
        assert all(isinstance(a, str) for a in args)


@FUZZ
@given(text=any_lines)
def test_room_messages_need_the_slash(text: str) -> None:
    """Outside a DM only '/instagram…' is a command: nothing else is parsed as one."""
    if parse(text, direct=False) is not None:
        assert text.lstrip().startswith("/")


async def test_fuzzed_command_lines_always_answer(
    bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    """Random lines from an admin and from a plain user: each one addressed to us gets at
    least one DM, and dispatch never raises."""
    caplog.set_level(logging.INFO)
    rc, bot = bridge.rc, bridge.bot
    rc.create_user(PLAIN_USER, "vic-password-123", roles=["user"])
    issuers = {
        name: Issuer(rc.user_id(name), name, "rid-fuzz", "d") for name in (ADMIN, PLAIN_USER)
    }
    loop = LoopBridge(asyncio.get_running_loop())

    def dms(username: str) -> int:
        return sum(1 for m in rc.dm_messages(BOT_USER, username)
                   if m.get("u", {}).get("username") == BOT_USER)

    async def run(text: str, issuer: Issuer) -> bool:
        invocation = parse(text, direct=issuer.room_type == "d")
        if invocation is None:
            return False
        await dispatch(bot.registry, CommandContext(bot, issuer), invocation)
        return True

    @scaled(60)
    @given(text=lines, who=st.sampled_from([ADMIN, PLAIN_USER]),
           room=st.sampled_from(["d", "c"]))
    @example(text="/instagram " + "x" * 6000, who=PLAIN_USER, room="c")
    @example(text="/instagram edit " + "9" * 6000, who=ADMIN, room="d")
    @example(text="/instagram edit 100000000000001 department " + "d" * 6000, who=ADMIN,
             room="d")
    @example(text="/instagram edit 100000000000001 " + "s" * 6000 + " x", who=ADMIN, room="d")
    @example(text="/instagram subscribe 'unclosed", who=ADMIN, room="c")
    def prop(text: str, who: str, room: str) -> None:
        issuer = Issuer(issuers[who].user_id, who, "rid-fuzz", room)
        before = dms(who)
        addressed = loop.run(run(text, issuer))
        if addressed:
            assert dms(who) > before, f"no reply to {text[:200]!r}"

    await run_property(prop)
    assert internal_errors(bridge, caplog.records) == []


