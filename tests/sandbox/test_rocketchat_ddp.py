"""The sandbox Rocket.Chat's realtime API, driven with raw DDP frames over websockets."""

from __future__ import annotations

import asyncio

import pytest
import websockets

from sandbox.rocketchat import SandboxRocketChat
from tests.sandbox.rc_client import RawDDP


async def test_greeting_has_no_msg_and_connect_answers_connected(rc: SandboxRocketChat) -> None:
    """The first frame is a msg-less greeting; connect gets connected with a session id."""
    ddp = await RawDDP.open(rc.url, connect=False)
    assert ddp.greeting == {"server_id": "0"}
    await ddp.send({"msg": "connect", "version": "1", "support": ["1"]})
    frame = await ddp.wait_for(lambda f: "msg" in f)
    assert frame["msg"] == "connected" and frame["session"]
    await ddp.close()


async def test_frames_before_connect_are_refused(rc: SandboxRocketChat) -> None:
    """Anything before connect gets "Must connect first"."""
    ddp = await RawDDP.open(rc.url, connect=False)
    await ddp.send({"msg": "method", "id": "1", "method": "getUserRoles", "params": []})
    frame = await ddp.wait_for(lambda f: f.get("msg") == "error")
    assert frame["reason"] == "Must connect first"
    await ddp.close()


async def test_unsupported_version_fails_and_closes(rc: SandboxRocketChat) -> None:
    """A version the server does not speak gets failed(version) and the socket closes."""
    ddp = await RawDDP.open(rc.url, connect=False)
    await ddp.send({"msg": "connect", "version": "2", "support": ["2"]})
    frame = await ddp.wait_for(lambda f: "msg" in f)
    assert frame == {"msg": "failed", "version": "1"}
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(ddp.ws.recv(), 2)


async def test_client_ping_gets_pong_with_same_id(rc: SandboxRocketChat) -> None:
    """A client ping is answered by a pong echoing its id."""
    ddp = await RawDDP.open(rc.url)
    await ddp.send({"msg": "ping", "id": "k1"})
    assert await ddp.wait_for(lambda f: f.get("msg") == "pong") == {"msg": "pong", "id": "k1"}
    await ddp.close()


async def test_silent_client_is_pinged_then_closed(rc: SandboxRocketChat) -> None:
    """After heartbeat_interval idle the server pings; no answer within the timeout closes."""
    rc.heartbeat_interval, rc.heartbeat_timeout = 0.2, 0.2
    ddp = await RawDDP.open(rc.url)
    ddp.auto_pong = False
    assert await ddp.wait_for(lambda f: f.get("msg") == "ping", 2) == {"msg": "ping"}
    with pytest.raises(websockets.ConnectionClosed):
        await ddp.wait_for(lambda f: False, 2)


async def test_login_by_digest_returns_token_and_expiry(rc: SandboxRocketChat, rc_people) -> None:
    """Password login with a SHA-256 digest returns id, token, EJSON tokenExpires, type."""
    ddp = await RawDDP.open(rc.url)
    frame = await ddp.login_password("mybot", "mybot")
    result = frame["result"]
    assert result["id"] == rc_people["bot"] and result["type"] == "password"
    assert isinstance(result["tokenExpires"]["$date"], int) and result["token"]
    assert (await ddp.wait_for(lambda f: f.get("msg") == "updated"))["methods"] == [frame["id"]]
    again = await RawDDP.open(rc.url)
    assert (await again.login_resume(result["token"]))["result"]["type"] == "resume"
    await ddp.close()
    await again.close()


async def test_wrong_password_is_403(rc: SandboxRocketChat, rc_people) -> None:
    """A wrong digest fails with a 403 Meteor.Error; an unknown user too."""
    ddp = await RawDDP.open(rc.url)
    err = (await ddp.login_password("mybot", "nope"))["error"]
    assert err["error"] == 403 and err["reason"] == "Incorrect password"
    err = (await ddp.login_password("ghost", "x"))["error"]
    assert err["error"] == 403 and err["reason"] == "User not found"
    await ddp.close()


async def test_login_by_personal_access_token(rc: SandboxRocketChat, rc_people) -> None:
    """A PAT works as a resume token; a bogus token is refused with 403."""
    pat = rc.create_personal_access_token("mybot")
    ddp = await RawDDP.open(rc.url)
    assert (await ddp.login_resume(pat))["result"]["id"] == rc_people["bot"]
    bad = await RawDDP.open(rc.url)
    assert (await bad.login_resume("forged"))["error"]["error"] == 403
    await ddp.close()
    await bad.close()


async def test_unknown_method_is_404(rc: SandboxRocketChat) -> None:
    """An unknown method fails with error 404."""
    ddp = await RawDDP.open(rc.url)
    err = (await ddp.call("no.such.method"))["error"]
    assert err["error"] == 404 and err["reason"] == "Method 'no.such.method' not found"
    await ddp.close()


async def test_my_messages_carry_room_participant_meta(rc: SandboxRocketChat, rc_people) -> None:
    """__my_messages__ delivers DMs and joined rooms with roomParticipant true, and public
    channels the user never joined with roomParticipant false."""
    lobby = rc.create_channel("lobby", members=["alice"])
    ddp = await RawDDP.open(rc.url)
    await ddp.login_password("mybot", "mybot")
    assert (await ddp.sub("stream-room-messages", "__my_messages__", False))["msg"] == "ready"

    sent = rc.send_dm("alice", "mybot", "hello @mybot")
    frame = await ddp.next_message()
    msg, meta = frame["fields"]["args"]
    assert frame["id"] == "id" and msg["_id"] == sent["_id"]
    assert msg["u"]["username"] == "alice" and isinstance(msg["ts"]["$date"], int)
    assert msg["mentions"][0]["username"] == "mybot"
    assert meta == {"roomParticipant": True, "roomType": "d"}

    rc.post_message("alice", lobby, "public chatter")
    _, meta = (await ddp.next_message())["fields"]["args"]
    assert meta == {"roomParticipant": False, "roomType": "c", "roomName": "lobby"}
    await ddp.close()


async def test_private_room_of_others_is_not_delivered(rc: SandboxRocketChat, rc_people) -> None:
    """Messages of a private group the user is not in never reach it."""
    secret = rc.create_channel("secret", members=["alice", "boss"], private=True)
    ddp = await RawDDP.open(rc.url)
    await ddp.login_password("mybot", "mybot")
    await ddp.sub("stream-room-messages", "__my_messages__", False)
    rc.post_message("alice", secret, "psst")
    rc.send_dm("alice", "mybot", "marker")
    msg, _ = (await ddp.next_message())["fields"]["args"]
    assert msg["msg"] == "marker"
    await ddp.close()


async def test_per_room_subscription_has_no_meta(rc: SandboxRocketChat, rc_people) -> None:
    """A per-room subscription carries eventName <rid> and args [message] only."""
    room = rc.create_channel("ops", members=["alice", "mybot"])
    ddp = await RawDDP.open(rc.url)
    await ddp.login_password("mybot", "mybot")
    assert (await ddp.sub("stream-room-messages", room, False))["msg"] == "ready"
    rc.post_message("alice", room, "status?")
    frame = await ddp.next_message(event=room)
    assert len(frame["fields"]["args"]) == 1


async def test_notify_user_only_for_self(rc: SandboxRocketChat, rc_people) -> None:
    """stream-notify-user is readable only for the logged-in user's own id."""
    ddp = await RawDDP.open(rc.url)
    await ddp.login_password("mybot", "mybot")
    ok = await ddp.sub("stream-notify-user", f"{rc_people['bot']}/rooms-changed", False)
    assert ok["msg"] == "ready"
    refused = await ddp.sub("stream-notify-user", f"{rc_people['alice']}/rooms-changed", False)
    assert refused["msg"] == "nosub" and refused["error"]["error"] == "not-allowed"
    rc.send_dm("alice", "mybot", "hi")
    frame = await ddp.wait_for(lambda f: f.get("collection") == "stream-notify-user")
    assert frame["fields"]["args"][0] == "inserted"
    await ddp.close()


async def test_send_message_is_idempotent_on_id(rc: SandboxRocketChat, rc_people) -> None:
    """A retry with the same _id stores nothing new and returns an empty result."""
    ddp = await RawDDP.open(rc.url)
    await ddp.login_password("mybot", "mybot")
    room = (await ddp.call("createDirectMessage", "alice"))["result"]
    assert room["t"] == "d" and room["rid"] == room["_id"]
    msg = {"_id": "bot-7f3a9c2e11", "rid": room["rid"], "msg": "pong"}
    first = await ddp.call("sendMessage", msg)
    assert first["result"]["_id"] == "bot-7f3a9c2e11"
    second = await ddp.call("sendMessage", msg)
    assert "result" not in second and "error" not in second
    assert [m["_id"] for m in rc.dm_messages("mybot", "alice")] == ["bot-7f3a9c2e11"]
    await ddp.close()


async def test_send_message_swallows_size_error_but_not_not_allowed(
    rc: SandboxRocketChat, rc_people
) -> None:
    """Oversized text gives an empty result; a room without access raises error-not-allowed."""
    secret = rc.create_channel("secret", members=["alice"], private=True)
    ddp = await RawDDP.open(rc.url)
    await ddp.login_password("mybot", "mybot")
    big = await ddp.call("sendMessage", {"rid": "GENERAL", "msg": "x" * 5001})
    assert "result" not in big and "error" not in big
    denied = await ddp.call("sendMessage", {"rid": secret, "msg": "let me in"})
    assert denied["error"]["error"] == "error-not-allowed"
    await ddp.close()


async def test_edit_and_reaction_reemit_same_id(rc: SandboxRocketChat, rc_people) -> None:
    """Editing or reacting re-emits the same _id with editedAt or reactions, newer _updatedAt."""
    ddp = await RawDDP.open(rc.url)
    await ddp.login_password("mybot", "mybot")
    await ddp.sub("stream-room-messages", "__my_messages__", False)
    sent = rc.send_dm("alice", "mybot", "/instagram help")
    first, _ = (await ddp.next_message())["fields"]["args"]
    rc.edit_message(sent["_id"], "/instagram pages")
    edited, _ = (await ddp.next_message())["fields"]["args"]
    assert edited["_id"] == first["_id"] and edited["msg"] == "/instagram pages"
    assert "editedAt" in edited and edited["_updatedAt"]["$date"] >= first["_updatedAt"]["$date"]
    rc.react(sent["_id"], "alice", "thumbsup")
    reacted, _ = (await ddp.next_message())["fields"]["args"]
    assert reacted["_id"] == first["_id"] and reacted["reactions"] == {
        ":thumbsup:": {"usernames": ["alice"]}
    }
    await ddp.close()


async def test_get_user_roles_lists_public_roles_only(rc: SandboxRocketChat, rc_people) -> None:
    """getUserRoles returns users with public roles; bot/user roles are filtered out."""
    ddp = await RawDDP.open(rc.url)
    await ddp.login_password("mybot", "mybot")
    users = (await ddp.call("getUserRoles"))["result"]
    by_name = {u["username"]: u["roles"] for u in users}
    assert by_name == {"boss": ["admin"], "mybot": ["livechat-manager"]}
    await ddp.close()


async def test_duplicate_subscription_delivers_twice(rc: SandboxRocketChat, rc_people) -> None:
    """Stacked subscriptions each get the message, as on a real server (the bot must not stack)."""
    ddp = await RawDDP.open(rc.url)
    await ddp.login_password("mybot", "mybot")
    await ddp.sub("stream-room-messages", "__my_messages__", False)
    await ddp.sub("stream-room-messages", "__my_messages__", False)
    rc.send_dm("alice", "mybot", "once")
    await ddp.next_message()
    await ddp.next_message()
    unsub = await ddp.drain(0.1)
    assert not [f for f in unsub if f.get("collection") == "stream-room-messages"]
    await ddp.close()


async def test_drop_all_sockets_closes_clients(rc: SandboxRocketChat, rc_people) -> None:
    """drop_all_sockets aborts every socket; block_connections refuses new handshakes."""
    ddp = await RawDDP.open(rc.url)
    await ddp.login_password("mybot", "mybot")
    assert [c["username"] for c in rc.connected_clients()] == ["mybot"]
    assert rc.drop_all_sockets() == 1
    with pytest.raises(websockets.ConnectionClosed):
        await ddp.wait_for(lambda f: False, 2)
    rc.block_connections(True)
    with pytest.raises(websockets.InvalidStatus):
        await RawDDP.open(rc.url)
    rc.block_connections(False)
    again = await RawDDP.open(rc.url)
    await again.close()
