"""Parsing Omnichannel webhook bodies into outbound work items (no I/O)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from bot.rocketchat.webhook import (
    parse_large_body,
    parse_visitor_token,
    parse_webhook,
    secret_valid,
)

BOT_ID = "BotUser000000001"
TOKEN = "instagram-100000000000001-6543210987654321"
KEY = "100000000000001:6543210987654321"


def _body(kind: str = "Message", messages: list[dict[str, Any]] | None = None,
          token: str = TOKEN, **extra: Any) -> dict[str, Any]:
    return {"_id": "room-1", "type": kind, "visitor": {"_id": "v-1", "token": token},
            "messages": messages or [], **extra}


def _agent(msg_id: str = "m-1", text: str = "hi", **extra: Any) -> dict[str, Any]:
    return {"_id": msg_id, "rid": "room-1", "msg": text, "agentId": "a-1",
            "ts": "2025-01-01T10:01:00.000Z", "u": {"_id": "a-1", "username": "smith"}, **extra}


@pytest.mark.parametrize(
    ("token", "expected"),
    [(TOKEN, ("100000000000001", "6543210987654321")),
     ("vis-4f9c", None), ("instagram-", None), ("instagram-123", None), (None, None)],
)
def test_visitor_token(token: str | None, expected: tuple[str, str] | None) -> None:
    """Only instagram-<pageId>-<igsid> tokens are ours."""
    assert parse_visitor_token(token) == expected


@pytest.mark.parametrize(
    ("header", "secret", "ok"),
    [("s3cret", "s3cret", True), ("S3cret", "s3cret", False), ("", "s3cret", False),
     (None, "s3cret", False), ("", "", False)],
)
def test_secret_check(header: str | None, secret: str, ok: bool) -> None:
    """The header must equal the configured secret; an empty secret never matches."""
    assert secret_valid(header, secret) is ok


def test_agent_message_becomes_one_item() -> None:
    """An agent's message is one agent_message item keyed by its Rocket.Chat _id."""
    parsed = parse_webhook(_body(messages=[_agent()]), bot_user_id=BOT_ID, now=5.0)
    [item] = parsed.items
    assert (item.item_id, item.conversation, item.kind) == ("rc-msg:m-1", KEY, "agent_message")
    assert item.payload["text"] == "hi" and item.payload["room_id"] == "room-1"
    assert item.order_ts == pytest.approx(1735725660.0)


@pytest.mark.parametrize(
    ("message", "reason"),
    [
        ({"_id": "m-2", "msg": "from visitor", "token": "x"}, "visitor_message"),
        (_agent(t="livechat-close"), "system_message"),
        (_agent(closingMessage=True), "system_message"),
        (_agent(agentId=BOT_ID, u={"_id": BOT_ID}), "own_note"),
    ],
)
def test_non_agent_messages_are_skipped(message: dict[str, Any], reason: str) -> None:
    """Visitor, system and our own note messages are not sent to Instagram."""
    parsed = parse_webhook(_body(messages=[message]), bot_user_id=BOT_ID, now=5.0)
    assert parsed.items == [] and parsed.dropped == [reason]


def test_other_rooms_and_types_are_ignored() -> None:
    """A web-widget room or an event type we do not use yields nothing."""
    assert parse_webhook(_body(token="vis-1", messages=[_agent()]), bot_user_id=BOT_ID,
                         now=1).dropped == ["not_ours"]
    assert parse_webhook(_body(kind="LivechatSessionTaken"), bot_user_id=BOT_ID,
                         now=1).dropped == ["unused_type"]


def test_file_message_carries_upload_url_and_caption() -> None:
    """fileUpload.publicFilePath and the caption (msg or description) go into the item."""
    message = _agent(msg="", file={"_id": "f", "name": "p.png", "type": "image/png"},
                     attachments=[{"description": "our catalogue"}],
                     fileUpload={"publicFilePath": "https://rc/file-upload/f/p.png?token=j",
                                 "type": "image/png", "size": 10})
    [item] = parse_webhook(_body(messages=[message]), bot_user_id=BOT_ID, now=1).items
    assert item.payload["files"] == [
        {"url": "https://rc/file-upload/f/p.png?token=j", "type": "image/png", "name": "p.png",
         "size": 10}
    ]
    assert item.payload["text"] == "our catalogue"


def test_close_is_one_finished_item_per_room() -> None:
    """LivechatSession with closedAt is a finished item keyed by the room id."""
    body = _body(kind="LivechatSession", messages=[_agent()],
                 closedAt="2025-01-01T11:00:00.000Z")
    parsed = parse_webhook(body, bot_user_id=BOT_ID, now=1)
    [item] = parsed.items
    assert parsed.close and (item.item_id, item.kind) == ("rc-close:room-1", "finished")


@pytest.mark.parametrize("text", [
    '{"type": "Message", "messages": [{"_id": "m", "msg": "hi"}], "x": [1, {"y": null}]}',
    '{"messages": [{"_id": "m"}], "type": "LivechatSession"}',
    ' { } ',
    '[1, 2]',
])
def test_large_body_parser_keeps_everything_it_may_need(text: str) -> None:
    """Big bodies parse like json.loads unless a close's messages (unused) come after type."""
    assert parse_large_body(text.encode()) == json.loads(text)


def test_large_body_parser_drops_only_a_close_events_messages() -> None:
    """A LivechatSession's messages are validated but not kept; the rest is intact."""
    text = '{"type": "LivechatSession", "_id": "r", "messages": [{"a": 1}, 2], "closedAt": "t"}'
    assert parse_large_body(text.encode()) == {
        "type": "LivechatSession", "_id": "r", "messages": [], "closedAt": "t"}


@pytest.mark.parametrize("text", [
    '{"a": 1,}', '{"type": "LivechatSession", "messages": [1,]}', '{"a": 1} x', '{"a" 1}',
    '{"a": 1', '{"type": "LivechatSession", "messages": [1 2]}',
])
def test_large_body_parser_refuses_invalid_json(text: str) -> None:
    """Invalid JSON is a ValueError (the receiver answers 400), as with json.loads."""
    with pytest.raises(ValueError):
        parse_large_body(text.encode())
