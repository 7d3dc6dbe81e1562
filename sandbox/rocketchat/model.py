"""In-memory Rocket.Chat state and the server-side rules the sandbox enforces.

Everything here runs under one re-entrant lock (``State.lock``); every operation is quick
and never awaits, so the asyncio handlers and the synchronous control API can share it.
Side effects that must happen on the sandbox loop (socket frames, webhook POSTs) leave
through ``Session.push`` and ``State.webhook_sink``, both of which only schedule work.
"""

from __future__ import annotations

import copy
import hashlib
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any, Protocol

from . import defaults
from .wire import PlainError, RCError, from_epoch, random_id, random_secret

log = logging.getLogger("sandbox.rocketchat")

Doc = dict[str, Any]

_MENTION = re.compile(r"(?<![\w@])@([\w.\-]+)")


# validateMessage's checks of message attachments and their action buttons [SMF
# `validateAttachment`, `validateAttachmentsActions`]: a field that is present must have
# the type; URLs must pass ``isURL`` or start with the file-upload path, and never be
# ``javascript:`` (``validFullURLParam``). ``isURL``'s exact rule was not re-read here: the
# sandbox accepts http(s) and data URLs, all the bot and file messages ever send.
_ATTACHMENT_FIELDS: dict[str, Any] = {
    "color": str, "text": str, "ts": (str, int, float), "thumb_url": "url",
    "button_alignment": str, "actions": list, "message_link": "url", "collapsed": bool,
    "author_name": str, "author_link": "url", "author_icon": "url", "title": str,
    "title_link": "url", "title_link_download": bool, "image_dimensions": dict,
    "image_url": "url", "image_preview": str, "image_type": str, "image_size": (int, float),
    "audio_url": "url", "audio_type": str, "audio_size": (int, float), "video_url": "url",
    "video_type": str, "video_size": (int, float), "fields": list,
}
_ACTION_FIELDS: dict[str, Any] = {
    "type": str, "text": str, "url": "url", "image_url": "url", "is_webview": bool,
    "webview_height_ratio": str, "msg": str, "msg_in_chat_window": bool,
}
_FULL_URL = re.compile(r"^(https?://|data:|/file-upload/)", re.IGNORECASE)


def _match_error(path: str, expected: str) -> RCError:
    return RCError("Match.Error", f"Match error: {expected} in field {path}")


def _check_fields(doc: Any, fields: dict[str, Any], path: str) -> None:
    if not isinstance(doc, dict):
        raise _match_error(path, "Expected object")
    for name, kind in fields.items():
        value = doc.get(name)
        if value is None:
            continue
        if kind == "url":
            if (not isinstance(value, str) or not _FULL_URL.match(value)
                    or value.lower().startswith("javascript:")):
                raise _match_error(f"{path}.{name}", "Failed Match.Where validation")
        # A JSON boolean is no Number for Meteor's check (Python's bool is an int).
        elif not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
            raise _match_error(f"{path}.{name}", f"Expected {kind}")


def validate_attachments(attachments: Any) -> None:
    """Refuse attachments the real server's ``validateMessage`` refuses."""
    if not isinstance(attachments, list):
        raise _match_error("attachments", "Expected array")
    for i, attachment in enumerate(attachments):
        _check_fields(attachment, _ATTACHMENT_FIELDS, f"attachments[{i}]")
        for j, action in enumerate(attachment.get("actions") or []):
            _check_fields(action, _ACTION_FIELDS, f"attachments[{i}].actions[{j}]")


class SessionLike(Protocol):
    """What the state needs from a DDP session (see ddp.Session)."""

    session_id: str
    user_id: str | None
    subs: dict[str, tuple[str, str]]

    def push(self, frame: Doc) -> None: ...


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


_IMMUTABLE = (str, int, float, bool, type(None), datetime, timedelta, bytes)


def _clone(value: Any) -> Any:
    """A deep copy of JSON-like data (dicts, lists, scalars, datetimes).

    ``copy.deepcopy`` costs several times more (its memo and dispatch), and the sandbox
    copies every document it hands out; anything else still goes through it.
    """
    if isinstance(value, _IMMUTABLE):
        return value
    if isinstance(value, dict):
        return {k: _clone(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clone(v) for v in value]
    return copy.deepcopy(value)


def _public(doc: Doc) -> Doc:
    """A deep copy without the sandbox's private keys (leading ``__``)."""
    return {k: _clone(v) for k, v in doc.items() if not k.startswith("__")}


def stream_frame(collection: str, event: str, args: list[Any]) -> Doc:
    """A streamer ``changed`` frame [STR ``changedPayload``]."""
    return {
        "msg": "changed",
        "collection": collection,
        "id": "id",
        "fields": {"eventName": event, "args": args},
    }


class State:
    """The whole server: users, rooms, messages, settings, omnichannel."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.lock = threading.RLock()
        self.clock = clock
        self.users: dict[str, Doc] = {}
        self.tokens: dict[str, tuple[str, datetime | None]] = {}  # token -> (uid, expires)
        self.rooms: dict[str, Doc] = {}
        self.subscriptions: dict[tuple[str, str], Doc] = {}  # (uid, rid) -> subscription
        self.messages: dict[str, Doc] = {}
        self.room_messages: dict[str, list[str]] = {}
        #: ``_id``s removed through the visitor's DELETE route, for tests to inspect.
        self.deleted_messages: list[str] = []
        self.settings: dict[str, Doc] = {}
        self.permissions: dict[str, list[str]] = {
            k: list(v) for k, v in defaults.PERMISSIONS.items()
        }
        self.visitors: dict[str, Doc] = {}  # token -> visitor
        self.departments: dict[str, Doc] = {}
        self.sessions: dict[str, SessionLike] = {}
        self.webhook_sink: Callable[[str, Doc], None] = lambda _type, _payload: None
        self.call_counts: dict[str, int] = {}
        self.removed_subscriptions: list[Doc] = []
        self.offline_messages: list[Doc] = []
        #: An Apps-Engine ``IPreMessageSentPrevent`` app: visitor texts it returns True
        #: for are not stored (sendMessage returns undefined, as for a duplicate _id).
        self.prevent_message: Callable[[str], bool] | None = None
        now = self.now()
        self.started_at = now
        for sid, (value, public) in defaults.SETTINGS.items():
            self.settings[sid] = {
                "_id": sid,
                "value": _clone(value),
                "public": public,
                "packageValue": _clone(value),
                "_updatedAt": now,
            }
        self.rooms["GENERAL"] = {
            "_id": "GENERAL",
            "t": "c",
            "name": "general",
            "fname": "general",
            "msgs": 0,
            "usersCount": 0,
            "default": True,
            "ro": False,
            "sysMes": True,
            "ts": now,
            "_updatedAt": now,
        }
        self.room_messages["GENERAL"] = []

    # ------------------------------------------------------------------ basics
    def now(self) -> datetime:
        """Current server time (millisecond precision)."""
        return from_epoch(self.clock())

    def count(self, key: str) -> None:
        """Count one call of a route or method (for ``call_counts()``)."""
        self.call_counts[key] = self.call_counts.get(key, 0) + 1

    def setting(self, sid: str) -> Any:
        """A setting's value (None if unknown)."""
        doc = self.settings.get(sid)
        return None if doc is None else doc["value"]

    def set_setting(self, sid: str, value: Any) -> None:
        """Set (or create, as private) a setting."""
        doc = self.settings.setdefault(
            sid, {"_id": sid, "public": False, "packageValue": None, "value": None}
        )
        doc["value"] = value
        doc["_updatedAt"] = self.now()

    # ------------------------------------------------------------------ users
    def user_by_username(self, username: str) -> Doc | None:
        """Find a user by username (case-insensitive, like Mongo's username index)."""
        low = username.lower()
        for user in self.users.values():
            if user["username"].lower() == low:
                return user
        return None

    def user_by_email(self, email: str) -> Doc | None:
        """Find a user by an email address."""
        low = email.lower()
        for user in self.users.values():
            if any(e["address"].lower() == low for e in user.get("emails", [])):
                return user
        return None

    def require_user(self, username: str) -> Doc:
        """A user by username, or KeyError for the control API."""
        user = self.user_by_username(username)
        if user is None:
            raise KeyError(f"no such user: {username}")
        return user

    def create_user(
        self,
        username: str,
        password: str | None = None,
        roles: Iterable[str] = ("user",),
        name: str | None = None,
        *,
        email: str | None = None,
        join_default: bool = True,
    ) -> str:
        """Create a user; returns its id. New users join the default channel (#general)."""
        if self.user_by_username(username) is not None:
            raise ValueError(f"username already exists: {username}")
        roles = list(roles)
        now = self.now()
        uid = random_id()
        user: Doc = {
            "_id": uid,
            "username": username,
            "name": name or username,
            "emails": [{"address": email or f"{username}@example.org", "verified": True}],
            "status": "online" if "bot" in roles else "offline",
            "statusConnection": "offline",
            "utcOffset": 0,
            "active": True,
            "type": "bot" if "bot" in roles else "user",
            "roles": roles,
            "createdAt": now,
            "_updatedAt": now,
            "__password": _sha256(password) if password is not None else None,
        }
        if "livechat-agent" in roles:
            user["statusLivechat"] = "not-available"
        self.users[uid] = user
        if join_default:
            for room in list(self.rooms.values()):
                if room.get("default"):
                    self.add_member(room["_id"], uid)
        log.info("user created id=%s username=%s roles=%s", uid, username, roles)
        return uid

    def set_roles(self, username: str, roles: Iterable[str]) -> None:
        """Replace a user's global roles."""
        user = self.require_user(username)
        user["roles"] = list(roles)
        user["_updatedAt"] = self.now()
        if "livechat-agent" in user["roles"]:
            user.setdefault("statusLivechat", "not-available")

    def has_permission(self, uid: str | None, permission: str) -> bool:
        """Role-based permission check (global scope)."""
        if uid is None or uid not in self.users:
            return False
        allowed = self.permissions.get(permission, [])
        return any(r in allowed for r in self.users[uid]["roles"])

    def issue_login_token(self, uid: str) -> tuple[str, datetime]:
        """A fresh resume token with ``Accounts_LoginExpiration`` days of validity."""
        token = random_secret()
        expires = self.now() + timedelta(days=float(self.setting("Accounts_LoginExpiration") or 90))
        self.tokens[token] = (uid, expires)
        return token, expires

    def create_personal_access_token(self, username: str) -> str:
        """A PAT: a resume token stored without an expiry [protocol §1.3]."""
        user = self.require_user(username)
        token = random_secret()
        self.tokens[token] = (user["_id"], None)
        return token

    def user_for_token(self, token: str | None) -> tuple[str | None, str | None]:
        """Resolve a resume token or PAT to (uid, error reason)."""
        if not token or token not in self.tokens:
            return None, "You've been logged out by the server. Please log in again."
        uid, expires = self.tokens[token]
        if expires is not None and expires < self.now():
            return None, "Your session has expired. Please log in again."
        if uid not in self.users or not self.users[uid]["active"]:
            return None, "User not found"
        return uid, None

    def check_password(self, selector: Doc, password: Any) -> str:
        """Password login: returns the uid or raises the 403 Meteor.Error real servers send."""
        user = None
        if isinstance(selector, str):
            selector = {"email": selector} if "@" in selector else {"username": selector}
        if isinstance(selector, dict):
            if selector.get("username"):
                user = self.user_by_username(str(selector["username"]))
            elif selector.get("email"):
                user = self.user_by_email(str(selector["email"]))
            elif selector.get("id"):
                user = self.users.get(str(selector["id"]))
        if user is None or not user["active"]:
            raise RCError(403, "User not found")
        if isinstance(password, dict):
            digest = str(password.get("digest", "")).lower()
            if password.get("algorithm", "sha-256") != "sha-256":
                raise RCError(400, "Unknown password hash algorithm")
        elif isinstance(password, str):
            digest = _sha256(password)
        else:
            raise RCError(400, "Match failed")
        if user.get("__password") is None:
            raise RCError(403, "User has no password set")
        if digest != user["__password"]:
            raise RCError(403, "Incorrect password")
        return user["_id"]

    def user_doc(self, uid: str, *, full: bool) -> Doc:
        """A user as REST shows it; ``full`` adds roles/emails (self or privileged caller)."""
        user = self.users[uid]
        out: Doc = {
            "_id": uid,
            "username": user["username"],
            "name": user["name"],
            "status": user["status"],
            "active": user["active"],
            "type": user["type"],
            "utcOffset": user["utcOffset"],
        }
        if "statusLivechat" in user:
            out["statusLivechat"] = user["statusLivechat"]
        if full:
            out["roles"] = list(user["roles"])
            out["emails"] = _clone(user["emails"])
            out["createdAt"] = user["createdAt"]
            out["_updatedAt"] = user["_updatedAt"]
        return out

    def users_in_public_roles(self) -> list[Doc]:
        """roles.getUsersInPublicRoles / getUserRoles: public roles only, sorted by username."""
        out = []
        for user in sorted(self.users.values(), key=lambda u: u["username"]):
            public = [r for r in user["roles"] if r in defaults.PUBLIC_ROLES]
            if public:
                out.append({"_id": user["_id"], "username": user["username"], "roles": public})
        return out

    # ------------------------------------------------------------------ rooms
    def can_access_room(self, room: Doc, uid: str | None) -> bool:
        """canAccessRoom: public rooms for view-c-room, members, livechat staff."""
        if uid is None or uid not in self.users:
            return False
        if room["t"] == "c" and self.has_permission(uid, "view-c-room"):
            return True
        if (uid, room["_id"]) in self.subscriptions:
            return True
        if room["t"] == "l":
            served = room.get("servedBy") or {}
            if served.get("_id") == uid:
                return True
            return self.has_permission(uid, "view-livechat-rooms")
        return False

    def is_member(self, uid: str, rid: str) -> bool:
        """Does the user hold a subscription to the room."""
        return (uid, rid) in self.subscriptions

    def create_channel(self, name: str, members: Iterable[str] = (), private: bool = False) -> str:
        """Create a public (``c``) or private (``p``) room with the given member usernames."""
        members = list(members)
        now = self.now()
        rid = random_id()
        owner = self.user_by_username(members[0]) if members else None
        room: Doc = {
            "_id": rid,
            "t": "p" if private else "c",
            "name": name,
            "fname": name,
            "msgs": 0,
            "usersCount": 0,
            "default": False,
            "ro": False,
            "sysMes": True,
            "ts": now,
            "_updatedAt": now,
        }
        if owner is not None:
            room["u"] = {"_id": owner["_id"], "username": owner["username"]}
        self.rooms[rid] = room
        self.room_messages[rid] = []
        for username in members:
            self.add_member(rid, self.require_user(username)["_id"])
        log.info("room created rid=%s t=%s name=%s", rid, room["t"], name)
        return rid

    def add_member(self, rid: str, uid: str) -> Doc:
        """Subscribe a user to a room (idempotent) and notify their sessions."""
        key = (uid, rid)
        if key in self.subscriptions:
            return self.subscriptions[key]
        room = self.rooms[rid]
        user = self.users[uid]
        now = self.now()
        if room["t"] == "d":
            others = [u for u in room["uids"] if u != uid] or [uid]
            other = self.users[others[0]]
            name, fname = other["username"], other["name"]
        elif room["t"] == "l":
            name, fname = room["v"]["username"], room["fname"]
        else:
            name, fname = room["name"], room.get("fname", room["name"])
        sub: Doc = {
            "_id": random_id(),
            "rid": rid,
            "u": {"_id": uid, "username": user["username"]},
            "name": name,
            "fname": fname,
            "t": room["t"],
            "ts": now,
            "ls": now,
            "open": True,
            "alert": False,
            "unread": 0,
            "userMentions": 0,
            "groupMentions": 0,
            "_updatedAt": now,
        }
        if room["t"] == "l":
            sub["v"] = _clone(room["v"])
            if room.get("departmentId"):
                sub["department"] = room["departmentId"]
        self.subscriptions[key] = sub
        room["usersCount"] = room.get("usersCount", 0) + 1
        room["_updatedAt"] = now
        self.notify_user(uid, "rooms-changed", ["inserted", self.room_for_client(room)])
        self.notify_user(uid, "subscriptions-changed", ["inserted", _public(sub)])
        return sub

    def remove_member(self, rid: str, uid: str) -> None:
        """Drop a subscription; the user's per-room stream subscriptions end with it."""
        sub = self.subscriptions.pop((uid, rid), None)
        if sub is None:
            return
        room = self.rooms[rid]
        room["usersCount"] = max(0, room.get("usersCount", 1) - 1)
        self.removed_subscriptions.append(
            {"_id": sub["_id"], "rid": rid, "u": dict(sub["u"]), "_deletedAt": self.now()}
        )
        self.notify_user(uid, "subscriptions-changed", ["removed", {"_id": sub["_id"], "rid": rid}])
        self.notify_user(uid, "rooms-changed", ["removed", {"_id": rid}])
        # Losing the subscription ends the user's per-room message stream [NOT].
        for session in list(self.sessions.values()):
            if session.user_id != uid:
                continue
            for sub_id, (name, event) in list(session.subs.items()):
                if name == "stream-room-messages" and event == rid:
                    del session.subs[sub_id]
                    session.push({"msg": "nosub", "id": sub_id})

    def room_for_client(self, room: Doc) -> Doc:
        """A room document as clients receive it."""
        return _public(room)

    def dm_room_id(self, uids: Iterable[str]) -> str:
        """Deterministic DM id: the sorted user ids concatenated [DM]."""
        return "".join(sorted(set(uids)))

    def create_direct_message(self, uid: str, usernames: Iterable[str]) -> Doc:
        """createDirectMessage / dm.create: find or create the DM between the users."""
        users = [self.users[uid]]
        for username in usernames:
            other = self.user_by_username(str(username))
            if other is None:
                raise RCError(
                    "error-invalid-user", "Invalid user", {"method": "createDirectMessage"}
                )
            if other["_id"] != uid:
                users.append(other)
        if not self.has_permission(uid, "create-d"):
            raise RCError("error-not-allowed", "Not allowed", {"method": "createDirectMessage"})
        uids = [u["_id"] for u in users]
        rid = self.dm_room_id(uids)
        room = self.rooms.get(rid)
        if room is None:
            now = self.now()
            ordered = sorted(users, key=lambda u: u["_id"])
            room = {
                "_id": rid,
                "t": "d",
                "usernames": sorted(u["username"] for u in users),
                "uids": [u["_id"] for u in ordered],
                "msgs": 0,
                "usersCount": 0,
                "ts": now,
                "_updatedAt": now,
            }
            self.rooms[rid] = room
            self.room_messages[rid] = []
            for u in ordered:
                self.add_member(rid, u["_id"])
            log.info("dm created rid=%s", rid)
        return room

    # ------------------------------------------------------------------ messages
    def message_for_client(self, msg: Doc) -> Doc:
        """A message as clients see it (private keys stripped, real names if enabled)."""
        out = _public(msg)
        if self.setting("UI_Use_Real_Name") and out.get("u", {}).get("_id") in self.users:
            out["u"]["name"] = self.users[out["u"]["_id"]]["name"]
        return out

    def _mentions(self, text: str) -> list[Doc]:
        out = []
        for name in _MENTION.findall(text or ""):
            if name in ("all", "here"):
                out.append({"_id": name, "username": name, "type": "user"})
                continue
            user = self.user_by_username(name)
            if user is not None:
                out.append(
                    {
                        "_id": user["_id"],
                        "username": user["username"],
                        "name": user["name"],
                        "type": "user",
                    }
                )
        return out

    def _prevent_mention_all(
        self, mentions: list[Doc], *, uid: str | None = None, visitor_id: str | None = None
    ) -> None:
        """BeforeSavePreventMention (6.5+): ``@all``/``@here`` need mention-all/-here.

        The check is made for the message's author; a visitor holds no roles, so a
        visitor's ``@all`` is always refused [PM].
        """
        for mention, permission in (("all", "mention-all"), ("here", "mention-here")):
            if not any(m.get("_id") == mention for m in mentions):
                continue
            if visitor_id is None and self.has_permission(uid, permission):
                continue
            raise RCError(
                "error-action-not-allowed",
                f"Notify {mention} in this room not allowed",
                {"action": f"Notify_{mention}_in_this_room"},
            )

    def execute_send_message(
        self, uid: str, message: Any, *, method: str = "sendMessage", extra: Doc | None = None
    ) -> Doc | None:
        """executeSendMessage + sendMessage: validate, store, broadcast, run hooks.

        Returns the stored message, or None when a message with the same ``_id`` exists
        already (the real server returns nothing in that case) [SMF].
        """
        if not isinstance(message, dict):
            raise RCError("error-invalid-params", "Invalid params", {"method": method})
        if message.get("tshow") and not message.get("tmid"):
            raise RCError("invalid-params", "tshow provided but missing tmid", {"method": method})
        if message.get("tmid") and not self.setting("Threads_enabled"):
            raise RCError("error-not-allowed", "not-allowed", {"method": method})
        now = self.now()
        ts = message.get("ts")
        if ts is not None:
            if not isinstance(ts, datetime):
                raise RCError("error-invalid-params", "Invalid ts", {"method": method})
            diff = abs((ts - now).total_seconds())
            if diff > 60:
                raise RCError(
                    "error-message-ts-out-of-sync",
                    "Message timestamp is out of sync",
                    {"method": method, "message_ts": ts.timestamp(), "server_ts": now.timestamp()},
                )
            if diff > 10:
                ts = now
        else:
            ts = now
        text = message.get("msg", "")
        if not isinstance(text, str):
            raise RCError("error-invalid-params", "Invalid message", {"method": method})
        if message.get("attachments") is not None:
            validate_attachments(message["attachments"])
        if len(text) > int(self.setting("Message_MaxAllowedSize") or 5000):
            raise RCError(
                "error-message-size-exceeded",
                "Message size exceeds the allowed limit",
                {"method": method},
            )
        user = self.users.get(uid)
        if user is None:
            raise RCError("error-invalid-user", "Invalid user", {"method": method})
        rid = message.get("rid")
        if not rid:
            raise PlainError("The 'rid' property on the message object is missing.")
        room = self.rooms.get(rid)
        if room is None:
            raise PlainError("error-invalid-room")
        if not self.can_access_room(room, uid):
            raise PlainError("error-not-allowed")
        if room["t"] == "l" and not room.get("open"):
            raise PlainError("error-not-allowed")
        if room.get("ro") and not self.has_permission(uid, "post-readonly"):
            raise PlainError("You can't send messages because the room is readonly.")
        if (
            room.get("encrypted")
            and self.setting("E2E_Enable")
            and message.get("t") != "e2e"
            and (not self.setting("E2E_Allow_Unencrypted_Messages"))
        ):
            raise RCError(
                "error-not-allowed",
                "Not allowed to send un-encrypted messages in an encrypted room",
                {"method": method},
            )
        msg_id = message.get("_id")
        if msg_id and msg_id in self.messages:
            log.debug("duplicate message _id=%s ignored", msg_id)
            return None
        self._prevent_mention_all(self._mentions(text), uid=uid)
        msg: Doc = {
            "_id": msg_id or random_id(),
            "rid": rid,
            "msg": text,
            "ts": ts,
            "u": {"_id": uid, "username": user["username"], "name": user["name"]},
            "_updatedAt": now,
            "mentions": self._mentions(text),
            "channels": [],
            "md": [{"type": "PARAGRAPH", "value": [{"type": "PLAIN_TEXT", "value": text}]}]
            if text
            else [],
            "urls": [],
        }
        for key in (
            "tmid",
            "tshow",
            "t",
            "alias",
            "emoji",
            "avatar",
            "attachments",
            "bot",
            "customFields",
            "groupable",
            "file",
            "files",
            "blocks",
            "content",
            "e2e",
        ):
            if key in message and message[key] is not None:
                msg[key] = _clone(message[key])
        if msg.get("tmid"):
            parent = self.messages.get(msg["tmid"])
            if parent is not None and parent.get("tmid"):
                msg["tmid"] = parent["tmid"]  # nested threads are flattened to the root
        if extra:
            msg.update(_clone(extra))
        return self._store_message(room, msg)

    def _store_message(self, room: Doc, msg: Doc, *, sender_token: str | None = None) -> Doc:
        """Insert, update the room and subscriptions, broadcast, run omnichannel hooks."""
        rid = room["_id"]
        now = msg["_updatedAt"]
        self.messages[msg["_id"]] = msg
        self.room_messages.setdefault(rid, []).append(msg["_id"])
        room["msgs"] = room.get("msgs", 0) + 1
        room["lm"] = msg["ts"]
        room["lastMessage"] = self.message_for_client(msg)
        room["_updatedAt"] = now
        author = msg["u"]["_id"]
        for (uid, sub_rid), sub in self.subscriptions.items():
            if sub_rid != rid:
                continue
            if uid == author:
                sub["ls"] = now
            else:
                sub["unread"] = sub.get("unread", 0) + 1
                sub["alert"] = True
                sub["open"] = True
                if any(m.get("_id") == uid for m in msg.get("mentions", [])):
                    sub["userMentions"] = sub.get("userMentions", 0) + 1
            sub["_updatedAt"] = now
            self.notify_user(uid, "subscriptions-changed", ["updated", _public(sub)])
            self.notify_user(uid, "rooms-changed", ["updated", self.room_for_client(room)])
        if msg.get("tmid") and msg["tmid"] in self.messages:
            parent = self.messages[msg["tmid"]]
            parent["tcount"] = parent.get("tcount", 0) + 1
            parent["tlm"] = msg["ts"]
            replies = parent.setdefault("replies", [])
            if author not in replies:
                replies.append(author)
            parent["_updatedAt"] = now
            self.broadcast_message(parent)
        log.info("message stored _id=%s rid=%s t=%s", msg["_id"], rid, msg.get("t"))
        self.broadcast_message(msg)
        if room["t"] == "l":
            self._after_omnichannel_message(room, msg, from_visitor=sender_token is not None)
        return msg

    def edit_message(self, msg_id: str, text: str) -> Doc:
        """Edit a message as its author: same ``_id`` re-emitted with editedAt/editedBy."""
        msg = self.messages[msg_id]
        now = self.now()
        msg["msg"] = text
        msg["md"] = [{"type": "PARAGRAPH", "value": [{"type": "PLAIN_TEXT", "value": text}]}]
        msg["mentions"] = self._mentions(text)
        msg["editedAt"] = now
        msg["editedBy"] = {"_id": msg["u"]["_id"], "username": msg["u"]["username"]}
        msg["_updatedAt"] = now
        self.broadcast_message(msg)
        return self.message_for_client(msg)

    def _visitor_own_message(self, token: str, rid: str, msg_id: str) -> tuple[Doc, Doc]:
        """The checks of ``livechat/message/:_id`` PUT/DELETE, in the server's order [LVM].

        The guest by token, the room by (rid, token) — open or closed (``findRoom``) —
        then the message by ``_id`` alone (the server does not compare its ``rid``).
        """
        visitor = self.visitors.get(token or "")
        if visitor is None:
            raise PlainError("invalid-token")
        room = self.rooms.get(rid)
        if room is None or room["t"] != "l" or room["v"]["token"] != token:
            raise PlainError("invalid-room")
        msg = self.messages.get(msg_id)
        if msg is None:
            raise PlainError("invalid-message")
        return visitor, msg

    def update_visitor_message(self, token: str, rid: str, msg_id: str, text: str) -> Doc:
        """``PUT livechat/message/:_id``: the visitor edits their own message.

        ``Livechat.updateMessage`` refuses unless ``Message_AllowEditing`` is on and the
        visitor wrote the message.
        """
        visitor, msg = self._visitor_own_message(token, rid, msg_id)
        if not self.setting("Message_AllowEditing") or msg["u"]["_id"] != visitor["_id"]:
            raise RCError("error-action-not-allowed", "Message editing not allowed",
                          {"method": "livechatUpdateMessage"})
        return self.edit_message(msg_id, text)

    def delete_visitor_message(self, token: str, rid: str, msg_id: str) -> None:
        """``DELETE livechat/message/:_id``: the visitor deletes their own message.

        ``Livechat.deleteMessage`` refuses unless ``Message_AllowDeleting`` is on and the
        visitor wrote the message; the message is then gone from the room's history.
        """
        visitor, msg = self._visitor_own_message(token, rid, msg_id)
        if not self.setting("Message_AllowDeleting") or msg["u"]["_id"] != visitor["_id"]:
            raise RCError("error-action-not-allowed", "Message deleting not allowed",
                          {"method": "livechatDeleteMessage"})
        del self.messages[msg_id]
        ids = self.room_messages.get(msg["rid"], [])
        if msg_id in ids:
            ids.remove(msg_id)
        self.deleted_messages.append(msg_id)
        log.info("message deleted _id=%s rid=%s", msg_id, msg["rid"])

    def react(self, msg_id: str, username: str, emoji: str) -> Doc:
        """Toggle a reaction: same ``_id`` re-emitted with ``reactions``."""
        msg = self.messages[msg_id]
        user = self.require_user(username)
        key = emoji if emoji.startswith(":") else f":{emoji}:"
        reactions = msg.setdefault("reactions", {})
        entry = reactions.setdefault(key, {"usernames": []})
        if user["username"] in entry["usernames"]:
            entry["usernames"].remove(user["username"])
            if not entry["usernames"]:
                del reactions[key]
        else:
            entry["usernames"].append(user["username"])
        msg["_updatedAt"] = self.now()
        self.broadcast_message(msg)
        return self.message_for_client(msg)

    def visible_messages(self, rid: str) -> list[Doc]:
        """All messages of a room in insertion order (client copies)."""
        return [self.message_for_client(self.messages[m]) for m in self.room_messages.get(rid, [])]

    # ------------------------------------------------------------------ streams
    def broadcast_message(self, msg: Doc) -> None:
        """Emit on stream-room-messages: ``__my_messages__`` (+ meta) and ``<rid>`` [LIS, NOT]."""
        if msg.get("_hidden") or msg.get("imported"):
            return
        if msg.get("t") and msg["t"] in (self.setting("Hide_System_Messages") or []):
            return
        room = self.rooms.get(msg["rid"])
        if room is None:
            return
        client_msg = self.message_for_client(msg)
        for session in list(self.sessions.values()):
            uid = session.user_id
            for name, event in list(session.subs.values()):
                if name != "stream-room-messages":
                    continue
                if event == "__my_messages__":
                    if uid is None or not self.can_access_room(room, uid):
                        continue
                    meta: Doc = {
                        "roomParticipant": self.is_member(uid, room["_id"]),
                        "roomType": room["t"],
                    }
                    if room.get("name"):
                        meta["roomName"] = room["name"]
                    session.push(stream_frame(name, event, [client_msg, meta]))
                elif event == room["_id"]:
                    session.push(stream_frame(name, event, [client_msg]))

    def notify_user(self, uid: str, event: str, args: list[Any]) -> None:
        """Emit ``<uid>/<event>`` on stream-notify-user to that user's sessions."""
        name = f"{uid}/{event}"
        for session in list(self.sessions.values()):
            if session.user_id != uid:
                continue
            for coll, ev in list(session.subs.values()):
                if coll == "stream-notify-user" and ev == name:
                    session.push(stream_frame(coll, name, _clone(args)))

    def ephemeral(self, uid: str, rid: str | None, text: str) -> None:
        """A rocket.cat ephemeral message on ``<uid>/message`` [LIS notify.ephemeralMessage]."""
        now = self.now()
        self.notify_user(
            uid,
            "message",
            [
                {
                    "_id": random_id(),
                    "rid": rid,
                    "msg": text,
                    "ts": now,
                    "_updatedAt": now,
                    "u": {"_id": "rocket.cat", "username": "rocket.cat"},
                    "private": True,
                }
            ],
        )

    def can_subscribe(self, uid: str | None, name: str, event: str) -> bool:
        """Streamer allowRead rules for the streams the sandbox serves."""
        if name == "stream-room-messages":
            if event == "__my_messages__":
                return True
            room = self.rooms.get(event)
            if room is None or uid is None:
                return False
            if self.can_access_room(room, uid):
                return True
            return room["t"] == "c" and self.has_permission(uid, "preview-c-room")
        if name == "stream-notify-user":
            return uid is not None and event.split("/", 1)[0] == uid
        if name == "stream-notify-room":
            room = self.rooms.get(event.split("/", 1)[0])
            return room is not None and self.can_access_room(room, uid)
        if name in ("stream-notify-logged",):
            return uid is not None
        return name in ("stream-notify-all", "stream-roles")

    # ------------------------------------------------------------------ omnichannel
    def agent_online(self, user: Doc) -> bool:
        """An agent is available when its livechat status is available and it is online."""
        return (
            "livechat-agent" in user["roles"]
            and user.get("statusLivechat") == "available"
            and user.get("status") != "offline"
        )

    def set_agent_status(self, username: str, status: str) -> None:
        """Put an agent online (available) or offline."""
        if status not in ("online", "offline"):
            raise ValueError("status must be 'online' or 'offline'")
        user = self.require_user(username)
        user["status"] = status
        user["statusLivechat"] = "available" if status == "online" else "not-available"
        user["_updatedAt"] = self.now()
        log.info("agent %s is now %s", username, status)

    def create_department(self, name: str, agents: Iterable[str] = ()) -> str:
        """Create an enabled department with the given agent usernames."""
        did = random_id()
        agent_ids = [self.require_user(a)["_id"] for a in agents]
        self.departments[did] = {
            "_id": did,
            "name": name,
            "enabled": True,
            "showOnRegistration": True,
            "showOnOfflineForm": True,
            "email": "",
            "description": "",
            "numAgents": len(agent_ids),
            "type": "d",
            "_updatedAt": self.now(),
            "__agents": agent_ids,
        }
        return did

    def department_by_id_or_name(self, ref: str) -> Doc | None:
        """LivechatDepartment.findOneByIdOrName."""
        if ref in self.departments:
            return self.departments[ref]
        for dep in self.departments.values():
            if dep["name"] == ref:
                return dep
        return None

    def _candidate_agents(self, department_id: str | None) -> list[Doc]:
        if department_id and department_id in self.departments:
            ids = self.departments[department_id]["__agents"]
            pool = [self.users[i] for i in ids if i in self.users]
        else:
            pool = list(self.users.values())
        return [u for u in pool if self.agent_online(u)]

    def online(self, department_id: str | None) -> bool:
        """Livechat.online(department) [QM]: accept-with-no-agents, or an agent is online."""
        if self.setting("Livechat_accept_chats_with_no_agents"):
            return True
        return bool(self._candidate_agents(department_id))

    def _open_livechat_rooms_of(self, uid: str) -> int:
        return sum(
            1
            for r in self.rooms.values()
            if r["t"] == "l" and r.get("open") and (r.get("servedBy") or {}).get("_id") == uid
        )

    def next_agent(self, department_id: str | None) -> Doc | None:
        """Auto_Selection: the online agent with the fewest open chats."""
        candidates = self._candidate_agents(department_id)
        if not candidates:
            return None
        return min(
            candidates, key=lambda u: (self._open_livechat_rooms_of(u["_id"]), u["username"])
        )

    def register_visitor(self, data: Doc) -> Doc:
        """livechat/visitor: create or update the visitor for ``token``."""
        token = data.get("token")
        if not isinstance(token, str) or not token.strip():
            raise RCError("error-invalid-token", "Token cannot be empty")
        now = self.now()
        department_id = None
        if data.get("department"):
            dep = self.department_by_id_or_name(str(data["department"]))
            if dep is None:
                raise RCError("error-invalid-department", "The provided department is invalid")
            department_id = dep["_id"]
        visitor = self.visitors.get(token)
        if visitor is None:
            count = int(self.setting("Livechat_guest_count") or 1)
            self.set_setting("Livechat_guest_count", count + 1)
            visitor = {
                "_id": random_id(),
                "token": token,
                "username": data.get("username") or f"guest-{count}",
                "status": "online",
                "ts": now,
                "livechatData": {},
            }
            self.visitors[token] = visitor
            log.info("visitor registered _id=%s", visitor["_id"])
        if data.get("name"):
            visitor["name"] = str(data["name"])
        if data.get("email"):
            visitor["visitorEmails"] = [{"address": str(data["email"])}]
        if data.get("phone"):
            visitor["phone"] = [{"phoneNumber": str(data["phone"])}]
        if department_id:
            visitor["department"] = department_id
        visitor["_updatedAt"] = now
        for room in self.rooms.values():
            if room["t"] == "l" and room.get("open") and room["v"]["token"] == token:
                room["fname"] = visitor.get("name") or visitor["username"]
        return visitor

    def open_livechat_room(
        self, token: str, rid: str | None = None, agent_id: str | None = None
    ) -> tuple[Doc, bool]:
        """livechat/room: the visitor's open room, or a new routed one [LVR, QM]."""
        visitor = self.visitors.get(token or "")
        if visitor is None:
            raise PlainError("invalid-token")
        if rid:
            room = self.rooms.get(rid)
            if (
                room is None
                or room["t"] != "l"
                or not room.get("open")
                or room["v"]["token"] != token
            ):
                raise PlainError("invalid-room")
            return room, False
        for room in self.rooms.values():
            if room["t"] == "l" and room.get("open") and room["v"]["token"] == token:
                return room, False
        # Livechat.getRoom: a department deleted since registration is dropped from the
        # visitor, then the room is routed by what the visitor record says [LVR].
        if visitor.get("department") and visitor["department"] not in self.departments:
            log.info("visitor %s: department %s is gone; unset", visitor["_id"],
                     visitor["department"])
            del visitor["department"]
        department_id = visitor.get("department")
        if not self.online(department_id):
            raise RCError("no-agent-online", "Sorry, no online agents")
        agent = None
        if agent_id and agent_id in self.users and self.agent_online(self.users[agent_id]):
            agent = self.users[agent_id]
        if agent is None and self.setting("Livechat_Routing_Method") == "Auto_Selection":
            agent = self.next_agent(department_id)
        now = self.now()
        new_rid = random_id()
        room: Doc = {
            "_id": new_rid,
            "msgs": 0,
            "usersCount": 1,
            "t": "l",
            "ts": now,
            "fname": visitor.get("name") or visitor["username"],
            "v": {
                "_id": visitor["_id"],
                "username": visitor["username"],
                "token": token,
                "status": visitor.get("status", "online"),
            },
            "cl": False,
            "open": True,
            "waitingResponse": True,
            "source": {"type": "api"},
            "queuedAt": now,
            "_updatedAt": now,
            "livechatData": {},
            "tags": [],
        }
        if department_id:
            room["departmentId"] = department_id
        self.rooms[new_rid] = room
        self.room_messages[new_rid] = []
        log.info("livechat room opened rid=%s visitor=%s", new_rid, visitor["_id"])
        self._send_livechat_webhook("LivechatSessionStart", room, "Livechat_webhook_on_start")
        if agent is not None:
            self._assign_agent(room, agent)
        else:
            self._send_livechat_webhook(
                "LivechatSessionQueued", room, "Livechat_webhook_on_chat_queued"
            )
        return room, True

    def _assign_agent(self, room: Doc, agent: Doc) -> None:
        now = self.now()
        room["servedBy"] = {"_id": agent["_id"], "username": agent["username"], "ts": now}
        room["_updatedAt"] = now
        self.add_member(room["_id"], agent["_id"])
        log.info("livechat room rid=%s served by %s", room["_id"], agent["username"])
        self._send_livechat_webhook("LivechatSessionTaken", room, "Livechat_webhook_on_chat_taken")

    def visitor_message(self, token: str, rid: str, text: str, msg_id: str | None) -> Doc | None:
        """livechat/message: store a visitor message; None when ``_id`` already exists."""
        visitor = self.visitors.get(token or "")
        if visitor is None:
            raise PlainError("invalid-token")
        room = self.rooms.get(rid)
        if room is None or room["t"] != "l" or room["v"]["token"] != token:
            raise PlainError("invalid-room")
        if not room.get("open"):
            raise PlainError("room-closed")
        if self.setting("Livechat_enable_message_character_limit"):
            limit = int(self.setting("Livechat_message_character_limit") or 0)
            if limit and len(text) > limit:
                raise PlainError("message-length-exceeds-character-limit")
        if msg_id and msg_id in self.messages:
            return None
        mentions = self._mentions(text)
        self._prevent_mention_all(mentions, visitor_id=visitor["_id"])
        if self.prevent_message is not None and self.prevent_message(text):
            log.info("visitor message %s prevented by an app", msg_id)
            return None
        now = self.now()
        name = visitor.get("name") or visitor["username"]
        msg: Doc = {
            "_id": msg_id or random_id(),
            "rid": rid,
            "msg": text,
            "token": token,
            "alias": name,
            "ts": now,
            "_updatedAt": now,
            "u": {"_id": visitor["_id"], "username": visitor["username"], "name": name},
            "mentions": mentions,
            "channels": [],
            "md": [{"type": "PARAGRAPH", "value": [{"type": "PLAIN_TEXT", "value": text}]}],
            "urls": [],
        }
        return self._store_message(room, msg, sender_token=token)

    def close_livechat_room(
        self,
        rid: str,
        *,
        by_uid: str | None = None,
        token: str | None = None,
        comment: str | None = None,
    ) -> Doc:
        """Close a livechat room by a user (agent/manager) or by its visitor."""
        room = self.rooms.get(rid)
        if room is None or room["t"] != "l":
            raise PlainError("invalid-room")
        if token is not None and room["v"]["token"] != token:
            raise PlainError("invalid-room")
        if not room.get("open"):
            raise PlainError("room-closed")
        now = self.now()
        if by_uid is not None:
            user = self.users[by_uid]
            closed_by = {"_id": user["_id"], "username": user["username"]}
            closer = "user"
            author = {"_id": user["_id"], "username": user["username"], "name": user["name"]}
        else:
            visitor = self.visitors[room["v"]["token"]]
            closed_by = {"_id": visitor["_id"], "username": visitor["username"]}
            closer = "visitor"
            author = {
                "_id": visitor["_id"],
                "username": visitor["username"],
                "name": visitor.get("name") or visitor["username"],
            }
        room.pop("open", None)
        room["closedAt"] = now
        room["closedBy"] = closed_by
        room["closer"] = closer
        room["cl"] = True
        room["_updatedAt"] = now
        close_msg: Doc = {
            "_id": random_id(),
            "rid": rid,
            "t": "livechat-close",
            "msg": comment or ("Closed by visitor" if closer == "visitor" else ""),
            "groupable": False,
            "ts": now,
            "_updatedAt": now,
            "u": author,
        }
        if closer == "visitor":
            close_msg["token"] = room["v"]["token"]
        self.messages[close_msg["_id"]] = close_msg
        self.room_messages[rid].append(close_msg["_id"])
        room["msgs"] = room.get("msgs", 0) + 1
        self.broadcast_message(close_msg)
        for uid, sub_rid in list(self.subscriptions):
            if sub_rid == rid:
                self.remove_member(rid, uid)
        log.info("livechat room closed rid=%s closer=%s", rid, closer)
        self._send_livechat_webhook("LivechatSession", room, "Livechat_webhook_on_close")
        return room

    def offline_message(self, data: Doc) -> None:
        """livechat/offline.message: keep it and send the offline-message webhook [CRM]."""
        entry = {
            "name": data["name"],
            "email": data["email"],
            "message": data["message"],
            "department": data.get("department"),
            "ts": self.now(),
        }
        self.offline_messages.append(entry)
        if self.setting("Livechat_webhook_on_offline_msg") and self.setting("Livechat_webhookUrl"):
            self.webhook_sink(
                "LivechatOfflineMessage",
                {
                    "type": "LivechatOfflineMessage",
                    "sentAt": entry["ts"],
                    "visitor": {"name": entry["name"], "email": entry["email"]},
                    "message": entry["message"],
                },
            )

    # ---------------------------------------------------------------- CRM webhooks
    def _after_omnichannel_message(self, room: Doc, msg: Doc, *, from_visitor: bool) -> None:
        """afterOmnichannelSaveMessage → markRoomResponded, sendToCRM('Message') [CRM]."""
        if room.get("v", {}).get("token") is None:
            return
        self._mark_room_responded(room, msg)
        if msg.get("token") and not self.setting("Livechat_webhook_on_visitor_message"):
            return
        if not msg.get("token") and not self.setting("Livechat_webhook_on_agent_message"):
            return
        if msg.get("t"):
            return
        self._send_livechat_webhook("Message", room, None, messages=[msg])

    def _mark_room_responded(self, room: Doc, msg: Doc) -> None:
        """markRoomResponded: any non-system message not from the visitor is a response.

        The author is not checked against ``servedBy``: a bot's note or echo counts, and
        the first one becomes ``responseBy`` (first-response time) [MRR].
        """
        if msg.get("t") or msg.get("token"):
            return
        if room.get("responseBy"):
            room["responseBy"]["lastMessageTs"] = self.now()
        if room.get("waitingResponse"):
            room.setdefault("responseBy", {
                "_id": msg["u"]["_id"], "username": msg["u"]["username"],
                "firstResponseTs": msg["ts"], "lastMessageTs": msg["ts"],
            })
            room.pop("waitingResponse", None)

    def _crm_message(self, room: Doc, msg: Doc) -> Doc:
        out: Doc = {
            "_id": msg["_id"],
            "username": msg["u"]["username"],
            "msg": msg.get("msg", ""),
            "ts": msg["ts"],
            "rid": msg["rid"],
            "_updatedAt": msg.get("_updatedAt"),
            "u": _clone(msg["u"]),
        }
        if msg.get("blocks"):
            out["blocks"] = _clone(msg["blocks"])
        if msg.get("editedAt"):
            out["editedAt"] = msg["editedAt"]
        if msg["u"]["username"] != room["v"]["username"]:
            out["agentId"] = msg["u"]["_id"]
        if msg.get("t") == "livechat-close":
            out["closingMessage"] = True
        if msg.get("file"):
            out["file"] = _clone(msg["file"])
            out["attachments"] = _clone(msg.get("attachments", []))
            out["fileUpload"] = _clone(msg.get("__fileUpload"))
        return out

    def guest_info(self, room: Doc) -> Doc:
        """getLivechatRoomGuestInfo [GUI]."""
        visitor = self.visitors.get(room["v"]["token"], {})
        v: Doc = {
            "_id": visitor.get("_id"),
            "token": visitor.get("token"),
            "name": visitor.get("name"),
            "username": visitor.get("username"),
            "department": visitor.get("department"),
            "customFields": _clone(visitor.get("livechatData", {})),
        }
        if visitor.get("visitorEmails"):
            v["email"] = _clone(visitor["visitorEmails"])
        if visitor.get("phone"):
            v["phone"] = _clone(visitor["phone"])
        out: Doc = {
            "_id": room["_id"],
            "label": room.get("fname"),
            "topic": room.get("topic"),
            "createdAt": room["ts"],
            "lastMessageAt": room.get("lm"),
            "tags": list(room.get("tags") or []),
            "customFields": _clone(room.get("livechatData", {})),
            "visitor": {k: val for k, val in v.items() if val is not None},
        }
        served = room.get("servedBy")
        if served and served["_id"] in self.users:
            agent = self.users[served["_id"]]
            out["agent"] = {
                "_id": agent["_id"],
                "username": agent["username"],
                "name": agent["name"],
                "email": agent["emails"][0]["address"] if agent.get("emails") else None,
            }
        if room.get("crmData") is not None:
            out["crmData"] = _clone(room["crmData"])
        return {k: val for k, val in out.items() if val is not None}

    def _send_livechat_webhook(
        self, kind: str, room: Doc, gate: str | None, *, messages: list[Doc] | None = None
    ) -> None:
        if gate is not None and not self.setting(gate):
            return
        if not self.setting("Livechat_webhookUrl"):
            return
        payload = self.guest_info(room)
        payload["type"] = kind
        if kind == "LivechatSession":
            payload["departmentId"] = room.get("departmentId")
            payload["servedBy"] = _clone(room.get("servedBy"))
            payload["closedAt"] = room.get("closedAt")
            payload["closedBy"] = _clone(room.get("closedBy"))
            payload["closer"] = room.get("closer")
            payload = {k: v for k, v in payload.items() if v is not None}
            messages = [
                self.messages[m]
                for m in self.room_messages.get(room["_id"], [])
                if not self.messages[m].get("t") or self.messages[m]["t"] == "livechat-close"
            ]
            messages.sort(key=lambda m: m["ts"])
        elif kind == "LivechatSessionTaken":
            payload["servedBy"] = _clone(room.get("servedBy"))
        if messages is not None:
            payload["messages"] = [self._crm_message(room, m) for m in messages]
        self.webhook_sink(kind, payload)

    def store_crm_data(self, rid: str, data: Any) -> None:
        """A 200 answer's body is stored on the room as ``crmData`` [CRM]."""
        room = self.rooms.get(rid)
        if room is not None:
            room["crmData"] = data
