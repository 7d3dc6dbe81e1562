"""Connecting an Instagram business account through Facebook Login (protocols §5).

``/instagram authorize`` calls :func:`start_login`, which stores a single-use ``state``
bound to the admin and returns the dialog URL to DM them. Meta redirects the admin's
browser to ``GET /oauth/callback``, handled by :meth:`OAuthFlow.handle_callback`: the
state is consumed first (unknown, expired or reused → 400, no call to Meta), then the
code is exchanged for a long-lived user token and the admin's Pages are listed. One
eligible Page is connected at once; several get a choice form posting to
``/oauth/select`` (:meth:`OAuthFlow.handle_select`), whose hidden field is a second
single-use state holding the candidates, so the form itself never carries a token and
cannot be replayed or forged cross-site.

Everything here is plain async code over a store, a Graph client, the config and a
``notify(username, text)`` callback; the HTTP layer is :mod:`bot.instagram.oauth_routes`.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlencode

from bot import messages
from bot.config import Config
from bot.instagram.graph import GraphClient, GraphError
from bot.instagram.subscription import install, still_installed
from bot.rocketchat.actions import button_attachments
from commands.pages import page_buttons
from storage.base import LoginState, Page, Store

log = logging.getLogger("bot.oauth")

#: What a login must grant before a page counts as connected (each one's reason is in
#: ``messages.PERMISSION_REASONS``). No ``pages_messaging``: that is Messenger, which we
#: do not bridge, and the Page subscription uses ``feed`` (bot.instagram.graph).
REQUIRED_SCOPES = (
    "instagram_basic",
    "instagram_manage_messages",
    "pages_manage_metadata",
    "pages_show_list",
    "pages_read_engagement",
)
#: The classic dialog's ``scope``: the required ones plus ``business_management``, without
#: which Pages owned by a Business portfolio are missing from ``/me/accounts`` for many
#: accounts (Chatwoot asks for it too). A Login for Business configuration should hold
#: the same set.
SCOPES = (*REQUIRED_SCOPES, "business_management")
#: Pages granted through the Login for Business asset picker can be missing from
#: ``/me/accounts`` (audit row 6); ``debug_token`` names them, and at most this many are
#: read by id per login.
MAX_UNLISTED_PAGES = 50
STATE_TTL = 600.0  # seconds a login link (and a choice form) stays usable
STATE_BYTES = 32  # 256 random bits (the brief asks for at least 128)
SELECT_PATH = "/oauth/select"

#: (username, text, attachments=None) → DM; ``bot.rocketchat.rest.RocketChatREST.send_dm``.
Notify = Callable[..., Awaitable[object]]


def new_state() -> str:
    """An unguessable, URL-safe state value."""
    return secrets.token_urlsafe(STATE_BYTES)


def state_ref(state: str) -> str:
    """A short, non-reversible reference to a state for log lines (never the value)."""
    return hashlib.sha256(state.encode()).hexdigest()[:10]


def login_url(config: Config, state: str, *, rerequest: bool = False) -> str:
    """The Facebook Login dialog URL for ``state`` (protocols §5.1).

    With ``instagram.login_config_id`` it is a Facebook Login for Business link:
    ``config_id`` names the dashboard configuration (its permissions replace ``scope``)
    and ``override_default_response_type=true`` keeps ``response_type=code`` (restfb
    ``getBusinessLoginDialogUrl``). ``rerequest`` adds ``auth_type=rerequest``, without
    which Meta does not ask again for permissions the user declined before.
    """
    ig = config.instagram
    params = {
        "client_id": ig.app_id,
        "redirect_uri": config.redirect_uri,
        "state": state,
        "response_type": "code",
    }
    if ig.login_config_id:
        params.update(config_id=ig.login_config_id, override_default_response_type="true")
    else:
        params["scope"] = ",".join(SCOPES)
    if rerequest:
        params["auth_type"] = "rerequest"
    return f"{ig.dialog_url.rstrip('/')}/{ig.api_version}/dialog/oauth?{urlencode(params)}"


async def start_login(
    store: Store,
    config: Config,
    user_id: str,
    username: str,
    *,
    now: float | None = None,
    rerequest: bool = False,
) -> str:
    """Store a fresh login state bound to the admin and return the dialog URL."""
    state = new_state()
    now = time.time() if now is None else now
    await store.add_login_state(
        LoginState(state=state, user_id=user_id, username=username, expires_at=now + STATE_TTL)
    )
    log.info("login link issued to %s (state %s)", username, state_ref(state))
    return login_url(config, state, rerequest=rerequest)


def missing_scopes(token_info: Mapping[str, Any]) -> list[str]:
    """The :data:`REQUIRED_SCOPES` a ``debug_token`` answer does not list as granted."""
    granted = {str(s) for s in token_info.get("scopes") or []}
    return [s for s in REQUIRED_SCOPES if s not in granted]


def granted_page_ids(token_info: Mapping[str, Any]) -> list[str]:
    """Page ids named by a ``debug_token`` answer's ``pages_*`` granular scopes."""
    ids: list[str] = []
    for entry in token_info.get("granular_scopes") or []:
        if not isinstance(entry, Mapping) or not str(entry.get("scope", "")).startswith("pages_"):
            continue
        for target in entry.get("target_ids") or []:
            if str(target) not in ids:
                ids.append(str(target))
    return ids


@dataclass
class Candidate:
    """A Page the login granted that has an Instagram business account."""

    page_id: str
    name: str
    instagram_id: str
    username: str
    page_token: str

    @classmethod
    def from_graph(cls, raw: Mapping[str, Any]) -> Candidate | None:
        ig = raw.get("instagram_business_account")
        if not isinstance(ig, Mapping) or not ig.get("id") or not raw.get("access_token"):
            return None
        return cls(
            page_id=str(raw.get("id", "")),
            name=str(raw.get("name") or raw.get("id", "")),
            instagram_id=str(ig["id"]),
            username=str(ig.get("username") or ""),
            page_token=str(raw["access_token"]),
        )


@dataclass
class OAuthFlow:
    """The OAuth callback and page-choice logic, over injected collaborators."""

    store: Store
    graph: GraphClient
    config: Config
    notify: Notify
    clock: Callable[[], float] = time.time
    #: Awaited with the page id after a page is (re)connected and subscribed, so work
    #: held while it needed re-authorization resumes at once (``Bot.on_page_reauthorized``).
    on_connected: Callable[[str], Awaitable[None]] | None = None

    # -- GET /oauth/callback -------------------------------------------------------------
    async def handle_callback(self, params: Mapping[str, str]) -> tuple[int, str]:
        """Meta's redirect: returns (HTTP status, HTML page)."""
        state = params.get("state") or ""
        login = (
            await self.store.consume_login_state(state, "login", self.clock()) if state else None
        )
        if login is None:
            # Unknown, expired or already used: do not touch the code (no token exchange).
            log.warning("oauth callback with an unknown, expired or used state")
            return 400, messages.oauth_invalid_state_page()
        ref = state_ref(state)
        if params.get("error") or params.get("error_reason"):
            log.info(
                "login %s by %s cancelled at Meta (%s)",
                ref, login.username, params.get("error_reason") or params.get("error"),
            )
            await self._dm(login.username, messages.OAUTH_DM_CANCELLED)
            return 200, messages.oauth_cancelled_page()
        code = params.get("code") or ""
        if not code:
            log.warning("oauth callback for login %s without code or error", ref)
            await self._dm(
                login.username, messages.OAUTH_DM_FAILED.format(reason="Meta sent no code")
            )
            return 400, messages.oauth_failed_page("Meta sent no authorization code")
        try:
            short = await self.graph.exchange_code(code, self.config.redirect_uri)
            user_token = await self.graph.long_lived_user_token(short)
            token_info = await self.graph.debug_token(user_token)
            missing = missing_scopes(token_info)
            if missing:
                return await self._missing_permissions(login, missing)
            raw_pages = await self.graph.pages(user_token)
            raw_pages += await self._unlisted_pages(ref, token_info, raw_pages, user_token)
        except GraphError as exc:
            log.warning("login %s by %s failed at Meta: %s", ref, login.username, exc)
            await self._dm(login.username, messages.OAUTH_DM_FAILED.format(reason=exc))
            return 502, messages.oauth_failed_page(str(exc))
        candidates: list[Candidate] = []
        skipped: list[tuple[str, str]] = []
        for raw in raw_pages:
            candidate = Candidate.from_graph(raw)
            if candidate is not None:
                candidates.append(candidate)
            else:
                skipped.append((str(raw.get("id", "")), str(raw.get("name") or "")))
        log.info(
            "login %s by %s granted %d page(s): %d with Instagram, %d skipped",
            ref, login.username, len(raw_pages), len(candidates), len(skipped),
        )
        if not candidates:
            await self._dm(login.username, self._no_pages_dm(skipped))
            return 200, messages.oauth_no_pages_page(skipped)
        if len(candidates) == 1:
            return await self._connect(login, candidates[0], user_token, skipped)
        return await self._offer_choice(login, candidates, user_token, skipped)

    async def _missing_permissions(
        self, login: LoginState, missing: list[str]
    ) -> tuple[int, str]:
        """Connect nothing; tell the admin what is missing and DM a re-asking link."""
        config_id = self.config.instagram.login_config_id
        log.warning(
            "login by %s lacks %s; nothing connected", login.username, ", ".join(missing)
        )
        url = await start_login(
            self.store, self.config, login.user_id, login.username,
            now=self.clock(), rerequest=True,
        )
        await self._dm(
            login.username,
            messages.oauth_missing_permissions_dm(
                missing, config_id, url, int(STATE_TTL // 60)
            ),
        )
        return 200, messages.oauth_missing_permissions_page(missing, config_id)

    async def _unlisted_pages(
        self,
        ref: str,
        token_info: Mapping[str, Any],
        listed: list[dict],
        user_token: str,
    ) -> list[dict]:
        """Granted Pages that ``/me/accounts`` left out, read one by one by id."""
        known = {str(p.get("id")) for p in listed}
        extra: list[dict] = []
        for page_id in granted_page_ids(token_info)[:MAX_UNLISTED_PAGES]:
            if page_id in known:
                continue
            try:
                extra.append(await self.graph.page(page_id, user_token))
            except GraphError as exc:
                log.warning("login %s: granted page %s cannot be read: %s", ref, page_id, exc)
        if extra:
            log.info("login %s: %d granted page(s) missing from /me/accounts", ref, len(extra))
        return extra

    # -- POST /oauth/select --------------------------------------------------------------
    async def handle_select(self, form: Mapping[str, str]) -> tuple[int, str]:
        """The page-choice form: returns (HTTP status, HTML page)."""
        state = form.get("state") or ""
        choice = (
            await self.store.consume_login_state(state, "select", self.clock()) if state else None
        )
        if choice is None:
            log.warning("page choice with an unknown, expired or used form state")
            return 400, messages.oauth_invalid_state_page()
        data = choice.data
        candidates = [Candidate(**c) for c in data.get("candidates", [])]
        skipped = [tuple(s) for s in data.get("skipped", [])]
        picked = next((c for c in candidates if c.page_id == form.get("page_id")), None)
        if picked is None:
            # Not one of the offered pages: offer the same choice again with a new state.
            log.warning("page choice %s named no offered page", state_ref(state))
            _, page = await self._offer_choice(
                choice, candidates, data.get("user_token", ""), skipped, notify=False
            )
            return 400, page
        return await self._connect(choice, picked, data.get("user_token", ""), skipped)

    # -- connecting ----------------------------------------------------------------------
    async def connect_page(
        self, candidate: Candidate, user_token: str, owner_id: str
    ) -> tuple[Page, bool, GraphError | list[str] | None]:
        """Store the page's tokens, install the app on it, mark it subscribed.

        Returns (page, reconnected, outcome): ``reconnected`` when the page was already
        known (its settings are kept, its tokens replaced, ``needs_reauth`` cleared).
        ``outcome`` is the list of Page fields Meta lists after the installation, None
        when that read-back failed (installed but unconfirmed), or the error when Meta
        refused or does not list the app (a new page is then saved with
        ``subscribed=False``, a re-authorized one keeps the flag only while Meta still
        lists an earlier installation; ``/instagram subscribe`` retries).
        """
        existing = await self.store.page(candidate.page_id)
        if existing is not None:
            page = existing
            page.name = candidate.name
            page.instagram_id = candidate.instagram_id
            page.username = candidate.username
            page.page_token = candidate.page_token
            page.user_token = user_token
            page.owner_id = owner_id
            page.needs_reauth = False
            page.reauth_notified = False
        else:
            page = Page(
                page_id=candidate.page_id,
                name=candidate.name,
                instagram_id=candidate.instagram_id,
                username=candidate.username,
                page_token=candidate.page_token,
                user_token=user_token,
                owner_id=owner_id,
                subscribed=False,
                connected_at=self.clock(),
            )
        # Tokens first: should the install fail, the admin can retry with /subscribe. A
        # re-authorized page keeps its subscribed flag meanwhile, so none of its incoming
        # messages is dropped while Meta answers.
        await self.store.save_page(page)
        try:
            fields = await install(self.graph, page.page_id, page.page_token)
        except GraphError as exc:
            log.warning("installing the app on page %s failed: %s", page.page_id, exc)
            # A re-authorized page keeps its flag only while Meta still lists an earlier
            # installation (or cannot say); otherwise nothing is bridged, and it says so.
            if page.subscribed and (
                await still_installed(self.graph, page.page_id, page.page_token) is False
            ):
                page.subscribed = False
                await self.store.save_page(page)
            return page, existing is not None, exc
        log.info("page %s: Meta lists the fields %s", page.page_id, fields)
        page.subscribed = True
        await self.store.save_page(page)
        if self.on_connected is not None:
            await self.on_connected(page.page_id)
        log.info(
            "page %s (@%s, ig %s) %s and subscribed",
            page.page_id, page.username, page.instagram_id,
            "re-authorized" if existing else "connected",
        )
        return page, existing is not None, fields

    async def _connect(
        self,
        login: LoginState,
        candidate: Candidate,
        user_token: str,
        skipped: list[tuple[str, str]],
    ) -> tuple[int, str]:
        page, reconnected, outcome = await self.connect_page(candidate, user_token, login.user_id)
        fmt = dict(name=page.name, page_id=page.page_id, username=page.username)
        if isinstance(outcome, GraphError):
            text = messages.OAUTH_DM_SUBSCRIBE_FAILED.format(reason=str(outcome), **fmt)
            if page.subscribed:
                text += " " + messages.SUBSCRIBE_EARLIER_KEPT
            await self._dm(login.username, text)
            return 502, messages.oauth_subscribe_failed_page(
                page.name, page.page_id, str(outcome)
            )
        text = (messages.OAUTH_DM_RECONNECTED if reconnected else messages.OAUTH_DM_CONNECTED)
        lines = [text.format(**fmt)]
        if outcome is None:
            lines.append(messages.OAUTH_DM_SUBSCRIPTION_UNCONFIRMED)
        else:
            fields = ", ".join(f"`{f}`" for f in outcome) or "no field"
            lines.append(messages.OAUTH_DM_SUBSCRIPTION_LISTED.format(fields=fields))
        lines += [messages.OAUTH_DM_SKIPPED.format(page_id=p, name=n) for p, n in skipped]
        await self._dm(login.username, "\n".join(lines), page)
        return 200, messages.oauth_connected_page(page.name, page.username, page.page_id, skipped)

    async def _offer_choice(
        self,
        login: LoginState,
        candidates: list[Candidate],
        user_token: str,
        skipped: list[tuple[str, str]],
        *,
        notify: bool = True,
    ) -> tuple[int, str]:
        state = new_state()
        await self.store.add_login_state(
            LoginState(
                state=state,
                user_id=login.user_id,
                username=login.username,
                expires_at=self.clock() + STATE_TTL,
                kind="select",
                data={
                    "user_token": user_token,
                    "candidates": [asdict(c) for c in candidates],
                    "skipped": [list(s) for s in skipped],
                },
            )
        )
        if notify:
            await self._dm(login.username, messages.OAUTH_DM_CHOOSE)
        log.info("page choice %s offered to %s", state_ref(state), login.username)
        return 200, messages.oauth_choose_page(
            SELECT_PATH,
            state,
            [(c.page_id, c.name, c.username) for c in candidates],
            skipped,
        )

    @staticmethod
    def _no_pages_dm(skipped: list[tuple[str, str]]) -> str:
        if not skipped:
            return messages.OAUTH_DM_NO_PAGES
        lines = [messages.OAUTH_DM_NO_ELIGIBLE]
        lines += [messages.OAUTH_DM_SKIPPED.format(page_id=p, name=n) for p, n in skipped]
        return "\n".join(lines)

    async def _dm(self, username: str, text: str, page: Page | None = None) -> None:
        # The browser page already tells the admin the outcome; a failed DM must not
        # turn a successful connection into an error page. A connected page's DM carries
        # its buttons (Edit, Unsubscribe), as /instagram pages does.
        try:
            if page is None:
                await self.notify(username, text)
            else:
                rows = button_attachments([page_buttons(page)])
                await self.notify(username, text, attachments=rows)
        except Exception:
            log.exception("could not DM %s the outcome of the login", username)
