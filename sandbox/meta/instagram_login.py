"""The Instagram API with Instagram Login hosts (instagram.md §11, §5.7), on a second port.

One loopback site stands in for the three hosts of that route, whose paths do not
collide: ``www.instagram.com`` (``/oauth/authorize``, the consent page),
``api.instagram.com`` (``POST /oauth/access_token``: code → 1-hour token) and
``graph.instagram.com`` (``/access_token`` 1-hour → 60-day, ``/refresh_access_token``,
and ``/{v}/me``, ``/{v}/me/subscribed_apps``, ``/{v}/{ig_id}/messages``, profiles). It
shares the people, windows, sent messages and webhook target with the Page route.
Rules enforced: the redirect URI must be registered; a code works once, for 10 minutes;
``#_`` is appended to the redirect as Meta does; a 60-day token is refreshable only once
it is 24 hours old and before it expires; an expired token is refused with code 190;
``me/subscribed_apps`` needs ``instagram_business_manage_messages``; webhooks of these
accounts are signed with the Instagram app secret. api.instagram.com answers errors in
its own shape, ``{"error_type": "OAuthException", "code": 400, "error_message": …}``
(seen live in loicnestler/instagram-basic-display#1, titarenko/OAuth2#129,
espresso-dev/instagram-basic-display-php#14), not Graph's error envelope.
"""

from __future__ import annotations

import html
import logging
import secrets
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit

from aiohttp import web

from sandbox.meta.wire import (
    CODE_LIFETIME,
    LONG_TOKEN_LIFETIME,
    SHORT_TOKEN_LIFETIME,
    _GraphFail,
    _Page,
    _Token,
)

log = logging.getLogger("sandbox.meta")

IG_SCOPES = ("instagram_business_basic", "instagram_business_manage_messages")
#: Instagram-object webhook fields an Instagram-Login account may subscribe to.
IG_FIELDS = frozenset({
    "messages", "messaging_postbacks", "message_reactions", "messaging_seen",
    "messaging_referral", "message_edit", "comments", "mentions",
})
REFRESH_MIN_AGE = 24 * 3600


class InstagramLoginMixin:
    """The Instagram Login route. Mixed into :class:`sandbox.meta.server.SandboxMeta`."""

    # ------------------------------------------------------------------ control

    def set_instagram_login_account(
        self, ig_id: str, username: str, *, name: str = "", scopes: Iterable[str] = IG_SCOPES
    ) -> None:
        """The professional account whoever logs in with Instagram connects, and what
        they grant in the consent page."""
        with self._lock:
            self._ig_accounts[ig_id] = {"username": username, "name": name or username}
            self._ig_login = (ig_id, list(scopes))
            # Window and sends key on the account id, as for a Page's linked account.
            self._pages.setdefault(ig_id, _Page(id=ig_id, name=username, ig_id=ig_id,
                                                ig_username=username))

    def ig_subscription(self, ig_id: str) -> list[str] | None:
        """Fields the app is subscribed to for this Instagram-Login account (None: none)."""
        with self._lock:
            fields = self._ig_subscriptions.get(ig_id)
            return list(fields) if fields is not None else None

    def ig_token_for(self, ig_id: str) -> str | None:
        """The newest valid long-lived Instagram token of ``ig_id`` (for expiry tests)."""
        with self._lock:
            found = [t for t in self._tokens.values()
                     if t.kind == "ig_user" and t.user_id == ig_id and t.long_lived
                     and self._effective_state(t) == "valid"]
            return max(found, key=lambda t: t.issued_at).value if found else None

    def ig_approve_url(self, authorize_url: str) -> str:
        """Where the consent page's "Allow" sends the browser (redirect with ``code``)."""
        query = dict(parse_qsl(urlsplit(authorize_url).query))
        problem = self._ig_authorize_problem(query)
        if problem:
            raise ValueError(problem)
        return self._ig_decide(query, approve=True)

    def ig_cancel_url(self, authorize_url: str) -> str:
        """Where "Cancel" sends the browser (``error=access_denied``)."""
        return self._ig_decide(dict(parse_qsl(urlsplit(authorize_url).query)), approve=False)

    @property
    def ig_refreshes(self) -> int:
        """How many Instagram tokens were refreshed."""
        with self._lock:
            return self._ig_refreshes

    @property
    def instagram_url(self) -> str:
        """Base URL standing in for www.instagram.com, api.instagram.com and
        graph.instagram.com alike (their paths do not collide)."""
        return f"http://127.0.0.1:{self._ig_port}"

    # ------------------------------------------------------------------ internals

    def _ig_authorize_problem(self, q: Mapping[str, str]) -> str | None:
        if q.get("client_id") != self.ig_app_id:
            return "Invalid platform app"
        if q.get("response_type") != "code":
            return "Invalid response_type"
        uri = q.get("redirect_uri", "")
        if self._redirect_uris is not None and uri not in self._redirect_uris:
            return "Invalid redirect_uri"
        scopes = [s for s in q.get("scope", "").split(",") if s]
        unknown = [s for s in scopes if s not in IG_SCOPES]
        if unknown or not scopes:
            return f"Invalid scope: {','.join(unknown) or '(none)'}"
        if self._ig_login is None:
            return "No Instagram account is logged in"
        return None

    def _ig_decide(self, q: Mapping[str, str], *, approve: bool) -> str:
        uri = q.get("redirect_uri", "")
        state = q.get("state")
        if not approve:
            params = {"error": "access_denied", "error_reason": "user_denied",
                      "error_description": "The user denied your request."}
        else:
            ig_id, granted = self._ig_login
            asked = [s for s in q.get("scope", "").split(",") if s]
            code = secrets.token_urlsafe(48)
            with self._lock:
                self._ig_codes[code] = {"ig_id": ig_id, "redirect_uri": uri,
                                        "scopes": [s for s in asked if s in granted],
                                        "expires_at": self._now() + CODE_LIFETIME}
            params = {"code": code}
        if state is not None:
            params["state"] = state
        sep = "&" if "?" in uri else "?"
        return f"{uri}{sep}{urlencode(params)}#_"

    def _ig_token(self, ig_id: str, scopes: list[str], *, long_lived: bool,
                  issued_at: float | None = None) -> _Token:
        now = self._now() if issued_at is None else issued_at
        value = "IGAA" + secrets.token_urlsafe(96).replace("-", "Z").replace("_", "q")
        tok = _Token(value, "ig_user", ig_id, ig_id, list(scopes), now,
                     now + (LONG_TOKEN_LIFETIME if long_lived else SHORT_TOKEN_LIFETIME),
                     long_lived)
        with self._lock:
            self._tokens[value] = tok
        return tok

    def _ig_bearer(self, request: web.Request, params: Mapping[str, str]) -> _Token:
        value = params.get("access_token", "")
        auth = request.headers.get("Authorization", "")
        if not value and auth.lower().startswith("bearer "):
            value = auth[7:].strip()
        if not value:
            raise _GraphFail(190, "Invalid OAuth access token - Cannot parse access token")
        with self._lock:
            tok = self._tokens.get(value)
            if tok is None or tok.kind != "ig_user":
                raise _GraphFail(190, "Invalid OAuth access token - Cannot parse access token")
            fail = self._token_error(tok)
        if fail is not None:
            raise fail
        return tok

    async def _ig_start(self) -> None:
        app = web.Application(middlewares=[self._middleware])
        app.router.add_route("*", "/oauth/authorize", self._ig_authorize)
        app.router.add_route("*", "/{tail:.*}", self._ig_api)
        self._ig_runner = web.AppRunner(app, access_log=None)
        await self._ig_runner.setup()
        await web.TCPSite(self._ig_runner, "127.0.0.1", 0).start()
        self._ig_port = self._ig_runner.addresses[0][1]

    async def _ig_authorize(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        problem = self._ig_authorize_problem(params)
        if problem:
            return self._page("Sorry, this page isn't available", f"<p>{html.escape(problem)}</p>",
                              400)
        if request.method == "POST":
            location = self._ig_decide(params, approve=params.get("action") == "allow")
            raise web.HTTPFound(location)
        hidden = "".join(f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
                         for k, v in params.items())
        ig_id, _ = self._ig_login
        user = self._ig_accounts[ig_id]["username"]
        body = (f'<p>Allow {html.escape(self.app_name)} to access @{html.escape(user)}?</p>'
                f'<form method="post" action="/oauth/authorize">{hidden}'
                '<button id="allow" name="action" value="allow">Allow</button> '
                '<button id="cancel" name="action" value="cancel">Cancel</button></form>')
        return self._page("Instagram", body)

    async def _ig_api(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        method = request.method
        segs = [s for s in request.path.split("/") if s]
        if segs == ["oauth", "access_token"] and method == "POST":
            try:
                return self._ok(self._ig_exchange_code(params))
            except _GraphFail as fail:
                # api.instagram.com answers in the Instagram OAuth shape, not Graph's.
                return web.json_response({"error_type": fail.type, "code": 400,
                                          "error_message": fail.message}, status=400)
        if segs == ["access_token"] and method == "GET":
            return self._ok(self._ig_long_lived(request, params))
        if segs == ["refresh_access_token"] and method == "GET":
            return self._ok(self._ig_refresh(request, params))
        if not segs or segs[0] != self.api_version:
            raise _GraphFail(2500, f"Unknown path components: {request.path}")
        tok = self._ig_bearer(request, params)
        segs = segs[1:]
        node = tok.user_id if segs and segs[0] == "me" else (segs[0] if segs else "")
        edge = segs[1] if len(segs) == 2 else None
        if node == tok.user_id and edge is None and method == "GET":
            account = self._ig_accounts.get(node, {})
            fields = params.get("fields", "user_id,username").split(",")
            full = {"id": node, "user_id": node, "username": account.get("username", ""),
                    "name": account.get("name", ""), "account_type": "BUSINESS"}
            return self._ok({k: full[k] for k in fields if k in full} | {"id": node})
        if node == tok.user_id and edge == "subscribed_apps":
            return self._ok(self._ig_subscribed_apps(node, tok, method, params))
        if node == tok.user_id and edge == "messages" and method == "POST":
            return self._ok(self._send(request, params, node, tok))
        if node == tok.user_id and edge == "message_attachments" and method == "POST":
            # Documented for the Page route; assumed the same here (not confirmed).
            return self._ok(await self._message_attachments(request, params, node, tok))
        if edge is None and method == "GET" and node:
            return self._ok(self._profile(node, None, tok))
        raise _GraphFail(100, self._unsupported(method.lower(), node), subcode=33,
                         type="GraphMethodException")

    def _ig_exchange_code(self, params: Mapping[str, str]) -> dict[str, Any]:
        if params.get("client_id") != self.ig_app_id:
            raise _GraphFail(101, "Invalid platform app", type="OAuthException")
        if params.get("client_secret") != self.ig_app_secret:
            raise _GraphFail(101, "Error validating client secret.", type="OAuthException")
        if params.get("grant_type") != "authorization_code":
            raise _GraphFail(100, "Invalid grant_type", type="OAuthException")
        with self._lock:
            code = self._ig_codes.pop(params.get("code", ""), None)
        if code is None or code["expires_at"] < self._now():
            raise _GraphFail(100, "Matching code was not found or was already used.",
                             type="OAuthException")
        if code["redirect_uri"] != params.get("redirect_uri"):
            raise _GraphFail(100, "Invalid redirect_uri", type="OAuthException")
        tok = self._ig_token(code["ig_id"], code["scopes"], long_lived=False)
        return {"access_token": tok.value, "user_id": int(code["ig_id"]),
                "permissions": code["scopes"]}

    def _ig_long_lived(self, request: web.Request, params: Mapping[str, str]) -> dict[str, Any]:
        if params.get("grant_type") != "ig_exchange_token":
            raise _GraphFail(100, "Invalid grant_type", type="OAuthException")
        if params.get("client_secret") != self.ig_app_secret:
            raise _GraphFail(101, "Error validating client secret.", type="OAuthException")
        short = self._ig_bearer(request, params)
        if short.long_lived:
            raise _GraphFail(100, "Long-lived tokens cannot be exchanged", type="OAuthException")
        tok = self._ig_token(short.user_id or "", short.scopes, long_lived=True)
        return {"access_token": tok.value, "token_type": "bearer",
                "expires_in": int(tok.expires_at - tok.issued_at)}

    def _ig_refresh(self, request: web.Request, params: Mapping[str, str]) -> dict[str, Any]:
        if params.get("grant_type") != "ig_refresh_token":
            raise _GraphFail(100, "Invalid grant_type", type="OAuthException")
        self._check_injected("refresh_access_token")
        old = self._ig_bearer(request, params)  # an expired token fails here with 190
        if not old.long_lived or self._now() - old.issued_at < REFRESH_MIN_AGE:
            raise _GraphFail(100, "The access token must be at least 24 hours old to be "
                             "refreshed", type="OAuthException")
        tok = self._ig_token(old.user_id or "", old.scopes, long_lived=True)
        with self._lock:
            self._ig_refreshes += 1
        return {"access_token": tok.value, "token_type": "bearer",
                "expires_in": int(tok.expires_at - tok.issued_at)}

    def _ig_subscribed_apps(self, ig_id: str, tok: _Token, method: str,
                            params: Mapping[str, str]) -> dict[str, Any]:
        with self._lock:
            if method == "GET":
                fields = self._ig_subscriptions.get(ig_id)
                data = ([] if fields is None else
                        [{"id": self.ig_app_id, "name": self.app_name,
                          "subscribed_fields": list(fields)}])
                return {"data": data}
            if method == "DELETE":
                self._ig_subscriptions.pop(ig_id, None)
                return {"success": True}
            if "instagram_business_manage_messages" not in tok.scopes:
                raise _GraphFail(200, "(#200) Insufficient permission: "
                                 "instagram_business_manage_messages is required")
            wanted = [f for f in params.get("subscribed_fields", "").split(",") if f]
            bad = [f for f in wanted if f not in IG_FIELDS]
            if not wanted or bad:
                raise _GraphFail(100, f"(#100) Param subscribed_fields must be one of "
                                 f"{{{', '.join(sorted(IG_FIELDS))}}} - got \"{','.join(bad)}\"")
            self._ig_subscriptions[ig_id] = wanted
            log.info("instagram-login account subscribed ig=%s fields=%s", ig_id, wanted)
            return {"success": True}
