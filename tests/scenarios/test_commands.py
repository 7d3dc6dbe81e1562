"""Commands end to end: typed in the sandbox Rocket.Chat, answered by the real bot by DM."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from bot.app import Bot
from bot.backoff import exponential_backoff
from bot.config import from_dict
from sandbox.meta import SandboxMeta
from sandbox.rocketchat import SandboxRocketChat
from tests.scenarios.harness import (
    ADMIN,
    BOT_PASSWORD,
    BOT_USER,
    config_dict,
    every_rc_version,
    free_port,
    in_process,
    setup_rocketchat,
    stop_bot,
    write_config,
)

TINY_BACKOFF = exponential_backoff(initial=0.01, factor=2.0, max_delay=0.05, jitter=0.5)


@pytest.fixture
async def bot(
    rocketchat: SandboxRocketChat, meta: SandboxMeta, tmp_path: Path
) -> AsyncIterator[Bot]:
    """A running bot (fast reconnects) with a channel #ops it is in and #lobby it is not."""
    setup_rocketchat(rocketchat)
    rocketchat.create_user("carol", "carol-pw", roles=["user"])
    rocketchat.create_channel("ops", members=[BOT_USER, ADMIN, "carol"])
    rocketchat.create_channel("lobby", members=[ADMIN, "carol"])
    raw = config_dict(rocketchat.url, meta, str(tmp_path / "data" / "s.json"), "127.0.0.1:8080")
    bot = Bot(in_process(from_dict(raw, env={})), backoff=TINY_BACKOFF)
    task = asyncio.create_task(bot.run())
    await bot.realtime.wait_connected(10)
    try:
        yield bot
    finally:
        await stop_bot(bot, task)


def answers(rc: SandboxRocketChat, username: str) -> list[str]:
    """Texts the bot sent to ``username`` by DM, oldest first."""
    return [
        m["msg"] for m in rc.dm_messages(username, BOT_USER) if m["u"]["username"] == BOT_USER
    ]


@every_rc_version
async def test_help_in_channel_answered_by_dm_within_a_second(
    bot: Bot, rocketchat: SandboxRocketChat, eventually
) -> None:
    """/instagram help typed in a channel is answered by DM to the issuer within 1 s."""
    ops = rocketchat.create_channel("ops2", members=[BOT_USER, "carol"])
    started = time.monotonic()
    rocketchat.post_message("carol", ops, "/instagram help")
    await eventually(lambda: answers(rocketchat, "carol"), timeout=1.0)
    assert time.monotonic() - started < 1.0
    (reply,) = answers(rocketchat, "carol")
    assert "`/instagram help`" in reply
    assert all(m["u"]["username"] == "carol" for m in rocketchat.room_messages(ops)
               if not m.get("t"))


@pytest.mark.parametrize(
    ("text", "in_dm"),
    [("/Instagram HELP", False), ("instagram help", True), ("/instagram help", True)],
)
async def test_prefix_variants_are_answered(
    bot: Bot, rocketchat: SandboxRocketChat, eventually, text: str, in_dm: bool
) -> None:
    """Case-insensitive prefix in channels; the slash is optional in a DM with the bot."""
    if in_dm:
        rocketchat.send_dm("carol", BOT_USER, text)
    else:
        rid = rocketchat.create_channel("variants", members=[BOT_USER, "carol"])
        rocketchat.post_message("carol", rid, text)
    await eventually(lambda: answers(rocketchat, "carol"), timeout=2.0)
    assert "Instagram bridge commands" in answers(rocketchat, "carol")[0]


async def test_slashless_command_in_channel_is_ignored(
    bot: Bot, rocketchat: SandboxRocketChat
) -> None:
    """Without the slash, only a DM counts: 'instagram help' in a channel is chat."""
    rid = rocketchat.create_channel("chatter", members=[BOT_USER, "carol"])
    rocketchat.post_message("carol", rid, "instagram help")
    rocketchat.post_message("carol", rid, "/instagram help")
    await asyncio.sleep(0.5)
    assert len(answers(rocketchat, "carol")) == 1


async def test_never_answers_itself_an_edit_or_a_room_it_is_not_in(
    bot: Bot, rocketchat: SandboxRocketChat, eventually
) -> None:
    """Own messages, edits of answered commands and rooms without the bot get no answer."""
    lobby = rocketchat.create_channel("lobby2", members=["carol"])
    rocketchat.post_message("carol", lobby, "/instagram help")
    ops = rocketchat.create_channel("ops3", members=[BOT_USER, "carol"])
    command = rocketchat.post_message("carol", ops, "/instagram nosuch")
    await eventually(lambda: answers(rocketchat, "carol"), timeout=2.0)
    rocketchat.edit_message(command["_id"], "/instagram nosuch2")
    rocketchat.react(command["_id"], "carol", ":+1:")
    rocketchat.post_message(BOT_USER, ops, "/instagram help")
    await asyncio.sleep(0.6)
    replies = answers(rocketchat, "carol")
    assert len(replies) == 1 and "nosuch" in replies[0]
    handled = bot.metrics.registry.get_sample_value(
        "rcig_commands_total", {"command": "unknown"}
    )
    assert handled == 1
    assert bot.metrics.registry.get_sample_value(
        "rcig_commands_total", {"command": "help"}
    ) is None


async def test_commands_typed_across_ten_socket_drops_answered_exactly_once(
    bot: Bot, rocketchat: SandboxRocketChat, eventually
) -> None:
    """The sandbox drops the bot's socket 10 times while commands are typed: each is
    answered exactly once, including those typed while the bot was disconnected."""
    rid = rocketchat.create_channel("drops", members=[BOT_USER, "carol"])
    sent = []
    for drop in range(10):
        rocketchat.block_connections(True)
        rocketchat.drop_all_sockets()
        # Until the bot notices, `connected` is still true: waiting for the reconnect right
        # away could let two drops count as one reconnect on a loaded machine.
        await eventually(lambda: not bot.realtime.connected, timeout=5.0)
        for k in range(2):  # typed while the bot is away
            name = f"away{drop}x{k}"
            rocketchat.post_message("carol", rid, f"/instagram {name}")
            sent.append(name)
        rocketchat.block_connections(False)
        await eventually(lambda: bot.realtime.connected, timeout=5.0)
        name = f"live{drop}"
        rocketchat.post_message("carol", rid, f"/instagram {name}")
        sent.append(name)
        await asyncio.sleep(0.05)

    def answered() -> Counter[str]:
        counts: Counter[str] = Counter()
        for text in answers(rocketchat, "carol"):
            counts[text.split("`")[1]] += 1
        return counts

    await eventually(lambda: set(answered()) >= set(sent), timeout=15.0)
    await asyncio.sleep(0.3)
    counts = answered()
    assert sorted(counts) == sorted(sent)
    assert set(counts.values()) == {1}
    assert bot.realtime.reconnects >= 10


async def test_healthz_reports_realtime_across_a_disconnect(
    bot: Bot, rocketchat: SandboxRocketChat, eventually
) -> None:
    """/healthz says realtime false (503) while Rocket.Chat is unreachable, true after."""
    url = f"http://127.0.0.1:{bot.port}/healthz"
    async with aiohttp.ClientSession() as http:

        async def health() -> tuple[int, dict]:
            async with http.get(url) as response:
                return response.status, await response.json()

        assert await health() == (200, {"status": "ok", "realtime": True, "storage": True,
                                        "meta": "ok"})
        rocketchat.block_connections(True)
        rocketchat.drop_all_sockets()
        await eventually(lambda: not bot.realtime.connected, timeout=5.0)
        status, body = await health()
        assert (status, body["realtime"], body["status"]) == (503, False, "degraded")
        rocketchat.block_connections(False)
        await eventually(lambda: bot.realtime.connected, timeout=5.0)
        assert (await health())[0] == 200


def test_wrong_password_exits_nonzero_with_one_clear_line(
    rocketchat: SandboxRocketChat, meta: SandboxMeta, tmp_path: Path
) -> None:
    """A refused login ends the process with exit 2 and one line: no traceback, no secret."""
    setup_rocketchat(rocketchat)
    raw = config_dict(rocketchat.url, meta, str(tmp_path / "s.json"), f"127.0.0.1:{free_port()}")
    raw["rocketchat"]["password"] = "wrong-Pa55word-xyz"
    path = write_config(tmp_path / "config.yaml", raw)
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", "run", "--config", str(path)],
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert "wrong-Pa55word-xyz" not in result.stderr + result.stdout
    assert BOT_PASSWORD not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "credentials" in errors[0]


async def test_admins_found_over_ddp_when_the_rest_route_is_missing(
    bot: Bot, rocketchat: SandboxRocketChat, eventually
) -> None:
    """A server without roles.getUsersInPublicRoles (404): getUserRoles over DDP decides."""
    rocketchat.fail_rest(status=404, routes={"roles.getUsersInPublicRoles"})
    rocketchat.send_dm(ADMIN, BOT_USER, "instagram pages")
    rocketchat.send_dm("carol", BOT_USER, "instagram pages")
    await eventually(lambda: answers(rocketchat, ADMIN) and answers(rocketchat, "carol"))
    assert "administrators only" not in answers(rocketchat, ADMIN)[0]
    assert "administrators only" in answers(rocketchat, "carol")[0]
    assert rocketchat.call_counts().get("ddp:getUserRoles", 0) >= 1


@every_rc_version
async def test_admin_command_answered_on_6x(
    bot: Bot, rocketchat: SandboxRocketChat, eventually, rc_version: str
) -> None:
    """An admin command is answered on every release: up to 7.0 roles.getUsersInPublicRoles
    is an HTML 200 page, and getUserRoles over DDP tells the admin from a plain user."""
    rocketchat.send_dm(ADMIN, BOT_USER, "instagram pages")
    rocketchat.send_dm("carol", BOT_USER, "instagram pages")
    await eventually(lambda: answers(rocketchat, ADMIN) and answers(rocketchat, "carol"))
    assert "administrators only" not in answers(rocketchat, ADMIN)[0]
    assert "administrators only" in answers(rocketchat, "carol")[0]
    via_ddp = rocketchat.call_counts().get("ddp:getUserRoles", 0)
    assert via_ddp >= 1 if rc_version < "7.1" else via_ddp == 0


async def test_admin_check_failure_is_told_to_issuer(
    bot: Bot, rocketchat: SandboxRocketChat, eventually
) -> None:
    """When the roles cannot be read (a 403 from the roles route), the issuer is told why
    by DM instead of hearing nothing, and the command does not run."""
    rocketchat.fail_rest(status=403, routes={"roles.getUsersInPublicRoles"})
    rocketchat.send_dm(ADMIN, BOT_USER, "instagram pages")
    [text] = await eventually(lambda: answers(rocketchat, ADMIN))
    assert "could not find out whether you are one" in text
    assert "roles.getUsersInPublicRoles" in text and "administrators only" not in text
    assert BOT_PASSWORD not in text
