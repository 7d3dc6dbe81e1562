"""Instagram webhook bodies → inbound work items, and work items → what an agent reads.

Sans-I/O: plain functions over parsed JSON, so every event shape is table-testable.
The receiver calls :func:`account_ids` (to look the connected pages up in the store),
then :func:`parse_webhook`; the inbound relay calls :func:`agent_text` when it posts
an item into Omnichannel. Shapes: protocols/instagram.md §2.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from bot import messages
from storage.base import WorkItem, conversation_key

log = logging.getLogger("bot.web")

#: Item kinds on the "inbound" queue.
MESSAGE, UNSEND, ECHO, REACTION, POSTBACK, REFERRAL, POLICY = (
    "message", "unsend", "echo", "reaction", "postback", "referral", "policy",
)
#: The pseudo-visitor id a page's policy-enforcement items are ordered under.
POLICY_LANE = "#policy"
_POLICY_KEYS = ("policy-enforcement", "policy_enforcement")
#: Suffix of the conversation key echoes are ordered under (see :func:`parse_webhook`).
ECHO_LANE = "#echo"
#: Kinds that are the visitor speaking (they open/extend the messaging window).
VISITOR_KINDS = frozenset({MESSAGE, POSTBACK})

#: Timestamps below this are seconds, not ms (1e11 ms is March 1973, 1e11 s is year 5138).
SECONDS_BELOW = 100_000_000_000
#: ``changes[].field`` values of dashboard test payloads that carry a messaging item.
_CHANGE_FIELDS = frozenset({
    "messages", "message_reactions", "messaging_postbacks", "messaging_referral",
    "messaging_seen", "standby",
})

_REACTION_EMOJI = {
    "love": "❤️", "like": "👍", "laugh": "😆", "wow": "😮", "sad": "😢",
    "angry": "😠", "smile": "😊", "dislike": "👎",
}


@dataclass
class Parsed:
    """What one webhook body yields: work items plus what was skipped and why."""

    items: list[WorkItem] = field(default_factory=list)
    #: (reason, detail) for every messaging item deliberately not relayed.
    dropped: list[tuple[str, str]] = field(default_factory=list)


def flag(value: Any) -> bool:
    """A webhook boolean: ``true``, or the string ``"true"`` Meta's own examples send.

    Plain truthiness would read the string ``"false"`` as set.
    """
    if isinstance(value, str):
        return value.strip().lower() == "true"
    return value is True or (isinstance(value, int) and not isinstance(value, bool) and value == 1)


def unsend_item_id(mid: str) -> str:
    """The inbound item id of the unsend of message ``mid`` (remembered when enqueued)."""
    return f"ig-unsend:{mid}"


def rc_message_id(item_id: str) -> str:
    """The Rocket.Chat ``_id`` for an inbound item: deterministic, never truncated.

    Mids are long base64 strings; a full SHA-256 hex of the item id keeps ids of a fixed,
    safe alphabet and length while staying unique per item.
    """
    return "ig-" + hashlib.sha256(item_id.encode("utf-8")).hexdigest()


def _digest(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, ensure_ascii=True).encode()).hexdigest()


def account_ids(body: Any) -> set[str]:
    """The Instagram account ids a body may route to: entry ids, and per item the
    business side (the recipient, or the sender of an echo). Visitors' ids are left out,
    so a batch of hundreds of items costs a handful of page look-ups."""
    ids: set[str] = set()
    for entry in _list(body.get("entry") if isinstance(body, dict) else None):
        if not isinstance(entry, dict):
            continue
        if isinstance(entry.get("id"), str | int):
            ids.add(str(entry["id"]))
        for _, event in _events(entry):
            message = event.get("message")
            echo = isinstance(message, dict) and flag(message.get("is_echo"))
            party = event.get("sender" if echo else "recipient")
            if isinstance(party, dict) and isinstance(party.get("id"), str | int):
                ids.add(str(party["id"]))
    return ids


def parse_webhook(body: dict[str, Any], pages: Mapping[str, str]) -> Parsed:
    """Turn an ``object=instagram`` body into work items, one per messaging item.

    ``pages`` maps the Instagram account id of every connected, subscribed page to its
    page id; items for other accounts are dropped (``unknown_account``). Malformed
    items are skipped with a log line, never an exception: Meta would retry the whole
    batch forever.
    """
    parsed = Parsed()
    seen: set[str] = set()
    for entry in _list(body.get("entry")):
        if not isinstance(entry, dict):
            parsed.dropped.append(("malformed", "entry is not an object"))
            continue
        entry_id = str(entry.get("id", ""))
        for source, event in _events(entry):
            try:
                _parse_event(entry_id, source, event, pages, parsed, seen)
            except (TypeError, ValueError, AttributeError, KeyError, OverflowError) as exc:
                # OverflowError: an infinite or astronomically large timestamp.
                log.warning("skipping malformed %s item in entry %s: %s", source, entry_id, exc)
                parsed.dropped.append(("malformed", f"{type(exc).__name__}"))
    # Store order within a conversation is (order_ts, seq): hand items over sorted so
    # seq agrees with the timestamps even for equal-timestamp items.
    parsed.items.sort(key=lambda item: item.order_ts)
    return parsed


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _events(entry: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    """Every messaging item of an entry: ``messaging[]``, ``standby[]``, test ``changes[]``."""
    for source in ("messaging", "standby"):
        for event in _list(entry.get(source)):
            if isinstance(event, dict):
                yield source, event
            else:
                log.warning("skipping non-object %s item in entry %s", source, entry.get("id"))
    for change in _list(entry.get("changes")):
        if (
            isinstance(change, dict)
            and isinstance(change.get("field"), str)  # a list or object is unhashable
            and change["field"] in _CHANGE_FIELDS
            and isinstance(change.get("value"), dict)
        ):
            yield "changes", change["value"]


def _party(event: dict[str, Any], side: str) -> str:
    party = event.get(side)
    if not isinstance(party, dict) or not isinstance(party.get("id"), str | int):
        raise ValueError(f"missing {side}.id")
    return str(party["id"])


def _kind_and_key(event: dict[str, Any], sender: str, timestamp: int) -> tuple[str, str] | str:
    """(kind, item_id) for an event, or a drop reason."""
    message = event.get("message")
    if isinstance(message, dict):
        mid = message.get("mid")
        if not isinstance(mid, str) or not mid:
            raise ValueError("message without mid")
        if flag(message.get("is_echo")):
            return ECHO, f"ig-echo:{mid}"
        if flag(message.get("is_deleted")):
            # The deletion carries the mid of the original message: its own key.
            return UNSEND, unsend_item_id(mid)
        return MESSAGE, f"ig:{mid}"
    reaction = event.get("reaction")
    if isinstance(reaction, dict):
        target = reaction.get("mid")
        if not isinstance(target, str) or not target:
            raise ValueError("reaction without mid")
        key = _digest(target, sender, reaction.get("action"), reaction.get("emoji"),
                      reaction.get("reaction"), timestamp)
        return REACTION, f"ig-reaction:{key}"
    postback = event.get("postback")
    if isinstance(postback, dict):
        mid = postback.get("mid")
        if isinstance(mid, str) and mid:
            return POSTBACK, f"ig-postback:{mid}"
        key = _digest(sender, timestamp, postback.get("title"), postback.get("payload"))
        return POSTBACK, f"ig-postback:{key}"
    referral = event.get("referral")
    if isinstance(referral, dict):
        key = _digest(sender, timestamp, referral.get("ref"), referral.get("source"),
                      referral.get("ad_id"))
        return REFERRAL, f"ig-referral:{key}"
    if "read" in event:
        return "read"
    if "delivery" in event:
        return "delivery"
    return "unsupported_event"


def _parse_event(
    entry_id: str,
    source: str,
    event: dict[str, Any],
    pages: Mapping[str, str],
    parsed: Parsed,
    seen: set[str],
) -> None:
    if any(isinstance(event.get(key), dict) for key in _POLICY_KEYS):
        _parse_policy(entry_id, event, pages, parsed)
        return
    sender = _party(event, "sender")
    recipient = _party(event, "recipient")
    raw_ts = event.get("timestamp")
    if isinstance(raw_ts, str) and raw_ts.isdigit():
        raw_ts = int(raw_ts)  # dashboard test payloads send a string
    if isinstance(raw_ts, bool) or not isinstance(raw_ts, int | float):
        raise ValueError("missing timestamp")
    timestamp = int(raw_ts)
    if 0 < timestamp < SECONDS_BELOW:
        # Dashboard test payloads send seconds ("1527459824"); read as ms that is 1970
        # and would close the messaging window of the conversation.
        timestamp *= 1000
    decided = _kind_and_key(event, sender, timestamp)
    if isinstance(decided, str):
        # Read receipts and deliveries tell an agent nothing; other types are new to us.
        if decided == "unsupported_event":
            log.info("ignoring unsupported %s event type %s in entry %s",
                     source, sorted(k for k in event if k not in ("sender", "recipient")),
                     entry_id)
        parsed.dropped.append((decided, entry_id))
        return
    kind, item_id = decided
    # Business-sent (echo): sender is the account; inbound: recipient is the account.
    if kind == ECHO:
        account, igsid = sender, recipient
    else:
        account, igsid = recipient, sender
    page_id = pages.get(account) or pages.get(entry_id)
    if page_id is None:
        log.info("dropping %s %s: Instagram account %s is not connected or not subscribed",
                 kind, item_id, account)
        parsed.dropped.append(("unknown_account", account))
        return
    if kind == ECHO and igsid == account:
        parsed.dropped.append(("malformed", "echo to self"))
        return
    if item_id in seen:
        parsed.dropped.append(("duplicate", item_id))
        return
    seen.add(item_id)
    conversation = conversation_key(page_id, igsid)
    if kind == ECHO:
        # Echoes are matched against our own sends, which may need a moment to be
        # recorded; their own lane keeps that wait from holding up the visitor.
        conversation += ECHO_LANE
    parsed.items.append(
        WorkItem(
            item_id=item_id,
            queue="inbound",
            conversation=conversation,
            kind=kind,
            payload={"page_id": page_id, "igsid": igsid, "source": source, "event": event},
            order_ts=timestamp / 1000.0,
        )
    )


def _parse_policy(
    entry_id: str, event: dict[str, Any], pages: Mapping[str, str], parsed: Parsed
) -> None:
    """Meta blocked (or unblocked) the app on this page for a policy violation: there is
    no sender, and it is for the admins, not a room (messaging_policy_enforcement)."""
    recipient = _party(event, "recipient")
    page_id = pages.get(recipient) or pages.get(entry_id)
    if page_id is None:
        parsed.dropped.append(("unknown_account", recipient))
        return
    policy = next(event[k] for k in _POLICY_KEYS if isinstance(event.get(k), dict))
    raw_ts = event.get("timestamp")
    order_ts = raw_ts / 1000.0 if isinstance(raw_ts, int) and not isinstance(raw_ts, bool) else 0.0
    key = _digest(page_id, raw_ts, policy.get("action"), policy.get("reason"))
    parsed.items.append(WorkItem(
        item_id=f"ig-policy:{key}",
        queue="inbound",
        conversation=conversation_key(page_id, POLICY_LANE),
        kind=POLICY,
        payload={"page_id": page_id, "igsid": POLICY_LANE, "source": "messaging",
                 "event": event},
        order_ts=order_ts,
    ))


def policy_text(event: dict[str, Any], page_name: str, page_id: str) -> str:
    """The admins' DM for a policy-enforcement item."""
    policy = next((event[k] for k in _POLICY_KEYS if isinstance(event.get(k), dict)), {})
    return messages.META_POLICY_ENFORCEMENT.format(
        action=str(policy.get("action") or "unknown"), name=page_name, page_id=page_id,
        reason=str(policy.get("reason") or "no reason given"),
    )


# --- what the agent sees ------------------------------------------------------------------


def target_mid(kind: str, event: dict[str, Any]) -> str | None:
    """The mid an event points at (reply-to, reaction, unsend), if any."""
    if kind == REACTION:
        return (event.get("reaction") or {}).get("mid")
    message = event.get("message")
    if not isinstance(message, dict):
        return None
    if kind == UNSEND:
        return message.get("mid")
    reply_to = message.get("reply_to")
    if isinstance(reply_to, dict) and isinstance(reply_to.get("mid"), str):
        return reply_to["mid"]
    return None


def message_link(base_url: str, rid: str, msg_id: str) -> str:
    """A Rocket.Chat permalink to a livechat message (rendered as a quote by clients)."""
    return f"{base_url.rstrip('/')}/live/{rid}?msg={msg_id}"


def target_phrase(ours: bool, link: str | None) -> str:
    """How a pointed-at message is named: ours, linked, or just "an earlier message"."""
    if ours:
        return messages.IN_TARGET_OURS
    if link:
        return messages.IN_TARGET_LINKED.format(url=_safe_url(link))
    return messages.IN_TARGET_UNKNOWN


def _safe_url(url: str) -> str:
    # A ')' or space would end a markdown link early.
    return url.replace(" ", "%20").replace(")", "%29").replace("(", "%28")


def _link(label: str, url: Any) -> str:
    if not isinstance(url, str) or not url.strip():
        return messages.IN_NO_LINK.format(label=label)
    return f"[{label}]({_safe_url(url.strip())})"


def _emoji(reaction: dict[str, Any]) -> str:
    emoji = reaction.get("emoji")
    if isinstance(emoji, str) and emoji:
        return emoji
    name = reaction.get("reaction")
    if not isinstance(name, str) or not name:
        return ""  # a list or object here is unhashable: never look it up
    return _REACTION_EMOJI.get(name, f":{name}:")


def _referral_line(referral: Any) -> str | None:
    if not isinstance(referral, dict):
        return None
    product = referral.get("product")
    if isinstance(product, dict) and isinstance(product.get("id"), str | int):
        # An Instagram Shop product page's "Message" button (referral.product.id).
        return messages.IN_PRODUCT_REFERRAL.format(product_id=product["id"])
    ads = referral.get("ads_context_data")
    title = ads.get("ad_title") if isinstance(ads, dict) else None
    ad_id = referral.get("ad_id")
    if ad_id or title or referral.get("source") == "ADS":
        line = messages.IN_AD_REFERRAL.format(title=title or messages.IN_UNTITLED_AD)
        if ad_id:
            line += messages.IN_AD_ID.format(ad_id=ad_id)
    else:
        line = messages.IN_LINK_REFERRAL
    ref = referral.get("ref")
    if isinstance(ref, str) and ref:
        line += messages.IN_REF.format(ref=ref)
    return line


def _attachment_line(attachment: Any) -> str | None:
    if not isinstance(attachment, dict):
        return None
    kind = attachment.get("type")
    payload = attachment.get("payload") if isinstance(attachment.get("payload"), dict) else {}
    url = payload.get("url")
    if kind == "story_mention":
        return messages.IN_STORY_MENTION.format(link=_link(messages.IN_STORY_LABEL, url))
    if kind == "ig_story":
        # Undocumented: a shared story carries its link as story_media_url, no url.
        url = url or payload.get("story_media_url")
    if kind in ("template", "unsupported_type", "fallback"):
        if isinstance(url, str) and url.strip():
            return messages.IN_UNSUPPORTED_LINK.format(url=_safe_url(url.strip()))
        return messages.IN_UNSUPPORTED
    label = messages.IN_ATTACHMENT_LABELS.get(
        kind if isinstance(kind, str) else "", messages.IN_ATTACHMENT_DEFAULT_LABEL
    )
    line = "📎 " + _link(label, url)
    title = payload.get("title")
    if isinstance(title, str) and title.strip():
        line += f" — {title.strip()}"
    return line


def agent_text(kind: str, event: dict[str, Any], target: str = "") -> str:
    """The Rocket.Chat text an agent reads for one inbound item (not unsends: they post
    nothing, see :meth:`bot.relay.inbound.InboundRelay._unsend`).

    ``target`` names the message the event points at (see :func:`target_phrase`).
    """
    if kind == REACTION:
        reaction = event.get("reaction") or {}
        if reaction.get("action") == "unreact":
            return messages.IN_UNREACTION.format(target=target or messages.IN_TARGET_UNKNOWN)
        return messages.IN_REACTION.format(
            emoji=_emoji(reaction) or messages.IN_SOME_REACTION,
            target=target or messages.IN_TARGET_UNKNOWN,
        )
    if kind == POSTBACK:
        postback = event.get("postback") or {}
        title = postback.get("title") or postback.get("payload") or ""
        return messages.IN_POSTBACK.format(title=title)
    if kind == REFERRAL:
        return _referral_line(event.get("referral")) or messages.IN_LINK_REFERRAL
    message = event.get("message") or {}
    lines: list[str] = []
    referral = _referral_line(message.get("referral"))
    if referral:
        lines.append(referral)
    reply_to = message.get("reply_to")
    if isinstance(reply_to, dict):
        story = reply_to.get("story")
        if isinstance(story, dict):
            lines.append(messages.IN_STORY_REPLY.format(
                link=_link(messages.IN_STORY_LABEL, story.get("url"))))
        elif reply_to.get("mid"):
            lines.append(messages.IN_REPLY_TO.format(target=target or messages.IN_TARGET_UNKNOWN))
    text = message.get("text")
    if isinstance(text, str) and text:
        lines.append(text)
    quick_reply = message.get("quick_reply")
    if isinstance(quick_reply, dict) and quick_reply.get("payload"):
        lines.append(messages.IN_QUICK_REPLY.format(payload=quick_reply["payload"]))
    attachments = _list(message.get("attachments"))
    if any(isinstance(a, dict) and a.get("type") == "ig_post" for a in attachments):
        # Meta's share→ig_post transition (Nov 2025 – Feb 2026) sends one post as both.
        attachments = [a for a in attachments if not (isinstance(a, dict)
                                                      and a.get("type") == "share")]
    for attachment in attachments:
        line = _attachment_line(attachment)
        if line:
            lines.append(line)
    if flag(message.get("is_unsupported")) and not (text or message.get("attachments")):
        lines.append(messages.IN_UNSUPPORTED)
    body = "\n".join(lines) if lines else messages.IN_EMPTY
    if kind == ECHO:
        app_id = message.get("app_id")
        if app_id is not None and not isinstance(app_id, bool):
            # Our own sends never get here (dropped as own echoes): another app sent it.
            return messages.IN_ECHO_OTHER_APP.format(app_id=app_id, text=body)
        return messages.IN_ECHO.format(text=body)
    return body


def visitor_name(profile: Mapping[str, Any] | None, igsid: str) -> str:
    """The Omnichannel visitor name: profile name, else @username, else a placeholder."""
    profile = profile or {}
    # One line: a name is shown in room lists and titles; CR/LF or tabs have no place there.
    name = " ".join(profile["name"].split()) if isinstance(profile.get("name"), str) else ""
    if name:
        return name
    username = profile.get("username")
    if isinstance(username, str) and username.split():
        return "@" + "".join(username.split()).lstrip("@")
    return messages.IN_UNKNOWN_VISITOR.format(igsid=igsid)


#: Every visitor token the bridge makes starts with this (rooms without it are not ours).
TOKEN_PREFIX = "instagram-"


def visitor_token(secret: bytes, page_id: str, igsid: str) -> str:
    """The Omnichannel visitor token (DESIGN.md "Omnichannel mapping"): ``instagram-`` +
    hex HMAC-SHA256 of ``<pageId>:<igsid>`` keyed by the store's bridge secret.

    The token is the visitor's only credential on Rocket.Chat's public livechat API
    (history, posting, renaming, closing), so it must not follow from the public ids.
    """
    digest = hmac.new(secret, f"{page_id}:{igsid}".encode(), hashlib.sha256).hexdigest()
    return TOKEN_PREFIX + digest


def legacy_token(token: str) -> bool:
    """Whether ``token`` has the guessable ``instagram-<pageId>-<igsid>`` form that stores
    written before opaque tokens hold (such conversations keep their token for life)."""
    return token.startswith(TOKEN_PREFIX) and "-" in token[len(TOKEN_PREFIX):]
