"""Instagram webhook bodies → work items, and work items → agent texts (pure functions)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from bot import messages
from bot.instagram import events as ev

IGID = "17841400000000001"
PAGE = "100000000000001"
USER = "6543210987654321"
PAGES = {IGID: PAGE}


def inbound(body: dict, ts: int = 1735689599870, sender: str = USER, **extra) -> dict:
    """One messaging item from ``sender`` to the business account."""
    return {"sender": {"id": sender}, "recipient": {"id": IGID}, "timestamp": ts, **body, **extra}


def webhook(*items: dict, entry_id: str = IGID, source: str = "messaging") -> dict:
    return {"object": "instagram", "entry": [{"id": entry_id, "time": 1, source: list(items)}]}


def test_text_message_becomes_one_work_item():
    """A text message yields one "message" item keyed by its mid, in its conversation."""
    body = webhook(inbound({"message": {"mid": "m1", "text": "Hi"}}))
    parsed = ev.parse_webhook(body, PAGES)
    assert [(i.kind, i.item_id, i.conversation) for i in parsed.items] == [
        ("message", "ig:m1", f"{PAGE}:{USER}")
    ]
    item = parsed.items[0]
    assert item.queue == "inbound"
    assert item.order_ts == pytest.approx(1735689599.870)
    assert item.payload["page_id"] == PAGE and item.payload["igsid"] == USER
    assert item.payload["event"]["message"]["text"] == "Hi"


@pytest.mark.parametrize(
    ("body", "kind", "key_prefix"),
    [
        ({"message": {"mid": "m1", "text": "x"}}, "message", "ig:m1"),
        ({"message": {"mid": "m1", "is_deleted": True}}, "unsend", "ig-unsend:m1"),
        ({"reaction": {"mid": "m1", "action": "react", "emoji": "❤️"}}, "reaction",
         "ig-reaction:"),
        ({"postback": {"mid": "p1", "title": "Go"}}, "postback", "ig-postback:p1"),
        ({"postback": {"title": "Go", "payload": "GO"}}, "postback", "ig-postback:"),
        ({"referral": {"ref": "r", "source": "https://ig.me/m/x?ref=r"}}, "referral",
         "ig-referral:"),
    ],
)
def test_each_item_type_is_decided_per_item(body, kind, key_prefix):
    """The kind and dedupe key come from each item's own fields."""
    [item] = ev.parse_webhook(webhook(inbound(body)), PAGES).items
    assert item.kind == kind
    assert item.item_id.startswith(key_prefix)


@pytest.mark.parametrize(("value", "kind"), [
    (True, "unsend"), ("true", "unsend"), ("TRUE", "unsend"), ("false", "message"),
    (False, "message"),
])
def test_is_deleted_string_true_is_an_unsend_and_false_is_not(value, kind):
    """Meta's own example sends "is_deleted":"true"; the string "false" is no unsend."""
    [item] = ev.parse_webhook(
        webhook(inbound({"message": {"mid": "m1", "text": "x", "is_deleted": value}})), PAGES
    ).items
    assert item.kind == kind


def test_seconds_timestamp_of_dashboard_test_is_not_read_as_1970():
    """Dashboard tests send seconds ("1527459824"): read as seconds, not milliseconds."""
    body = webhook(inbound({"message": {"mid": "m1", "text": "x"}}))
    body["entry"][0]["messaging"][0]["timestamp"] = "1527459824"
    [item] = ev.parse_webhook(body, PAGES).items
    assert item.order_ts == pytest.approx(1527459824.0)


def test_mixed_batch_decides_type_per_item_not_per_batch():
    """A read receipt first does not turn the following messages into reads (Chatwoot bug)."""
    body = webhook(
        inbound({"read": {"mid": "m0"}}, ts=1),
        inbound({"message": {"mid": "m1", "text": "a"}}, ts=2),
        inbound({"reaction": {"mid": "m1", "action": "react", "emoji": "👍"}}, ts=3),
    )
    parsed = ev.parse_webhook(body, PAGES)
    assert [i.kind for i in parsed.items] == ["message", "reaction"]
    assert ("read", IGID) in parsed.dropped


def test_reaction_keys_differ_by_action_and_emoji():
    """React, unreact and a different emoji on the same mid are distinct events."""
    reacts = [
        {"reaction": {"mid": "m1", "action": "react", "emoji": "❤️"}},
        {"reaction": {"mid": "m1", "action": "unreact"}},
        {"reaction": {"mid": "m1", "action": "react", "emoji": "😂"}},
    ]
    items = ev.parse_webhook(webhook(*(inbound(r) for r in reacts)), PAGES).items
    assert len({i.item_id for i in items}) == 3


def test_echo_routes_by_sender_and_uses_its_own_lane():
    """An echo's account is the sender; the visitor is the recipient."""
    echo = {"sender": {"id": IGID}, "recipient": {"id": USER}, "timestamp": 5,
            "message": {"mid": "e1", "text": "hello", "is_echo": True}}
    [item] = ev.parse_webhook(webhook(echo), PAGES).items
    assert item.kind == "echo" and item.item_id == "ig-echo:e1"
    assert item.payload["igsid"] == USER
    assert item.conversation == f"{PAGE}:{USER}{ev.ECHO_LANE}"


def test_standby_items_are_relayed_like_messaging():
    """Items under standby[] (another app owns the thread) are still relayed."""
    body = webhook(inbound({"message": {"mid": "s1", "text": "x"}}), source="standby")
    [item] = ev.parse_webhook(body, PAGES).items
    assert item.item_id == "ig:s1" and item.payload["source"] == "standby"


def test_unknown_account_is_dropped():
    """Events for an account that is not connected (or unsubscribed) yield no items."""
    body = webhook(inbound({"message": {"mid": "m1", "text": "x"}}))
    parsed = ev.parse_webhook(body, {})
    assert parsed.items == [] and parsed.dropped == [("unknown_account", IGID)]


@pytest.mark.parametrize(
    "bad",
    [
        {"recipient": {"id": IGID}, "timestamp": 1, "message": {"mid": "x"}},  # no sender
        {"sender": {"id": USER}, "recipient": {"id": IGID}, "message": {"mid": "x"}},  # no ts
        {"sender": {"id": USER}, "recipient": {"id": IGID}, "timestamp": 1, "message": {}},
        {"sender": "nope", "recipient": {"id": IGID}, "timestamp": 1},
        {"sender": {"id": USER}, "recipient": {"id": IGID}, "timestamp": 1, "reaction": {}},
        {"sender": {"id": USER}, "recipient": {"id": IGID}, "timestamp": "x",
         "message": {"mid": "x"}},
    ],
)
def test_malformed_item_is_skipped_not_raised(bad):
    """One malformed item is skipped; the good item next to it is kept."""
    good = inbound({"message": {"mid": "ok", "text": "x"}})
    parsed = ev.parse_webhook(webhook(bad, good), PAGES)
    assert [i.item_id for i in parsed.items] == ["ig:ok"]
    assert parsed.dropped and parsed.dropped[0][0] == "malformed"


@pytest.mark.parametrize(
    "body",
    [
        {"object": "instagram"},
        {"object": "instagram", "entry": "x"},
        {"object": "instagram", "entry": [1, None, {"id": IGID, "messaging": "x"}]},
        {"object": "instagram", "entry": [{"id": IGID, "messaging": [1, "a", None]}]},
    ],
)
def test_odd_bodies_yield_nothing_without_raising(body):
    """Odd but valid JSON never raises (the receiver must not answer 5xx)."""
    assert ev.parse_webhook(body, PAGES).items == []


def test_batch_is_sorted_by_timestamp_and_duplicates_collapse():
    """Items come out in timestamp order; the same mid twice in a batch counts once."""
    body = {"object": "instagram", "entry": [
        {"id": IGID, "messaging": [inbound({"message": {"mid": "b", "text": "2"}}, ts=20)]},
        {"id": IGID, "messaging": [
            inbound({"message": {"mid": "a", "text": "1"}}, ts=10),
            inbound({"message": {"mid": "b", "text": "2"}}, ts=20),
        ]},
    ]}
    parsed = ev.parse_webhook(body, PAGES)
    assert [i.item_id for i in parsed.items] == ["ig:a", "ig:b"]


def test_dashboard_test_payload_in_changes_shape_is_parsed():
    """A changes[]-shaped test event carries a normal messaging item."""
    value = inbound({"message": {"mid": "t1", "text": "test"}})
    body = {"object": "instagram", "entry": [
        {"id": IGID, "time": 1, "changes": [{"field": "messages", "value": value}]}]}
    [item] = ev.parse_webhook(body, PAGES).items
    assert item.item_id == "ig:t1"


def test_account_ids_leave_out_visitors():
    """Only business-side ids are looked up: entry ids, recipients, echo senders."""
    echo = {"sender": {"id": IGID}, "recipient": {"id": USER}, "timestamp": 5,
            "message": {"mid": "e1", "is_echo": True}}
    body = webhook(inbound({"message": {"mid": "m", "text": "x"}}), echo)
    assert ev.account_ids(body) == {IGID}


def test_rc_message_id_is_deterministic_and_not_truncated():
    """The Rocket.Chat _id depends on the whole item id, however long."""
    long_mid = "aWdfZAG1fa" * 40
    a = ev.rc_message_id("ig:" + long_mid)
    assert a == ev.rc_message_id("ig:" + long_mid)
    assert a != ev.rc_message_id("ig:" + long_mid[:-1] + "x")
    assert a.startswith("ig-") and len(a) == 3 + 64


# --- agent texts ----------------------------------------------------------------------

CDN = "https://lookaside.fbsbx.com/ig_messaging_cdn/?asset_id=1&signature=abc"


@pytest.mark.parametrize(
    ("kind", "event", "target", "expected"),
    [
        ("message", {"message": {"mid": "m", "text": "Hi there"}}, "", "Hi there"),
        ("message", {"message": {"mid": "m", "attachments": [
            {"type": "image", "payload": {"url": CDN}}]}}, "", f"📎 [Image]({CDN})"),
        ("message", {"message": {"mid": "m", "attachments": [
            {"type": "video", "payload": {"url": CDN}},
            {"type": "audio", "payload": {"url": CDN}},
            {"type": "file", "payload": {"url": CDN}}]}}, "",
         f"📎 [Video]({CDN})\n📎 [Voice message]({CDN})\n📎 [File]({CDN})"),
        ("message", {"message": {"mid": "m", "attachments": [
            {"type": "share", "payload": {"url": CDN}}]}}, "", f"📎 [Shared post]({CDN})"),
        ("message", {"message": {"mid": "m", "attachments": [
            {"type": "ig_reel", "payload": {"url": CDN, "title": "Reel caption"}}]}}, "",
         f"📎 [Reel]({CDN}) — Reel caption"),
        ("message", {"message": {"mid": "m", "attachments": [
            {"type": "reel", "payload": {"url": CDN}}]}}, "", f"📎 [Reel]({CDN})"),
        ("message", {"message": {"mid": "m", "attachments": [
            {"type": "story_mention", "payload": {"url": CDN}}]}}, "",
         f"📣 Mentioned you in their [story]({CDN})"),
        ("message", {"message": {"mid": "m", "text": "Love this!",
                                 "reply_to": {"story": {"url": CDN, "id": "1"}}}}, "",
         f"↩️ Replied to your [story]({CDN}):\nLove this!"),
        ("message", {"message": {"mid": "m", "text": "yes", "reply_to": {"mid": "o"}}},
         "[an earlier message](http://rc/live/r?msg=x)",
         "↩️ In reply to [an earlier message](http://rc/live/r?msg=x):\nyes"),
        ("message", {"message": {"mid": "m", "is_unsupported": True}}, "",
         messages.IN_UNSUPPORTED),
        ("message", {"message": {"mid": "m", "text": "Sizes",
                                 "quick_reply": {"payload": "SIZE_CHART"}}}, "",
         "Sizes\n(quick reply `SIZE_CHART`)"),
        ("message", {"message": {"mid": "m", "text": "Hi", "referral": {
            "ref": "spring", "ad_id": "1202", "source": "ADS",
            "ads_context_data": {"ad_title": "Spring sale"}}}}, "",
         "ℹ️ Came from the ad “Spring sale” (ad id 1202) (ref `spring`)\nHi"),
        ("referral", {"referral": {"ref": "from_website", "source": "https://ig.me/m/x",
                                   "type": "OPEN_THREAD"}}, "",
         "ℹ️ Opened the chat from an ig.me link (ref `from_website`)"),
        ("reaction", {"reaction": {"mid": "m", "action": "react", "reaction": "love",
                                   "emoji": "❤️"}}, "a message sent from Rocket.Chat",
         "Reacted ❤️ to a message sent from Rocket.Chat"),
        ("reaction", {"reaction": {"mid": "m", "action": "react", "reaction": "like"}}, "",
         "Reacted 👍 to an earlier message"),
        ("reaction", {"reaction": {"mid": "m", "action": "unreact"}}, "",
         "Removed their reaction from an earlier message"),
        ("message", {"message": {"mid": "m", "attachments": [
            {"type": "share", "payload": {"url": CDN}},
            {"type": "ig_post", "payload": {"url": CDN, "title": "New drop",
                                            "ig_post_media_id": "1"}}]}}, "",
         f"📎 [Instagram post]({CDN}) — New drop"),
        ("message", {"message": {"mid": "m", "attachments": [
            {"type": "ig_story", "payload": {"story_media_url": CDN}}]}}, "",
         f"📎 [Story]({CDN})"),
        ("message", {"message": {"mid": "m", "attachments": [
            {"type": "unsupported_type", "payload": {"url": CDN}}]}}, "",
         messages.IN_UNSUPPORTED_LINK.format(url=CDN)),
        ("referral", {"referral": {"product": {"id": "7801"}, "source": "SHOP",
                                   "type": "OPEN_THREAD"}}, "",
         messages.IN_PRODUCT_REFERRAL.format(product_id="7801")),
        ("echo", {"message": {"mid": "e", "text": "Auto-reply", "is_echo": True,
                              "app_id": 1517776481860111}}, "",
         messages.IN_ECHO_OTHER_APP.format(app_id=1517776481860111, text="Auto-reply")),
        ("postback", {"postback": {"mid": "p", "title": "Track my order",
                                   "payload": "TRACK"}}, "",
         "Tapped the button “Track my order”"),
        ("postback", {"postback": {"payload": "TRACK"}}, "", "Tapped the button “TRACK”"),
        ("echo", {"message": {"mid": "e", "text": "On our way", "is_echo": True}}, "",
         messages.IN_ECHO.format(text="On our way")),
        ("message", {"message": {"mid": "m"}}, "", messages.IN_EMPTY),
    ],
)
def test_agent_text(kind, event, target, expected):
    """Every event kind reads as a sentence an agent understands."""
    assert ev.agent_text(kind, event, target) == expected


def test_attachment_without_url_says_open_instagram():
    """A media attachment without a CDN URL is still announced, never silently empty."""
    text = ev.agent_text("message", {"message": {"mid": "m", "attachments": [
        {"type": "image", "payload": {}}]}})
    assert "open Instagram" in text


def test_link_with_parenthesis_does_not_break_markdown():
    """A ')' in a CDN URL is escaped so the markdown link stays whole."""
    text = ev.agent_text("message", {"message": {"mid": "m", "attachments": [
        {"type": "file", "payload": {"url": "https://x/a(1).pdf"}}]}})
    assert text == "📎 [File](https://x/a%281%29.pdf)"


@pytest.mark.parametrize(
    ("kind", "event", "mid"),
    [
        ("reaction", {"reaction": {"mid": "t", "action": "react"}}, "t"),
        ("unsend", {"message": {"mid": "t", "is_deleted": True}}, "t"),
        ("message", {"message": {"mid": "m", "reply_to": {"mid": "t"}}}, "t"),
        ("message", {"message": {"mid": "m", "reply_to": {"story": {"url": "u"}}}}, None),
        ("message", {"message": {"mid": "m", "text": "x"}}, None),
    ],
)
def test_target_mid(kind, event, mid):
    """Reactions, unsends and replies point at another message's mid."""
    assert ev.target_mid(kind, event) == mid


@pytest.mark.parametrize(
    ("profile", "name"),
    [
        ({"name": "Ana Souza", "username": "ana"}, "Ana Souza"),
        ({"name": "", "username": "ana.souza"}, "@ana.souza"),
        ({"name": None}, f"Instagram user {USER}"),
        (None, f"Instagram user {USER}"),
    ],
)
def test_visitor_name_falls_back(profile, name):
    """Name, else @username, else "Instagram user <igsid>"."""
    assert ev.visitor_name(profile, USER) == name


def test_visitor_token_cannot_be_derived_from_public_ids():
    """The token is ``instagram-`` + HMAC-SHA256 of ``<page>:<igsid>`` under the bridge's
    secret: another secret gives another token, and the ids do not appear in it."""
    token = ev.visitor_token(b"s" * 32, PAGE, USER)
    expected = hmac.new(b"s" * 32, f"{PAGE}:{USER}".encode(), hashlib.sha256).hexdigest()
    assert token == "instagram-" + expected
    assert token != ev.visitor_token(b"t" * 32, PAGE, USER)
    assert PAGE not in token and USER not in token and not ev.legacy_token(token)
    assert ev.legacy_token(f"instagram-{PAGE}-{USER}")
