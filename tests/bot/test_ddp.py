"""Sans-I/O DDP frames: building, parsing, EJSON dates, password digest, URLs."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta, timezone

import pytest

from bot.rocketchat import ddp


def test_connect_frame_offers_version_1():
    """The first frame announces DDP version 1 and supports only it."""
    assert ddp.connect_frame() == {"msg": "connect", "version": "1", "support": ["1"]}


@pytest.mark.parametrize(
    ("ping_id", "expected"),
    [(None, {"msg": "pong"}), ("k1", {"msg": "pong", "id": "k1"})],
)
def test_pong_echoes_ping_id(ping_id, expected):
    """A pong carries the ping's id only when the ping had one."""
    assert ddp.pong_frame(ping_id) == expected


def test_password_digest_is_lowercase_sha256_hex():
    """The password digest is the lowercase hex SHA-256 of the UTF-8 password."""
    assert ddp.password_digest("pässword") == hashlib.sha256("pässword".encode()).hexdigest()
    assert ddp.password_digest("x") == ddp.password_digest("x").lower()


def test_password_login_never_carries_plain_password():
    """Password login params hold the digest, never the password itself."""
    params = ddp.login_password_params("mybot", "s3cret-pw")
    text = ddp.encode(ddp.method_frame("1", "login", params))
    assert "s3cret-pw" not in text
    assert params == [
        {
            "user": {"username": "mybot"},
            "password": {"digest": ddp.password_digest("s3cret-pw"), "algorithm": "sha-256"},
        }
    ]


def test_password_login_with_email_uses_email_selector():
    """A user value containing @ is sent as an e-mail address."""
    assert ddp.login_password_params("bot@example.org", "x")[0]["user"] == {
        "email": "bot@example.org"
    }


def test_resume_login_params():
    """Token login sends the token as ``resume``."""
    assert ddp.login_resume_params("tok") == [{"resume": "tok"}]


def test_my_messages_subscription_frame():
    """The message subscription asks for __my_messages__ without collection mode."""
    assert ddp.my_messages_sub("s1") == {
        "msg": "sub",
        "id": "s1",
        "name": "stream-room-messages",
        "params": ["__my_messages__", False],
    }


def test_encode_turns_datetimes_into_ejson():
    """Datetimes inside params are serialised as {"$date": ms}."""
    when = datetime(2025, 1, 1, tzinfo=UTC)
    frame = json.loads(ddp.encode(ddp.method_frame("3", "x", [when])))
    assert frame["params"] == [{"$date": 1735689600000}]


@pytest.mark.parametrize(
    "value",
    [
        {"$date": 1735689600000},
        1735689600000,
        "2025-01-01T00:00:00.000Z",
        "2025-01-01T00:00:00Z",
        "2025-01-01T01:00:00+01:00",
        "2025-01-01T00:00:00",
    ],
)
def test_parse_date_accepts_ejson_iso_and_ms(value):
    """EJSON, epoch ms and ISO strings (with or without offset) parse to the same UTC instant."""
    assert ddp.parse_date(value) == datetime(2025, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize("value", [None, "yesterday", {"date": 1}, True, [], {"$date": "x"}])
def test_parse_date_returns_none_for_garbage(value):
    """Malformed dates give None instead of raising."""
    assert ddp.parse_date(value) is None


def test_ejson_date_roundtrip_keeps_milliseconds():
    """to_ejson_date/parse_date round-trip at millisecond precision, naive taken as UTC."""
    when = datetime(2025, 3, 4, 5, 6, 7, 891000, tzinfo=timezone(timedelta(hours=2)))
    assert ddp.parse_date(ddp.to_ejson_date(when)) == when
    naive = datetime(2025, 3, 4, 5, 6, 7)
    assert ddp.parse_date(ddp.to_ejson_date(naive)) == naive.replace(tzinfo=UTC)


def test_iso_date_is_utc_z_with_milliseconds():
    """REST dates are ISO-8601 UTC with milliseconds and Z (no '+' to URL-encode)."""
    when = datetime(2025, 1, 1, 1, 2, 3, 456789, tzinfo=timezone(timedelta(hours=1)))
    assert ddp.iso_date(when) == "2025-01-01T00:02:03.456Z"


@pytest.mark.parametrize(
    ("http", "ws"),
    [
        ("http://localhost:3000", "ws://localhost:3000/websocket"),
        ("https://chat.example.org/", "wss://chat.example.org/websocket"),
        ("https://example.org/chat", "wss://example.org/chat/websocket"),
        ("https://example.org/chat/", "wss://example.org/chat/websocket"),
        ("ws://127.0.0.1:1234/websocket", "ws://127.0.0.1:1234/websocket"),
    ],
)
def test_websocket_url_keeps_path_prefix(http, ws):
    """The realtime URL swaps the scheme and appends /websocket after any path prefix."""
    assert ddp.websocket_url(http) == ws


@pytest.mark.parametrize("bad", ["localhost:3000", "ftp://x", "http://"])
def test_websocket_url_rejects_non_http(bad):
    """A URL without an http(s) scheme and host is a configuration error."""
    with pytest.raises(ValueError):
        ddp.websocket_url(bad)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"server_id":"0"}', ddp.Greeting()),
        ('{"msg":"server_id","server_id":"0"}', ddp.Greeting()),
        ('{"msg":"connected","session":"abc"}', ddp.Connected(session="abc")),
        ('{"msg":"failed","version":"1"}', ddp.Failed(version="1")),
        ('{"msg":"ping"}', ddp.Ping(id=None)),
        ('{"msg":"ping","id":"7"}', ddp.Ping(id="7")),
        ('{"msg":"pong","id":"k1"}', ddp.Pong(id="k1")),
        ('{"msg":"updated","methods":["1"]}', ddp.Updated(methods=["1"])),
        ('{"msg":"ready","subs":["s1"]}', ddp.Ready(subs=["s1"])),
        ('{"msg":"removed","collection":"c","id":"x"}', ddp.Removed(collection="c", id="x")),
    ],
)
def test_parse_simple_frames(text, expected):
    """Each server frame kind parses into its own dataclass."""
    assert ddp.parse(text) == expected


def test_parse_result_success_and_error():
    """A result carries either the value or a MethodError with code and reason."""
    ok = ddp.parse('{"msg":"result","id":"1","result":{"id":"u1","token":"t"}}')
    assert ok == ddp.Result(id="1", result={"id": "u1", "token": "t"}, error=None)
    bad = ddp.parse(
        '{"msg":"result","id":"2","error":{"error":403,"reason":"User not found",'
        '"errorType":"Meteor.Error"}}'
    )
    assert isinstance(bad, ddp.Result)
    assert bad.error is not None
    assert (bad.error.error, bad.error.reason) == (403, "User not found")


def test_parse_nosub_with_error():
    """nosub exposes the subscription id and the error."""
    frame = ddp.parse('{"msg":"nosub","id":"s1","error":{"error":"not-allowed"}}')
    assert isinstance(frame, ddp.NoSub)
    assert frame.id == "s1"
    assert frame.error is not None and frame.error.error == "not-allowed"


@pytest.mark.parametrize("text", ["not json", "[1,2]", '"x"', b"\xff\xfe"])
def test_parse_rejects_non_object_frames(text):
    """Non-JSON or non-object payloads raise ProtocolError."""
    with pytest.raises(ddp.ProtocolError):
        ddp.parse(text)


def test_unknown_frame_kind_is_kept():
    """An unknown msg kind parses to Unknown with the raw dict, not an error."""
    assert ddp.parse('{"msg":"weird","x":1}') == ddp.Unknown(raw={"msg": "weird", "x": 1})


def _changed(event: str, args: list) -> str:
    return json.dumps(
        {
            "msg": "changed",
            "collection": "stream-room-messages",
            "id": "id",
            "fields": {"eventName": event, "args": args},
        }
    )


def test_stream_message_extracts_message_and_meta():
    """A __my_messages__ event yields the message and the roomParticipant meta."""
    msg = {"_id": "m1", "rid": "GENERAL", "msg": "hi", "ts": {"$date": 1}}
    meta = {"roomParticipant": True, "roomType": "c", "roomName": "general"}
    assert ddp.stream_message(ddp.parse(_changed("__my_messages__", [msg, meta]))) == (msg, meta)


def test_stream_message_without_meta_gives_empty_meta():
    """A message without the meta argument still parses, with empty meta."""
    msg = {"_id": "m1"}
    assert ddp.stream_message(ddp.parse(_changed("__my_messages__", [msg]))) == (msg, {})


@pytest.mark.parametrize(
    "text",
    [
        _changed("GENERAL", [{"_id": "m1"}]),
        _changed("__my_messages__", []),
        _changed("__my_messages__", ["x"]),
        '{"msg":"changed","collection":"stream-notify-user","id":"id",'
        '"fields":{"eventName":"__my_messages__","args":[{"_id":"m"}]}}',
        '{"msg":"ping"}',
    ],
)
def test_stream_message_ignores_other_events(text):
    """Per-room events, other collections, malformed args and non-changed frames give None."""
    assert ddp.stream_message(ddp.parse(text)) is None
