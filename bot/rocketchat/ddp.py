"""Sans-I/O DDP (Meteor's Distributed Data Protocol) as Rocket.Chat speaks it.

Plain functions build the frames a client sends and parse the frames a server sends;
nothing here touches a socket, so every rule is testable without a server
(protocols/rocketchat.md §1). EJSON dates (``{"$date": ms}``) are converted both ways.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit, urlunsplit

DDP_VERSION = "1"
MY_MESSAGES = "__my_messages__"
STREAM_ROOM_MESSAGES = "stream-room-messages"


# --- EJSON dates -------------------------------------------------------------------------


def to_ejson_date(value: datetime) -> dict[str, int]:
    """EJSON form of a datetime: ``{"$date": <epoch ms>}``; a naive datetime is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return {"$date": round(value.timestamp() * 1000)}


def parse_date(value: Any) -> datetime | None:
    """Aware UTC datetime from an EJSON date, an ISO-8601 string (REST) or epoch ms.

    Returns None for anything else, so a malformed field never breaks message handling.
    """
    if isinstance(value, dict) and "$date" in value:
        value = value["$date"]
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(value / 1000, tz=UTC)
        except (OverflowError, OSError, ValueError):
            return None
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            return None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    return None


def iso_date(value: datetime) -> str:
    """ISO-8601 UTC with milliseconds and a ``Z`` suffix, the shape Rocket.Chat's REST API uses."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def _ejson_default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return to_ejson_date(obj)
    raise TypeError(f"not EJSON-serialisable: {type(obj).__name__}")


# --- credentials / URLs ------------------------------------------------------------------


def password_digest(password: str) -> str:
    """Lowercase hex SHA-256 of the UTF-8 password, as the DDP ``login`` method expects."""
    return hashlib.sha256(password.encode("utf-8")).hexdigest()


def websocket_url(http_url: str) -> str:
    """The realtime endpoint for a server URL: ``http(s)://host[/prefix]`` → ``ws(s)://host[/prefix]/websocket``.

    Raises ValueError for a URL that is neither http(s) nor ws(s).
    """
    parts = urlsplit(http_url.strip())
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError("Rocket.Chat URL must start with http:// or https://")
    path = parts.path.rstrip("/")
    if not path.endswith("/websocket"):
        path += "/websocket"
    return urlunsplit((scheme, parts.netloc, path, "", ""))


# --- frames the client sends -------------------------------------------------------------


def encode(frame: dict[str, Any]) -> str:
    """Serialise a frame to text, turning datetimes into EJSON dates."""
    return json.dumps(frame, default=_ejson_default, separators=(",", ":"))


def connect_frame() -> dict[str, Any]:
    """The mandatory first client frame."""
    return {"msg": "connect", "version": DDP_VERSION, "support": [DDP_VERSION]}


def ping_frame(ping_id: str | None = None) -> dict[str, Any]:
    """A keepalive ping (the server answers ``pong`` echoing the id)."""
    frame: dict[str, Any] = {"msg": "ping"}
    if ping_id is not None:
        frame["id"] = ping_id
    return frame


def pong_frame(ping_id: str | None = None) -> dict[str, Any]:
    """The answer to a server ping, echoing its id when it had one."""
    frame: dict[str, Any] = {"msg": "pong"}
    if ping_id is not None:
        frame["id"] = ping_id
    return frame


def method_frame(call_id: str, method: str, params: list[Any]) -> dict[str, Any]:
    """A method call; the server answers ``result`` with the same id."""
    return {"msg": "method", "id": call_id, "method": method, "params": params}


def sub_frame(sub_id: str, name: str, params: list[Any]) -> dict[str, Any]:
    """A subscription; the server answers ``ready`` (listing the id) or ``nosub``."""
    return {"msg": "sub", "id": sub_id, "name": name, "params": params}


def unsub_frame(sub_id: str) -> dict[str, Any]:
    """Cancel a subscription."""
    return {"msg": "unsub", "id": sub_id}


def my_messages_sub(sub_id: str) -> dict[str, Any]:
    """Subscribe to every message the logged-in user can see (``__my_messages__``)."""
    return sub_frame(sub_id, STREAM_ROOM_MESSAGES, [MY_MESSAGES, False])


def login_password_params(user: str, password: str) -> list[dict[str, Any]]:
    """``login`` params for a password login, sending only the SHA-256 digest.

    A value containing ``@`` is sent as an e-mail address, anything else as a username.
    """
    selector = {"email": user} if "@" in user else {"username": user}
    return [
        {
            "user": selector,
            "password": {"digest": password_digest(password), "algorithm": "sha-256"},
        }
    ]


def login_resume_params(token: str) -> list[dict[str, Any]]:
    """``login`` params for a resume token or personal access token."""
    return [{"resume": token}]


# --- frames the server sends -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MethodError:
    """A Meteor.Error as serialised in ``result``/``nosub`` frames."""

    error: str | int | None
    reason: str | None
    raw: dict[str, Any] = field(repr=False)

    @classmethod
    def from_raw(cls, raw: Any) -> MethodError:
        if not isinstance(raw, dict):
            return cls(error=None, reason=str(raw), raw={})
        return cls(error=raw.get("error"), reason=raw.get("reason") or raw.get("message"), raw=raw)


@dataclass(frozen=True, slots=True)
class Greeting:
    """The server's first frame (``{"server_id": "0"}``); carries nothing we need."""


@dataclass(frozen=True, slots=True)
class Connected:
    session: str | None


@dataclass(frozen=True, slots=True)
class Failed:
    """The server refused our DDP version."""

    version: str | None


@dataclass(frozen=True, slots=True)
class Ping:
    id: str | None


@dataclass(frozen=True, slots=True)
class Pong:
    id: str | None


@dataclass(frozen=True, slots=True)
class Result:
    id: str
    result: Any
    error: MethodError | None


@dataclass(frozen=True, slots=True)
class Updated:
    methods: list[str]


@dataclass(frozen=True, slots=True)
class Ready:
    subs: list[str]


@dataclass(frozen=True, slots=True)
class NoSub:
    id: str
    error: MethodError | None


@dataclass(frozen=True, slots=True)
class Changed:
    """A collection change; streams use ``fields = {eventName, args}``."""

    collection: str
    id: str | None
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Added:
    collection: str
    id: str | None
    fields: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Removed:
    collection: str
    id: str | None


@dataclass(frozen=True, slots=True)
class ServerError:
    """``{"msg": "error"}``: the server could not parse or accept a frame."""

    reason: str | None
    offending: Any


@dataclass(frozen=True, slots=True)
class Unknown:
    raw: dict[str, Any]


Frame = (
    Greeting | Connected | Failed | Ping | Pong | Result | Updated | Ready | NoSub | Changed
    | Added | Removed | ServerError | Unknown
)


class ProtocolError(Exception):
    """The server sent something that is not a DDP frame."""


def parse(text: str | bytes) -> Frame:
    """Parse one server frame. Raises ProtocolError for non-JSON or non-object payloads."""
    try:
        raw = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError("frame is not JSON") from exc
    if not isinstance(raw, dict):
        raise ProtocolError("frame is not a JSON object")
    return parse_obj(raw)


def parse_obj(raw: dict[str, Any]) -> Frame:
    """Classify an already-decoded frame."""
    kind = raw.get("msg")
    if kind is None or kind == "server_id":
        return Greeting()
    if kind == "connected":
        return Connected(session=raw.get("session"))
    if kind == "failed":
        return Failed(version=raw.get("version"))
    if kind == "ping":
        return Ping(id=raw.get("id"))
    if kind == "pong":
        return Pong(id=raw.get("id"))
    if kind == "result":
        err = raw.get("error")
        return Result(
            id=str(raw.get("id")),
            result=raw.get("result"),
            error=MethodError.from_raw(err) if err is not None else None,
        )
    if kind == "updated":
        return Updated(methods=list(raw.get("methods") or []))
    if kind == "ready":
        return Ready(subs=[str(s) for s in raw.get("subs") or []])
    if kind == "nosub":
        err = raw.get("error")
        return NoSub(id=str(raw.get("id")), error=MethodError.from_raw(err) if err else None)
    if kind == "changed":
        return Changed(
            collection=str(raw.get("collection")), id=raw.get("id"), fields=raw.get("fields") or {}
        )
    if kind == "added":
        return Added(
            collection=str(raw.get("collection")), id=raw.get("id"), fields=raw.get("fields") or {}
        )
    if kind == "removed":
        return Removed(collection=str(raw.get("collection")), id=raw.get("id"))
    if kind == "error":
        return ServerError(reason=raw.get("reason"), offending=raw.get("offendingMessage"))
    return Unknown(raw=raw)


def stream_message(frame: Frame) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``(message, meta)`` from a ``__my_messages__`` stream event, else None.

    ``meta`` is the server's ``{roomParticipant, roomType, roomName}`` (empty if absent).
    """
    if not isinstance(frame, Changed) or frame.collection != STREAM_ROOM_MESSAGES:
        return None
    if frame.fields.get("eventName") != MY_MESSAGES:
        return None
    args = frame.fields.get("args")
    if not isinstance(args, list) or not args or not isinstance(args[0], dict):
        return None
    meta = args[1] if len(args) > 1 and isinstance(args[1], dict) else {}
    return args[0], meta
