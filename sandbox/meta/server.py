"""The sandbox Meta server: state, lifecycle, steering methods and HTTP plumbing."""

from __future__ import annotations

import asyncio
import base64
import hmac
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl

import aiohttp
from aiohttp import web

from sandbox.meta.conversations import ConversationsMixin
from sandbox.meta.events import EventsMixin
from sandbox.meta.graph import GraphMixin
from sandbox.meta.instagram_login import InstagramLoginMixin
from sandbox.meta.login import LoginMixin
from sandbox.meta.send import SendMixin
from sandbox.meta.upload import _FILES, FILE_FIELD, MAX_REQUEST, UploadMixin
from sandbox.meta.webhooks import WebhookMixin
from sandbox.meta.wire import (
    _JSON,
    _REC,
    DEFAULT_IG_ID,
    DEFAULT_IG_USERNAME,
    DEFAULT_PAGE_ID,
    DEFAULT_PAGE_NAME,
    DEFAULT_USER_NAME,
    ErrorSpec,
    _Code,
    _compact,
    _GraphFail,
    _Page,
    _seconds,
    _Token,
    _User,
    appsecret_proof,
)

log = logging.getLogger("sandbox.meta")


class SandboxMeta(
    LoginMixin, InstagramLoginMixin, GraphMixin, SendMixin, UploadMixin, WebhookMixin,
    EventsMixin, ConversationsMixin,
):
    """Facebook Login + Graph API + Instagram webhooks on a loopback port."""

    def __init__(
        self,
        *,
        app_id: str = "000000000000000",
        app_secret: str = "sandbox-app-secret",
        api_version: str = "v24.0",
        app_name: str = "rc-instagram (sandbox)",
        require_proof: bool = False,
        clock: Callable[[], float] = time.time,
        ig_app_id: str = "1111111111111111",
        ig_app_secret: str = "sandbox-instagram-app-secret",
    ) -> None:
        self.app_id = app_id
        self.app_secret = app_secret
        self.ig_app_id = ig_app_id  # the Instagram app of the Instagram Login route
        self.ig_app_secret = ig_app_secret
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
        # Facebook Login side: "consumer" apps take ``scope``; "business" apps refuse a
        # dialog without a ``config_id`` naming one of ``_login_configs`` (id -> permissions).
        self._app_type = "consumer"
        self._login_configs: dict[str, list[str]] = {}
        self._declined_before: dict[str, set[str]] = {}  # user id -> scopes declined once
        self._unlisted: dict[str, set[str]] = {}  # user id -> granted pages not in /me/accounts
        self._profiles: dict[str, dict[str, Any]] = {}  # igsid -> profile incl. private keys
        self._last_inbound: dict[tuple[str, str], float] = {}  # (ig id, igsid) -> seconds
        self._send_errors: dict[str, list[ErrorSpec]] = {}
        self._endpoint_errors: dict[str, list[ErrorSpec]] = {}
        self._calls: list[dict[str, Any]] = []
        self._sent: list[dict[str, Any]] = []
        self._attachments: dict[str, dict[str, Any]] = {}  # attachment_id -> upload record
        self._private_hosts: set[str] = set()
        self._upload_latency = 0.0
        self._deliveries: list[dict[str, Any]] = []
        self._webhook_url: str | None = None
        self._echoes = True
        self._echo_delay = 0.0
        self._pending = 0
        self._idle = threading.Condition(self._lock)
        self._igsid_seq = 0
        self._threads_init()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._session: aiohttp.ClientSession | None = None
        self._port = 0
        self._ig_accounts: dict[str, dict[str, str]] = {}
        self._ig_login: tuple[str, list[str]] | None = None
        self._ig_codes: dict[str, dict[str, Any]] = {}
        self._ig_subscriptions: dict[str, list[str]] = {}
        self._ig_refreshes = 0
        self._ig_runner: web.AppRunner | None = None
        self._ig_port = 0
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
        app = web.Application(middlewares=[self._middleware], client_max_size=MAX_REQUEST)
        app.router.add_route("*", "/dialog/oauth", self._dialog)
        app.router.add_route("*", r"/{version:v\d+\.\d+}/dialog/oauth", self._dialog)
        app.router.add_route("*", "/{tail:.*}", self._graph)
        # access_log=None: the default access log prints query strings, i.e. tokens.
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self._port = self._runner.addresses[0][1]
        await self._ig_start()

    async def _astop(self) -> None:
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()
            self._session = None
        for runner in (self._runner, self._ig_runner):
            if runner is not None:
                await runner.cleanup()
        self._runner = self._ig_runner = None
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
        ``subscribed_apps``, ``profile``, ``messages`` (any recipient) or ``conversations``
        (every Conversations API call).
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
        if request.content_type == "multipart/form-data":
            files: list[tuple[str, bytes]] = []
            for key, value in (await request.post()).items():
                if isinstance(value, web.FileField):
                    if key == FILE_FIELD:
                        files.append((value.filename, value.file.read()))
                else:
                    params[key] = str(value)
            request[_FILES] = files
        elif request.can_read_body:
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
