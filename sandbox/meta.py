"""Loopback stand-in for Meta: Facebook Login dialog, Graph API and Instagram webhooks.

Written from /work/shared/protocols/instagram.md only (never from the bot), so the bot's
tests check the bot against an independent reading of Meta's wire format.

`SandboxMeta` runs a real aiohttp server on 127.0.0.1:0 in its own daemon thread and event
loop. Everything a test or `rc-instagram demo` needs to steer it (login user, pages,
profiles, injected errors, clock, token expiry, webhook delivery) is a synchronous,
thread-safe method that only touches in-memory state under one lock.

Served (``{v}`` must equal ``api_version`` on the Graph side; the dialog accepts any):

- ``GET|POST /{v}/dialog/oauth``          Facebook Login dialog (HTML form, 302 back)
- ``GET /{v}/oauth/access_token``         code exchange, fb_exchange_token, client_credentials
- ``GET /{v}/debug_token``                token introspection (app token)
- ``GET /{v}/me``, ``/{v}/me/accounts``   user / page nodes, pages with Page tokens
- ``GET|DELETE /{v}/me/permissions``      granted scopes / revoke the whole login
- ``GET|POST|DELETE /{v}/{page}/subscribed_apps``
- ``GET /{v}/{igsid}``                    Instagram user profile (230 without consent)
- ``POST /{v}/{page}/messages``, ``/{v}/me/messages``   Send API with window enforcement

Times: control methods take epoch *seconds*; webhook builders take ``ts`` in epoch
*milliseconds* like the wire (a value below 1e11 is taken as seconds and converted).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import json
import logging
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import aiohttp
import requests
from aiohttp import web

log = logging.getLogger("sandbox.meta")

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

# Typed request-storage keys (aiohttp >= 3.12 warns about plain strings).
_REC: Any = web.RequestKey("rec", dict) if hasattr(web, "RequestKey") else "rec"
_JSON: Any = web.RequestKey("json", object) if hasattr(web, "RequestKey") else "json"

ErrorSpec = int | tuple[int, int | None] | Mapping[str, Any]


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
        """Build from an injection spec: ``613``, ``(551, 1545041)`` or a dict of fields."""
        if isinstance(spec, int):
            return cls(spec)
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


class SandboxMeta:
    """Facebook Login + Graph API + Instagram webhooks on a loopback port."""

    def __init__(
        self,
        *,
        app_id: str = "000000000000000",
        app_secret: str = "sandbox-app-secret",
        api_version: str = "v21.0",
        app_name: str = "rc-instagram (sandbox)",
        require_proof: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.app_id = app_id
        self.app_secret = app_secret
        self.api_version = api_version
        self.app_name = app_name
        self.require_proof = require_proof
        self._lock = threading.RLock()
        self._clock = clock
        self._offset = 0.0
        self._latency = 0.0
        self._pages: dict[str, _Page] = {}
        self._users: dict[str, _User] = {}
        self._login_user_id = ""
        self._redirect_uris: set[str] | None = None
        self._codes: dict[str, _Code] = {}
        self._tokens: dict[str, _Token] = {}
        self._page_tokens: dict[tuple[str, str], str] = {}  # (user token, page id) -> token
        self._revoked_users: set[str] = set()
        self._subscriptions: dict[str, list[str]] = {}
        self._profiles: dict[str, dict[str, Any]] = {}  # igsid -> profile incl. private keys
        self._last_inbound: dict[tuple[str, str], float] = {}  # (ig id, igsid) -> seconds
        self._send_errors: dict[str, list[ErrorSpec]] = {}
        self._endpoint_errors: dict[str, list[ErrorSpec]] = {}
        self._calls: list[dict[str, Any]] = []
        self._sent: list[dict[str, Any]] = []
        self._deliveries: list[dict[str, Any]] = []
        self._webhook_url: str | None = None
        self._echoes = True
        self._echo_delay = 0.0
        self._pending = 0
        self._idle = threading.Condition(self._lock)
        self._igsid_seq = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._port = 0
        self.set_login_user(
            DEFAULT_USER_NAME,
            pages=[
                {
                    "id": DEFAULT_PAGE_ID,
                    "name": DEFAULT_PAGE_NAME,
                    "instagram_business_account": {
                        "id": DEFAULT_IG_ID,
                        "username": DEFAULT_IG_USERNAME,
                    },
                }
            ],
        )

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> SandboxMeta:
        """Start the server thread; returns once the port is listening."""
        if self._thread is not None:
            raise RuntimeError("SandboxMeta already started")
        ready = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            asyncio.set_event_loop(loop)
            self._loop = loop
            try:
                loop.run_until_complete(self._astart())
            except BaseException as exc:  # surfaced to start()'s caller
                failure.append(exc)
                ready.set()
                loop.close()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(self._astop())
                loop.close()

        self._thread = threading.Thread(target=run, name="sandbox-meta", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            self._thread = None
            raise failure[0]
        log.info("sandbox meta listening on %s (api %s)", self.graph_url, self.api_version)
        return self

    def stop(self) -> None:
        """Stop the server and join its thread (idempotent)."""
        thread, loop = self._thread, self._loop
        if thread is None or loop is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = None
        self._loop = None
        log.info("sandbox meta stopped")

    def __enter__(self) -> SandboxMeta:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def graph_url(self) -> str:
        """Base URL standing in for https://graph.facebook.com (no version)."""
        return f"http://127.0.0.1:{self._port}"

    @property
    def dialog_url(self) -> str:
        """Base URL standing in for https://www.facebook.com (no version)."""
        return f"http://127.0.0.1:{self._port}"

    async def _astart(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_route("*", "/dialog/oauth", self._dialog)
        app.router.add_route("*", r"/{version:v\d+\.\d+}/dialog/oauth", self._dialog)
        app.router.add_route("*", "/{tail:.*}", self._graph)
        # access_log=None: the default access log prints query strings, i.e. tokens.
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]

    async def _astop(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        with self._lock:
            self._pending = 0
            self._idle.notify_all()

    # ------------------------------------------------------------------ control: time

    def _now(self) -> float:
        return self._clock() + self._offset

    def now(self) -> float:
        """The sandbox's current time (epoch seconds), clock plus offset."""
        with self._lock:
            return self._now()

    def set_clock(self, clock: Callable[[], float]) -> None:
        """Replace the time source (epoch seconds) used for expiry and windows."""
        with self._lock:
            self._clock = clock

    def advance(self, seconds: float) -> None:
        """Move the sandbox clock forward (codes/tokens expire, windows close)."""
        with self._lock:
            self._offset += seconds

    def set_latency(self, seconds: float) -> None:
        """Delay every HTTP answer by this many seconds (concurrency tests)."""
        with self._lock:
            self._latency = max(0.0, seconds)

    # ------------------------------------------------------------------ control: login

    def set_login_user(
        self,
        name: str,
        pages: Iterable[Mapping[str, Any]] | None = None,
        *,
        user_id: str | None = None,
        decline: Iterable[str] = (),
    ) -> str:
        """Set who logs in through the dialog and which pages they manage; returns the user id.

        Each page is ``{"id", "name", "instagram_business_account": {"id", "username"}}``
        (the link may be omitted, or given as ``ig_id``/``ig_username``). ``decline``
        lists requested scopes the user unticks. A later login replaces nothing already
        issued: earlier tokens keep the pages they were issued with.
        """
        uid = user_id or str(10**16 + int(hashlib.sha256(name.encode()).hexdigest()[:12], 16))
        page_ids: list[str] = []
        with self._lock:
            for spec in pages or []:
                ig = spec.get("instagram_business_account") or {}
                ig_id = ig.get("id") or spec.get("ig_id")
                ig_user = ig.get("username") or spec.get("ig_username")
                page = _Page(
                    id=str(spec["id"]),
                    name=str(spec.get("name", f"Page {spec['id']}")),
                    ig_id=str(ig_id) if ig_id else None,
                    ig_username=ig_user,
                    category=str(spec.get("category", "Shopping & retail")),
                )
                self._pages[page.id] = page
                page_ids.append(page.id)
            self._users[uid] = _User(uid, name, page_ids, list(decline))
            self._login_user_id = uid
        return uid

    def set_redirect_uris(self, uris: Iterable[str] | None) -> None:
        """Restrict the dialog to these redirect URIs ("Valid OAuth Redirect URIs"); None = any."""
        with self._lock:
            self._redirect_uris = set(uris) if uris is not None else None

    def approve_url(self, dialog_url: str) -> str:
        """Do what "Continue as ..." does for this dialog URL; return the redirect Location."""
        return self._decide_from_url(dialog_url, approve=True)

    def cancel_url(self, dialog_url: str) -> str:
        """Do what "Cancel" does for this dialog URL; return the redirect Location."""
        return self._decide_from_url(dialog_url, approve=False)

    def _decide_from_url(self, dialog_url: str, *, approve: bool) -> str:
        params = dict(parse_qsl(urlsplit(dialog_url).query, keep_blank_values=True))
        with self._lock:
            problem = self._dialog_problem(params)
            if problem:
                raise ValueError(f"dialog refused: {problem}")
            return self._decide(params, approve)

    # ------------------------------------------------------------------ control: tokens

    def expire_token(self, token_or_id: str) -> int:
        """Expire a token, every Page token of a page id, or every token of a user id.

        Later calls with them get 190/463. Returns how many tokens were expired.
        """
        with self._lock:
            hits = [
                t
                for t in self._tokens.values()
                if token_or_id in (t.value, t.page_id if t.kind == "page" else None, t.user_id)
                and t.kind != "app"
            ]
            for tok in hits:
                if tok.state == "valid":
                    tok.state = "expired"
        log.info("expired %d token(s)", len(hits))
        return len(hits)

    def token_state(self, token: str) -> str:
        """``valid``, ``expired``, ``revoked`` or ``unknown`` for an issued token."""
        with self._lock:
            tok = self._lookup_token(token)
            if tok is None:
                return "unknown"
            return self._effective_state(tok)

    def is_revoked(self, token_or_user_id: str) -> bool:
        """True once the login behind this token (or this user id) was revoked."""
        with self._lock:
            if token_or_user_id in self._revoked_users:
                return True
            tok = self._tokens.get(token_or_user_id)
            return tok is not None and tok.state == "revoked"

    def issue_page_token(self, page_id: str, *, user_id: str | None = None) -> str:
        """Mint a non-expiring Page token directly (skips the login; for bot unit tests)."""
        with self._lock:
            uid = user_id or self._login_user_id
            user = self._new_token("user", uid, None, self._default_scopes(), long_lived=True)
            return self._page_token_for(user, page_id)

    # ------------------------------------------------------------------ control: pages

    def subscription(self, page_id: str) -> list[str] | None:
        """Fields our app is subscribed to on this page, or None when not installed."""
        with self._lock:
            fields = self._subscriptions.get(page_id)
            return list(fields) if fields is not None else None

    def ig_account(self, page_id: str) -> str | None:
        """The Instagram account id linked to a page."""
        with self._lock:
            page = self._pages.get(page_id)
            return page.ig_id if page else None

    # ------------------------------------------------------------------ control: people

    _UNSET: Any = object()

    def set_profile(
        self,
        igsid: str,
        *,
        name: Any = _UNSET,
        username: Any = _UNSET,
        profile_pic: Any = _UNSET,
        consent: bool = True,
        page_id: str | None = None,
        **extra: Any,
    ) -> None:
        """Configure what ``GET /{igsid}`` answers.

        A field left out is missing from the answer; ``name=None`` answers ``null``.
        ``consent=False`` (or an igsid never configured) answers error 230.
        ``page_id`` restricts the profile to that page's token.
        """
        profile: dict[str, Any] = {"id": igsid}
        for key, value in (("name", name), ("username", username), ("profile_pic", profile_pic)):
            if value is not self._UNSET:
                profile[key] = value
        profile.update(extra)
        with self._lock:
            self._profiles[igsid] = {"_consent": consent, "_page": page_id, **profile}

    def new_igsid(self) -> str:
        """A fresh, unique Instagram-scoped id (16 digits)."""
        with self._lock:
            self._igsid_seq += 1
            return str(6543210000000000 + self._igsid_seq * 7919)

    def set_last_inbound(self, page_or_ig_id: str, igsid: str, ts: float | None = None) -> None:
        """Record the person's last message time (seconds, or ms), opening the window."""
        with self._lock:
            key = (self._ig_key(page_or_ig_id), igsid)
            self._last_inbound[key] = _seconds(ts) if ts is not None else self._now()

    def last_inbound(self, page_or_ig_id: str, igsid: str) -> float | None:
        """Epoch seconds of the last inbound message the window is measured from."""
        with self._lock:
            return self._last_inbound.get((self._ig_key(page_or_ig_id), igsid))

    def _ig_key(self, page_or_ig_id: str) -> str:
        page = self._pages.get(page_or_ig_id)
        if page is not None:
            return page.ig_id or page.id
        return page_or_ig_id

    # ------------------------------------------------------------------ control: errors

    def inject_send_errors(self, recipient: str, codes: Iterable[ErrorSpec]) -> None:
        """Queue errors for Send API calls to this recipient; each is consumed once, in order.

        An item is a code (``613``), ``(code, subcode)`` or a dict with ``code`` and any of
        ``message``, ``subcode``, ``status``, ``type``.
        """
        with self._lock:
            self._send_errors.setdefault(recipient, []).extend(codes)

    def inject_errors(self, endpoint: str, codes: Iterable[ErrorSpec]) -> None:
        """Queue errors for an endpoint, consumed once each, in order.

        ``endpoint``: ``oauth``, ``debug_token``, ``me``, ``accounts``, ``permissions``,
        ``subscribed_apps``, ``profile`` or ``messages`` (any recipient).
        """
        with self._lock:
            self._endpoint_errors.setdefault(endpoint, []).extend(codes)

    def _take_error(self, endpoint: str, recipient: str | None = None) -> _GraphFail | None:
        with self._lock:
            if recipient is not None and self._send_errors.get(recipient):
                return _GraphFail.from_spec(self._send_errors[recipient].pop(0))
            if self._endpoint_errors.get(endpoint):
                return _GraphFail.from_spec(self._endpoint_errors[endpoint].pop(0))
        return None

    # ------------------------------------------------------------------ control: records

    def calls(self) -> list[dict[str, Any]]:
        """Every HTTP request: method, path, version, token_kind, had_proof, proof_valid,
        status, error_code, error_subcode, time. Never tokens."""
        with self._lock:
            return [dict(c) for c in self._calls]

    def sent_messages(
        self, page_id: str | None = None, recipient: str | None = None, *, ok: bool | None = None
    ) -> list[dict[str, Any]]:
        """Every Send API call: page_id, recipient, body, status, response, ok, error_code,
        error_subcode, message_id, had_proof, proof_valid, time. ``ok`` filters by outcome."""
        with self._lock:
            return [
                json.loads(json.dumps(s))
                for s in self._sent
                if (page_id is None or s["page_id"] == page_id)
                and (recipient is None or s["recipient"] == recipient)
                and (ok is None or s["ok"] == ok)
            ]

    def deliveries(self) -> list[dict[str, Any]]:
        """Webhook POSTs made so far: url, status, body, echo, error."""
        with self._lock:
            return [dict(d) for d in self._deliveries]

    def clear_records(self) -> None:
        """Forget recorded calls, sends and deliveries (state such as tokens stays)."""
        with self._lock:
            self._calls.clear()
            self._sent.clear()
            self._deliveries.clear()

    # ------------------------------------------------------------------ webhooks

    def set_webhook(self, url: str | None, *, echoes: bool = True, echo_delay: float = 0.0) -> None:
        """Where Meta would deliver; with ``echoes`` each successful send posts its echo."""
        with self._lock:
            self._webhook_url = url
            self._echoes = echoes
            self._echo_delay = echo_delay

    def set_echoes(self, enabled: bool) -> None:
        """Turn the automatic echo webhooks for our own sends on or off."""
        with self._lock:
            self._echoes = enabled

    def wait_for_echoes(self, timeout: float = 5.0) -> bool:
        """Block until queued echo deliveries finished; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def webhook_request(
        self,
        payload: Mapping[str, Any] | None,
        *,
        secret: str | None = None,
        raw: bytes | None = None,
        headers: Mapping[str, str | None] | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """The exact body and headers Meta would POST (a header set to None is dropped)."""
        body = raw if raw is not None else encode_webhook(payload or {})
        hdrs = {
            "Content-Type": "application/json",
            "User-Agent": "facebookexternalua",
            "Facebook-API-Version": self.api_version,
            **sign_webhook(body, self.app_secret if secret is None else secret),
        }
        for key, value in (headers or {}).items():
            hdrs = {k: v for k, v in hdrs.items() if k.lower() != key.lower()}
            if value is not None:
                hdrs[key] = value
        return body, hdrs

    def deliver(
        self,
        url: str | None,
        payload: Mapping[str, Any] | None,
        *,
        secret: str | None = None,
        raw: bytes | None = None,
        headers: Mapping[str, str | None] | None = None,
        timeout: float = 20.0,
    ) -> tuple[int, str]:
        """POST a webhook like Meta (blocking); returns (status, body).

        ``url`` None means the one given to `set_webhook`. Inbound messages and postbacks
        in it open the messaging window whatever the receiver answers. Do not call this
        from a coroutine whose loop also serves ``url`` (it would deadlock): use `adeliver`.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("SandboxMeta.deliver blocks; in async code use adeliver()")
        target, body, hdrs = self._prepare_delivery(url, payload, secret, raw, headers)
        try:
            resp = requests.post(target, data=body, headers=hdrs, timeout=timeout)
        except requests.RequestException as exc:
            self._record_delivery(target, None, "", False, repr(exc))
            raise
        self._record_delivery(target, resp.status_code, resp.text, False, None)
        return resp.status_code, resp.text

    async def adeliver(
        self,
        url: str | None,
        payload: Mapping[str, Any] | None,
        *,
        secret: str | None = None,
        raw: bytes | None = None,
        headers: Mapping[str, str | None] | None = None,
        timeout: float = 20.0,
    ) -> tuple[int, str]:
        """`deliver` for async callers: the POST runs on the sandbox loop, awaited here."""
        target, body, hdrs = self._prepare_delivery(url, payload, secret, raw, headers)
        if self._loop is None:
            raise RuntimeError("SandboxMeta not started")
        fut = asyncio.run_coroutine_threadsafe(
            self._post(target, body, hdrs, timeout, echo=False), self._loop
        )
        return await asyncio.wrap_future(fut)

    def verify_webhook(
        self, url: str, verify_token: str, challenge: str | None = None
    ) -> tuple[int, str]:
        """Meta's subscription check: GET url?hub.mode=subscribe&hub.challenge&hub.verify_token."""
        params = {
            "hub.mode": "subscribe",
            "hub.challenge": challenge or str(secrets.randbelow(2**31)),
            "hub.verify_token": verify_token,
        }
        resp = requests.get(
            url, params=params, headers={"User-Agent": "facebookplatform/1.0"}, timeout=20
        )
        return resp.status_code, resp.text

    def _prepare_delivery(
        self,
        url: str | None,
        payload: Mapping[str, Any] | None,
        secret: str | None,
        raw: bytes | None,
        headers: Mapping[str, str | None] | None,
    ) -> tuple[str, bytes, dict[str, str]]:
        with self._lock:
            target = url or self._webhook_url
        if not target:
            raise ValueError("no webhook url given and none set with set_webhook()")
        body, hdrs = self.webhook_request(payload, secret=secret, raw=raw, headers=headers)
        parsed: Any = payload
        if raw is not None:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
        if isinstance(parsed, Mapping):
            self._note_inbound(parsed)
        return target, body, hdrs

    def _note_inbound(self, payload: Mapping[str, Any]) -> None:
        """Messages and postbacks from a person (re)open the window (M6, M8)."""
        with self._lock:
            for entry in payload.get("entry") or []:
                if not isinstance(entry, Mapping):
                    continue
                items = list(entry.get("messaging") or []) + list(entry.get("standby") or [])
                for item in items:
                    try:
                        sender = str(item["sender"]["id"])
                        recipient = str(item["recipient"]["id"])
                        ts = _seconds(float(item.get("timestamp") or self._now() * 1000))
                    except (KeyError, TypeError, ValueError):
                        continue
                    msg = item.get("message")
                    inbound = (
                        isinstance(msg, Mapping)
                        and not msg.get("is_echo")
                        and not msg.get("is_deleted")
                    ) or "postback" in item
                    if inbound:
                        key = (recipient, sender)
                        self._last_inbound[key] = max(ts, self._last_inbound.get(key, 0.0))

    def _record_delivery(
        self, url: str, status: int | None, body: str, echo: bool, error: str | None
    ) -> None:
        with self._lock:
            self._deliveries.append(
                {
                    "url": url,
                    "status": status,
                    "body": body,
                    "echo": echo,
                    "error": error,
                    "time": self._now(),
                }
            )
        log.info("webhook delivered url=%s status=%s echo=%s", url, status, echo)

    async def _post(
        self, url: str, body: bytes, headers: dict[str, str], timeout: float, *, echo: bool
    ) -> tuple[int, str]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._record_delivery(url, None, "", echo, repr(exc))
            raise
        self._record_delivery(url, resp.status, text, echo, None)
        return resp.status, text

    async def _deliver_echo(self, url: str, payload: dict[str, Any], delay: float) -> None:
        try:
            if delay:
                await asyncio.sleep(delay)
            body, hdrs = self.webhook_request(payload)
            await self._post(url, body, hdrs, 20.0, echo=True)
        except Exception as exc:  # a failed echo is recorded, never fatal to the server
            log.warning("echo delivery to %s failed: %r", url, exc)
        finally:
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()

    # ------------------------------------------------------------------ payload builders

    @staticmethod
    def new_mid() -> str:
        """An Instagram-looking message id."""
        tail = base64.b64encode(secrets.token_bytes(45)).decode().rstrip("=")
        return "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOj" + tail.replace("+", "A").replace("/", "B")

    def _event(self, ig_id: str, item: dict[str, Any]) -> dict[str, Any]:
        now_ms = int(self.now() * 1000)
        return {
            "object": "instagram",
            "entry": [{"id": ig_id, "time": max(now_ms, item["timestamp"]), "messaging": [item]}],
        }

    def _inbound(self, ig_id: str, igsid: str, ts: float | None, **body: Any) -> dict[str, Any]:
        item = {
            "sender": {"id": igsid},
            "recipient": {"id": ig_id},
            "timestamp": _ms(ts, self.now()),
            **body,
        }
        return self._event(ig_id, item)

    def text_event(
        self, ig_id: str, igsid: str, text: str, mid: str | None = None, ts: float | None = None
    ) -> dict[str, Any]:
        """A person's text DM (§2.2)."""
        return self._inbound(ig_id, igsid, ts, message={"mid": mid or self.new_mid(), "text": text})

    def attachment_event(
        self,
        ig_id: str,
        igsid: str,
        attachments: Iterable[tuple[str, str]],
        mid: str | None = None,
        ts: float | None = None,
    ) -> dict[str, Any]:
        """A DM with attachments ``[(type, url), ...]`` (image, video, audio, file, share,
        ig_reel, reel, story_mention; §2.4)."""
        atts = [{"type": t, "payload": {"url": u}} for t, u in attachments]
        return self._inbound(
            ig_id, igsid, ts, message={"mid": mid or self.new_mid(), "attachments": atts}
        )

    def story_mention_event(
        self,
        ig_id: str,
        igsid: str,
        url: str | None = None,
        mid: str | None = None,
        ts: float | None = None,
    ) -> dict[str, Any]:
        """The person mentioned the business in their story (§2.5)."""
        url = url or "https://lookaside.fbsbx.com/ig_messaging_cdn/?asset_id=1800&signature=sbx"
        return self.attachment_event(ig_id, igsid, [("story_mention", url)], mid, ts)

    def story_reply_event(
        self,
        ig_id: str,
        igsid: str,
        text: str,
        story_id: str | None = None,
        url: str | None = None,
        mid: str | None = None,
        ts: float | None = None,
    ) -> dict[str, Any]:
        """The person replied to the business's story (§2.5)."""
        story = {
            "url": url or "https://lookaside.fbsbx.com/ig_messaging_cdn/?asset_id=1801",
            "id": story_id or "18000000000000000",
        }
        return self._inbound(
            ig_id,
            igsid,
            ts,
            message={"mid": mid or self.new_mid(), "text": text, "reply_to": {"story": story}},
        )

    def reply_to_event(
        self,
        ig_id: str,
        igsid: str,
        text: str,
        reply_to_mid: str,
        mid: str | None = None,
        ts: float | None = None,
    ) -> dict[str, Any]:
        """An inline reply to an earlier message (§2.5)."""
        return self._inbound(
            ig_id,
            igsid,
            ts,
            message={"mid": mid or self.new_mid(), "text": text, "reply_to": {"mid": reply_to_mid}},
        )

    def reaction_event(
        self,
        ig_id: str,
        igsid: str,
        target_mid: str,
        emoji: str = "❤️",
        action: str = "react",
        ts: float | None = None,
    ) -> dict[str, Any]:
        """A reaction or unreaction to a message (§2.8)."""
        reaction: dict[str, Any] = {"mid": target_mid, "action": action}
        if action == "react":
            reaction["reaction"] = _REACTION_NAMES.get(emoji, "other")
            reaction["emoji"] = emoji
        return self._inbound(ig_id, igsid, ts, reaction=reaction)

    def unsend_event(
        self, ig_id: str, igsid: str, mid: str, ts: float | None = None
    ) -> dict[str, Any]:
        """The person deleted (unsent) a message (§2.6)."""
        return self._inbound(ig_id, igsid, ts, message={"mid": mid, "is_deleted": True})

    def unsupported_event(
        self, ig_id: str, igsid: str, mid: str | None = None, ts: float | None = None
    ) -> dict[str, Any]:
        """Content the API cannot represent (§2.4)."""
        return self._inbound(
            ig_id, igsid, ts, message={"mid": mid or self.new_mid(), "is_unsupported": True}
        )

    def postback_event(
        self,
        ig_id: str,
        igsid: str,
        payload: str,
        title: str = "Get started",
        mid: str | None = None,
        ts: float | None = None,
    ) -> dict[str, Any]:
        """An icebreaker / button tap (§2.9)."""
        return self._inbound(
            ig_id,
            igsid,
            ts,
            postback={"mid": mid or self.new_mid(), "title": title, "payload": payload},
        )

    def quick_reply_event(
        self,
        ig_id: str,
        igsid: str,
        text: str,
        payload: str,
        mid: str | None = None,
        ts: float | None = None,
    ) -> dict[str, Any]:
        """A quick-reply tap (§2.7)."""
        return self._inbound(
            ig_id,
            igsid,
            ts,
            message={
                "mid": mid or self.new_mid(),
                "text": text,
                "quick_reply": {"payload": payload},
            },
        )

    def referral_event(
        self,
        ig_id: str,
        igsid: str,
        ref: str,
        source: str | None = None,
        type: str = "OPEN_THREAD",
        ts: float | None = None,
    ) -> dict[str, Any]:
        """An ig.me link referral in an existing thread (§2.11)."""
        src = source or f"https://ig.me/m/{DEFAULT_IG_USERNAME}?ref={ref}"
        return self._inbound(ig_id, igsid, ts, referral={"ref": ref, "source": src, "type": type})

    def read_event(
        self, ig_id: str, igsid: str, mid: str, ts: float | None = None
    ) -> dict[str, Any]:
        """The person saw messages up to ``mid`` (§2.10)."""
        return self._inbound(ig_id, igsid, ts, read={"mid": mid})

    def echo_event(
        self,
        ig_id: str,
        igsid: str,
        text: str,
        mid: str,
        app_id: str | None = None,
        ts: float | None = None,
    ) -> dict[str, Any]:
        """A business-sent message echoed back (§2.3); no app_id = sent from the IG app."""
        message: dict[str, Any] = {"mid": mid, "text": text, "is_echo": True}
        if app_id is not None:
            message["app_id"] = int(app_id) if str(app_id).isdigit() else app_id
        item = {
            "sender": {"id": ig_id},
            "recipient": {"id": igsid},
            "timestamp": _ms(ts, self.now()),
            "message": message,
        }
        return self._event(ig_id, item)

    def dashboard_test_event(self) -> dict[str, Any]:
        """The App Dashboard "Test" button's ``changes``-shaped payload (§2.13)."""
        now_ms = int(self.now() * 1000)
        return {
            "object": "instagram",
            "entry": [
                {
                    "id": "0",
                    "time": now_ms,
                    "changes": [
                        {
                            "field": "messages",
                            "value": {
                                "sender": {"id": "12334"},
                                "recipient": {"id": "23245"},
                                "timestamp": str(now_ms // 1000),
                                "message": {"mid": "random_mid", "text": "random_text"},
                            },
                        }
                    ],
                }
            ],
        }

    @staticmethod
    def batch(items: Iterable[Mapping[str, Any]], *, merge: bool = False) -> dict[str, Any]:
        """Assemble payloads or entries into one ``{"object":"instagram","entry":[...]}``.

        ``merge`` folds entries of the same account into one entry with several items.
        """
        entries: list[dict[str, Any]] = []
        for item in items:
            found = item.get("entry") if "entry" in item else [item]
            entries.extend(json.loads(json.dumps(e)) for e in found)
        if merge:
            merged: dict[str, dict[str, Any]] = {}
            for entry in entries:
                into = merged.setdefault(str(entry["id"]), {"id": entry["id"], "time": 0})
                into["time"] = max(into["time"], entry.get("time", 0))
                for key in ("messaging", "standby", "changes"):
                    if key in entry:
                        into.setdefault(key, []).extend(entry[key])
            entries = list(merged.values())
        return {"object": "instagram", "entry": entries}

    as_standby = staticmethod(as_standby)

    # ------------------------------------------------------------------ tokens (internal)

    def _default_scopes(self) -> list[str]:
        return [
            "public_profile",
            "pages_show_list",
            "pages_manage_metadata",
            "pages_read_engagement",
            "instagram_basic",
            "instagram_manage_messages",
        ]

    def _new_token(
        self,
        kind: str,
        user_id: str | None,
        page_id: str | None,
        scopes: list[str],
        *,
        long_lived: bool = False,
        parent: str | None = None,
        expires_at: float | None = None,
    ) -> _Token:
        now = self._now()
        if kind == "app":
            value = f"{self.app_id}|{secrets.token_urlsafe(20)}"
        else:
            value = "EAA" + secrets.token_urlsafe(96).replace("-", "Z").replace("_", "q")
        if expires_at is None:
            expires_at = (
                0.0
                if kind == "app"
                else now + (LONG_TOKEN_LIFETIME if long_lived else SHORT_TOKEN_LIFETIME)
            )
        tok = _Token(
            value, kind, user_id, page_id, list(scopes), now, expires_at, long_lived, parent
        )
        self._tokens[value] = tok
        return tok

    def _page_token_for(self, user_tok: _Token, page_id: str) -> str:
        key = (user_tok.value, page_id)
        if key not in self._page_tokens:
            # From a long-lived user token a Page token never expires; otherwise it dies
            # with the user token (M15).
            expires = 0.0 if user_tok.long_lived else user_tok.expires_at
            page_tok = self._new_token(
                "page",
                user_tok.user_id,
                page_id,
                user_tok.scopes,
                long_lived=user_tok.long_lived,
                parent=user_tok.value,
                expires_at=expires,
            )
            self._page_tokens[key] = page_tok.value
        return self._page_tokens[key]

    def _lookup_token(self, value: str) -> _Token | None:
        tok = self._tokens.get(value)
        if tok is None and value == f"{self.app_id}|{self.app_secret}":
            tok = _Token(value, "app", None, None, [], 0.0, 0.0)
        return tok

    def _effective_state(self, tok: _Token) -> str:
        if tok.state != "valid":
            return tok.state
        if tok.expires_at and self._now() >= tok.expires_at:
            return "expired"
        return "valid"

    @staticmethod
    def _fb_time(ts: float) -> str:
        # Meta prints these in Pacific time; a fixed PST offset is close enough here.
        return time.strftime("%A, %d-%b-%y %H:%M:%S PST", time.gmtime(ts - 8 * 3600))

    def _token_error(self, tok: _Token) -> _GraphFail | None:
        state = self._effective_state(tok)
        if state == "expired":
            when = tok.expires_at if tok.expires_at and tok.state == "valid" else self._now()
            return _GraphFail(
                190,
                f"Error validating access token: Session has expired on {self._fb_time(when)}."
                f" The current time is {self._fb_time(self._now())}.",
                subcode=463,
                auth_kind="invalid_token",
            )
        if state == "revoked":
            return _GraphFail(
                190,
                "Error validating access token: The user has not authorized application "
                f"{self.app_id}.",
                subcode=458,
                auth_kind="invalid_token",
            )
        return None

    # ------------------------------------------------------------------ HTTP plumbing

    @web.middleware
    async def _middleware(self, request: web.Request, handler: Callable) -> web.StreamResponse:
        rec: dict[str, Any] = {
            "method": request.method,
            "path": request.path,
            "version": request.path.split("/")[1] if request.path.count("/") > 1 else None,
            "token_kind": None,
            "had_proof": False,
            "proof_valid": None,
            "status": None,
            "error_code": None,
            "error_subcode": None,
            "time": self.now(),
        }
        request[_REC] = rec
        with self._lock:
            latency = self._latency
        if latency:
            await asyncio.sleep(latency)
        try:
            resp = await handler(request)
        except _GraphFail as fail:
            rec["error_code"], rec["error_subcode"] = fail.code, fail.subcode
            resp = self._error_response(fail)
        rec["status"] = resp.status
        with self._lock:
            self._calls.append(rec)
        log.debug("%s %s -> %s", request.method, rec["path"], resp.status)
        return resp

    def _error_response(self, fail: _GraphFail) -> web.Response:
        err: dict[str, Any] = {"message": fail.message, "type": fail.type, "code": fail.code}
        if fail.subcode is not None:
            err["error_subcode"] = fail.subcode
        if fail.transient:
            err["is_transient"] = True
        err["fbtrace_id"] = self._trace_id()
        headers = self._graph_headers()
        if fail.type == "OAuthException" and fail.auth_kind:
            msg = fail.message.replace('"', "'")
            headers["WWW-Authenticate"] = f'OAuth "Facebook Platform" "{fail.auth_kind}" "{msg}"'
        return web.json_response(
            {"error": err}, status=fail.status, headers=headers, dumps=_compact
        )

    @staticmethod
    def _trace_id() -> str:
        return base64.b64encode(secrets.token_bytes(8)).decode()[:11]

    def _graph_headers(self) -> dict[str, str]:
        return {
            "facebook-api-version": self.api_version,
            "x-fb-trace-id": self._trace_id(),
            "x-app-usage": '{"call_count":0,"total_cputime":0,"total_time":0}',
        }

    def _ok(self, body: Any) -> web.Response:
        return web.json_response(body, headers=self._graph_headers(), dumps=_compact)

    async def _params(self, request: web.Request) -> dict[str, str]:
        params = dict(request.query)
        if request.can_read_body:
            raw = await request.read()
            ctype = request.content_type
            if ctype == "application/x-www-form-urlencoded":
                params.update(parse_qsl(raw.decode("utf-8", "replace"), keep_blank_values=True))
            elif ctype == "application/json" and raw:
                try:
                    body = json.loads(raw)
                except ValueError as exc:
                    raise _GraphFail(100, "(#100) The request body is not valid JSON") from exc
                request[_JSON] = body
                if isinstance(body, dict):
                    for key, value in body.items():
                        params.setdefault(
                            key, value if isinstance(value, str) else json.dumps(value)
                        )
        return params

    def _auth(self, request: web.Request, params: Mapping[str, str]) -> _Token:
        """Resolve the caller's token; check appsecret_proof, expiry and revocation."""
        value = params.get("access_token")
        auth = request.headers.get("Authorization", "")
        if not value and auth.split(" ", 1)[0].lower() in ("bearer", "oauth"):
            value = auth.split(" ", 1)[1].strip() if " " in auth else ""
        if not value:
            raise _GraphFail(
                104,
                "An access token is required to request this resource.",
                auth_kind="invalid_request",
            )
        rec = request[_REC]
        proof = params.get("appsecret_proof")
        rec["had_proof"] = proof is not None
        with self._lock:
            tok = self._lookup_token(value)
            if tok is None:
                raise _GraphFail(
                    190,
                    "Invalid OAuth access token - Cannot parse access token",
                    auth_kind="invalid_token",
                )
            rec["token_kind"] = tok.kind
            if tok.kind in ("user", "page"):
                if proof is not None:
                    valid = hmac.compare_digest(
                        proof.lower(), appsecret_proof(value, self.app_secret)
                    )
                    rec["proof_valid"] = valid
                    if not valid:
                        raise _GraphFail(
                            100,
                            "Invalid appsecret_proof provided in the API argument",
                            type="GraphMethodException",
                        )
                elif self.require_proof:
                    raise _GraphFail(
                        100,
                        "API calls from the server require an appsecret_proof argument",
                        type="GraphMethodException",
                    )
            fail = self._token_error(tok)
            if fail is not None:
                raise fail
            return tok

    def _check_injected(self, endpoint: str) -> None:
        fail = self._take_error(endpoint)
        if fail is not None:
            raise fail

    # ------------------------------------------------------------------ dialog

    def _dialog_problem(self, params: Mapping[str, str]) -> str | None:
        if params.get("client_id") != self.app_id:
            return (
                "Invalid App ID: The provided app ID does not look like a valid app ID."
                if params.get("client_id")
                else "The parameter app_id is required"
            )
        redirect = params.get("redirect_uri", "")
        parts = urlsplit(redirect)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return "The parameter redirect_uri is required and must be an absolute URL."
        if self._redirect_uris is not None and redirect not in self._redirect_uris:
            return (
                "URL blocked: This redirect failed because the redirect URI is not"
                " whitelisted in the app's Client OAuth Settings."
            )
        if params.get("response_type", "code") != "code":
            return "Sandbox: only response_type=code is supported."
        bad = [s for s in self._scopes(params) if s not in _KNOWN_SCOPES]
        if bad:
            return f"Invalid Scopes: {', '.join(bad)}."
        return None

    @staticmethod
    def _scopes(params: Mapping[str, str]) -> list[str]:
        raw = params.get("scope") or "public_profile"
        return [s.strip() for s in re.split(r"[,\s]+", raw) if s.strip()]

    def _decide(self, params: Mapping[str, str], approve: bool) -> str:
        """Issue the code (or the denial) and build the redirect Location. Holds the lock."""
        extra: list[tuple[str, str]]
        if approve:
            user = self._users[self._login_user_id]
            scopes = [s for s in self._scopes(params) if s not in user.declined]
            if "public_profile" not in scopes:
                scopes.insert(0, "public_profile")
            code = "AQ" + secrets.token_urlsafe(150).replace("-", "D").replace("_", "x")
            self._codes[code] = _Code(
                code, params["redirect_uri"], user.id, scopes, self._now() + CODE_LIFETIME
            )
            self._revoked_users.discard(user.id)
            extra = [("code", code)]
            log.info("login approved user=%s scopes=%s", user.id, ",".join(scopes))
        else:
            extra = [
                ("error", "access_denied"),
                ("error_code", "200"),
                ("error_description", "Permissions error"),
                ("error_reason", "user_denied"),
            ]
            log.info("login cancelled")
        if "state" in params:
            extra.append(("state", params["state"]))
        parts = urlsplit(params["redirect_uri"])
        query = parse_qsl(parts.query, keep_blank_values=True) + extra
        # Facebook appends "#_=_" when the redirect URI carries no fragment.
        return urlunsplit(
            (parts.scheme, parts.netloc, parts.path, urlencode(query), parts.fragment or "_=_")
        )

    async def _dialog(self, request: web.Request) -> web.Response:
        params = dict(request.query)
        if request.method == "POST":
            params.update(await request.post())  # type: ignore[arg-type]
        elif request.method != "GET":
            return web.Response(status=405, text="Method not allowed")
        with self._lock:
            problem = self._dialog_problem(params)
            if problem:
                return self._page("Error", f"<p>{html.escape(problem)}</p>", status=400)
            if request.method == "POST":
                approve = params.get("action") == "continue"
                location = self._decide(params, approve)
                return web.Response(status=302, headers={"Location": location})
            user = self._users[self._login_user_id]
            pages = [self._pages[p] for p in user.page_ids]
        scopes = self._scopes(params)
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in params.items()
            if k in ("client_id", "redirect_uri", "state", "scope", "response_type")
        )
        page_items = (
            "".join(
                f"<li>{html.escape(p.name)}"
                + (
                    f" (Instagram @{html.escape(p.ig_username or p.ig_id or '')})"
                    if p.ig_id
                    else ""
                )
                + "</li>"
                for p in pages
            )
            or "<li>(no Pages)</li>"
        )
        body = (
            f"<p><strong>{html.escape(self.app_name)}</strong> would like to access:</p>"
            f'<ul id="scopes">{"".join(f"<li>{html.escape(s)}</li>" for s in scopes)}</ul>'
            f'<p>Pages you manage:</p><ul id="pages">{page_items}</ul>'
            f'<form method="post" action="{html.escape(request.path)}">{hidden}'
            f'<button type="submit" name="action" value="continue" id="continue">'
            f"Continue as {html.escape(user.name)}</button> "
            f'<button type="submit" name="action" value="cancel" id="cancel">Cancel</button>'
            f"</form>"
        )
        return self._page("Log in with Facebook (sandbox)", body)

    @staticmethod
    def _page(title: str, body: str, status: int = 200) -> web.Response:
        doc = (
            f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(title)}</title></head><body>"
            f"<h1>{html.escape(title)}</h1>{body}</body></html>"
        )
        return web.Response(status=status, text=doc, content_type="text/html")

    # ------------------------------------------------------------------ graph routing

    async def _graph(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        method = request.method
        if method == "POST" and params.get("method", "").upper() in ("GET", "DELETE"):
            method = params["method"].upper()
        segs = [s for s in request.path.split("/") if s]
        if not segs or segs[0] != self.api_version:
            raise _GraphFail(
                2500, f"Unknown path components: {request.path}", type="OAuthException"
            )
        segs = segs[1:]
        if segs == ["oauth", "access_token"] and method in ("GET", "POST"):
            self._check_injected("oauth")
            return self._ok(self._oauth_token(params))
        tok = self._auth(request, params)
        if segs == ["debug_token"] and method == "GET":
            self._check_injected("debug_token")
            return self._ok(self._debug_token(params, tok))
        if not segs or len(segs) > 2:
            raise _GraphFail(2500, f"Unknown path components: {request.path}")
        node = self._resolve_node(segs[0], tok)
        edge = segs[1] if len(segs) == 2 else None
        if edge is None and method == "GET":
            return self._ok(self._node(node, params, tok))
        if edge == "accounts" and method == "GET":
            self._require(tok, "user", node)
            self._check_injected("accounts")
            return self._ok(self._accounts(tok, params))
        if edge == "permissions" and method in ("GET", "DELETE"):
            self._require(tok, "user", node)
            self._check_injected("permissions")
            return self._ok(self._permissions(tok, method))
        if edge == "subscribed_apps" and method in ("GET", "POST", "DELETE"):
            self._require(tok, "page", node)
            self._check_injected("subscribed_apps")
            return self._ok(self._subscribed_apps(node, method, params))
        if edge == "messages" and method == "POST":
            return self._ok(self._send(request, params, node, tok))
        if method == "GET":
            raise _GraphFail(
                100, f"(#100) Tried accessing nonexisting field ({edge})", type="OAuthException"
            )
        raise _GraphFail(
            100, self._unsupported(method, node), subcode=33, type="GraphMethodException"
        )

    @staticmethod
    def _unsupported(method: str, node: str) -> str:
        return (
            f"Unsupported {method.lower()} request. Object with ID '{node}' does not exist,"
            " cannot be loaded due to missing permissions, or does not support this"
            " operation. Please read the Graph API documentation at"
            " https://developers.facebook.com/docs/graph-api"
        )

    def _resolve_node(self, node: str, tok: _Token) -> str:
        if node != "me":
            return node
        if tok.kind == "user" and tok.user_id:
            return tok.user_id
        if tok.kind == "page" and tok.page_id:
            return tok.page_id
        raise _GraphFail(
            2500, "An active access token must be used to query information about the current user."
        )

    def _require(self, tok: _Token, kind: str, node: str) -> None:
        if kind == "page" and tok.kind != "page":
            raise _GraphFail(
                210,
                "(#210) A page access token is required to request this resource.",
                type="OAuthException",
            )
        if kind == "user" and tok.kind != "user":
            raise _GraphFail(
                100,
                "(#100) Tried accessing nonexisting field on node type"
                f" ({'Page' if tok.kind == 'page' else 'Application'})",
            )
        owner = tok.page_id if kind == "page" else tok.user_id
        if node != owner:
            raise _GraphFail(
                100, self._unsupported("get", node), subcode=33, type="GraphMethodException"
            )

    # ------------------------------------------------------------------ endpoints

    def _check_client(self, params: Mapping[str, str]) -> None:
        if not params.get("client_id"):
            raise _GraphFail(101, "Missing client_id parameter.")
        if params["client_id"] != self.app_id:
            raise _GraphFail(101, "Error validating application. Invalid application ID.")
        if not params.get("client_secret"):
            raise _GraphFail(1, "Missing client_secret parameter.", transient=False)
        if not hmac.compare_digest(params["client_secret"], self.app_secret):
            # Meta answers a wrong secret with code 1 at HTTP 400 (php-graph-sdk#538).
            raise _GraphFail(1, "Error validating client secret.", status=400, transient=False)

    def _oauth_token(self, params: Mapping[str, str]) -> dict[str, Any]:
        self._check_client(params)
        grant = params.get("grant_type")
        with self._lock:
            if grant == "client_credentials":
                tok = self._new_token("app", None, None, [])
                log.info("issued app token")
                return {"access_token": tok.value, "token_type": "bearer"}
            if grant == "fb_exchange_token":
                short = self._tokens.get(params.get("fb_exchange_token", ""))
                if short is None or short.kind != "user":
                    raise _GraphFail(
                        190,
                        "Invalid OAuth access token - Cannot parse access token",
                        auth_kind="invalid_token",
                    )
                fail = self._token_error(short)
                if fail is not None:
                    raise fail
                tok = self._new_token("user", short.user_id, None, short.scopes, long_lived=True)
                log.info("issued long-lived user token user=%s", short.user_id)
                return {
                    "access_token": tok.value,
                    "token_type": "bearer",
                    "expires_in": LONG_TOKEN_LIFETIME,
                }
            if grant not in (None, "", "authorization_code"):
                raise _GraphFail(100, f"(#100) Unsupported grant_type: {grant}")
            if not params.get("redirect_uri"):
                raise _GraphFail(100, "Missing redirect_uri parameter.")
            value = params.get("code")
            if not value:
                raise _GraphFail(100, "Missing authorization code.")
            code = self._codes.get(value)
            if code is None:
                raise _GraphFail(100, "Invalid verification code format.", auth_kind="invalid_code")
            if code.used:
                raise _GraphFail(
                    100,
                    "This authorization code has been used.",
                    subcode=36009,
                    auth_kind="invalid_code",
                )
            if self._now() >= code.expires_at:
                raise _GraphFail(
                    100,
                    "This authorization code has expired.",
                    subcode=36007,
                    auth_kind="invalid_code",
                )
            if params["redirect_uri"] != code.redirect_uri:
                raise _GraphFail(
                    100,
                    "Error validating verification code. Please make sure"
                    " your redirect_uri is identical to the one you used in the"
                    " OAuth dialog request",
                    subcode=36008,
                    auth_kind="invalid_code",
                )
            code.used = True
            tok = self._new_token("user", code.user_id, None, code.scopes)
            log.info("exchanged code for user token user=%s", code.user_id)
            return {
                "access_token": tok.value,
                "token_type": "bearer",
                "expires_in": SHORT_TOKEN_LIFETIME,
            }

    def _debug_token(self, params: Mapping[str, str], caller: _Token) -> dict[str, Any]:
        if caller.kind != "app":
            raise _GraphFail(
                100,
                "(#100) You must provide an app access token, or a user"
                " access token that is an owner or developer of the app",
            )
        value = params.get("input_token")
        if not value:
            raise _GraphFail(100, "(#100) The parameter input_token is required")
        with self._lock:
            tok = self._lookup_token(value)
            if tok is None:
                return {
                    "data": {
                        "error": {
                            "code": 190,
                            "message": "Invalid OAuth access token - Cannot parse access token",
                        },
                        "is_valid": False,
                        "scopes": [],
                    }
                }
            data: dict[str, Any] = {
                "app_id": self.app_id,
                "type": tok.kind.upper(),
                "application": self.app_name,
            }
            if tok.kind == "app":
                data.update(is_valid=True, scopes=[])
                return {"data": data}
            data["data_access_expires_at"] = int(tok.issued_at + DATA_ACCESS_LIFETIME)
            data["expires_at"] = int(tok.expires_at)
            data["is_valid"] = self._effective_state(tok) == "valid"
            if tok.long_lived:
                data["issued_at"] = int(tok.issued_at)
            if tok.kind == "page":
                data["profile_id"] = tok.page_id
            data["scopes"] = list(tok.scopes)
            user = self._users.get(tok.user_id or "")
            page_ids = user.page_ids if user else []
            ig_ids = [self._pages[p].ig_id for p in page_ids if self._pages[p].ig_id]
            data["granular_scopes"] = [
                {"scope": s, "target_ids": list(ig_ids if s.startswith("instagram") else page_ids)}
                for s in tok.scopes
                if s.startswith(("pages_", "instagram_"))
            ]
            data["user_id"] = tok.user_id
            fail = self._token_error(tok)
            if fail is not None:
                data["error"] = {
                    "code": fail.code,
                    "message": fail.message,
                    "subcode": fail.subcode,
                }
            return {"data": data}

    def _node(self, node: str, params: Mapping[str, str], tok: _Token) -> dict[str, Any]:
        fields = _parse_fields(params.get("fields"))
        with self._lock:
            user = self._users.get(node)
            if user is not None and tok.kind == "user" and tok.user_id == node:
                self._check_injected("me")
                return _select({"id": user.id, "name": user.name}, fields, ("name",))
            page = self._pages.get(node)
            if page is not None and tok.kind == "page" and tok.page_id == node:
                self._check_injected("me")
                return _select(self._page_obj(page, tok), fields, ("name",))
            owner_user = self._users.get(tok.user_id or "")
            if (
                page is not None
                and tok.kind == "user"
                and owner_user is not None
                and node in owner_user.page_ids
            ):
                return _select(self._page_obj(page, None), fields, ("name",))
            if tok.kind == "page":
                owner = self._pages.get(tok.page_id or "")
                if owner is not None and owner.ig_id == node:
                    return _select(
                        {"id": node, "username": owner.ig_username, "name": owner.name},
                        fields,
                        ("id",),
                    )
                self._check_injected("profile")
                return self._profile(node, fields, tok)
        raise _GraphFail(
            100, self._unsupported("get", node), subcode=33, type="GraphMethodException"
        )

    def _profile(self, igsid: str, fields: dict[str, Any] | None, tok: _Token) -> dict:
        profile = self._profiles.get(igsid)
        if (
            profile is None
            or not profile["_consent"]
            or profile["_page"] not in (None, tok.page_id)
        ):
            raise _GraphFail(230)
        public = {k: v for k, v in profile.items() if not k.startswith("_")}
        wanted = (
            fields if fields is not None else {k: None for k in ("name", "username", "profile_pic")}
        )  # the node's defaults
        return {k: public[k] for k in [*wanted, "id"] if k in public}

    def _page_obj(self, page: _Page, user_tok: _Token | None) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": page.id,
            "name": page.name,
            "category": page.category,
            "category_list": [{"id": "2201", "name": page.category}],
            "tasks": _PAGE_TASKS,
        }
        if user_tok is not None and user_tok.kind == "user":
            obj["access_token"] = self._page_token_for(user_tok, page.id)
        if page.ig_id:
            obj["instagram_business_account"] = {
                "id": page.ig_id,
                "username": page.ig_username,
                "name": page.name,
            }
            obj["connected_instagram_account"] = {"id": page.ig_id}
        return obj

    def _accounts(self, tok: _Token, params: Mapping[str, str]) -> dict[str, Any]:
        fields = _parse_fields(params.get("fields"))
        with self._lock:
            user = self._users[tok.user_id or ""]
            data = [
                _select(
                    self._page_obj(self._pages[p], tok),
                    fields,
                    ("access_token", "category", "category_list", "name", "tasks"),
                )
                for p in user.page_ids
            ]
        out: dict[str, Any] = {"data": data}
        if data:
            out["paging"] = {
                "cursors": {
                    "before": base64.b64encode(data[0]["id"].encode()).decode(),
                    "after": base64.b64encode(data[-1]["id"].encode()).decode(),
                }
            }
        return out

    def _permissions(self, tok: _Token, method: str) -> dict[str, Any]:
        with self._lock:
            user = self._users.get(tok.user_id or "")
            if method == "GET":
                data = [{"permission": s, "status": "granted"} for s in tok.scopes]
                data += [
                    {"permission": s, "status": "declined"} for s in (user.declined if user else [])
                ]
                return {"data": data}
            revoked = 0
            for other in self._tokens.values():
                if other.user_id == tok.user_id and other.kind in ("user", "page"):
                    other.state = "revoked"
                    revoked += 1
            self._revoked_users.add(tok.user_id or "")
        log.info("login revoked user=%s tokens=%d", tok.user_id, revoked)
        return {"success": True}

    def _subscribed_apps(
        self, page_id: str, method: str, params: Mapping[str, str]
    ) -> dict[str, Any]:
        with self._lock:
            if method == "GET":
                fields = self._subscriptions.get(page_id)
                if fields is None:
                    return {"data": []}
                return {
                    "data": [
                        {
                            "category": "Business",
                            "link": "https://sandbox.invalid/",
                            "name": self.app_name,
                            "id": self.app_id,
                            "subscribed_fields": list(fields),
                        }
                    ]
                }
            if method == "DELETE":
                self._subscriptions.pop(page_id, None)
                log.info("page unsubscribed page=%s", page_id)
                return {"success": True}
            raw = params.get("subscribed_fields")
            if not raw:
                raise _GraphFail(100, "(#100) The parameter subscribed_fields is required.")
            try:
                wanted = json.loads(raw) if raw.strip().startswith("[") else raw.split(",")
            except ValueError as exc:
                raise _GraphFail(100, "(#100) Param subscribed_fields must be an array") from exc
            wanted = [str(w).strip() for w in wanted if str(w).strip()]
            for i, name in enumerate(wanted):
                if name not in _SUBSCRIBABLE_PAGE_FIELDS:
                    raise _GraphFail(
                        100,
                        f"(#100) Param subscribed_fields[{i}] must be one of"
                        f" {{{', '.join(sorted(_SUBSCRIBABLE_PAGE_FIELDS))}}}"
                        f' - got "{name}"',
                    )
            current = self._subscriptions.setdefault(page_id, [])
            current.extend(w for w in wanted if w not in current)
            log.info("page subscribed page=%s fields=%s", page_id, ",".join(current))
            return {"success": True}

    # ------------------------------------------------------------------ Send API

    def _send(
        self, request: web.Request, params: Mapping[str, str], node: str, tok: _Token
    ) -> dict[str, Any]:
        body = request.get(_JSON)
        if body is None:  # form-encoded variant: recipient/message travel as JSON strings
            body = dict(params)
        if isinstance(body, dict):  # never keep credentials in the record
            body = {k: v for k, v in body.items() if k not in ("access_token", "appsecret_proof")}
        rec: dict[str, Any] = {
            "page_id": node,
            "recipient": None,
            "body": body,
            "status": None,
            "response": None,
            "ok": False,
            "error_code": None,
            "error_subcode": None,
            "message_id": None,
            "had_proof": request[_REC]["had_proof"],
            "proof_valid": request[_REC]["proof_valid"],
            "time": self.now(),
        }
        try:
            result = self._send_checked(node, tok, body, rec)
            rec.update(status=200, ok=True, response=result, message_id=result.get("message_id"))
        except _GraphFail as fail:
            rec.update(
                status=fail.status,
                error_code=fail.code,
                error_subcode=fail.subcode,
                response={
                    "error": {
                        "message": fail.message,
                        "code": fail.code,
                        "error_subcode": fail.subcode,
                    }
                },
            )
            log.info(
                "send page=%s recipient=%s failed code=%s/%s",
                node,
                rec["recipient"],
                fail.code,
                fail.subcode,
            )
            raise
        finally:
            with self._lock:
                self._sent.append(rec)
        log.info(
            "send page=%s recipient=%s mid=%s", node, rec["recipient"], result.get("message_id")
        )
        return result

    def _send_checked(
        self, node: str, tok: _Token, body: Any, rec: dict[str, Any]
    ) -> dict[str, Any]:
        if tok.kind != "page":
            raise _GraphFail(
                210, "(#210) A page access token is required to request this resource."
            )
        if node != tok.page_id:
            raise _GraphFail(
                100, self._unsupported("post", node), subcode=33, type="GraphMethodException"
            )
        if not isinstance(body, dict):
            raise _GraphFail(100, "(#100) The request body must be a JSON object")
        body = {
            k: (
                json.loads(v)
                if k in ("recipient", "message", "payload")
                and isinstance(v, str)
                and v.startswith("{")
                else v
            )
            for k, v in body.items()
        }
        recipient = body.get("recipient")
        if not isinstance(recipient, dict) or not recipient.get("id"):
            raise _GraphFail(100, "(#100) The parameter recipient is required", subcode=None)
        igsid = str(recipient["id"])
        rec["recipient"] = igsid
        sender_action = body.get("sender_action")
        message = body.get("message")
        if sender_action is None:
            self._validate_message(message)
        elif sender_action not in ("typing_on", "typing_off", "mark_seen", "react", "unreact"):
            raise _GraphFail(
                100,
                "(#100) Param sender_action must be one of {typing_on,"
                " typing_off, mark_seen, react, unreact}",
            )
        messaging_type = body.get("messaging_type", "RESPONSE")
        tag = body.get("tag")
        if messaging_type not in ("RESPONSE", "UPDATE", "MESSAGE_TAG"):
            raise _GraphFail(
                100, "(#100) Param messaging_type must be one of {RESPONSE, UPDATE, MESSAGE_TAG}"
            )
        if tag is not None and tag != "HUMAN_AGENT":
            raise _GraphFail(100, "(#100) Param tag must be one of {HUMAN_AGENT}")
        if messaging_type == "MESSAGE_TAG" and tag is None:
            raise _GraphFail(100, "(#100) Tag is required for MESSAGE_TAG messaging type")
        injected = self._take_error("messages", igsid)
        if injected is not None:
            raise injected
        with self._lock:
            page = self._pages.get(node)
            ig_id = (page.ig_id if page else None) or node
            last = self._last_inbound.get((ig_id, igsid))
            if last is None:
                raise _GraphFail(100, "(#100) No matching user found", subcode=2018001)
            age = self._now() - last
            allowed = HUMAN_AGENT_SECONDS if tag == "HUMAN_AGENT" else WINDOW_SECONDS
            if sender_action is None and age > allowed:
                raise _GraphFail(10)
            if sender_action is not None:
                return {"recipient_id": igsid}
            mid = self.new_mid()
            url, echoes, delay = self._webhook_url, self._echoes, self._echo_delay
            if url and echoes:
                self._pending += 1
        if url and echoes:
            echo_msg: dict[str, Any] = {"mid": mid, "is_echo": True}
            if "text" in message:
                echo_msg["text"] = message["text"]
            else:
                atts = message.get("attachments") or [message["attachment"]]
                echo_msg["attachments"] = [
                    {"type": a["type"], "payload": {"url": a.get("payload", {}).get("url")}}
                    for a in atts
                ]
            echo_msg["app_id"] = int(self.app_id) if self.app_id.isdigit() else self.app_id
            item = {
                "sender": {"id": ig_id},
                "recipient": {"id": igsid},
                "timestamp": int(self.now() * 1000),
                "message": echo_msg,
            }
            asyncio.get_running_loop().create_task(
                self._deliver_echo(url, self._event(ig_id, item), delay)
            )
        return {"recipient_id": igsid, "message_id": mid}

    @staticmethod
    def _validate_message(message: Any) -> None:
        if not isinstance(message, dict) or not message:
            raise _GraphFail(100, "(#100) param message must be non-empty.", subcode=None)
        has_text = "text" in message
        has_att = "attachment" in message or "attachments" in message
        if has_text == has_att:
            raise _GraphFail(
                100, "(#100) Exactly one of message[text] or message[attachment] must be specified"
            )
        if has_text:
            text = message["text"]
            if not isinstance(text, str) or not text:
                raise _GraphFail(
                    100, "(#100) param message[text] must be a non-empty UTF-8 encoded string"
                )
            if len(text.encode("utf-8")) > MAX_TEXT_BYTES:
                raise _GraphFail(
                    100,
                    "(#100) Length of param message[text] must be less than"
                    f" or equal to {MAX_TEXT_BYTES}",
                )
            return
        atts = message.get("attachments") or [message.get("attachment")]
        if not isinstance(atts, list) or len(atts) > 10:
            raise _GraphFail(100, "(#100) Too many attachments")
        for att in atts:
            if not isinstance(att, dict) or att.get("type") not in (
                "image",
                "audio",
                "video",
                "file",
            ):
                raise _GraphFail(
                    100,
                    "(#100) Param message[attachment][type] must be one of"
                    " {image, audio, video, file}",
                )
            payload = att.get("payload")
            if not isinstance(payload, dict) or not (
                payload.get("url") or payload.get("attachment_id")
            ):
                raise _GraphFail(100, "(#100) Param message[attachment][payload][url] is required")
