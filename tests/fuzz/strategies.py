"""Hypothesis strategies: arbitrary JSON, and the documented webhook shapes with every
field sometimes replaced by a value of the wrong type."""

from __future__ import annotations

import time
from typing import Any

from hypothesis import strategies as st

#: Text that includes the awkward parts of Unicode: surrogate-free, but control
#: characters, RTL marks, combining marks, NUL, emoji, CR/LF.
odd_text = st.one_of(
    st.text(max_size=40),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
    st.sampled_from([
        "", " ", "\x00", "\r\n", "\u202e", "e\u0301", "👩‍👩‍👧", "\ufeff", "../../etc/passwd",
        "<script>alert(1)</script>", "[x](javascript:alert(1))", "%s%d{0}{name}", "\\",
        "a" * 3000, "ı", "ß", "İ", "\u2028", "NaN",
    ]),
)

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.floats(),  # NaN and ±Infinity too: Python's json reads and writes them
    odd_text,
)

json_values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(odd_text, children, max_size=5),
    ),
    max_leaves=12,
)


def maybe(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Usually ``valid``, sometimes any JSON value (a wrong type, or absurd content)."""
    return st.one_of(valid, valid, valid, json_values)


def obj(required: dict[str, Any], optional: dict[str, Any] | None = None) -> st.SearchStrategy:
    """A dict whose every field is possibly mutated; sometimes not a dict at all."""
    shaped = st.fixed_dictionaries(
        {k: maybe(v) for k, v in required.items()},
        optional={k: maybe(v) for k, v in (optional or {}).items()},
    )
    return maybe(shaped)


# --- Instagram (protocols/instagram.md §2) ---------------------------------------------

IGSIDS = st.sampled_from(["6543210987654321", "6543210987654322", "1", "0"])
mids = st.one_of(st.sampled_from(["m-1", "m-2", "m-3"]), st.text(min_size=1, max_size=30))
_NOW_MS = int(time.time() * 1000)
timestamps = st.one_of(
    # Recent ones relay; older than the replay window (a day) are dropped as replays.
    st.integers(min_value=_NOW_MS - 3_600_000, max_value=_NOW_MS),
    st.integers(min_value=1_600_000_000_000, max_value=1_900_000_000_000),
    st.sampled_from(["1735689599870", "１２３", "²", 1e400, -1, 0, 10**30]),
)
urls = st.one_of(st.sampled_from(["https://cdn.example/a.jpg", "", "javascript:alert(1)",
                                  "https://x/ (y)"]), odd_text)

attachment = obj(
    {"type": st.sampled_from(["image", "video", "audio", "file", "share", "story_mention",
                              "ig_reel", "reel", "template", "fallback", "unsupported_type",
                              "animated_image", "sticker"])},
    {"payload": obj({"url": urls}, {"title": odd_text, "reel_video_id": odd_text})},
)
referral = obj({}, {
    "ref": odd_text, "ad_id": odd_text, "source": st.sampled_from(["ADS", "SHORTLINK"]),
    "type": st.just("OPEN_THREAD"),
    "ads_context_data": obj({}, {"ad_title": odd_text, "photo_url": urls}),
})
message = obj(
    {"mid": mids},
    {
        "text": odd_text,
        "attachments": st.lists(attachment, max_size=4),
        "is_echo": st.booleans(),
        "is_deleted": st.booleans(),
        "is_unsupported": st.booleans(),
        "quick_reply": obj({"payload": odd_text}),
        "referral": referral,
        "reply_to": st.one_of(obj({"mid": mids}),
                              obj({"story": obj({"url": urls, "id": odd_text})})),
        "app_id": st.one_of(st.integers(), odd_text),
    },
)
reaction = obj({"mid": mids}, {
    "action": st.sampled_from(["react", "unreact"]),
    "reaction": st.sampled_from(["love", "like", "other"]),
    "emoji": odd_text,
})
postback = obj({}, {"mid": mids, "title": odd_text, "payload": odd_text})


def events(ig_id: str) -> st.SearchStrategy[Any]:
    """One messaging item addressed to (or, for echoes, from) ``ig_id``, mutated."""
    party = st.one_of(IGSIDS, st.just(ig_id))
    base = {
        "sender": obj({"id": party}),
        "recipient": obj({"id": st.one_of(st.just(ig_id), IGSIDS)}),
        "timestamp": timestamps,
    }
    bodies = st.sampled_from(["message", "reaction", "postback", "referral", "read",
                              "delivery", "optin"])
    payload_for = {
        "message": message, "reaction": reaction, "postback": postback,
        "referral": referral, "read": obj({"mid": mids}), "delivery": json_values,
        "optin": json_values,
    }
    return bodies.flatmap(
        lambda name: maybe(st.fixed_dictionaries({**base, name: payload_for[name]}))
    )


def instagram_bodies(ig_id: str) -> st.SearchStrategy[Any]:
    """A webhook body: object=instagram, entries with messaging/standby/changes."""
    items = st.lists(events(ig_id), max_size=4)
    change = obj({"field": st.sampled_from(["messages", "message_reactions", "comments"]),
                  "value": events(ig_id)})
    entry = obj(
        {"id": st.one_of(st.just(ig_id), st.just("0"), odd_text),
         "time": timestamps},
        {"messaging": items, "standby": items, "changes": st.lists(change, max_size=2)},
    )
    return st.fixed_dictionaries(
        {"object": st.one_of(st.just("instagram"), st.just("instagram"), json_values),
         "entry": maybe(st.lists(entry, max_size=3))},
    )


# --- Rocket.Chat Omnichannel webhook (protocols/rocketchat.md §5) ------------------------

def rocketchat_bodies(page_id: str) -> st.SearchStrategy[Any]:
    """An Omnichannel webhook body for a visitor of ``page_id`` (or someone else's)."""
    ours = IGSIDS.map(lambda igsid: f"instagram-{page_id}-{igsid}")
    token = st.one_of(
        ours, ours, ours, ours,
        st.sampled_from([f"instagram-{page_id}-", "instagram--1", "widget-visitor",
                         f"instagram-{page_id}:x-1", f"instagram-../{page_id}-1"]),
        odd_text,
    )
    iso = st.one_of(st.sampled_from(["2025-01-01T10:01:00.000Z", "0001-01-01T00:00:00-23:59",
                                     "9999-12-31T23:59:59.999999-23:59", "not a date"]),
                    st.builds(lambda v: {"$date": v}, st.one_of(st.integers(), st.floats())),
                    json_values)
    upload = obj({"publicFilePath": urls}, {"type": odd_text})
    msg = obj(
        {"_id": st.one_of(st.sampled_from(["r-1", "r-2"]), odd_text)},
        {
            "msg": odd_text, "agentId": st.sampled_from(["a-1", ""]), "rid": odd_text,
            "ts": iso, "u": obj({}, {"_id": odd_text, "username": odd_text}),
            "t": st.sampled_from(["", "livechat-close", "command"]), "bot": st.booleans(),
            "closingMessage": st.booleans(), "navigation": json_values,
            "fileUpload": upload, "filesUpload": st.lists(upload, max_size=3),
            "files": st.lists(obj({}, {"name": odd_text}), max_size=3),
            "file": obj({}, {"name": odd_text}),
            "attachments": st.lists(obj({}, {"description": odd_text}), max_size=3),
        },
    )
    return st.fixed_dictionaries(
        {"type": st.one_of(st.just("Message"), maybe(st.sampled_from(
            ["Message", "LivechatSession", "LivechatSessionTaken"]))),
         "_id": maybe(st.sampled_from(["room-1", "room-2"])),
         "visitor": obj({"token": token}, {"_id": odd_text, "name": odd_text})},
        optional={"messages": maybe(st.lists(msg, max_size=4)), "closedAt": iso},
    )
