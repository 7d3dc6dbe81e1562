"""The Instagram API with Instagram Login: accounts connected without a Facebook Page.

protocols/instagram.md §11 and §5.7. The admin opens ``<authorize_url>/oauth/authorize``
(a single-use ``state`` bound to them, 10 minutes); Instagram redirects to
``/oauth/instagram/callback`` with a ``code`` (and ``#_``, which browsers keep to
themselves). The code becomes a 1-hour token at ``<token_url>/oauth/access_token``, that
one a 60-day token at ``<graph_url>/access_token``; ``GET me`` names the professional
account (its ``user_id`` is the id webhooks carry in ``entry.id``), and
``POST me/subscribed_apps`` turns its webhooks on. The account is saved as a
:class:`~storage.base.Page` with ``route="instagram"`` whose ``page_id`` is that
Instagram id, so every command takes it like a Page id.

Its tokens expire: :class:`TokenRefresher` renews each one well before its end (Meta
refreshes a token only once it is 24 hours old and not yet expired). Sending, profiles
and subscriptions go to graph.instagram.com through :class:`InstagramLoginClient`, a
:class:`~bot.instagram.graph.GraphClient` with the same error classification.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlencode

from bot import messages
from bot.config import Config
from bot.instagram.graph import GraphAuthError, GraphClient, GraphError, GraphPermanent
from bot.instagram.oauth import STATE_TTL, new_state, state_ref
from bot.instagram.subscription import install
from bot.rocketchat.actions import button_attachments
from commands.pages import page_buttons
from storage.base import LoginState, Page, Store

log = logging.getLogger("bot.instagram.oauth")

SCOPES = ("instagram_business_basic", "instagram_business_manage_messages")
#: Webhook fields turned on for an Instagram-Login account (Instagram object fields).
SUBSCRIBED_FIELDS = ("messages", "messaging_postbacks", "message_reactions", "messaging_seen")
CALLBACK_PATH = "/oauth/instagram/callback"
ROUTE = "instagram"

#: Refresh a token once fewer than this many seconds of its life remain.
REFRESH_BEFORE = 10 * 86400
#: Meta refuses to refresh a token younger than this.
MIN_REFRESH_AGE = 24 * 3600
#: How often the refresher looks at the tokens (jittered), and its retry backoff cap.
CHECK_INTERVAL = 3600.0
MAX_RETRY_DELAY = 3600.0

Notify = Callable[..., Awaitable[object]]  # RocketChatREST.send_dm


class InstagramLoginClient(GraphClient):
    """graph.instagram.com for Instagram-Login accounts, plus that route's token calls.

    Calls carry the token as a Bearer header only: the route's documentation asks for no
    ``appsecret_proof`` (whether Meta checks one there is not documented).
    """

    send_proof = False

    def __init__(self, config: Config, **kwargs: object) -> None:
        login = config.instagram.instagram_login
        super().__init__(login.graph_url, config.instagram.api_version, login.app_id,
                         login.app_secret.reveal(), **kwargs)  # type: ignore[arg-type]
        self._graph_root = login.graph_url.rstrip("/")
        self._token_url = login.token_url.rstrip("/")

    async def exchange_instagram_code(self, code: str, redirect_uri: str) -> tuple[str, str]:
        """Code → (1-hour token, Instagram user id); single use, never retried."""
        body = await self._call(
            "POST", f"{self._token_url}/oauth/access_token",
            form={"client_id": self.app_id, "client_secret": self._secret,
                  "grant_type": "authorization_code", "redirect_uri": redirect_uri,
                  "code": code},
            label="/oauth/access_token (instagram code)", idempotent=False, secrets=(code,),
        )
        token = self._token_from(body, "POST /oauth/access_token (instagram code)")
        user_id = body.get("user_id") if isinstance(body, dict) else None
        return token, str(user_id or "")

    async def long_lived_token(self, short_token: str) -> tuple[str, float]:
        """1-hour token → (60-day token, its lifetime in seconds)."""
        body = await self._call(
            "GET", f"{self._graph_root}/access_token",
            params={"grant_type": "ig_exchange_token", "client_secret": self._secret},
            token=short_token, label="/access_token (ig_exchange_token)",
            secrets=(short_token,),
        )
        return self._token_from(body, "GET /access_token"), _expires_in(body)

    async def refresh_token(self, token: str) -> tuple[str, float]:
        """A 60-day token at least 24 h old → (a new 60-day token, its lifetime)."""
        body = await self._call(
            "GET", f"{self._graph_root}/refresh_access_token",
            params={"grant_type": "ig_refresh_token"}, token=token,
            label="/refresh_access_token", secrets=(token,),
        )
        return self._token_from(body, "GET /refresh_access_token"), _expires_in(body)

    async def account(self, token: str) -> dict:
        """``GET me``: ``user_id`` (the id webhooks carry), ``username``, ``name``."""
        body = await self._call("GET", "/me", token=token,
                                params={"fields": "user_id,username,name"})
        return body if isinstance(body, dict) else {}

    async def subscribe_page(
        self, page_id: str, page_token: str, fields: tuple[str, ...] = SUBSCRIBED_FIELDS
    ) -> None:
        """Turn the account's webhooks on (``POST me/subscribed_apps``)."""
        body = await self._call("POST", "/me/subscribed_apps", token=page_token,
                                params={"subscribed_fields": ",".join(fields)})
        self._expect_success(body, "POST /me/subscribed_apps")

    async def unsubscribe_page(self, page_id: str, page_token: str) -> None:
        """Turn the account's webhooks off (``DELETE me/subscribed_apps``)."""
        body = await self._call("DELETE", "/me/subscribed_apps", token=page_token)
        self._expect_success(body, "DELETE /me/subscribed_apps")

    async def subscribed_apps(self, page_id: str, page_token: str) -> list[dict]:
        body = await self._call("GET", "/me/subscribed_apps", token=page_token)
        data = body.get("data") if isinstance(body, dict) else None
        return [a for a in (data or []) if isinstance(a, dict)]

    async def revoke_login(self, user_token: str) -> None:
        """The route has no revocation endpoint: the token simply stops being used."""


def _expires_in(body: object) -> float:
    value = body.get("expires_in") if isinstance(body, dict) else None
    return float(value) if isinstance(value, int | float) and value > 0 else 60 * 86400.0


def login_url(config: Config, state: str) -> str:
    """The Instagram Login authorize URL for ``state``."""
    login = config.instagram.instagram_login
    query = urlencode({
        "client_id": login.app_id, "redirect_uri": config.instagram_redirect_uri,
        "response_type": "code", "scope": ",".join(SCOPES), "state": state,
    })
    return f"{login.authorize_url.rstrip('/')}/oauth/authorize?{query}"


async def start_login(store: Store, config: Config, user_id: str, username: str,
                      *, now: float | None = None) -> str:
    """A fresh single-use state bound to the admin; the authorize URL."""
    state = new_state()
    now = time.time() if now is None else now
    await store.add_login_state(LoginState(state=state, user_id=user_id, username=username,
                                           expires_at=now + STATE_TTL, kind="instagram_login"))
    log.info("instagram login link issued to %s (state %s)", username, state_ref(state))
    return login_url(config, state)


@dataclass
class InstagramLoginFlow:
    """``GET /oauth/instagram/callback`` over injected collaborators."""

    store: Store
    client: InstagramLoginClient
    config: Config
    notify: Notify
    is_admin: Callable[[str], Awaitable[bool]]
    clock: Callable[[], float] = time.time
    on_connected: Callable[[str], Awaitable[None]] | None = None

    async def handle_callback(self, params: Mapping[str, str]) -> tuple[int, str]:
        """Instagram's redirect: returns (HTTP status, HTML page)."""
        state = params.get("state") or ""
        login = (await self.store.consume_login_state(state, "instagram_login", self.clock())
                 if state else None)
        if login is None:
            log.warning("instagram login callback with an unknown, expired or used state")
            return 400, messages.oauth_invalid_state_page()
        ref = state_ref(state)
        if params.get("error") or params.get("error_reason"):
            log.info("instagram login %s by %s cancelled (%s)", ref, login.username,
                     (params.get("error_reason") or params.get("error") or "")[:100])
            await self._dm(login.username, messages.OAUTH_DM_CANCELLED)
            return 200, messages.oauth_cancelled_page()
        code = (params.get("code") or "").removesuffix("#_")
        if not code:
            await self._dm(login.username,
                           messages.OAUTH_DM_FAILED.format(reason="Instagram sent no code"))
            return 400, messages.oauth_failed_page("Instagram sent no authorization code")
        try:
            admin = await self.is_admin(login.user_id)
        except Exception as exc:
            log.warning("instagram login %s: could not check %s's roles: %s", ref,
                        login.username, exc)
            return 503, messages.settings_unavailable_page()
        if not admin:
            log.warning("instagram login %s refused: %s no longer holds an admin role", ref,
                        login.username)
            return 403, messages.settings_not_admin_page()
        try:
            short, user_id = await self.client.exchange_instagram_code(
                code, self.config.instagram_redirect_uri)
            token, lifetime = await self.client.long_lived_token(short)
            account = await self.client.account(token)
        except GraphError as exc:
            log.warning("instagram login %s by %s failed at Meta: %s", ref, login.username, exc)
            await self._dm(login.username, messages.OAUTH_DM_FAILED.format(reason=exc))
            return 502, messages.oauth_failed_page(str(exc))
        ig_id = str(account.get("user_id") or user_id or account.get("id") or "")
        if not ig_id:
            return 502, messages.oauth_failed_page("Instagram named no account")
        page, reconnected, error = await self._save_and_subscribe(
            ig_id, account, token, lifetime, login.user_id)
        fmt = {"name": page.name, "page_id": page.page_id, "username": page.username}
        if error is not None:
            await self._dm(login.username,
                           messages.OAUTH_DM_SUBSCRIBE_FAILED.format(reason=str(error), **fmt))
            return 502, messages.oauth_subscribe_failed_page(page.name, page.page_id, str(error))
        text = (messages.IG_LOGIN_DM_RECONNECTED if reconnected
                else messages.IG_LOGIN_DM_CONNECTED)
        await self._dm(login.username, text.format(**fmt), page)
        return 200, messages.ig_login_connected_page(page.username, page.page_id)

    async def _save_and_subscribe(
        self, ig_id: str, account: Mapping[str, object], token: str, lifetime: float,
        owner_id: str,
    ) -> tuple[Page, bool, GraphError | None]:
        now = self.clock()
        username = str(account.get("username") or "")
        existing = await self.store.page(ig_id)
        page = existing or Page(page_id=ig_id, name=str(account.get("name") or username),
                                instagram_id=ig_id, subscribed=False, connected_at=now,
                                route=ROUTE)
        page.username = username or page.username
        page.instagram_id = ig_id
        page.page_token = token
        page.owner_id = owner_id
        page.route = ROUTE
        page.token_issued_at, page.token_expires_at = now, now + lifetime
        page.needs_reauth = page.reauth_notified = False
        await self.store.save_page(page)
        try:
            fields = await install(self.client, page.page_id, token)
            if fields is not None and "messages" not in fields:
                raise GraphPermanent("the subscription did not take (read back without "
                                     "messages)", call="GET /me/subscribed_apps")
        except GraphError as exc:
            log.warning("subscribing instagram account %s failed: %s", ig_id, exc)
            return page, existing is not None, exc
        page.subscribed = True
        await self.store.save_page(page)
        if self.on_connected is not None:
            await self.on_connected(page.page_id)
        log.info("instagram account %s (@%s) %s through Instagram Login", ig_id, username,
                 "re-authorized" if existing else "connected")
        return page, existing is not None, None

    async def _dm(self, username: str, text: str, page: Page | None = None) -> None:
        try:
            if page is None:
                await self.notify(username, text)
            else:  # the connected account's buttons, as /instagram pages shows them
                rows = button_attachments([page_buttons(page)])
                await self.notify(username, text, attachments=rows)
        except Exception:
            log.exception("could not DM %s the outcome of the instagram login", username)


def refresh_due(page: Page, now: float) -> bool:
    """Whether ``page``'s Instagram token should be refreshed now: fewer than
    :data:`REFRESH_BEFORE` seconds left, and old enough for Meta to accept."""
    return (page.route == ROUTE and page.token_expires_at > 0 and not page.needs_reauth
            and page.token_expires_at - now < REFRESH_BEFORE
            and now - page.token_issued_at >= MIN_REFRESH_AGE)


class TokenRefresher:
    """Renews Instagram-Login tokens before they end; a refused or expired token starts
    the re-authorization flow (admins told once, inbound kept, replies held)."""

    def __init__(
        self, store: Store, client: InstagramLoginClient,
        mark_needs_reauth: Callable[[Page], Awaitable[None]],
        *, clock: Callable[[], float] = time.time, interval: float = CHECK_INTERVAL,
    ) -> None:
        self.store = store
        self.client = client
        self.mark_needs_reauth = mark_needs_reauth
        self.clock = clock
        self.interval = interval
        self.refreshed = 0
        self._failures: dict[str, int] = {}
        self._retry_at: dict[str, float] = {}

    async def run(self) -> None:
        """Check now, then every ``interval`` (±10%), until cancelled. With several
        replicas on one store, each interval's check runs on one of them (the first to
        claim its slot, :meth:`Store.once`), so a token is never refreshed twice."""
        while True:
            slot = int(self.clock() // self.interval)
            try:
                async with self.store.once(f"ig-token-refresh:{slot}",
                                           2 * self.interval) as mine:
                    if mine:
                        await self.check()
            except Exception:
                log.exception("instagram token check failed; next one as planned")
            await asyncio.sleep(self.interval * random.uniform(0.9, 1.1))

    async def check(self) -> None:
        """One pass over the Instagram-Login accounts."""
        now = self.clock()
        for page in await self.store.pages():
            if page.route != ROUTE or page.needs_reauth or not page.page_token:
                continue
            if page.token_expires_at and page.token_expires_at <= now:
                log.warning("instagram token of %s expired before it was refreshed",
                            page.page_id)
                await self.mark_needs_reauth(page)
                continue
            if not refresh_due(page, now) or self._retry_at.get(page.page_id, 0) > now:
                continue
            await self._refresh(page, now)

    async def _refresh(self, page: Page, now: float) -> None:
        try:
            token, lifetime = await self.client.refresh_token(page.page_token)
        except GraphAuthError:
            log.warning("instagram token of %s refused at refresh: re-authorization",
                        page.page_id)
            await self.mark_needs_reauth(page)
            return
        except GraphError as exc:
            failures = self._failures.get(page.page_id, 0) + 1
            self._failures[page.page_id] = failures
            delay = min(MAX_RETRY_DELAY, 60.0 * 2 ** (failures - 1))
            self._retry_at[page.page_id] = now + delay
            log.warning("refreshing the instagram token of %s failed (%s); retry in %.0f s",
                        page.page_id, exc, delay)
            return
        current = await self.store.page(page.page_id)
        if current is None:
            return
        current.page_token = token
        current.token_issued_at, current.token_expires_at = now, now + lifetime
        await self.store.save_page(current)
        self._failures.pop(page.page_id, None)
        self._retry_at.pop(page.page_id, None)
        self.refreshed += 1
        log.info("instagram token of %s refreshed; it now lasts until %s", page.page_id,
                 time.strftime("%Y-%m-%d", time.gmtime(current.token_expires_at)))
