"""Meta Graph API client (Facebook Login, Pages, Instagram Messaging).

One ``requests.Session`` shared by a bounded thread pool, so the blocking HTTP calls never
run on the event loop. Every call that carries an ``access_token`` also carries
``appsecret_proof`` (HMAC-SHA256 of that token keyed with the app secret), so a leaked
token is useless without the secret.

Errors come back in Meta's envelope
``{"error": {"message", "type", "code", "error_subcode", "fbtrace_id"}}`` and are mapped
to this module's exception types (protocols/instagram.md §3.4):

- :class:`GraphThrottled` (codes 4, 17, 32, 613, 80000-80014) and
  :class:`GraphRetryable` (codes 1, 2, 1200, HTTP 5xx, timeouts, network errors): try
  again later. Idempotent calls are retried here a few times with jittered exponential
  backoff; the Send API is retried here only when throttled (the request was refused, so
  a retry cannot duplicate the message) and otherwise left to the caller's durable queue.
- :class:`GraphIncident` (a retryable): Meta itself is failing — codes 1 and 2, HTTP
  5xx, or a storm of code 100 "Unsupported request - method type" (chatwoot/chatwoot#14932:
  a day of it in July 2026). Never a reason to disconnect anything; :class:`MetaHealth`
  shows it in /healthz.
- :class:`GraphAuthError` (code 190): the token is dead; the page needs re-authorization.
- :class:`GraphWindowClosed`: code 10 with subcode 2534022 (Instagram) or 2018278
  (Messenger), or Meta's "outside of allowed window" text. Only this means the window.
- :class:`GraphConfigError`: the app or page is not allowed to do this — the rest of the
  code-10 permission family, codes 3 and 200-299 ("App does not have Advanced Access"),
  another app owning the thread. Admins must act; retrying cannot help.
- :class:`GraphPermanent`: everything else (100, 551, 36103…).

No token, secret or full URL (which would hold the token) ever reaches an exception
message or a log line.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from json import dumps as json_dumps
from typing import Any
from urllib.parse import quote

import requests

from bot.http_session import pooled_session

log = logging.getLogger("bot.graph")


class _InputTokenScrubber(logging.Filter):
    """Mask ``input_token=`` in urllib3's request lines.

    Meta documents ``debug_token`` only as a GET whose ``input_token`` is a query
    argument, and urllib3 logs request lines with their query at DEBUG: without this,
    the token under inspection would reach a debug log.
    """

    _PATTERN = re.compile(r"input_token=[^&\s\"]+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if "input_token=" in message:
            record.msg, record.args = self._PATTERN.sub("input_token=***", message), None
        return True


logging.getLogger("urllib3.connectionpool").addFilter(_InputTokenScrubber())

THROTTLE_CODES = frozenset({4, 17, 32, 613} | set(range(80000, 80015)))
TRANSIENT_CODES = frozenset({1, 2, 1200})
#: Transient codes that are Meta failing as a whole, not one request (1200 is per message).
INCIDENT_CODES = frozenset({1, 2})
AUTH_CODES = frozenset({190})
#: Code 10 subcodes that mean "outside the messaging window" (Send API error codes page).
WINDOW_SUBCODES = frozenset({2534022, 2018278})
_WINDOW_TEXT = "outside of allowed window"
#: Code 100's Meta-outage wording (chatwoot/chatwoot#14932), unlike "Unsupported get
#: request. Object with ID ... does not exist", which is a real, permanent refusal.
_INCIDENT_TEXT = "unsupported request - method type"
#: Permission and app-configuration codes: 3 (capability), 10 (permission), 200-299.
CONFIG_CODES = frozenset({3, 10} | set(range(200, 300)))
_CONFIG_TEXTS = ("advanced access", "thread owner", "standby")

#: Page fields that install the app on the Page. Instagram events come from the app-level
#: Instagram subscription (App Dashboard); the Page only needs the app installed with
#: *any* field (webhooks-for-instagram: "subscribing to any Page field ...
#: subscribed_fields=feed"). ``feed`` needs only ``pages_manage_metadata``; the Page field
#: ``messages`` needs ``pages_messaging``, which the login does not ask for, and Meta
#: refuses the whole call over it (audit §2 item 1).
SUBSCRIBED_FIELDS: tuple[str, ...] = ("feed",)
PAGE_FIELDS = "id,name,access_token,instagram_business_account{id,username}"
PROFILE_FIELDS = "name,username,profile_pic"
#: The message fields a thread read-back asks for (protocols §10).
MESSAGE_FIELDS = "id,created_time,from,to,message"
#: Conversations API calls Meta allows per account per second (protocols §6, §10).
CONVERSATIONS_PER_SECOND = 2.0


class AccountPacer:
    """At most ``rate`` calls per second per account, in the order they asked.

    In-process only: each waiter reserves the next free slot of its account, so a burst
    of reconciliation calls queues behind itself and never spends the budget a later
    subscription check needs (it just takes its turn).
    """

    def __init__(self, rate: float = CONVERSATIONS_PER_SECOND, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        # A little under the limit: Meta counts by its clock, the sleep is ours.
        self.spacing = 1.0 / rate * 1.05
        self._clock = clock
        self._next: dict[str, float] = {}

    def delay(self, account: str) -> float:
        """Reserve the account's next slot; seconds to wait for it."""
        now = self._clock()
        slot = max(now, self._next.get(account, 0.0))
        self._next[account] = slot + self.spacing
        return slot - now

    async def wait(self, account: str) -> None:
        """Sleep until this call may go out."""
        delay = self.delay(account)
        if delay > 0:
            await asyncio.sleep(delay)


#: Seconds an attachment upload may wait for Meta's answer: a 25 MB file on a slow uplink
#: plus Meta's processing. Uploads are safe to retry (an unused attachment id is harmless),
#: and the send that follows names the stored attachment, so it stays small and quick.
MEDIA_TIMEOUT = 180.0


class GraphError(Exception):
    """A Graph API call failed. ``str()`` names the call and Meta's message, never a token."""

    def __init__(
        self,
        message: str,
        *,
        code: int | None = None,
        subcode: int | None = None,
        status: int | None = None,
        call: str = "",
        fbtrace_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.subcode = subcode
        self.status = status
        self.call = call  # e.g. "DELETE /123/subscribed_apps" (ids only, no query string)
        self.fbtrace_id = fbtrace_id

    def __str__(self) -> str:
        parts = [self.call or "Graph call"]
        if self.code is not None:
            parts.append(f"code {self.code}" + (f"/{self.subcode}" if self.subcode else ""))
        elif self.status is not None:
            parts.append(f"HTTP {self.status}")
        return f"{' '.join(parts)}: {self.args[0]}"


class GraphRetryable(GraphError):
    """Transient: throttling, Meta's 'retry later' codes, 5xx, timeouts, network errors."""


class GraphThrottled(GraphRetryable):
    """Rate limited (4, 17, 32, 613 or a business-use-case limit): back off."""


class GraphIncident(GraphRetryable):
    """Meta is failing as a whole (codes 1/2, 5xx, "Unsupported request - method type")."""


class GraphAuthError(GraphError):
    """Code 190: the token is invalid, expired or revoked; the page needs re-authorization."""


class GraphPermanent(GraphError):
    """Any other error: retrying the same request will not help."""


class GraphWindowClosed(GraphPermanent):
    """Code 10 / 2534022 (or 2018278): the messaging window is closed for this person."""


class GraphConfigError(GraphPermanent):
    """A permission or app-configuration refusal: the admins must fix the Meta app/page."""

    @property
    def kind(self) -> str:
        """One key per problem kind, for telling the admins once per kind and page."""
        return f"{self.code}/{self.subcode or 0}"


class MetaHealth:
    """Whether Meta answered with an incident lately (for /healthz and the metrics).

    Degraded from an incident until a call succeeds again, or ``window`` seconds pass.
    """

    def __init__(self, window: float = 300.0, clock: Callable[[], float] = time.monotonic):
        self.window = window
        self._clock = clock
        self._last_incident: float | None = None
        self._last_ok: float | None = None

    def incident(self) -> None:
        self._last_incident = self._clock()

    def ok(self) -> None:
        self._last_ok = self._clock()

    @property
    def degraded(self) -> bool:
        last = self._last_incident
        if last is None or self._clock() - last > self.window:
            return False
        return self._last_ok is None or self._last_ok < last


def appsecret_proof(token: str, app_secret: str) -> str:
    """HMAC-SHA256 of ``token`` keyed with the app secret, as lowercase hex."""
    return hmac.new(app_secret.encode(), token.encode(), hashlib.sha256).hexdigest()


def classify(
    status: int | None,
    body: Any,
    *,
    call: str = "",
    secrets: tuple[str, ...] = (),
) -> GraphError:
    """Build the exception for a failed response from its HTTP status and parsed body.

    ``secrets`` are scrubbed from Meta's message (it sometimes echoes a malformed token).
    """
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(body, dict) and err is None and isinstance(body.get("error_message"), str):
        # api.instagram.com's OAuth answers (Instagram Login route): {"error_type",
        # "code": <the HTTP status>, "error_message"}; there is no Graph error code.
        err = {"message": body["error_message"], "type": body.get("error_type")}
    if not isinstance(err, dict):
        message = "unexpected response without an error envelope"
        cls: type[GraphError] = (
            GraphRetryable if status is None or status >= 500 else GraphPermanent
        )
        return cls(message, status=status, call=call)
    code = _as_int(err.get("code"))
    subcode = _as_int(err.get("error_subcode"))
    message = str(err.get("message") or err.get("type") or "error")
    for secret in secrets:
        if secret:
            message = message.replace(secret, "***")
    text = message.lower()
    if code in AUTH_CODES:
        cls = GraphAuthError
    elif "oauth/access_token" in call and status is not None and 400 <= status < 500:
        # Meta rejects a wrong app secret or a used code with code 1 and HTTP 400:
        # retrying a refused credential cannot succeed.
        cls = GraphPermanent
    elif code in THROTTLE_CODES:
        cls = GraphThrottled
    elif (code in INCIDENT_CODES or (status is not None and status >= 500)
          or (code == 100 and _INCIDENT_TEXT in text)):
        cls = GraphIncident
    elif code in TRANSIENT_CODES:
        cls = GraphRetryable
    elif (code == 10 and subcode in WINDOW_SUBCODES) or _WINDOW_TEXT in text:
        cls = GraphWindowClosed
    elif code in CONFIG_CODES or any(marker in text for marker in _CONFIG_TEXTS):
        cls = GraphConfigError
    else:
        cls = GraphPermanent
    trace = err.get("fbtrace_id")
    return cls(
        message,
        code=code,
        subcode=subcode,
        status=status,
        call=call,
        fbtrace_id=str(trace) if trace else None,
    )


def _as_int(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def default_backoff(attempt: int) -> float:
    """Full-jitter exponential delay in seconds for retry ``attempt`` (1-based), ≤ 8 s."""
    return random.uniform(0, min(8.0, 0.5 * 2**attempt))


class GraphClient:
    """Async facade over the Graph API; one instance per process."""

    #: Whether token calls carry ``appsecret_proof`` (graph.facebook.com checks it).
    send_proof = True

    def __init__(
        self,
        graph_url: str,
        api_version: str,
        app_id: str,
        app_secret: str,
        *,
        timeout: float = 10.0,
        media_timeout: float = MEDIA_TIMEOUT,
        max_workers: int = 8,
        retries: int = 2,
        backoff: Callable[[int], float] = default_backoff,
        observe: Callable[[str, float], None] | None = None,
        on_retry: Callable[[str, GraphError], None] | None = None,
    ) -> None:
        self.base_url = f"{graph_url.rstrip('/')}/{api_version.strip('/')}"
        self.app_id = app_id
        self._secret = app_secret
        self.timeout = timeout
        #: Per-read timeout of attachment uploads: Meta stores up to 25 MB before answering.
        self.media_timeout = media_timeout
        self.retries = retries
        #: Seconds to pause before retry n (tests lengthen it to hold a send mid-retry).
        self.backoff = backoff
        self._observe = observe  # (call, seconds) per HTTP request, for the latency metric
        self._on_retry = on_retry  # (call, error) per retry made here, for the retries metric
        self._session = pooled_session(self.base_url, max_workers)
        #: Meta-wide incidents seen by this client (read by /healthz and the metrics).
        self.health = MetaHealth()
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="graph")
        self._app_token: str | None = None
        #: Spaces the calls Meta limits to 2/s per account (Conversations API and the
        #: subscription checks); the Send API and profile look-ups are never paced.
        self.pacer = AccountPacer()

    def for_page(self, page: Any) -> GraphClient:
        """The client serving ``page``: this one (see ``bot.instagram.accounts``, which
        picks per route)."""
        return self

    def __repr__(self) -> str:  # never show the secret
        return f"GraphClient({self.base_url!r}, app_id={self.app_id!r})"

    # -- OAuth -------------------------------------------------------------------
    async def exchange_code(self, code: str, redirect_uri: str) -> str:
        """Exchange a Facebook Login ``code`` for a short-lived user token (single use)."""
        body = await self._call(
            "POST",
            "/oauth/access_token",
            form={
                "client_id": self.app_id,
                "client_secret": self._secret,
                "redirect_uri": redirect_uri,
                "code": code,
            },
            label="/oauth/access_token (code)",
            idempotent=False,  # a code can be used once; a blind retry would burn it
            secrets=(code,),
        )
        return self._token_from(body, "POST /oauth/access_token (code)")

    async def long_lived_user_token(self, short_token: str) -> str:
        """Exchange a short-lived user token for a long-lived (~60 days) one."""
        body = await self._call(
            "POST",
            "/oauth/access_token",
            form={
                "grant_type": "fb_exchange_token",
                "client_id": self.app_id,
                "client_secret": self._secret,
                "fb_exchange_token": short_token,
            },
            label="/oauth/access_token (fb_exchange_token)",
            secrets=(short_token,),
        )
        return self._token_from(body, "POST /oauth/access_token (fb_exchange_token)")

    async def app_token(self) -> str:
        """An app access token (client credentials), fetched once and cached."""
        if self._app_token is None:
            body = await self._call(
                "POST",
                "/oauth/access_token",
                form={
                    "grant_type": "client_credentials",
                    "client_id": self.app_id,
                    "client_secret": self._secret,
                },
                label="/oauth/access_token (client_credentials)",
            )
            self._app_token = self._token_from(
                body, "POST /oauth/access_token (client_credentials)"
            )
        return self._app_token

    async def debug_token(self, token: str) -> dict:
        """``GET /debug_token``: the token's ``data`` (is_valid, scopes, expires_at…)."""
        body = await self._call(
            "GET",
            "/debug_token",
            token=await self.app_token(),
            params={"input_token": token},
            secrets=(token,),
        )
        data = body.get("data") if isinstance(body, dict) else None
        return data if isinstance(data, dict) else {}

    async def revoke_login(self, user_token: str) -> None:
        """``DELETE /me/permissions``: revoke everything the login granted."""
        await self._call("DELETE", "/me/permissions", token=user_token)

    # -- Pages ---------------------------------------------------------------------
    async def pages(self, user_token: str) -> list[dict]:
        """The user's Pages with tokens and linked Instagram business account, all pages."""
        out: list[dict] = []
        after: str | None = None
        for _ in range(50):  # 50 x 100 pages; a cursor loop must not spin forever
            params = {"fields": PAGE_FIELDS, "limit": "100"}
            if after:
                params["after"] = after
            body = await self._call("GET", "/me/accounts", token=user_token, params=params)
            data = body.get("data") if isinstance(body, dict) else None
            out.extend(p for p in (data or []) if isinstance(p, dict))
            paging = body.get("paging") if isinstance(body, dict) else None
            cursors = paging.get("cursors") if isinstance(paging, dict) else None
            after = cursors.get("after") if isinstance(cursors, dict) else None
            if not data or not after or not paging.get("next"):
                break
        return out

    async def page(self, page_id: str, user_token: str) -> dict:
        """One Page by id, with the fields of :meth:`pages` (for Pages missing from the list)."""
        segment = quote(page_id, safe="").replace(".", "%2E")
        body = await self._call(
            "GET", f"/{segment}", token=user_token, params={"fields": PAGE_FIELDS}
        )
        return body if isinstance(body, dict) else {}

    async def subscribe_page(
        self, page_id: str, page_token: str, fields: tuple[str, ...] = SUBSCRIBED_FIELDS
    ) -> None:
        """Install the app on the Page (``POST /{page}/subscribed_apps``) with ``fields``."""
        body = await self._call(
            "POST",
            f"/{page_id}/subscribed_apps",
            token=page_token,
            params={"subscribed_fields": ",".join(fields)},
        )
        self._expect_success(body, f"POST /{page_id}/subscribed_apps")

    async def app_subscription(self, page_id: str, page_token: str) -> list[str] | None:
        """The Page fields this app is subscribed to on the Page; None when not installed."""
        for app in await self.subscribed_apps(page_id, page_token):
            if str(app.get("id")) == self.app_id:
                fields = app.get("subscribed_fields")
                return [str(f) for f in fields] if isinstance(fields, list) else []
        return None

    async def unsubscribe_page(self, page_id: str, page_token: str) -> None:
        """Uninstall the app from the Page (``DELETE /{page}/subscribed_apps``)."""
        body = await self._call("DELETE", f"/{page_id}/subscribed_apps", token=page_token)
        self._expect_success(body, f"DELETE /{page_id}/subscribed_apps")

    async def subscribed_apps(self, page_id: str, page_token: str) -> list[dict]:
        """Apps installed on the Page, with their subscribed fields.

        Paced with the Conversations API calls (the standing watch and ``doctor`` share
        the account's budget with reconciliation, :class:`AccountPacer`).
        """
        body = await self._call(
            "GET", f"/{page_id}/subscribed_apps", token=page_token, pace=page_id
        )
        data = body.get("data") if isinstance(body, dict) else None
        return [a for a in (data or []) if isinstance(a, dict)]

    # -- Messaging -------------------------------------------------------------------
    async def profile(self, igsid: str, page_token: str) -> dict:
        """The Instagram user's profile: ``name`` and ``username`` (either may be missing)."""
        # The id comes from a webhook: keep it one path segment ("../me/accounts" or
        # "1?fields=access_token" must not reach another endpoint with the page token).
        segment = quote(igsid, safe="").replace(".", "%2E")
        body = await self._call(
            "GET", f"/{segment}", token=page_token, params={"fields": PROFILE_FIELDS}
        )
        return body if isinstance(body, dict) else {}

    async def send_message(
        self,
        page_id: str,
        page_token: str,
        recipient: str,
        message: dict,
        *,
        messaging_type: str = "RESPONSE",
        tag: str | None = None,
        still_wanted: Callable[[], Awaitable[bool]] | None = None,
    ) -> str:
        """Send API: deliver ``message`` to the IGSID ``recipient``; return the ``message_id``.

        A throttled send is retried here after a pause, unless ``still_wanted`` (asked
        before each retry) says otherwise."""
        payload: dict[str, Any] = {
            "recipient": {"id": recipient},
            "messaging_type": messaging_type,
            "message": message,
        }
        if tag:
            payload["tag"] = tag
        body = await self._call(
            "POST",
            f"/{page_id}/messages",
            token=page_token,
            json=payload,
            idempotent=False,  # a 5xx may still have delivered; the relay decides
            still_wanted=still_wanted,
        )
        mid = body.get("message_id") if isinstance(body, dict) else None
        if not mid:
            raise GraphPermanent("response without message_id", call=f"POST /{page_id}/messages")
        return str(mid)

    # -- Conversations API (protocols/instagram.md §10), paced per account ------------
    async def conversations(
        self,
        page_id: str,
        page_token: str,
        *,
        user_id: str | None = None,
        after: str | None = None,
        limit: int = 25,
        fields: str = "id,updated_time",
    ) -> dict:
        """``GET /{page}/conversations?platform=instagram``: one page of threads, most
        recently updated first (``data`` of ``{id, updated_time, …fields}``, ``paging``)."""
        params = {"platform": "instagram", "fields": fields, "limit": str(limit)}
        if user_id:
            params["user_id"] = user_id
        if after:
            params["after"] = after
        body = await self._call(
            "GET", f"/{page_id}/conversations", token=page_token, params=params, pace=page_id
        )
        return body if isinstance(body, dict) else {}

    async def thread_messages(
        self, page_id: str, page_token: str, conversation_id: str
    ) -> list[dict]:
        """The newest messages of a thread (at most 20, newest first), each with
        ``id, created_time, from, to, message``."""
        segment = quote(conversation_id, safe="").replace(".", "%2E")
        body = await self._call(
            "GET", f"/{segment}", token=page_token,
            params={"fields": f"messages{{{MESSAGE_FIELDS}}}"},
            label="/{conversation-id}?fields=messages", pace=page_id,
        )
        messages = body.get("messages") if isinstance(body, dict) else None
        data = messages.get("data") if isinstance(messages, dict) else None
        return [m for m in (data or []) if isinstance(m, dict)]

    async def upload_attachment(
        self,
        page_id: str,
        page_token: str,
        kind: str,
        data: bytes,
        filename: str,
        mime: str,
    ) -> str:
        """Attachment Upload API: store ``data`` at Meta for Instagram; return its id.

        ``POST /{page}/message_attachments`` with ``platform=instagram`` and the file as
        multipart ``filedata``; a send then names ``payload.attachment_id``. Meta never
        fetches a Rocket.Chat link, so private servers and expired links do not matter.
        """
        message = {"attachment": {"type": kind, "payload": {"is_reusable": False}}}
        body = await self._call(
            "POST",
            f"/{page_id}/message_attachments",
            token=page_token,
            form={"platform": "instagram", "message": json_dumps(message)},
            files={"filedata": (filename, data, mime)},
            timeout=self.media_timeout,
        )
        attachment_id = body.get("attachment_id") if isinstance(body, dict) else None
        if not attachment_id:
            raise GraphPermanent("response without attachment_id",
                                 call=f"POST /{page_id}/message_attachments")
        return str(attachment_id)

    async def close(self) -> None:
        """Release the thread pool and the HTTP connections."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._session.close()

    # -- internals ---------------------------------------------------------------------
    async def _call(
        self,
        method: str,
        path: str,
        *,
        token: str | None = None,
        params: dict[str, str] | None = None,
        form: dict[str, str] | None = None,
        json: dict | None = None,
        files: dict[str, tuple[str, bytes, str]] | None = None,
        timeout: float | None = None,
        label: str | None = None,
        idempotent: bool = True,
        secrets: tuple[str, ...] = (),
        pace: str | None = None,
        still_wanted: Callable[[], Awaitable[bool]] | None = None,
    ) -> Any:
        """One logical call with retries; returns the parsed JSON body of a 2xx answer.

        ``still_wanted`` is asked before each retry; False gives the caller the failure
        instead (a send whose place in the conversation was taken meanwhile).

        Credentials never travel in the URL (URLs end up in proxy and library debug
        logs): the token goes in the ``Authorization`` header, the app secret and codes
        in a form body; only the (useless on its own) ``appsecret_proof`` is a query arg.
        """
        query = dict(params or {})
        headers: dict[str, str] = {}
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
            if self.send_proof:
                query["appsecret_proof"] = appsecret_proof(token, self._secret)
        call = f"{method} {label or path}"
        scrub = (*secrets, token or "", self._secret)
        request = {"params": query, "headers": headers, "data": form, "json": json,
                   "files": files, "timeout": timeout or self.timeout}
        attempt = 0
        while True:
            if pace is not None:
                await self.pacer.wait(pace)
            try:
                return await self._once(method, path, request, call, scrub)
            except GraphRetryable as exc:
                attempt += 1
                may_retry = idempotent or isinstance(exc, GraphThrottled)
                if not may_retry or attempt > self.retries:
                    raise
                delay = self.backoff(attempt)
                log.warning(
                    "graph %s failed (%s), retry %d/%d in %.2fs",
                    call, exc.code or exc.status or "network", attempt, self.retries, delay,
                )
                await asyncio.sleep(delay)
                if still_wanted is not None and not await still_wanted():
                    raise
                # Counted only once the retry is certain: a caller that no longer wants
                # the call reschedules it and counts that retry itself.
                if self._on_retry is not None:
                    self._on_retry(call, exc)

    async def _once(
        self,
        method: str,
        path: str,
        request: dict[str, Any],
        call: str,
        scrub: tuple[str, ...],
    ) -> Any:
        loop = asyncio.get_running_loop()
        # An absolute URL reaches a host or path outside the versioned API (the Instagram
        # Login route's token endpoints).
        url = path if path.startswith(("https://", "http://")) else self.base_url + path
        started = time.monotonic()
        try:
            resp = await loop.run_in_executor(
                self._pool,
                lambda: self._session.request(method, url, **request),
            )
        except requests.Timeout:
            # requests' own message contains the URL, hence the token: never chain it.
            raise GraphRetryable("timed out", call=call) from None
        except requests.RequestException as exc:
            raise GraphRetryable(f"network error ({type(exc).__name__})", call=call) from None
        finally:
            if self._observe is not None:
                self._observe(call, time.monotonic() - started)
        elapsed = (time.monotonic() - started) * 1000
        try:
            body = resp.json()
        except ValueError:
            body = None
        log.debug("graph %s -> %d in %.0fms", call, resp.status_code, elapsed)
        if resp.status_code < 300 and body is not None and not (
            isinstance(body, dict) and "error" in body
        ):
            self.health.ok()
            return body
        status = resp.status_code
        if status < 300:
            status = 502 if body is None else status  # 2xx without JSON: a broken proxy
        exc = classify(status, body, call=call, secrets=scrub)
        if isinstance(exc, GraphIncident):
            self.health.incident()
            log.warning("graph %s: Meta-side failure (%s); retrying later, nothing is dropped",
                        call, exc)
        else:
            log.info("graph %s failed: %s", call, exc)
        raise exc

    @staticmethod
    def _token_from(body: Any, call: str) -> str:
        token = body.get("access_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            raise GraphPermanent("response without access_token", call=call)
        return token

    @staticmethod
    def _expect_success(body: Any, call: str) -> None:
        if not (isinstance(body, dict) and body.get("success") is True):
            raise GraphPermanent("Meta did not confirm success", call=call)
