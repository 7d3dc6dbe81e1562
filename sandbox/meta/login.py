"""Facebook Login side of the sandbox Meta."""

from __future__ import annotations

import hashlib
import hmac
import html
import logging
import re
import secrets
import time
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from aiohttp import web

from sandbox.meta.wire import (
    _KNOWN_SCOPES,
    CODE_LIFETIME,
    DATA_ACCESS_LIFETIME,
    LONG_TOKEN_LIFETIME,
    SHORT_TOKEN_LIFETIME,
    _Code,
    _GraphFail,
    _Page,
    _Token,
    _User,
)

log = logging.getLogger("sandbox.meta")


class LoginMixin:
    """Facebook Login: the dialog, codes, user/app/page tokens and ``debug_token``.

    Mixed into :class:`sandbox.meta.server.SandboxMeta`, which owns the state.
    """

    # ------------------------------------------------------------------ control: login

    def set_login_user(
        self,
        name: str,
        pages: Iterable[Mapping[str, Any]] | None = None,
        *,
        user_id: str | None = None,
        decline: Iterable[str] = (),
        unlisted: Iterable[str] = (),
    ) -> str:
        """Set who logs in through the dialog and which pages they manage; returns the user id.

        Each page is ``{"id", "name", "instagram_business_account": {"id", "username"}}``
        (the link may be omitted, or given as ``ig_id``/``ig_username``). ``decline``
        lists requested scopes the user unticks in the classic (``scope``) dialog; once
        declined, a scope stays declined on later logins unless the dialog carries
        ``auth_type=rerequest`` (Meta: "Handle declined permissions"). A Login for
        Business configuration cannot be partly declined: all its permissions are granted
        or none ("All permissions that your app asks for during login must be granted").
        ``unlisted`` are page ids granted but missing from ``/me/accounts`` (Pages picked
        in the Login for Business asset picker; audit row 6): readable by id and named
        in ``debug_token``'s ``granular_scopes``. A later login replaces nothing already
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
            self._unlisted[uid] = {str(p) for p in unlisted}
            self._login_user_id = uid
        return uid

    def set_app_type(self, app_type: str) -> None:
        """``"consumer"`` (classic Facebook Login, ``scope``) or ``"business"``.

        A Business-type app uses Facebook Login for Business: its dialog without a
        ``config_id`` shows "It looks like this app isn't available" (laravel/socialite#716,
        simi/omniauth-facebook#386, restfb/restfb#1529).
        """
        if app_type not in ("consumer", "business"):
            raise ValueError(f"unknown app type {app_type!r}")
        with self._lock:
            self._app_type = app_type

    def add_login_configuration(self, config_id: str, permissions: Iterable[str]) -> None:
        """A Facebook Login for Business configuration (App Dashboard > Configurations)."""
        with self._lock:
            self._login_configs[str(config_id)] = list(permissions)

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

    def issue_page_token(
        self, page_id: str, *, user_id: str | None = None, scopes: Iterable[str] | None = None
    ) -> str:
        """Mint a non-expiring Page token directly (skips the login; for bot unit tests).

        ``scopes`` replaces the default grant (the permissions a full login gives).
        """
        with self._lock:
            uid = user_id or self._login_user_id
            granted = list(scopes) if scopes is not None else self._default_scopes()
            user = self._new_token("user", uid, None, granted, long_lived=True)
            return self._page_token_for(user, page_id)

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
        config_id = params.get("config_id")
        if config_id:
            if config_id not in self._login_configs:
                return "Invalid config_id: no login configuration with this id in the app."
            if params.get("override_default_response_type") != "true":
                # Our reading: a configuration's default response is not a code; every
                # peer (restfb getBusinessLoginDialogUrl, the FB.login examples) sends this.
                return (
                    "Sandbox: a config_id login needs response_type=code with"
                    " override_default_response_type=true."
                )
        elif self._app_type == "business":
            return "It looks like this app isn't available. To fix this, please contact the app."
        bad = [s for s in self._scopes(params) if s not in _KNOWN_SCOPES]
        if bad:
            return f"Invalid Scopes: {', '.join(bad)}."
        return None

    def _scopes(self, params: Mapping[str, str]) -> list[str]:
        """What the dialog asks for: the configuration's permissions, else ``scope``."""
        config_id = params.get("config_id")
        if config_id and config_id in self._login_configs:
            return ["public_profile", *self._login_configs[config_id]]
        raw = params.get("scope") or "public_profile"
        return [s.strip() for s in re.split(r"[,\s]+", raw) if s.strip()]

    def _granted(self, params: Mapping[str, str], user: _User) -> list[str]:
        """The scopes an approved dialog grants. Holds the lock."""
        requested = self._scopes(params)
        if params.get("config_id"):
            return requested  # all or nothing; the sandbox user always accepts
        before = self._declined_before.setdefault(user.id, set())
        declined = {s for s in user.declined if s in requested}
        if params.get("auth_type") == "rerequest":
            before.difference_update(requested)  # asked again: today's answer counts
        else:
            declined |= before & set(requested)  # not asked again: still declined
        before.update(declined)
        return [s for s in requested if s not in declined]

    def _decide(self, params: Mapping[str, str], approve: bool) -> str:
        """Issue the code (or the denial) and build the redirect Location. Holds the lock."""
        extra: list[tuple[str, str]]
        if approve:
            user = self._users[self._login_user_id]
            scopes = self._granted(params, user)
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
            if k in (
                "client_id", "redirect_uri", "state", "scope", "response_type", "config_id",
                "override_default_response_type", "auth_type",
            )
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
