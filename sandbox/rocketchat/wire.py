"""Wire helpers shared by the DDP and REST faces of the sandbox Rocket.Chat.

Dates are kept as aware ``datetime`` objects inside documents and rendered per transport:
EJSON ``{"$date": ms}`` on DDP, ISO-8601 strings with milliseconds and ``Z`` on REST
(protocols/rocketchat.md §7 "Timestamps").
"""

from __future__ import annotations

import json
import secrets
from datetime import UTC, datetime
from typing import Any

# Meteor's Random.id() alphabet (no look-alike characters).
_UNMISTAKABLE = "23456789ABCDEFGHJKLMNPQRSTWXYZabcdefghijkmnopqrstuvwxyz"


def random_id(length: int = 17) -> str:
    """A Meteor-style random id (17 unmistakable characters by default)."""
    return "".join(secrets.choice(_UNMISTAKABLE) for _ in range(length))


def random_secret() -> str:
    """A Meteor-style 43-character secret (login tokens, PATs)."""
    return secrets.token_urlsafe(32)


def from_epoch(seconds: float) -> datetime:
    """An aware UTC datetime truncated to milliseconds, as Mongo stores dates."""
    ms = int(seconds * 1000)
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def to_ms(value: datetime) -> int:
    """Epoch milliseconds of an aware datetime."""
    return round(value.timestamp() * 1000)


def iso(value: datetime) -> str:
    """JavaScript ``Date.toJSON()`` rendering: ``2025-01-01T10:00:00.000Z``."""
    value = value.astimezone(UTC)
    return value.strftime("%Y-%m-%dT%H:%M:%S.") + f"{value.microsecond // 1000:03d}Z"


def parse_date(raw: str | None) -> datetime | None:
    """Parse what ``new Date(x)`` would accept from a query string: ISO or epoch ms."""
    if raw is None or raw == "":
        return None
    text = raw.strip()
    if text.lstrip("-").isdigit():
        return datetime.fromtimestamp(int(text) / 1000, tz=UTC)
    if text.endswith("Z"):
        text = text[:-1] + "+00:00"
    # A literal '+' in an unencoded query string arrives as a space.
    if len(text) > 19 and text[-6] == " ":
        text = text[:-6] + "+" + text[-5:]
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed


def _ejson_default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return {"$date": to_ms(obj)}
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    raise TypeError(f"not serialisable: {type(obj).__name__}")


def _rest_default(obj: Any) -> Any:
    if isinstance(obj, datetime):
        return iso(obj)
    if isinstance(obj, set | frozenset | tuple):
        return list(obj)
    raise TypeError(f"not serialisable: {type(obj).__name__}")


def ejson_dumps(obj: Any) -> str:
    """Serialise a DDP frame (dates as ``{"$date": ms}``)."""
    return json.dumps(obj, default=_ejson_default, separators=(",", ":"))


def rest_dumps(obj: Any) -> str:
    """Serialise a REST body or webhook payload (dates as ISO strings)."""
    return json.dumps(obj, default=_rest_default, separators=(",", ":"))


def rest_json(obj: Any) -> Any:
    """A plain-JSON copy of ``obj`` with REST date rendering (for logs and tests)."""
    return json.loads(rest_dumps(obj))


def _revive(obj: Any) -> Any:
    if isinstance(obj, dict):
        if set(obj) == {"$date"} and isinstance(obj["$date"], int | float):
            return datetime.fromtimestamp(obj["$date"] / 1000, tz=UTC)
        return {k: _revive(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_revive(v) for v in obj]
    return obj


def ejson_loads(text: str | bytes) -> Any:
    """Parse a DDP frame, turning ``{"$date": ms}`` back into datetimes."""
    return _revive(json.loads(text))


class RCError(Exception):
    """A ``Meteor.Error(error, reason, details)`` as thrown by server code.

    ``status`` is the HTTP status REST uses for it (``failure()`` is 400).
    """

    def __init__(
        self,
        error: str | int,
        reason: str | None = None,
        details: dict[str, Any] | None = None,
        *,
        status: int = 400,
    ) -> None:
        super().__init__(f"{reason} [{error}]" if reason else f"[{error}]")
        self.error = error
        self.reason = reason
        self.details = details
        self.status = status

    @property
    def message(self) -> str:
        """Meteor.Error's ``message``: ``"<reason> [<error>]"``."""
        return f"{self.reason} [{self.error}]" if self.reason else f"[{self.error}]"

    def meteor(self) -> dict[str, Any]:
        """The DDP serialisation of the error (``result.error`` / ``nosub.error``)."""
        out: dict[str, Any] = {"isClientSafe": True, "error": self.error}
        if self.reason is not None:
            out["reason"] = self.reason
        out["message"] = self.message
        out["errorType"] = "Meteor.Error"
        if self.details is not None:
            out["details"] = self.details
        return out

    def rest(self) -> dict[str, Any]:
        """The REST ``failure()`` envelope."""
        out: dict[str, Any] = {"success": False, "error": self.message, "errorType": self.error}
        if self.details is not None:
            out["details"] = self.details
        return out


class PlainError(RCError):
    """A plain ``throw new Error('code')``: REST shows the bare string; DDP hides it as 500."""

    def __init__(self, error: str, *, status: int = 400) -> None:
        super().__init__(error, None, None, status=status)

    @property
    def message(self) -> str:
        return str(self.error)

    def meteor(self) -> dict[str, Any]:
        return RCError(500, "Internal server error").meteor()

    def rest(self) -> dict[str, Any]:
        return {"success": False, "error": self.error}


class Forbidden(RCError):
    """``API.v1.forbidden()``: 403 for a missing route permission."""

    def __init__(self) -> None:
        super().__init__(
            "error-unauthorized",
            "User does not have the permissions required for this action",
            status=403,
        )

    def rest(self) -> dict[str, Any]:
        return {"success": False, "error": self.message}
