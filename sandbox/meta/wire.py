"""Constants, error catalogue, records and wire helpers shared by the sandbox Meta."""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

# Lifetimes (seconds). Short-lived user tokens last 1-2 h, long-lived ~60 days (M14);
# Page tokens derived from a long-lived user token never expire (M15).
CODE_LIFETIME = 600
SHORT_TOKEN_LIFETIME = 3600
LONG_TOKEN_LIFETIME = 5183944
DATA_ACCESS_LIFETIME = 90 * 86400
WINDOW_SECONDS = 24 * 3600
HUMAN_AGENT_SECONDS = 7 * 86400
MAX_TEXT_BYTES = 1000

DEFAULT_USER_NAME = "Sandbox Admin"
DEFAULT_PAGE_ID = "100000000000001"
DEFAULT_PAGE_NAME = "Sandbox Shop"
DEFAULT_IG_ID = "17841400000000001"
DEFAULT_IG_USERNAME = "sandboxshop"

_VERSION_RE = re.compile(r"v\d+\.\d+")
_SUBSCRIBABLE_PAGE_FIELDS = frozenset(
    {
        "messages",
        "messaging_postbacks",
        "messaging_optins",
        "message_deliveries",
        "message_reads",
        "message_echoes",
        "message_reactions",
        "messaging_referrals",
        "messaging_handovers",
        "messaging_policy_enforcement",
        "messaging_account_linking",
        "messaging_feedback",
        "standby",
        "feed",
        "mention",
        "name",
        "picture",
        "inbox_labels",
        "response_feedback",
    }
)
_KNOWN_SCOPES = frozenset(
    {
        "public_profile",
        "email",
        "instagram_basic",
        "instagram_manage_messages",
        "instagram_manage_comments",
        "instagram_content_publish",
        "pages_manage_metadata",
        "pages_show_list",
        "pages_read_engagement",
        "pages_messaging",
        "pages_manage_posts",
        "pages_read_user_content",
        "pages_manage_engagement",
        "business_management",
    }
)
_PAGE_TASKS = ["ADVERTISE", "ANALYZE", "CREATE_CONTENT", "MESSAGING", "MODERATE", "MANAGE"]
_REACTION_NAMES = {
    "❤️": "love",
    "❤": "love",
    "😍": "love",
    "😆": "laugh",
    "😂": "laugh",
    "😮": "wow",
    "😢": "sad",
    "😠": "angry",
    "👍": "like",
}

# code -> (HTTP status, error type, message, subcode, is_transient). Messages follow the
# texts quoted in protocols/instagram.md §3.4; 1/2/4/17/32/613/1200 carry is_transient
# like Graph's own transient errors.
_CATALOG: dict[int, tuple[int, str, str, int | None, bool]] = {
    1: (500, "OAuthException", "An unknown error occurred", None, True),
    2: (
        500,
        "OAuthException",
        "An unexpected error has occurred. Please retry your request later.",
        None,
        True,
    ),
    4: (400, "OAuthException", "(#4) Application request limit reached", None, True),
    10: (
        400,
        "OAuthException",
        "(#10) This message is sent outside of allowed window.",
        2534022,
        False,
    ),
    17: (400, "OAuthException", "(#17) User request limit reached", None, True),
    32: (400, "OAuthException", "(#32) Page request limit reached", None, True),
    100: (400, "OAuthException", "(#100) No matching user found", 2018001, False),
    190: (400, "OAuthException", "Error validating access token: Session has expired.", 463, False),
    200: (
        403,
        "OAuthException",
        "(#200) App does not have Advanced Access to instagram_manage_messages permission,"
        " and recipient user does not have role on app",
        None,
        False,
    ),
    230: (
        400,
        "OAuthException",
        "(#230) User consent is required to access user profile",
        None,
        False,
    ),
    551: (400, "OAuthException", "(#551) This person isn't available right now.", 1545041, False),
    613: (
        400,
        "OAuthException",
        "(#613) Calls to this API have exceeded the rate limit.",
        None,
        True,
    ),
    1200: (
        500,
        "OAuthException",
        "(#1200) Temporary send message failure. Please try again later",
        None,
        True,
    ),
    36103: (
        400,
        "OAuthException",
        "(#36103) Messaging is not available for this Instagram account.",
        None,
        False,
    ),
}

# Named errors for codes whose meaning depends on subcode or message (the Send API error
# codes page; live texts quoted by peers): name -> (code, subcode, HTTP status, message,
# is_transient). Inject by name: ``inject_send_errors(igsid, ["window_closed"])``.
_VARIANTS: dict[str, tuple[int, int | None, int, str, bool]] = {
    # Instagram's window refusal (fazer-ai/chatwoot#674 stores this text).
    "window_closed": (10, 2534022, 400,
                      "(#10) This message is sent outside of allowed window.", False),
    # Messenger's subcode for the same refusal.
    "messenger_window_closed": (
        10, 2018278, 400,
        "(#10) This message is sent outside of allowed window. Learn more about the new "
        "policy here: https://developers.facebook.com/docs/messenger-platform/policy-overview",
        False),
    # The rest of the code-10 permission family: the app may not do this at all.
    "permission_denied": (10, None, 403,
                          "(#10) Application does not have permission for this action", False),
    # chatwoot/chatwoot#11578: the app has only Standard Access.
    "no_advanced_access": (200, None, 403, _CATALOG[200][2], False),
    # chatwoot/chatwoot#14932: a day of this from every endpoint during a Meta incident.
    "unsupported_request": (100, None, 400, "Unsupported request - method type: post", False),
    "unknown_error": (1, None, 500, _CATALOG[1][2], True),
}

# Typed request-storage keys (aiohttp >= 3.12 warns about plain strings).
_REC: Any = web.RequestKey("rec", dict) if hasattr(web, "RequestKey") else "rec"
_JSON: Any = web.RequestKey("json", object) if hasattr(web, "RequestKey") else "json"

ErrorSpec = int | str | tuple[int, int | None] | Mapping[str, Any]


class _GraphFail(Exception):
    """A Graph error to answer with Meta's envelope; raised inside request handlers."""

    def __init__(
        self,
        code: int,
        message: str | None = None,
        *,
        subcode: int | None = None,
        status: int | None = None,
        type: str | None = None,
        transient: bool | None = None,
        auth_kind: str | None = None,
    ) -> None:
        cat = _CATALOG.get(code, (400, "OAuthException", f"(#{code}) Error", None, False))
        self.code = code
        self.message = message if message is not None else cat[2]
        self.subcode = subcode if (subcode is not None or message is not None) else cat[3]
        self.status = status if status is not None else cat[0]
        self.type = type or cat[1]
        self.transient = cat[4] if transient is None else transient
        self.auth_kind = auth_kind
        super().__init__(f"graph error {code}/{self.subcode}")

    @classmethod
    def from_spec(cls, spec: ErrorSpec) -> _GraphFail:
        """Build from an injection spec: ``613``, a :data:`_VARIANTS` name,
        ``(551, 1545041)`` or a dict of fields."""
        if isinstance(spec, int):
            return cls(spec)
        if isinstance(spec, str):
            code, sub, status, message, transient = _VARIANTS[spec]
            return cls(code, message, subcode=sub, status=status, transient=transient)
        if isinstance(spec, tuple):
            code, sub = spec
            fail = cls(code)
            fail.subcode = sub
            return fail
        spec = dict(spec)
        fail = cls(int(spec.pop("code")))
        for key in ("message", "subcode", "status", "type"):
            if key in spec:
                setattr(fail, key, spec[key])
        return fail


@dataclass
class _Page:
    id: str
    name: str
    ig_id: str | None = None
    ig_username: str | None = None
    category: str = "Shopping & retail"


@dataclass
class _User:
    id: str
    name: str
    page_ids: list[str]
    declined: list[str] = field(default_factory=list)


@dataclass
class _Token:
    value: str
    kind: str  # "user" | "page" | "app"
    user_id: str | None
    page_id: str | None
    scopes: list[str]
    issued_at: float
    expires_at: float  # 0 means never
    long_lived: bool = False
    parent: str | None = None  # the user token a Page token was derived from
    state: str = "valid"  # "valid" | "expired" | "revoked"


@dataclass
class _Code:
    value: str
    redirect_uri: str
    user_id: str
    scopes: list[str]
    expires_at: float
    used: bool = False


def _parse_fields(spec: str | None) -> dict[str, Any] | None:
    """Parse Graph's ``fields`` syntax (``a,b{c,d},e.limit(5)``) into a nested dict."""
    if not spec:
        return None
    text = re.sub(r"\.\w+\([^)]*\)", "", spec)  # modifiers such as .limit(5) are ignored
    root: dict[str, Any] = {}
    stack = [root]
    name = ""
    for ch in text + ",":
        if ch == "{":
            child: dict[str, Any] = {}
            stack[-1][name.strip()] = child
            stack.append(child)
            name = ""
        elif ch in ",}":
            if name.strip():
                stack[-1][name.strip()] = None
            name = ""
            if ch == "}" and len(stack) > 1:
                stack.pop()
        else:
            name += ch
    return root


def _select(obj: dict[str, Any], fields: dict[str, Any] | None, default: Iterable[str]) -> dict:
    """Keep the requested fields (``id`` always), like Graph's field selection."""
    wanted = fields if fields is not None else {k: None for k in default}
    result: dict[str, Any] = {}
    for key, sub in wanted.items():
        if key not in obj:
            continue
        value = obj[key]
        if isinstance(value, dict) and sub is not None:
            value = {k: v for k, v in value.items() if k in sub or k == "id"}
        elif isinstance(value, dict) and sub is None:
            value = {"id": value["id"]} if "id" in value else value
        result[key] = value
    if "id" in obj:
        result["id"] = obj["id"]
    return result


def _compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"))


def _ms(ts: float | None, now: float) -> int:
    """Wire timestamps are ms; accept seconds too (anything below 1e11)."""
    if ts is None:
        return int(now * 1000)
    return int(ts * 1000) if ts < 1e11 else int(ts)


def _seconds(ts: float) -> float:
    return ts / 1000.0 if ts >= 1e11 else float(ts)


def encode_webhook(payload: Mapping[str, Any]) -> bytes:
    """Serialise a webhook like Meta: compact, ``\\uXXXX`` for non-ASCII, ``\\/`` for slashes."""
    text = json.dumps(payload, ensure_ascii=True, separators=(",", ":"))
    # "/" only occurs inside JSON strings, where "\/" is a valid escape Meta uses.
    return text.replace("/", "\\/").encode("ascii")


def sign_webhook(raw: bytes, secret: str) -> dict[str, str]:
    """The two signature headers Meta puts on every webhook POST (M1, M3, CW#11983)."""
    key = secret.encode()
    return {
        "X-Hub-Signature": "sha1=" + hmac.new(key, raw, hashlib.sha1).hexdigest(),
        "X-Hub-Signature-256": "sha256=" + hmac.new(key, raw, hashlib.sha256).hexdigest(),
    }


def appsecret_proof(token: str, app_secret: str) -> str:
    """hex HMAC-SHA256(key=app_secret, msg=access_token), as Graph expects."""
    return hmac.new(app_secret.encode(), token.encode(), hashlib.sha256).hexdigest()


def as_standby(payload: dict[str, Any]) -> dict[str, Any]:
    """Move every entry's ``messaging`` items to ``standby`` (another app owns the thread)."""
    out = json.loads(json.dumps(payload))
    for entry in out.get("entry", []):
        if "messaging" in entry:
            entry["standby"] = entry.pop("messaging")
    return out
