"""The whole bridge on the PostgreSQL store: both directions, and two replicas."""

from __future__ import annotations

import asyncio

from bot.app import CommandContext
from commands.base import Issuer
from storage import PostgresStore
from tests.scenarios.harness import ADMIN, BOT_USER, running_bridge, start_bot, stop_bot
from tests.scenarios.outbound_helpers import (
    enable_omnichannel_webhooks,
    replies_in_turn,
    sent_texts,
    visitor_with_room,
    wait_for,
)
from tests.scenarios.test_commands import answers
from tests.storage import postgres_server


async def test_bridge_relays_both_ways_with_storage_url(rocketchat, meta, tmp_path, pg_url,
                                                       eventually, caplog):
    """With storage.url set, DMs reach the room in order and replies reach the visitor."""
    with postgres_server.fresh_schema(pg_url) as url:
        async with running_bridge(rocketchat, meta, tmp_path, store_url=url) as bridge:
            assert isinstance(bridge.bot.store, PostgresStore)
            enable_omnichannel_webhooks(bridge)
            igsid, rid = await visitor_with_room(bridge)
            for n in range(5):
                event = bridge.meta.text_event(bridge.ig_id, igsid, f"message {n}")
                assert (await bridge.deliver(event))[0] == 200
            await wait_for(lambda: bridge.texts(igsid)[-5:] == [f"message {n}" for n in range(5)])
            expected = [f"reply {n}" for n in range(3)]
            await replies_in_turn(bridge, rid, expected)
            await wait_for(lambda: sent_texts(bridge, igsid) == expected)

            async def drained() -> bool:
                stats = await bridge.bot.store.stats()
                return stats["inbound"] == stats["outbound"] == stats["inbox"] == 0

            await eventually(drained)  # the replies' echoes too
        assert not (tmp_path / "data").exists()  # no TinyDB file was written
        [plain] = [r.getMessage() for r in caplog.records if "plain text" in r.getMessage()]
        assert "in postgresql://" in plain and ".json" not in plain


async def test_two_replicas_answer_each_command_once(rocketchat, meta, tmp_path, pg_url,
                                                    eventually):
    """Two bots on one database, both logged in: every command is answered exactly once."""
    with postgres_server.fresh_schema(pg_url) as url:
        async with running_bridge(rocketchat, meta, tmp_path, store_url=url) as bridge:
            second, task = await start_bot(bridge.config)
            try:
                await asyncio.gather(bridge.bot.realtime.wait_connected(10),
                                     second.realtime.wait_connected(10))
                ops = rocketchat.create_channel("ops", members=[BOT_USER, ADMIN])
                for _ in range(5):
                    rocketchat.post_message(ADMIN, ops, "/instagram help")
                await eventually(lambda: len(answers(rocketchat, ADMIN)) >= 5)
                await asyncio.sleep(0.5)  # a second answer would have come by now
                assert len(answers(rocketchat, ADMIN)) == 5
            finally:
                await stop_bot(second, task)


async def test_answer_repeated_by_a_second_replica_is_posted_once(rocketchat, meta, tmp_path,
                                                                  pg_url, eventually):
    """A replica taking over a command whose first replica died mid-answer re-sends the
    same reply ids: the issuer gets each reply once."""
    with postgres_server.fresh_schema(pg_url) as url:
        async with running_bridge(rocketchat, meta, tmp_path, store_url=url) as bridge:
            user = rocketchat.user(ADMIN)
            issuer = Issuer(user["_id"], ADMIN, "rid-ops", "c")
            first = CommandContext(bridge.bot, issuer, "command-message-1")
            await first.reply("part one")  # ...and the first replica dies here
            again = CommandContext(bridge.bot, issuer, "command-message-1")
            await again.reply("part one")
            await again.reply("part two")
            await eventually(lambda: answers(rocketchat, ADMIN) == ["part one", "part two"])
