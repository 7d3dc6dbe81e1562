"""The reconnecting DDP client against the sandbox Rocket.Chat over real sockets."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import pytest

from bot.rocketchat.realtime import IncomingMessage, RealtimeClient, SeenIds, is_fatal, skip_reason
from bot.rocketchat.rest import AuthenticationFailed, RocketChatREST

from .conftest import BOT_PASSWORD

# --- pure parts ---------------------------------------------------------------------------

ME = "Bot0000000000000"


def _msg(**fields):
    base = {
        "_id": "m1",
        "rid": "GENERAL",
        "msg": "hello",
        "u": {"_id": "Alice00000000000", "username": "alice"},
        "ts": {"$date": 1_735_689_600_000},
        "_updatedAt": {"$date": 1_735_689_600_000},
    }
    base.update(fields)
    return base


@pytest.mark.parametrize(
    ("message", "meta", "reason"),
    [
        (_msg(), {"roomParticipant": True}, None),
        (_msg(), {}, None),
        (_msg(t="uj"), {"roomParticipant": True}, "system message"),
        (_msg(u={"_id": ME, "username": "bot"}), {"roomParticipant": True}, "own message"),
        (_msg(), {"roomParticipant": False}, "not a participant"),
        (_msg(editedAt={"$date": 1}), {"roomParticipant": True}, "edited message"),
        (_msg(token="visitor-token"), {"roomParticipant": True}, "livechat visitor"),
        (_msg(reactions={":+1:": {}}), {"roomParticipant": True}, "update of an existing message"),
        (_msg(tcount=2), {"roomParticipant": True}, "update of an existing message"),
        (
            _msg(_updatedAt={"$date": 1_735_689_600_000 + 3_600_000}),
            {"roomParticipant": True},
            "update of an older message",
        ),
        (_msg(_id=None), {"roomParticipant": True}, "malformed"),
    ],
)
def test_skip_reason_table(message, meta, reason):
    """Own, system, non-participant and update re-emissions are skipped; plain messages pass."""
    assert skip_reason(message, meta, self_id=ME) == reason


def test_catch_up_never_runs_an_edited_message():
    """Off the live stream (catch-up) too, a command is a message as first posted."""
    assert skip_reason(_msg(editedAt={"$date": 1}), {}, self_id=ME, live=False) == (
        "edited message")


def test_seen_ids_is_bounded_and_forgets_oldest():
    """The seen-set keeps at most its capacity, dropping the oldest id first."""
    seen = SeenIds(capacity=3)
    assert [seen.add(i) for i in "abc"] == [True, True, True]
    assert seen.add("a") is False  # refreshes "a"
    assert seen.add("d") is True  # evicts "b", the oldest
    assert "b" not in seen and "a" in seen and len(seen) == 3


def test_incoming_message_from_ddp_and_rest_shapes():
    """EJSON and ISO timestamps both become aware datetimes."""
    ddp_msg = IncomingMessage.from_raw(_msg(), "c")
    rest_msg = IncomingMessage.from_raw(_msg(ts="2025-01-01T00:00:00.000Z"), "c")
    assert ddp_msg.ts == rest_msg.ts == datetime(2025, 1, 1, tzinfo=UTC)
    assert (ddp_msg.id, ddp_msg.user_id, ddp_msg.username, ddp_msg.room_type) == (
        "m1", "Alice00000000000", "alice", "c",
    )


def test_only_bad_credentials_are_fatal():
    """AuthenticationFailed stops run(); network-ish errors do not."""
    assert is_fatal(AuthenticationFailed("x"))
    assert not is_fatal(OSError("refused"))
    assert not is_fatal(TimeoutError())
    assert not is_fatal(RuntimeError("bug in one session"))


def test_client_needs_credentials():
    """Neither password nor token is a configuration error."""
    with pytest.raises(ValueError):
        RealtimeClient(
            "http://127.0.0.1:1", rest=None, on_message=None  # type: ignore[arg-type]
        )


# --- against the sandbox ------------------------------------------------------------------


async def test_channel_message_reaches_callback_once(rocketchat, channel, start_client, eventually):
    """A user's message in a channel the bot is in is delivered exactly once, with metadata."""
    running = start_client()
    await running.client.wait_connected(5)
    posted = rocketchat.post_message("alice", channel, "/instagram help")
    await eventually(lambda: running.inbox.messages)
    await asyncio.sleep(0.2)
    [got] = running.inbox.messages
    assert (got.id, got.rid, got.text, got.username, got.room_type) == (
        posted["_id"], channel, "/instagram help", "alice", "c",
    )
    assert running.client.user_id == rocketchat.user_id("instagram.bot")
    assert running.client.username == "instagram.bot"


async def test_filtered_messages_never_reach_callback(
    rocketchat, channel, people, start_client, eventually, caplog
):
    """Own, system, non-participant, edited and reacted messages are dropped; others pass."""
    caplog.set_level(logging.DEBUG, logger="bot.realtime")
    lobby = rocketchat.create_channel("lobby", members=["alice"])  # bot can see, not a member
    running = start_client()
    await running.client.wait_connected(5)

    first = rocketchat.post_message("alice", channel, "first")
    await eventually(lambda: first["_id"] in running.inbox.ids)
    own = rocketchat.post_message("instagram.bot", channel, "my own words")
    system = rocketchat.post_message("alice", channel, "", t="uj")
    elsewhere = rocketchat.post_message("alice", lobby, "not for the bot")
    rocketchat.edit_message(first["_id"], "first, edited")
    rocketchat.react(first["_id"], "boss", ":+1:")
    last = rocketchat.post_message("boss", channel, "last")
    await eventually(lambda: last["_id"] in running.inbox.ids)
    await asyncio.sleep(0.2)

    assert running.inbox.ids == [first["_id"], last["_id"]]
    log_text = caplog.text
    assert f"message {own['_id']} skipped: own message" in log_text
    assert f"message {system['_id']} skipped: system message" in log_text
    assert f"message {elsewhere['_id']} skipped: not a participant" in log_text
    assert f"message {first['_id']} seen before" in log_text


async def test_edit_of_message_from_before_start_is_not_a_command(
    rocketchat, channel, start_client, eventually, caplog
):
    """Editing or reacting to an old message the bot never saw does not deliver it."""
    caplog.set_level(logging.DEBUG, logger="bot.realtime")
    old = rocketchat.post_message("alice", channel, "/instagram unauthorize")
    running = start_client()
    await running.client.wait_connected(5)
    rocketchat.react(old["_id"], "boss", ":eyes:")
    sentinel = rocketchat.post_message("alice", channel, "sentinel")
    await eventually(lambda: sentinel["_id"] in running.inbox.ids)
    assert running.inbox.ids == [sentinel["_id"]]
    assert f"message {old['_id']} skipped: update of an existing message" in caplog.text


async def test_message_edited_into_a_command_while_disconnected_is_not_run(
    rocketchat, channel, start_client, eventually
):
    """A moderator edits alice's message into ``/instagram …`` while the bot is away: the
    catch-up after the reconnect delivers alice's new message, never the edited one."""
    running = start_client()
    client = running.client
    await client.wait_connected(5)
    rocketchat.block_connections(True)
    assert rocketchat.drop_all_sockets() == 1
    await eventually(lambda: not client.connected)
    victim = rocketchat.post_message("alice", channel, "thanks!")
    rocketchat.edit_message(victim["_id"], "@instagram.bot /instagram unauthorize 1")
    fresh = rocketchat.post_message("alice", channel, "@instagram.bot hello")
    rocketchat.block_connections(False)
    await client.wait_connected(5)
    await eventually(lambda: fresh["_id"] in running.inbox.ids)
    await asyncio.sleep(0.2)
    assert running.inbox.ids == [fresh["_id"]]


async def test_dm_to_bot_is_delivered_with_room_type_d(
    rocketchat, people, start_client, eventually
):
    """A direct message to the bot arrives with room_type 'd'."""
    running = start_client()
    await running.client.wait_connected(5)
    sent = rocketchat.send_dm("boss", "instagram.bot", "instagram pages")
    await eventually(lambda: running.inbox.messages)
    assert [(m.id, m.room_type, m.text) for m in running.inbox.messages] == [
        (sent["_id"], "d", "instagram pages")
    ]


async def test_connected_flips_false_then_true_across_a_drop(rocketchat, channel, start_client,
                                                             eventually):
    """`connected` goes false when the socket drops and true again after the reconnect."""
    running = start_client()
    client = running.client
    await client.wait_connected(5)
    assert client.connected and client.reconnects == 0
    rocketchat.block_connections(True)
    assert rocketchat.drop_all_sockets() == 1
    await eventually(lambda: not client.connected)
    await asyncio.sleep(0.1)  # a few refused attempts: still disconnected
    assert not client.connected
    rocketchat.block_connections(False)
    await client.wait_connected(5)
    assert client.reconnects == 1


async def test_messages_survive_ten_drops_exactly_once(rocketchat, channel, start_client,
                                                       eventually):
    """Ten socket drops while alice keeps posting: each message is delivered exactly once,
    including those posted while the bot was disconnected (REST catch-up)."""
    running = start_client()
    client = running.client
    await client.wait_connected(5)
    posted: list[str] = []
    posted_while_down: list[str] = []
    done = asyncio.Event()

    async def poster() -> None:
        i = 0
        while not done.is_set():
            msg = rocketchat.post_message("alice", channel, f"message {i}")
            posted.append(msg["_id"])
            if not client.connected:
                posted_while_down.append(msg["_id"])
            i += 1
            await asyncio.sleep(0.01)

    posting = asyncio.create_task(poster())
    for _ in range(10):
        await client.wait_connected(5)
        await asyncio.sleep(0.05)
        rocketchat.block_connections(True)  # hold the bot off so messages pile up unseen
        rocketchat.drop_all_sockets()
        await eventually(lambda: not client.connected)
        await asyncio.sleep(0.05)
        rocketchat.block_connections(False)
    await client.wait_connected(5)
    done.set()
    await posting

    await eventually(lambda: set(running.inbox.ids) >= set(posted), timeout=10)
    await asyncio.sleep(0.3)
    counts = running.inbox.counts()
    assert set(counts) == set(posted)
    assert max(counts.values()) == 1, [i for i, n in counts.items() if n > 1]
    assert len(posted_while_down) >= 10
    assert client.reconnects == 10


async def test_reconnect_does_not_double_subscribe(rocketchat, channel, start_client, eventually):
    """After several reconnects the bot holds one socket with one message subscription."""
    running = start_client()
    client = running.client
    await client.wait_connected(5)
    for n in range(1, 4):
        rocketchat.drop_all_sockets()
        await eventually(lambda n=n: client.connected and client.reconnects == n)
    [session] = [c for c in rocketchat.connected_clients() if c["username"] == "instagram.bot"]
    assert session["subscriptions"] == [["stream-room-messages", "__my_messages__"]]
    assert rocketchat.call_counts()["ddp:sub:stream-room-messages"] == 4

    msg = rocketchat.post_message("alice", channel, "once please")
    await eventually(lambda: msg["_id"] in running.inbox.ids)
    await asyncio.sleep(0.2)
    assert running.inbox.ids == [msg["_id"]]


async def test_silent_socket_is_reconnected_by_watchdog(rocketchat, channel, proxy,
                                                        start_client, eventually):
    """A socket that stays open but goes silent (no pongs, no frames) is replaced."""
    running = start_client(url=proxy.url, ping_interval=0.1, watchdog_intervals=3)
    client = running.client
    await client.wait_connected(5)
    proxy.silence_existing()
    await eventually(lambda: client.reconnects == 1 and client.connected, timeout=5)
    assert proxy.links == 2
    msg = rocketchat.post_message("alice", channel, "after the silence")
    await eventually(lambda: msg["_id"] in running.inbox.ids)


async def test_healthy_connection_stays_up_with_fast_pings(rocketchat, channel, start_client):
    """With pings answered, the watchdog never fires, even at a 50 ms interval."""
    running = start_client(ping_interval=0.05, watchdog_intervals=3)
    await running.client.wait_connected(5)
    await asyncio.sleep(0.6)
    assert running.client.connected and running.client.reconnects == 0


async def test_wrong_password_is_fatal_without_leaking_it(rocketchat, people):
    """A wrong password makes run() raise AuthenticationFailed at once; no password in it."""
    rest = RocketChatREST(rocketchat.url, user="instagram.bot", password="wrong-Secret-9")

    async def ignore(_: IncomingMessage) -> None:
        return None

    client = RealtimeClient(
        rocketchat.url, rest=rest, user="instagram.bot", password="wrong-Secret-9",
        on_message=ignore,
    )
    try:
        with pytest.raises(AuthenticationFailed) as caught:
            await asyncio.wait_for(client.run(), timeout=5)
        assert "wrong-Secret-9" not in str(caught.value)
        assert "instagram.bot" in str(caught.value)
        assert "\n" not in str(caught.value)
        with pytest.raises(AuthenticationFailed):
            await client.wait_connected(1)
        assert rocketchat.call_counts().get("ddp:login") == 1
    finally:
        await rest.close()


async def test_personal_access_token_login(rocketchat, people, channel, eventually):
    """user_id + PAT logs in by resume; the username comes from /me."""
    pat = rocketchat.create_personal_access_token("instagram.bot")
    uid = people["bot"]
    rest = RocketChatREST(rocketchat.url, user_id=uid, token=pat)
    inbox: list[IncomingMessage] = []

    async def collect(m: IncomingMessage) -> None:
        inbox.append(m)

    client = RealtimeClient(rocketchat.url, rest=rest, user_id=uid, token=pat, on_message=collect)
    task = asyncio.create_task(client.run())
    try:
        await client.wait_connected(5)
        assert (client.user_id, client.username) == (uid, "instagram.bot")
        msg = rocketchat.post_message("alice", channel, "hi")
        await eventually(lambda: [m.id for m in inbox] == [msg["_id"]])
    finally:
        await client.stop()
        await task
        await rest.close()


async def test_revoked_token_without_password_is_fatal(rocketchat, people):
    """A rejected PAT with no password to fall back on raises AuthenticationFailed."""
    rest = RocketChatREST(rocketchat.url, user_id=people["bot"], token="not-a-token")

    async def ignore(_: IncomingMessage) -> None:
        return None

    client = RealtimeClient(
        rocketchat.url, rest=rest, user_id=people["bot"], token="not-a-token", on_message=ignore
    )
    try:
        with pytest.raises(AuthenticationFailed) as caught:
            await asyncio.wait_for(client.run(), timeout=5)
        assert "not-a-token" not in str(caught.value)
    finally:
        await rest.close()


async def test_server_down_at_start_is_retried_until_it_answers(rocketchat, people, channel,
                                                               start_client, eventually):
    """Refused handshakes are retried with backoff until the server accepts."""
    rocketchat.block_connections(True)
    running = start_client()
    await asyncio.sleep(0.3)
    assert not running.client.connected
    rocketchat.block_connections(False)
    await running.client.wait_connected(5)
    assert running.client.reconnects == 0


async def test_handler_failure_does_not_stop_delivery(rocketchat, channel, start_client,
                                                      eventually):
    """A callback that raises is logged; later messages are still delivered."""
    seen: list[str] = []

    async def flaky(message: IncomingMessage) -> None:
        seen.append(message.text)
        if message.text == "boom":
            raise RuntimeError("handler bug")

    running = start_client(on_message=flaky)
    await running.client.wait_connected(5)
    rocketchat.post_message("alice", channel, "boom")
    rocketchat.post_message("alice", channel, "still alive")
    await eventually(lambda: seen == ["boom", "still alive"])
    assert running.client.connected


async def test_stop_ends_run_and_wait_connected_times_out(rocketchat, people, start_client):
    """stop() makes run() return; wait_connected on a blocked server raises TimeoutError."""
    rocketchat.block_connections(True)
    running = start_client()
    with pytest.raises(TimeoutError):
        await running.client.wait_connected(0.2)
    await running.client.stop()
    await asyncio.wait_for(running.task, timeout=2)
    assert not running.client.connected


async def test_password_is_not_sent_after_first_login(rocketchat, channel, start_client,
                                                      eventually):
    """Reconnects resume with the session token instead of sending the password again."""
    running = start_client()
    await running.client.wait_connected(5)
    rocketchat.drop_all_sockets()
    await eventually(lambda: running.client.reconnects == 1 and running.client.connected)
    assert rocketchat.call_counts()["ddp:login"] == 2
    assert BOT_PASSWORD  # the password login happened once; the second was a resume


async def test_catch_up_filters_like_the_live_stream(rocketchat, channel, start_client,
                                                     eventually, caplog):
    """While down: a DM arrives (delivered, type 'd'); own, system and edits of seen
    messages are not delivered by the catch-up either."""
    caplog.set_level(logging.INFO, logger="bot.realtime")
    running = start_client()
    client = running.client
    await client.wait_connected(5)
    seen = rocketchat.post_message("alice", channel, "seen live")
    await eventually(lambda: seen["_id"] in running.inbox.ids)

    rocketchat.block_connections(True)
    rocketchat.drop_all_sockets()
    await eventually(lambda: not client.connected)
    dm = rocketchat.send_dm("boss", "instagram.bot", "instagram help")
    own = rocketchat.post_message("instagram.bot", channel, "bot talking")
    system = rocketchat.post_message("alice", channel, "", t="uj")
    rocketchat.edit_message(seen["_id"], "seen live, edited while away")
    rocketchat.block_connections(False)

    await eventually(lambda: dm["_id"] in running.inbox.ids)
    await eventually(lambda: "catch-up since" in caplog.text)
    await asyncio.sleep(0.1)
    assert [(m.id, m.room_type) for m in running.inbox.messages] == [
        (seen["_id"], "c"), (dm["_id"], "d")
    ]
    assert own["_id"] not in running.inbox.ids and system["_id"] not in running.inbox.ids
    assert f"caught up message {dm['_id']}" in caplog.text
