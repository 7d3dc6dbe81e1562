"""Async wrapper around ``rocketchat_API`` (Rocket.Chat REST): the bot's only way to act.

Every call runs the blocking library in a bounded thread pool, maps the library's
exceptions to this module's types, waits out HTTP 429 (``X-RateLimit-Reset``) and
URL-encodes query values (the library joins them by hand). Exception messages name the
route and the server's error code, never a token, password or URL with query string.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import string
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import quote, urljoin, urlsplit

import requests
from rocketchat_API.APIExceptions.RocketExceptions import (
    RocketApiException,
    RocketAuthenticationException,
    RocketBadStatusCodeException,
    RocketConnectionException,
    RocketMissingParamException,
)
from rocketchat_API.APISections.base import json_or_error
from rocketchat_API.rocketchat import RocketChat

from bot.http_session import pooled_session
from bot.rocketchat.ddp import iso_date

log = logging.getLogger("bot.rest")

T = TypeVar("T")

ROLES_CACHE_SECONDS = 30.0
#: Who holds the (never public) ``bot`` role changes rarely; listing it pages users.list.
BOT_ACCOUNTS_CACHE_SECONDS = 300.0
#: Page size for paged routes: the server clamps ``count`` at API_Upper_Count_Limit (100).
PAGE_SIZE = 100
_ID_ALPHABET = string.ascii_letters + string.digits


class RocketChatError(Exception):
    """A Rocket.Chat REST call failed. ``str()`` never contains secrets."""

    def __init__(
        self,
        message: str,
        *,
        error_type: str | None = None,
        status: int | None = None,
        detail: str | None = None,
    ):
        super().__init__(message)
        self.error_type = error_type
        self.status = status
        #: The server's own error text, if it sent one (kept out of ``str()``).
        self.detail = detail


class AuthenticationFailed(RocketChatError):
    """Bad credentials (fatal at startup)."""


class RateLimited(RocketChatError):
    """HTTP 429 whose reset lies beyond ``rate_limit_wait``; ``reset_at`` is epoch seconds."""

    def __init__(
        self,
        message: str,
        *,
        reset_at: float,
        error_type: str | None = "error-too-many-requests",
        status: int | None = 429,
    ):
        super().__init__(message, error_type=error_type, status=status)
        self.reset_at = reset_at


class NoAgentOnline(RocketChatError):
    """Omnichannel has no agent available (errorType ``no-agent-online``)."""


class RoomClosed(RocketChatError):
    """The livechat room is closed or unknown (``room-closed`` / ``invalid-room``)."""


class InvalidVisitor(RocketChatError):
    """The visitor token is unknown (``invalid-token`` on livechat routes)."""


class NotAllowed(RocketChatError):
    """The bot lacks the permission (``error-not-allowed`` / HTTP 403)."""


class Unavailable(RocketChatError):
    """Network error, timeout or server-side 5xx: worth retrying later."""


class InvalidDepartment(RocketChatError):
    """``livechat/visitor`` named a department that does not exist (deleted or renamed)."""


class MessageTooLong(RocketChatError):
    """``livechat/message`` text over ``Livechat_message_character_limit``."""


class NotStored(RocketChatError):
    """``livechat/message`` answered "nothing stored" and the ``_id`` is not in the room.

    The same TypeError answers a duplicate ``_id`` and a message an Apps-Engine
    ``IPreMessageSentPrevent`` handler blocked; only the read-back tells them apart.
    """


class RouteMissing(RocketChatError):
    """The server has no such REST route: a JSON 404, or a 2xx that is not JSON at all.

    Up to 7.0 Rocket.Chat has no REST catch-all: an unknown ``/api/v1`` path falls
    through to Meteor's web app, which answers **200 with its HTML page**
    (audit §1.2 R3, D12). ``rocketchat_API`` hands such a body back as a ``str``.
    A proxy or SSO page in front of the server looks the same, so the message says both.
    """


class FileRefused(RocketChatError):
    """``/file-upload`` answered 401/403/404, or the file is over the size asked for."""


#: Redirects followed for one download (S3/GCS stores answer with a signed URL).
MAX_FILE_REDIRECTS = 3


def random_id(length: int = 17) -> str:
    """A Meteor-style random id (17 alphanumerics), for client-chosen message ``_id``s."""
    return "".join(secrets.choice(_ID_ALPHABET) for _ in range(length))


def _code_of(error: Any) -> str | None:
    """The machine code inside an error text: ``"Reason [code]"`` → ``code``; a bare code as is."""
    if not isinstance(error, str) or not error:
        return None
    text = error.strip()
    if text.endswith("]") and "[" in text:
        return text[text.rindex("[") + 1 : -1] or None
    if " " not in text:
        return text
    return None


_CODE_CLASSES: dict[str, type[RocketChatError]] = {
    "no-agent-online": NoAgentOnline,
    "room-closed": RoomClosed,
    "invalid-room": RoomClosed,
    "error-invalid-room": RoomClosed,
    "invalid-token": InvalidVisitor,
    "error-invalid-token": InvalidVisitor,
    "error-not-allowed": NotAllowed,
    "not-authorized": NotAllowed,
    "unauthorized": NotAllowed,
    "error-unauthorized": NotAllowed,
    "error-invalid-department": InvalidDepartment,
    "message-length-exceeds-character-limit": MessageTooLong,
}

#: What ``livechat/message`` answers when ``sendMessage`` stored nothing: the route's
#: ``Object.assign(undefined, …)`` TypeError (LivechatTyped.ts:1233 @50c4441,
#: Livechat.js:231 @72f6b2a, lib/messages.ts in 7.x).
NOTHING_STORED_TEXT = "Cannot convert undefined or null to object"


def classify(
    route: str,
    *,
    status: int | None,
    error_type: str | None = None,
    error: Any = None,
    reset_at: float | None = None,
) -> RocketChatError:
    """Map a failed response to our exception type (pure; used for every REST failure)."""
    exc = _classify(route, status=status, error_type=error_type, error=error, reset_at=reset_at)
    exc.detail = error if isinstance(error, str) and error else None
    return exc


def _classify(
    route: str,
    *,
    status: int | None,
    error_type: str | None,
    error: Any,
    reset_at: float | None,
) -> RocketChatError:
    code = error_type or _code_of(error)
    label = code or (f"HTTP {status}" if status is not None else "error")
    message = f"{route}: {label}"
    if status == 429 or code == "error-too-many-requests":
        return RateLimited(
            f"{message} (rate limited)",
            reset_at=reset_at if reset_at is not None else time.time() + 60.0,
            error_type=code,
            status=status,
        )
    if code in _CODE_CLASSES:
        return _CODE_CLASSES[code](message, error_type=code, status=status)
    if status == 401:
        return AuthenticationFailed(message, error_type=code, status=status)
    if status == 403:
        return NotAllowed(message, error_type=code, status=status)
    if status is not None and status >= 500:
        return Unavailable(message, error_type=code, status=status)
    return RocketChatError(message, error_type=code, status=status)


def _reset_at(headers: Any) -> float | None:
    """Epoch seconds from ``X-RateLimit-Reset`` (sent in epoch milliseconds)."""
    if not headers:
        return None
    value = headers.get("X-RateLimit-Reset") or headers.get("x-ratelimit-reset")
    try:
        stamp = float(value)
    except (TypeError, ValueError):
        return None
    # Milliseconds per the server; tolerate a seconds value from a proxy.
    return stamp / 1000.0 if stamp > 1e11 else stamp


class RocketChatREST:
    """Async facade over ``rocketchat_API.RocketChat`` (see CONVENTIONS.md for the contract)."""

    def __init__(
        self,
        url: str,
        *,
        user: str | None = None,
        password: str | None = None,
        user_id: str | None = None,
        token: str | None = None,
        timeout: float = 10.0,
        max_workers: int = 8,
        rate_limit_wait: float = 120.0,
        clock: Callable[[], float] = time.time,
        observe: Callable[[str, float], None] | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._user = user
        self._password = password
        self._token_user_id = user_id
        self._token = token
        self._rate_limit_wait = rate_limit_wait
        self._clock = clock
        self._observe = observe  # (route, seconds) per HTTP call, for the latency metric
        #: Lists ``[{_id, username, roles}]`` another way (DDP) when the REST route is missing.
        self.public_roles_fallback: Callable[[], Awaitable[Any]] | None = None
        self._session = pooled_session(self.url, max_workers)
        self._session.hooks["response"].append(self._remember_response)
        self._local = threading.local()
        self._api = RocketChat(server_url=self.url, timeout=timeout, session=self._session)
        self._pool = ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rc-rest")
        self._login_lock = asyncio.Lock()
        self._logged_in = False
        self._dm_rooms: dict[str, str] = {}
        self._roles: dict[str, tuple[str | None, set[str]]] = {}
        self._roles_at = float("-inf")
        self._roles_lock = asyncio.Lock()
        self._bots: set[str] = set()
        self._bots_at = float("-inf")
        self._bots_lock = asyncio.Lock()
        self.user_id: str | None = None
        self.username: str | None = None

    # --- plumbing ------------------------------------------------------------------------

    def _remember_response(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        # rocketchat_API drops the response on errors; keep its headers (per worker
        # thread) so a 429 can be waited out until X-RateLimit-Reset.
        self._local.headers = response.headers

    def _run_blocking(self, route: str, fn: Callable[[], T]) -> T:
        """Run one library call in a worker thread, translating every failure."""
        self._local.headers = None
        try:
            result = fn()
        except RocketApiException as exc:
            body = exc.response_json if isinstance(exc.response_json, dict) else {}
            raise classify(
                route,
                status=exc.status_code,
                error_type=exc.error_type,
                error=body.get("error"),  # not exc.error: the library invents "Unknown error"
                reset_at=_reset_at(self._local.headers),
            ) from None
        except RocketBadStatusCodeException as exc:
            body = exc.response_json if isinstance(exc.response_json, dict) else {}
            raise classify(
                route,
                status=exc.status_code,
                error_type=body.get("errorType"),
                error=body.get("error"),
                reset_at=_reset_at(self._local.headers),
            ) from None
        except RocketAuthenticationException:
            raise AuthenticationFailed(f"{route}: invalid credentials", status=401) from None
        except RocketConnectionException:
            raise Unavailable(f"{route}: unexpected login response") from None
        except RocketMissingParamException as exc:
            raise RocketChatError(f"{route}: {exc}") from None
        except requests.Timeout:
            raise Unavailable(f"{route}: timed out") from None
        except requests.ConnectionError:
            raise Unavailable(f"{route}: connection failed") from None
        except requests.RequestException as exc:
            raise Unavailable(f"{route}: {type(exc).__name__}") from None
        except ValueError:
            # Malformed JSON in a 2xx body (requests' JSONDecodeError is a ValueError).
            raise Unavailable(f"{route}: malformed response") from None
        if isinstance(result, str | bytes):
            # rocketchat_API returns r.text for a 2xx it cannot decode (base.json_or_error).
            raise RouteMissing(
                f"{route}: the server answered with a page, not JSON (route missing on this "
                "Rocket.Chat version, or a proxy/SSO page in front of it)",
                status=200,
            )
        return result

    async def _call(self, route: str, fn: Callable[[], T]) -> T:
        """Run ``fn`` in the pool; on 429 wait for the reset (bounded) and retry."""
        waited = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                return await self._timed(loop, route, fn)
            except RateLimited as exc:
                delay = max(0.0, exc.reset_at - self._clock()) + 0.05
                if waited + delay > self._rate_limit_wait:
                    raise
                log.warning("%s rate limited; retrying in %.1f s", route, delay)
                waited += delay
                await asyncio.sleep(delay)

    async def _timed(self, loop: asyncio.AbstractEventLoop, route: str, fn: Callable[[], T]) -> T:
        """One attempt in the pool, reported to ``observe`` (success or failure)."""
        started = time.monotonic()
        try:
            return await loop.run_in_executor(self._pool, self._run_blocking, route, fn)
        finally:
            if self._observe is not None:
                self._observe(route, time.monotonic() - started)

    async def _authed(self, route: str, fn: Callable[[], T]) -> T:
        """A call that needs the bot's auth headers; logs in first and once more on a 401."""
        if not self._logged_in:
            await self.login()
        try:
            return await self._call(route, fn)
        except AuthenticationFailed:
            if not (self._user and self._password):
                raise
            # The session token expired or was revoked: a fresh password login, one retry.
            log.info("%s: session rejected, logging in again", route)
            self._logged_in = False
            await self.login()
            return await self._call(route, fn)

    @staticmethod
    async def _paged(key: str, fetch: Callable[[int], Awaitable[Any]]) -> AsyncIterator[list[dict]]:
        """Each page ``data[key]`` of a paginated route (``offset``/``total``) in turn.

        ``fetch(offset)`` makes one awaited call; paging stops at ``total`` or an empty page.
        """
        offset = 0
        while True:
            data = await fetch(offset)
            page = [d for d in (data.get(key) or []) if isinstance(d, dict)]
            yield page
            offset += len(page)
            total = data.get("total")
            if not page or total is None or offset >= int(total):
                return

    @staticmethod
    def _q(value: object) -> str:
        """URL-encode one query value (the library concatenates ``k=v`` verbatim)."""
        return quote(str(value), safe="")

    # --- session -------------------------------------------------------------------------

    async def login(self) -> tuple[str, str]:
        """Authenticate; returns ``(user_id, auth_token)``. A PAT is verified via ``/me``.

        Raises AuthenticationFailed for bad credentials, Unavailable for network errors.
        """
        async with self._login_lock:
            if self._token and self._token_user_id:
                self._api.headers["X-Auth-Token"] = self._token
                self._api.headers["X-User-Id"] = self._token_user_id
                try:
                    me = await self._call("me", self._api.me)
                except (AuthenticationFailed, NotAllowed) as exc:
                    raise AuthenticationFailed(
                        "Rocket.Chat rejected the configured user_id/token", status=exc.status
                    ) from None
                self.user_id = me.get("_id") or self._token_user_id
                self.username = me.get("username")
            elif self._user and self._password:
                user, password = self._user, self._password
                data = await self._call("login", lambda: self._api.login(user, password))
                info = data.get("data") or {}
                self.user_id = info.get("userId")
                self.username = (info.get("me") or {}).get("username") or (
                    None if "@" in user else user
                )
            else:
                raise AuthenticationFailed("no Rocket.Chat credentials configured")
            self._logged_in = True
            log.info("logged in to %s as %s (%s)", self.url, self.username, self.user_id)
            return str(self.user_id), str(self._api.headers.get("X-Auth-Token"))

    async def close(self) -> None:
        """Release the thread pool and HTTP connections."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._session.close()

    async def __aenter__(self) -> RocketChatREST:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # --- general -------------------------------------------------------------------------

    async def me(self) -> dict:
        """The bot's own user document (includes its roles)."""
        return await self._authed("me", self._api.me)

    async def server_info(self) -> dict:
        """``GET /api/info`` (public): version and build info."""
        return await self._call("info", self._api.info)

    async def get_setting(self, setting_id: str) -> object:
        """A setting's value: ``settings/<id>`` if permitted, else the public settings list.

        Raises NotAllowed when the bot can read it neither way.
        """
        sid = self._q(setting_id)
        try:
            data = await self._authed("settings", lambda: self._api.call_api_get(f"settings/{sid}"))
            return data.get("value")
        except (NotAllowed, AuthenticationFailed):
            pass
        except RocketChatError as exc:
            if exc.status not in (400, 404):
                raise
        # Newer 7.x filters by _id; up to 7.0 the filter is ignored and the list comes back
        # paged, sorted by _id (audit R6): page through it until the setting shows up.
        def fetch(offset: int) -> Awaitable[Any]:
            return self._call("settings.public", lambda: self._api.call_api_get(
                "settings.public", _id=sid, offset=offset, count=PAGE_SIZE
            ))

        async for page in self._paged("settings", fetch):
            for item in page:
                if item.get("_id") == setting_id:
                    return item.get("value")
        raise NotAllowed(f"settings: {setting_id} is not readable", error_type="error-not-allowed")

    async def _public_roles(self) -> dict[str, tuple[str | None, set[str]]]:
        """``user_id -> (username, roles)`` for holders of public roles, cached ~30 s.

        Servers without the REST route (6.x and 7.0) answer it with an HTML page (200),
        others may with a 404: either way the same list then comes from the DDP method
        ``getUserRoles`` (present through 7.x) through ``public_roles_fallback``.
        """
        async with self._roles_lock:
            if self._clock() - self._roles_at > ROLES_CACHE_SECONDS:
                try:
                    data = await self._authed(
                        "roles.getUsersInPublicRoles", self._api.roles_get_users_in_public_roles
                    )
                    users = data.get("users") or []
                except RocketChatError as exc:
                    missing = isinstance(exc, RouteMissing) or exc.status == 404
                    if not missing or self.public_roles_fallback is None:
                        raise
                    log.info("roles.getUsersInPublicRoles missing; asking DDP getUserRoles")
                    try:
                        users = await self.public_roles_fallback()
                    except (ConnectionError, TimeoutError) as ddp_exc:
                        why = type(ddp_exc).__name__
                        raise Unavailable(f"getUserRoles: realtime not ready ({why})") from None
                roles: dict[str, tuple[str | None, set[str]]] = {}
                for user in users if isinstance(users, list) else []:
                    if isinstance(user, dict) and user.get("_id"):
                        roles[user["_id"]] = (user.get("username"), set(user.get("roles") or []))
                self._roles = roles
                self._roles_at = self._clock()
            return self._roles

    async def user_roles(self, user_id: str) -> set[str]:
        """Public roles of a user (``roles.getUsersInPublicRoles``, no permission needed).

        The list is cached for ~30 s; a user without public roles gets an empty set.
        """
        entry = (await self._public_roles()).get(user_id)
        return set(entry[1]) if entry else set()

    async def users_with_roles(self, roles: list[str] | set[str]) -> list[str]:
        """Usernames holding any of ``roles`` (public roles only; same cache as user_roles)."""
        wanted = set(roles)
        return sorted(
            name for name, held in (await self._public_roles()).values() if name and held & wanted
        )

    async def bot_accounts(self) -> set[str]:
        """Ids of the users holding the ``bot`` role, cached ~5 min.

        ``bot`` is never a public role (empty description), webhooks carry no ``bot``
        flag and ``users.info`` shows roles only with ``view-full-other-user-info``
        (``getFullUserData.ts``). ``users.list`` needs only ``view-d-room`` (held by
        ``bot`` by default) and its default projection includes ``roles``
        (``getNonEmptyFields``), so the list is paged from there. ``query`` filters are
        ignored since 7.0, hence every page is read. Raises what the route raises
        (NotAllowed, AuthenticationFailed for newer 7.x's 401, Unavailable...).
        """
        async with self._bots_lock:
            if self._clock() - self._bots_at > BOT_ACCOUNTS_CACHE_SECONDS:
                def fetch(offset: int) -> Awaitable[Any]:
                    return self._authed("users.list", lambda: self._api.call_api_get(
                        "users.list", offset=offset, count=PAGE_SIZE
                    ))

                found: set[str] = set()
                async for page in self._paged("users", fetch):
                    found.update(u["_id"] for u in page
                                 if u.get("_id") and "bot" in (u.get("roles") or []))
                self._bots = found
                self._bots_at = self._clock()
            return set(self._bots)

    async def departments(self) -> list[dict]:
        """All Omnichannel departments (``livechat/department``, paged)."""
        result: list[dict] = []
        offset = 0
        while True:
            data = await self._authed(
                "livechat/department",
                lambda o=offset: self._api.call_api_get(
                    "livechat/department", offset=o, count=100
                ),
            )
            page = data.get("departments") or []
            result.extend(page)
            total = data.get("total")
            offset += len(page)
            if not page or total is None or offset >= int(total):
                return result

    # --- messages ------------------------------------------------------------------------

    async def send_message(
        self, rid: str, text: str, msg_id: str | None = None,
        attachments: list[dict] | None = None,
    ) -> dict:
        """Post ``text`` to room ``rid`` via ``chat.sendMessage`` with a client ``_id``.

        Retrying with the same ``msg_id`` never duplicates: if the message already
        exists (the server refuses or answers empty), the stored message is returned.
        Network failures are retried a few times with the same id.
        """
        msg_id = msg_id or random_id()
        message: dict = {"_id": msg_id, "rid": rid, "msg": text}
        if attachments:
            message["attachments"] = attachments
        delays = [0.2, 0.5, 1.0]
        while True:
            try:
                data = await self._authed(
                    "chat.sendMessage", lambda: self._api.chat_send_message(message)
                )
            except Unavailable:
                if not delays:
                    raise
                log.warning("chat.sendMessage %s failed transiently; retrying", msg_id)
                await asyncio.sleep(delays.pop(0))
                continue
            except (RateLimited, AuthenticationFailed):
                raise
            except RocketChatError:
                existing = await self._existing_message(msg_id)
                if existing is not None and existing.get("rid") == rid:
                    log.info("chat.sendMessage %s already stored; treating as sent", msg_id)
                    return existing
                raise
            sent = data.get("message") if isinstance(data, dict) else None
            if sent:
                log.debug("sent message %s to room %s", msg_id, rid)
                return sent
            existing = await self._existing_message(msg_id)
            if existing is not None:
                return existing
            raise RocketChatError(f"chat.sendMessage: {msg_id} not stored")

    async def _existing_message(
        self, msg_id: str, *, unknown_if_forbidden: bool = False
    ) -> dict | None:
        """The stored message ``msg_id`` or None (a missing message is a bare failure).

        With ``unknown_if_forbidden`` a refused read (NotAllowed) is raised: the caller
        cannot tell "missing" from "not readable" then.
        """
        try:
            data = await self._authed(
                "chat.getMessage",
                lambda: self._api.call_api_get("chat.getMessage", msgId=self._q(msg_id)),
            )
        except (Unavailable, RateLimited, AuthenticationFailed):
            raise
        except NotAllowed:
            if unknown_if_forbidden:
                raise
            return None
        except RocketChatError:
            return None
        return data.get("message") or None

    async def dm_room(self, username: str) -> str:
        """The DM room id with ``username`` (``dm.create``; cached per username)."""
        rid = self._dm_rooms.get(username)
        if rid is None:
            data = await self._authed("dm.create", lambda: self._api.dm_create(username))
            room = data.get("room") or {}
            rid = room.get("rid") or room.get("_id")
            if not rid:
                raise RocketChatError("dm.create: no room id in response")
            self._dm_rooms[username] = rid
        return rid

    async def send_dm(
        self, username: str, text: str, msg_id: str | None = None,
        attachments: list[dict] | None = None,
    ) -> dict:
        """Direct-message ``username`` (with ``attachments``, e.g. buttons); idempotent
        for a given ``msg_id``."""
        rid = await self.dm_room(username)
        try:
            return await self.send_message(rid, text, msg_id, attachments)
        except NotAllowed:
            # A cached DM may have been deleted meanwhile: recreate it once.
            self._dm_rooms.pop(username, None)
            rid = await self.dm_room(username)
            return await self.send_message(rid, text, msg_id, attachments)

    async def subscriptions_since(self, since: datetime) -> list[dict]:
        """Subscriptions updated after ``since`` (``subscriptions.get?updatedSince``)."""
        stamp = self._q(iso_date(since))
        data = await self._authed(
            "subscriptions.get",
            lambda: self._api.call_api_get("subscriptions.get", updatedSince=stamp),
        )
        return list(data.get("update") or [])

    async def rooms_since(self, since: datetime) -> list[dict]:
        """The bot's rooms updated after ``since`` (``rooms.get?updatedSince``).

        A room's ``_updatedAt`` moves with every new message, while a subscription's may
        not (an already-set unread alert is not touched again), so catch-up uses both.
        """
        stamp = self._q(iso_date(since))
        data = await self._authed(
            "rooms.get", lambda: self._api.call_api_get("rooms.get", updatedSince=stamp)
        )
        return list(data.get("update") or [])

    async def sync_messages(self, rid: str, since: datetime) -> list[dict]:
        """Messages of room ``rid`` created or updated after ``since`` (``chat.syncMessages``)."""
        room, stamp = self._q(rid), self._q(iso_date(since))
        data = await self._authed(
            "chat.syncMessages",
            lambda: self._api.call_api_get("chat.syncMessages", roomId=room, lastUpdate=stamp),
        )
        return list((data.get("result") or {}).get("updated") or [])

    # --- livechat (public routes, rate-limited per IP) -----------------------------------

    async def register_visitor(
        self, token: str, name: str, department: str | None = None
    ) -> dict:
        """Create or update the visitor ``token`` (``POST livechat/visitor``)."""
        visitor: dict[str, Any] = {"token": token, "name": name}
        if department:
            visitor["department"] = department
        data = await self._call(
            "livechat/visitor",
            lambda: self._api.call_api_post("livechat/visitor", body={"visitor": visitor}),
        )
        return data.get("visitor") or {}

    async def open_room(self, token: str) -> tuple[dict, bool]:
        """The visitor's open room, creating one if needed: ``(room, new_room)``.

        Raises NoAgentOnline when Omnichannel cannot take the conversation.
        """
        tok = self._q(token)
        data = await self._call(
            "livechat/room", lambda: self._api.call_api_get("livechat/room", token=tok)
        )
        return data.get("room") or {}, bool(data.get("newRoom"))

    async def post_visitor_message(self, token: str, rid: str, text: str, msg_id: str) -> dict:
        """Post as the visitor (``POST livechat/message``); a repeated ``msg_id`` is a success.

        When the server says nothing was stored (a duplicate ``_id`` answers a TypeError,
        not a code), the message is read back with the bot's own credentials
        (``chat.getMessage``; ``view-livechat-rooms`` lets a livechat-manager read any
        Omnichannel room): found in ``rid`` as this visitor's → already stored, success.
        Not found → :class:`NotStored` (something blocked it, e.g. an Apps-Engine app).
        """
        body = {"token": token, "rid": rid, "msg": text, "_id": msg_id}
        try:
            data = await self._call(
                "livechat/message",
                lambda: self._api.call_api_post("livechat/message", body=body),
            )
        except RocketChatError as exc:
            if type(exc) is not RocketChatError or not _nothing_stored(exc):
                raise
            try:
                existing = await self._existing_message(msg_id, unknown_if_forbidden=True)
            except NotAllowed:
                raise NotStored(
                    f"livechat/message: {msg_id} may or may not be stored (chat.getMessage "
                    "refused: the bot needs view-livechat-rooms to confirm)",
                    status=exc.status, detail=exc.detail,
                ) from None
            if existing is not None and existing.get("rid") == rid and (
                existing.get("token") in (None, token)
            ):
                log.info("livechat/message %s already stored; treating as sent", msg_id)
                return existing
            raise NotStored(
                f"livechat/message: {msg_id} not stored (refused without a reason)",
                status=exc.status, detail=exc.detail,
            ) from None
        message = data.get("message") if isinstance(data, dict) else None
        return message or {"_id": msg_id, "rid": rid}

    async def update_visitor_message(self, token: str, rid: str, msg_id: str, text: str) -> dict:
        """Edit the visitor's own message (``PUT livechat/message/:_id`` {token, rid, msg}).

        The server refuses with ``error-action-not-allowed`` unless ``Message_AllowEditing``
        is on, and with ``invalid-message`` when no message has that ``_id`` [LVM].
        """
        route = "livechat/message/:_id"
        data = await self._call(
            route,
            lambda: self._api.call_api_put(
                f"livechat/message/{self._q(msg_id)}", token=token, rid=rid, msg=text
            ),
        )
        message = data.get("message") if isinstance(data, dict) else None
        return message or {"_id": msg_id, "rid": rid}

    async def delete_visitor_message(self, token: str, rid: str, msg_id: str) -> None:
        """Delete the visitor's own message (``DELETE livechat/message/:_id`` {token, rid}).

        The room may be closed (the server's ``findRoom`` does not ask for an open room);
        ``error-action-not-allowed`` unless ``Message_AllowDeleting`` is on,
        ``invalid-message`` when no message has that ``_id`` [LVM].
        """
        api = self._api
        url = f"{api.server_url}{api.api_path}livechat/message/{self._q(msg_id)}"
        # rocketchat_API's call_api_delete sends no body; this route reads token and rid
        # from the body.
        await self._call(
            "livechat/message/:_id",
            lambda: json_or_error(api.session.delete(
                url, json={"token": token, "rid": rid}, headers=api.headers,
                verify=api.ssl_verify, cert=api.cert, proxies=api.proxies, timeout=api.timeout,
            )),
        )


    async def download(self, path: str, *, max_bytes: int, timeout: float) -> tuple[bytes, str]:
        """GET ``path`` (``/file-upload/<id>/<name>…``) on the server: ``(bytes, mime)``.

        Authenticated both ways the real server accepts (``requestCanAccessFiles``): the
        link's own ``?token=`` JWT, valid one hour, and the bot's ``X-User-Id`` /
        ``X-Auth-Token``, which still work after that hour when the bot may read the
        room's files. Redirects (object stores) are followed without those headers, so
        the bot's token never leaves the Rocket.Chat server. FileRefused for 401/403/404
        or a body over ``max_bytes``; Unavailable for 5xx and network errors.
        """
        if not self._logged_in:
            await self.login()
        auth = {"X-User-Id": str(self.user_id or ""),
                "X-Auth-Token": str(self._api.headers.get("X-Auth-Token") or "")}
        route = "file-upload"

        def fetch() -> tuple[bytes, str]:
            url = self.url + path
            origin = urlsplit(self.url)[:2]
            for _ in range(MAX_FILE_REDIRECTS + 1):
                headers = auth if urlsplit(url)[:2] == origin else {}
                with self._session.get(url, headers=headers, timeout=timeout, stream=True,
                                       allow_redirects=False) as resp:
                    if resp.is_redirect and resp.headers.get("Location"):
                        url = urljoin(url, resp.headers["Location"])
                        continue
                    return _read_file(resp, route, max_bytes)
            raise Unavailable(f"{route}: too many redirects")

        return await self._call(route, fetch)


def _read_file(resp: requests.Response, route: str, max_bytes: int) -> tuple[bytes, str]:
    """The body of a file response, at most ``max_bytes`` (read in chunks, never more)."""
    if resp.status_code in (401, 403, 404):
        raise FileRefused(f"{route}: HTTP {resp.status_code}", status=resp.status_code)
    if resp.status_code != 200:
        raise Unavailable(f"{route}: HTTP {resp.status_code}", status=resp.status_code)
    declared = resp.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise FileRefused(f"{route}: {declared} bytes is over {max_bytes}", status=413)
    chunks: list[bytes] = []
    size = 0
    for chunk in resp.iter_content(256 * 1024):
        size += len(chunk)
        if size > max_bytes:
            raise FileRefused(f"{route}: over {max_bytes} bytes", status=413)
        chunks.append(chunk)
    mime = resp.headers.get("Content-Type", "").split(";", 1)[0].strip()
    return b"".join(chunks), mime


def _nothing_stored(exc: RocketChatError) -> bool:
    """Whether a ``livechat/message`` failure may mean "this ``_id`` exists already".

    Real servers answer 400 with the TypeError text; a bare ``{"success": false}``
    (``API.v1.failure()`` when the message cannot be read back) and codes saying
    "duplicate" are accepted too.
    """
    if exc.status != 400:
        return False
    if exc.detail == NOTHING_STORED_TEXT:
        return True
    bare = exc.error_type is None and exc.detail is None
    return bare or _is_duplicate(exc.error_type)


def _is_duplicate(code: str | None) -> bool:
    """Whether an error code says "this _id already exists" (wording varies by version)."""
    if not code:
        return False
    code = code.lower()
    return "already" in code or "duplicate" in code or "exists" in code
