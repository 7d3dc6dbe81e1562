"""REST API under ``/api`` (``/api/info`` and ``/api/v1/...``), including the livechat routes.

Request pipeline, in the real server's order [API]: injected failures/latency (sandbox
only) → authentication (401) → rate limiter (429, §4.6) → route permission (403) → action.
Error envelopes: ``{"success": false, "error": "<reason> [<code>]", "errorType": "<code>"}``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from aiohttp import web

from .model import State
from .versions import VersionProfile
from .wire import (
    Forbidden,
    PlainError,
    RCError,
    iso,
    parse_date,
    rest_dumps,
    to_ms,
)

log = logging.getLogger("sandbox.rocketchat")

Handler = Callable[["Call"], Any]

UNAUTHORIZED = {"status": "error", "message": "You must be logged in to do this."}

#: What Meteor's web app serves for a path no REST route claims (6.x, 7.0): the client
#: bundle's page, with status 200 (audit §1.2 R3, §3).
APP_PAGE = (
    '<!DOCTYPE html>\n<html>\n<head>\n<meta charset="utf-8" />\n'
    '<meta name="viewport" content="width=device-width, initial-scale=1" />\n'
    "<title>Rocket.Chat</title>\n</head>\n<body>\n"
    '<noscript>You need to enable JavaScript to run this app.</noscript>\n'
    '<div id="react-root"></div>\n</body>\n</html>\n'
)


@dataclass
class Call:
    """One REST request as the route actions see it."""

    request: web.Request
    route: str
    query: dict[str, str]
    body: dict[str, Any]
    uid: str | None = None
    url_param: str | None = None


@dataclass(frozen=True)
class RecordedRequest:
    """One incoming ``/api/...`` request as the client sent it (see ``RestAPI.recorded``)."""

    method: str
    path: str  # after ``/api/``: ``"info"``, ``"v1/chat.sendMessage"``, ``"v1/settings/Site_Url"``
    query: tuple[tuple[str, str], ...]  # in order, repeated keys kept
    content_type: str
    body: bytes


@dataclass
class Route:
    """A route: action, auth requirement and permissions (any-of)."""

    action: Handler
    auth: bool
    permissions_any: tuple[str, ...] = ()


@dataclass
class RateLimiter:
    """Meteor RateLimiter semantics: fixed window from the first call, per (IP, route+method)."""

    clock: Callable[[], float] = time.time
    buckets: dict[tuple[str, str], list[float]] = field(default_factory=dict)

    def hit(self, ip: str, key: str, limit: int, interval_ms: int) -> tuple[bool, int, int]:
        """Count one call; returns (allowed, remaining, time_to_reset_ms)."""
        now_ms = self.clock() * 1000
        bucket = self.buckets.get((ip, key))
        if bucket is None or now_ms - bucket[0] > interval_ms:
            bucket = [now_ms, 0]
            self.buckets[(ip, key)] = bucket
        bucket[1] += 1
        time_to_reset = int(max(0, interval_ms - (now_ms - bucket[0])))
        if bucket[1] > limit:
            return False, 0, time_to_reset
        return True, max(0, limit - int(bucket[1])), time_to_reset


@dataclass
class Failure:
    """An injected REST failure (sandbox control)."""

    status: int
    routes: frozenset[str] | None
    until: float | None
    after_processing: bool


class RestAPI:
    """Dispatches ``/api/...`` to route actions over the shared State."""

    def __init__(
        self,
        state: State,
        *,
        profile: VersionProfile | None = None,
        duplicate_send_fails: bool = True,
    ) -> None:
        self.state = state
        self.profile = profile or VersionProfile()
        #: Routes with their own ``rateLimiterOptions`` in this release (others: the default).
        self.route_limits: dict[str, tuple[int, int]] = self.profile.route_rate_limits()
        self.limiter = RateLimiter(clock=state.clock)
        self.latency = 0.0
        self.failure: Failure | None = None
        self.duplicate_send_fails = duplicate_send_fails
        self.routes: dict[tuple[str, str], Route] = {}
        # Every request in arrival order when set to a list (tests/oracle checks them
        # against Rocket.Chat's published schemas); None keeps a long-running sandbox lean.
        self.recorded: list[RecordedRequest] | None = None
        self._register()

    # ------------------------------------------------------------------ pipeline
    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Entry point for every ``/api/...`` request."""
        path = request.match_info.get("tail", "")
        if self.recorded is not None:
            self.recorded.append(
                RecordedRequest(
                    request.method,
                    path,
                    tuple(request.query.items()),
                    request.content_type,
                    await request.read(),
                )
            )
        if path == "info":
            route_name = "info"
        elif path.startswith("v1/"):
            route_name = path[3:]
        else:
            return _json({"success": False, "error": "Not found"}, 404)
        route, url_param, pattern = self._resolve(request.method, route_name)
        with self.state.lock:
            self.state.count(pattern if route else route_name)
        if self.latency:
            await asyncio.sleep(self.latency)
        failure = self._active_failure(pattern)
        if failure is not None and not failure.after_processing:
            log.info("injected failure %s on %s %s", failure.status, request.method, pattern)
            return web.Response(status=failure.status, text="Service Unavailable")
        if route is None:
            if self.profile.unknown_route_html:
                # No REST catch-all before newer 7.x: Meteor serves its app page.
                return web.Response(text=APP_PAGE, status=200, content_type="text/html")
            return _json(
                {"success": False, "error": f"Method not allowed or not found: {route_name}"}, 404
            )
        body = await _read_body(request)
        call = Call(request, pattern, dict(request.query), body, url_param=url_param)
        response = self._run(call, route, request.method)
        if failure is not None and failure.after_processing:
            log.info(
                "injected failure %s after processing %s %s",
                failure.status,
                request.method,
                pattern,
            )
            return web.Response(status=failure.status, text="Service Unavailable")
        return response

    def _resolve(self, method: str, name: str) -> tuple[Route | None, str | None, str]:
        route = self.routes.get((method, name))
        if route is not None:
            return route, None, name
        params = {"settings/": ":_id", "livechat/visitor/": ":token",
                  "livechat/message/": ":_id", "livechat/messages.history/": ":rid"}
        for prefix, param in params.items():
            if name.startswith(prefix) and len(name) > len(prefix):
                pattern = prefix + param
                route = self.routes.get((method, pattern))
                if route is not None:
                    return route, name[len(prefix) :], pattern
        return None, None, name

    def _active_failure(self, route_name: str) -> Failure | None:
        failure = self.failure
        if failure is None:
            return None
        if failure.until is not None and time.monotonic() >= failure.until:
            self.failure = None
            return None
        if failure.routes is not None and route_name not in failure.routes:
            return None
        return failure

    def _run(self, call: Call, route: Route, method: str) -> web.Response:
        headers: dict[str, str] = {}
        with self.state.lock:
            if route.auth:
                uid = self._authenticate(call.request)
                if uid is None:
                    return _json(UNAUTHORIZED, 401)
                call.uid = uid
            try:
                self._rate_limit(call, route, method, headers)
                if route.permissions_any and not any(
                    self.state.has_permission(call.uid, p) for p in route.permissions_any
                ):
                    raise Forbidden()
                result = route.action(call)
            except RCError as exc:
                if exc.status >= 500:
                    log.error("route %s failed: %s", call.route, exc.message)
                return _json(exc.rest(), exc.status, headers)
            except Exception:
                log.exception("internal error on %s", call.route)
                return _json({"success": False, "error": "Internal server error"}, 500, headers)
        if isinstance(result, web.Response):
            result.headers.update(headers)
            return result
        return _json(result, 200, headers)

    def _authenticate(self, request: web.Request) -> str | None:
        uid_header = request.headers.get("X-User-Id")
        token = request.headers.get("X-Auth-Token")
        if not uid_header or not token:
            return None
        uid, _ = self.state.user_for_token(token)
        if uid is None or uid != uid_header:
            return None
        return uid

    def _rate_limit(self, call: Call, route: Route, method: str, headers: dict[str, str]) -> None:
        if not self.state.setting("API_Enable_Rate_Limiter"):
            return
        if route.auth and self.state.has_permission(call.uid, "api-bypass-rate-limit"):
            return
        limit, interval = self.route_limits.get(
            call.route,
            (
                int(self.state.setting("API_Enable_Rate_Limiter_Limit_Calls_Default") or 10),
                int(self.state.setting("API_Enable_Rate_Limiter_Limit_Time_Default") or 60000),
            ),
        )
        ip = call.request.remote or "unknown"
        allowed, remaining, time_to_reset = self.limiter.hit(
            ip, f"{call.route}{method.lower()}", limit, interval
        )
        headers["X-RateLimit-Limit"] = str(limit)
        headers["X-RateLimit-Remaining"] = str(remaining)
        headers["X-RateLimit-Reset"] = str(int(self.state.clock() * 1000) + time_to_reset)
        if not allowed:
            seconds = math.ceil(time_to_reset / 1000)
            log.info("rate limited %s %s from %s", method, call.route, ip)
            raise RCError(
                "error-too-many-requests",
                "Error, too many requests. Please slow down. You must wait "
                f"{seconds} seconds before trying this endpoint again.",
                {"timeToReset": time_to_reset, "seconds": seconds},
                status=429,
            )

    # ------------------------------------------------------------------ table
    def _register(self) -> None:
        r = self.routes
        r[("GET", "info")] = Route(self.info, auth=False)
        r[("POST", "login")] = Route(self.login, auth=False)
        r[("POST", "logout")] = Route(self.logout, auth=True)
        r[("GET", "me")] = Route(self.me, auth=True)
        r[("GET", "users.info")] = Route(self.users_info, auth=True)
        r[("POST", "dm.create")] = Route(self.dm_create, auth=True)
        r[("POST", "im.create")] = Route(self.dm_create, auth=True)
        r[("POST", "chat.postMessage")] = Route(self.chat_post_message, auth=True)
        r[("POST", "chat.sendMessage")] = Route(self.chat_send_message, auth=True)
        r[("GET", "chat.getMessage")] = Route(self.chat_get_message, auth=True)
        r[("GET", "chat.syncMessages")] = Route(self.chat_sync_messages, auth=True)
        r[("GET", "subscriptions.get")] = Route(self.subscriptions_get, auth=True)
        if self.profile.public_roles_route:
            r[("GET", "roles.getUsersInPublicRoles")] = Route(
                self.users_in_public_roles, auth=True
            )
        r[("GET", "users.list")] = Route(self.users_list, auth=True)
        r[("GET", "roles.getUsersInRole")] = Route(self.users_in_role, auth=True)
        r[("GET", "settings.public")] = Route(self.settings_public, auth=False)
        r[("GET", "settings")] = Route(self.settings_list, auth=True)
        r[("GET", "settings/:_id")] = Route(
            self.setting_get, auth=True, permissions_any=("view-privileged-setting",)
        )
        r[("GET", "permissions.listAll")] = Route(self.permissions_list_all, auth=True)
        r[("POST", "livechat/visitor")] = Route(self.livechat_visitor, auth=False)
        r[("GET", "livechat/visitor/:token")] = Route(self.livechat_visitor_get, auth=False)
        r[("GET", "livechat/room")] = Route(self.livechat_room, auth=False)
        r[("POST", "livechat/message")] = Route(self.livechat_message, auth=False)
        r[("PUT", "livechat/message/:_id")] = Route(self.livechat_message_update, auth=False)
        r[("DELETE", "livechat/message/:_id")] = Route(self.livechat_message_delete, auth=False)
        r[("GET", "livechat/messages.history/:rid")] = Route(
            self.livechat_messages_history, auth=False
        )
        r[("POST", "livechat/room.close")] = Route(self.livechat_room_close, auth=False)
        r[("POST", "livechat/room.closeByUser")] = Route(
            self.livechat_close_by_user, auth=True, permissions_any=("close-livechat-room",)
        )
        r[("GET", "livechat/department")] = Route(
            self.livechat_departments,
            auth=True,
            permissions_any=("view-livechat-departments", "view-l-room"),
        )
        r[("GET", "livechat/config")] = Route(self.livechat_config, auth=False)
        r[("GET", "livechat/integrations.settings")] = Route(
            self.livechat_integration_settings,
            auth=True,
            permissions_any=("view-livechat-manager",),
        )
        r[("POST", "livechat/offline.message")] = Route(self.livechat_offline_message, auth=False)

    # ------------------------------------------------------------------ core routes
    def info(self, call: Call) -> dict[str, Any]:
        # getServerInfo: admins get the full Info (not the bot: this route is public and
        # the bot calls it without headers); everyone else major.minor (removePatchInfo).
        uid = self._authenticate(call.request)
        if uid is not None and "admin" in self.state.users[uid]["roles"]:
            return {"info": {"version": self.profile.version}, "success": True}
        return {"version": self.profile.info_version, "success": True}

    def login(self, call: Call) -> Any:
        body = call.body
        try:
            if body.get("resume"):
                uid, reason = self.state.user_for_token(str(body["resume"]))
                if uid is None:
                    raise RCError(403, reason)
                token = str(body["resume"])
            else:
                selector: Any
                if body.get("user"):
                    user = str(body["user"])
                    selector = {"email": user} if "@" in user else {"username": user}
                elif body.get("username"):
                    selector = {"username": str(body["username"])}
                elif body.get("email"):
                    selector = {"email": str(body["email"])}
                else:
                    raise RCError(403, "User not found")
                password = body.get("password", body.get("pass"))
                uid = self.state.check_password(selector, password)
                token, _ = self.state.issue_login_token(uid)
        except RCError:
            log.info("REST login failed")
            return _json(
                {"status": "error", "error": "Unauthorized", "message": "Unauthorized"}, 401
            )
        log.info("REST login user=%s", uid)
        me = self.state.user_doc(uid, full=True)
        return {"status": "success", "data": {"userId": uid, "authToken": token, "me": me}}

    def logout(self, call: Call) -> dict[str, Any]:
        token = call.request.headers.get("X-Auth-Token", "")
        entry = self.state.tokens.get(token)
        if entry is not None and entry[1] is not None:
            del self.state.tokens[token]
        return {"status": "success", "data": {"message": "You've been logged out!"}}

    def me(self, call: Call) -> dict[str, Any]:
        assert call.uid is not None
        out = self.state.user_doc(call.uid, full=True)
        out["settings"] = {"preferences": {}}
        out["success"] = True
        return out

    def users_info(self, call: Call) -> Any:
        user = None
        if call.query.get("userId"):
            user = self.state.users.get(call.query["userId"])
        elif call.query.get("username"):
            user = self.state.user_by_username(call.query["username"])
        else:
            raise RCError(
                "error-user-param-not-provided",
                'The required "userId" or "username" param was not provided',
            )
        if user is None:
            return _json({"success": False, "error": "User not found."}, 400)
        full = user["_id"] == call.uid or self.state.has_permission(
            call.uid, "view-full-other-user-info"
        )
        return {"user": self.state.user_doc(user["_id"], full=full), "success": True}

    def dm_create(self, call: Call) -> dict[str, Any]:
        assert call.uid is not None
        if call.body.get("usernames"):
            names = [n.strip() for n in str(call.body["usernames"]).split(",") if n.strip()]
        elif call.body.get("username"):
            names = [str(call.body["username"])]
        else:
            raise RCError(
                "error-room-param-not-provided", 'Body param "roomId" or "username" is required'
            )
        room = self.state.create_direct_message(call.uid, names)
        return {"room": {**self.state.room_for_client(room), "rid": room["_id"]}, "success": True}

    def _room_for_channel(self, uid: str, channel: str) -> dict[str, Any]:
        if channel.startswith("@"):
            return self.state.create_direct_message(uid, [channel[1:]])
        name = channel[1:] if channel.startswith("#") else channel
        for room in self.state.rooms.values():
            if room.get("name") == name or room["_id"] == name:
                return room
        raise RCError("invalid-channel", "Invalid channel")

    def chat_post_message(self, call: Call) -> dict[str, Any]:
        assert call.uid is not None
        body = call.body
        if body.get("roomId"):
            rid = str(body["roomId"])
        elif body.get("channel"):
            rid = self._room_for_channel(call.uid, str(body["channel"]))["_id"]
        else:
            raise RCError(
                "error-room-not-found",
                'The required "roomId" or "channel" param provided does not match any channel',
            )
        message = {"rid": rid, "msg": body.get("text", "") or ""}
        for key in ("alias", "emoji", "avatar", "attachments", "tmid"):
            if body.get(key):
                message[key] = body[key]
        stored = self.state.execute_send_message(call.uid, message, method="chat.postMessage")
        if stored is None:
            raise PlainError("unknown-error")
        return {
            "ts": to_ms(stored["ts"]),
            "channel": body.get("channel") or body.get("roomId"),
            "message": self.state.message_for_client(stored),
            "success": True,
        }

    def chat_send_message(self, call: Call) -> Any:
        assert call.uid is not None
        message = call.body.get("message")
        if not isinstance(message, dict):
            raise RCError("error-invalid-params", 'The "message" parameter must be provided.')
        message = dict(message)
        if isinstance(message.get("ts"), str):
            message["ts"] = parse_date(message["ts"])
        if message.get("t"):
            raise PlainError("Cannot send system messages using 'chat.sendMessage'")
        stored = self.state.execute_send_message(call.uid, message, method="chat.sendMessage")
        if stored is None:
            if self.duplicate_send_fails:
                # The real route normalises the (missing) result of a duplicate _id and fails.
                return _json(
                    {
                        "success": False,
                        "error": "Cannot read properties of undefined (reading 'u')",
                    },
                    400,
                )
            stored = self.state.messages[message["_id"]]
        return {"message": self.state.message_for_client(stored), "success": True}

    def chat_get_message(self, call: Call) -> Any:
        msg_id = call.query.get("msgId")
        if not msg_id:
            raise RCError("error-invalid-params", 'The "msgId" query parameter must be provided.')
        msg = self.state.messages.get(msg_id)
        if msg is None:
            return _json({"success": False}, 400)
        room = self.state.rooms.get(msg["rid"])
        if room is None or not self.state.can_access_room(room, call.uid):
            raise RCError("error-not-allowed", "Not allowed")
        return {"message": self.state.message_for_client(msg), "success": True}

    def chat_sync_messages(self, call: Call) -> dict[str, Any]:
        rid = call.query.get("roomId")
        if not rid:
            raise RCError(
                "error-roomId-param-not-provided", 'The required "roomId" query param is missing.'
            )
        room = self.state.rooms.get(rid)
        if room is None or not self.state.can_access_room(room, call.uid):
            raise RCError("error-not-allowed", "Not allowed", {"method": "messages/get"})
        msgs = [self.state.messages[m] for m in self.state.room_messages.get(rid, [])]
        raw_last = call.query.get("lastUpdate")
        if raw_last:
            last = parse_date(raw_last)
            if last is None:
                raise RCError(
                    "error-lastUpdate-param-invalid",
                    'The "lastUpdate" query parameter must be a valid date.',
                )
            updated = [m for m in msgs if m["_updatedAt"] > last]
            updated.sort(key=lambda m: m["ts"], reverse=True)
            return {
                "result": {
                    "updated": [self.state.message_for_client(m) for m in updated],
                    "deleted": [],
                },
                "success": True,
            }
        kind = call.query.get("type")
        if kind not in ("UPDATED", "DELETED"):
            raise RCError(
                "error-param-required", 'The "type" or "lastUpdate" parameters must be provided'
            )
        nxt = call.query.get("next")
        count = int(call.query.get("count") or 50)
        if kind == "DELETED":
            return {
                "result": {"deleted": [], "cursor": {"next": None, "previous": None}},
                "success": True,
            }
        since = parse_date(nxt) if nxt else None
        updated = sorted(
            (m for m in msgs if since is None or m["_updatedAt"] > since),
            key=lambda m: m["_updatedAt"],
        )[:count]
        next_cursor = str(to_ms(updated[-1]["_updatedAt"])) if len(updated) == count else None
        return {
            "result": {
                "updated": [self.state.message_for_client(m) for m in updated],
                "cursor": {"next": next_cursor, "previous": None},
            },
            "success": True,
        }

    def subscriptions_get(self, call: Call) -> dict[str, Any]:
        raw = call.query.get("updatedSince")
        since: datetime | None = None
        if raw:
            since = parse_date(raw)
            if since is None:
                raise RCError(
                    "error-roomId-param-invalid",
                    'The "lastUpdate" query parameter must be a valid date.',
                )
        update = []
        for (uid, _), sub in self.state.subscriptions.items():
            if uid == call.uid and (since is None or sub["_updatedAt"] > since):
                update.append({k: v for k, v in sub.items() if not k.startswith("__")})
        remove = [
            r
            for r in self.state.removed_subscriptions
            if r["u"]["_id"] == call.uid and (since is not None and r["_deletedAt"] > since)
        ]
        return {"update": update, "remove": remove, "success": True}

    def users_list(self, call: Call) -> Any:
        """``users.list``: the default projection includes ``roles`` (getNonEmptyFields).

        The route checks ``view-d-room`` itself and answers ``API.v1.unauthorized()``
        (403 up to 7.0, 401 in newer 7.x). ``query``/``fields`` are not modelled (ignored by
        default since 7.0, ALLOW_UNSAFE_QUERY_AND_FIELDS_API_PARAMS).
        """
        if not self.state.has_permission(call.uid, "view-d-room"):
            status = self.profile.unauthorized_status
            return _json({"success": False, "error": "unauthorized"}, status)
        users = [
            {
                "_id": u["_id"],
                "username": u["username"],
                "name": u["name"],
                "status": u["status"],
                "active": u["active"],
                "type": u["type"],
                "roles": list(u["roles"]),
            }
            for u in sorted(self.state.users.values(), key=lambda u: u["username"])
        ]
        offset = int(call.query.get("offset") or 0)
        count = min(int(call.query.get("count") or 50), 100)  # API_Upper_Count_Limit
        page = users[offset : offset + count]
        return {
            "users": page,
            "count": len(page),
            "offset": offset,
            "total": len(users),
            "success": True,
        }

    def users_in_public_roles(self, call: Call) -> dict[str, Any]:
        return {"users": self.state.users_in_public_roles(), "success": True}

    def users_in_role(self, call: Call) -> dict[str, Any]:
        if not self.state.has_permission(call.uid, "access-permissions"):
            raise RCError("error-not-allowed", "Not allowed")
        role = call.query.get("role")
        if not role:
            raise RCError("error-param-not-provided", 'Query param "role" is required')
        if call.query.get("roomId") and not self.state.has_permission(
            call.uid, "view-other-user-channels"
        ):
            raise RCError("error-not-allowed", "Not allowed")
        users = [
            {
                "_id": u["_id"],
                "name": u["name"],
                "username": u["username"],
                "emails": list(u["emails"]),
            }
            for u in sorted(self.state.users.values(), key=lambda u: u["username"])
            if role in u["roles"]
        ]
        return {"users": users, "total": len(users), "success": True}

    def _setting_filter(self, call: Call) -> set[str] | None:
        raw = call.query.get("query")
        if not raw:
            return None
        try:
            query = json.loads(raw)
        except ValueError as exc:
            raise RCError("error-invalid-query", "Invalid query") from exc
        ids = query.get("_id") if isinstance(query, dict) else None
        if isinstance(ids, str):
            return {ids}
        if isinstance(ids, dict) and isinstance(ids.get("$in"), list):
            return set(map(str, ids["$in"]))
        return None

    def _settings_page(self, call: Call, docs: list[dict[str, Any]]) -> dict[str, Any]:
        offset = int(call.query.get("offset") or 0)
        count = min(int(call.query.get("count") or 50), 100)  # API_Upper_Count_Limit
        page = docs[offset : offset + count] if count else docs[offset:]
        return {
            "settings": page,
            "count": len(page),
            "offset": offset,
            "total": len(docs),
            "success": True,
        }

    def settings_public(self, call: Call) -> dict[str, Any]:
        wanted = self._setting_filter(call)
        raw_ids = call.query.get("_id")
        if raw_ids and self.profile.settings_public_filters_id:
            # Newer 7.x: parsedQueryId = {_id: {$in: ids.split(',')}}.
            wanted = {i.strip() for i in raw_ids.split(",") if i.strip()}
        # Up to 7.0 ``_id`` is ignored: the caller gets the first page sorted by _id.
        docs = [
            {"_id": s["_id"], "value": s["value"]}
            for s in sorted(self.state.settings.values(), key=lambda s: s["_id"])
            if s["public"] and (wanted is None or s["_id"] in wanted)
        ]
        return self._settings_page(call, docs)

    def settings_list(self, call: Call) -> dict[str, Any]:
        wanted = self._setting_filter(call)
        privileged = self.state.has_permission(call.uid, "view-privileged-setting")
        docs = [
            {"_id": s["_id"], "value": s["value"]}
            for s in self.state.settings.values()
            if (privileged or s["public"]) and (wanted is None or s["_id"] in wanted)
        ]
        return self._settings_page(call, docs)

    def setting_get(self, call: Call) -> Any:
        doc = self.state.settings.get(call.url_param or "")
        if doc is None:
            return _json({"success": False}, 400)
        return {"_id": doc["_id"], "value": doc["value"], "success": True}

    def permissions_list_all(self, call: Call) -> dict[str, Any]:
        since = parse_date(call.query.get("updatedSince"))
        if since is not None:
            return {"update": [], "remove": [], "success": True}
        update = [
            {"_id": pid, "roles": list(roles), "_updatedAt": self.state.started_at}
            for pid, roles in self.state.permissions.items()
        ]
        return {"update": update, "remove": [], "success": True}

    # ------------------------------------------------------------------ livechat
    def _livechat_enabled(self) -> None:
        if not self.state.setting("Livechat_enabled"):
            raise PlainError("error-livechat-disabled")

    def livechat_visitor(self, call: Call) -> dict[str, Any]:
        visitor = call.body.get("visitor")
        if not isinstance(visitor, dict):
            raise RCError("invalid-params", "must have required property 'visitor'")
        doc = self.state.register_visitor(visitor)
        return {"visitor": dict(doc), "success": True}

    def livechat_visitor_get(self, call: Call) -> dict[str, Any]:
        visitor = self.state.visitors.get(call.url_param or "")
        if visitor is None:
            raise PlainError("invalid-token")
        return {"visitor": dict(visitor), "success": True}

    def livechat_room(self, call: Call) -> dict[str, Any]:
        self._livechat_enabled()
        token = call.query.get("token")
        if not token:
            raise RCError("invalid-params", "must have required property 'token'")
        room, new_room = self.state.open_livechat_room(
            token, call.query.get("rid") or None, call.query.get("agentId") or None
        )
        return {"room": self.state.room_for_client(room), "newRoom": new_room, "success": True}

    def livechat_message(self, call: Call) -> Any:
        self._livechat_enabled()
        body = call.body
        for key in ("token", "rid", "msg"):
            if not isinstance(body.get(key), str):
                raise RCError("invalid-params", f"must have required property '{key}'")
        stored = self.state.visitor_message(
            body["token"], body["rid"], body["msg"], body.get("_id") or None
        )
        if stored is None:
            # sendMessage skipped the existing _id and returned undefined; the route's
            # Object.assign(undefined, …) throws a TypeError, which REST reports as is
            # (LivechatTyped.ts:1233 @50c4441; Livechat.js:231 @72f6b2a).
            return _json(
                {"success": False, "error": "Cannot convert undefined or null to object"}, 400
            )
        return {"message": self.state.message_for_client(stored), "success": True}

    def livechat_message_update(self, call: Call) -> dict[str, Any]:
        """``PUT livechat/message/:_id`` {token, rid, msg}: a visitor edits their message."""
        self._livechat_enabled()
        body = call.body
        for key in ("token", "rid", "msg"):
            if not isinstance(body.get(key), str):
                raise RCError("invalid-params", f"must have required property '{key}'")
        message = self.state.update_visitor_message(
            body["token"], body["rid"], call.url_param or "", body["msg"]
        )
        return {"message": message, "success": True}

    def livechat_message_delete(self, call: Call) -> dict[str, Any]:
        """``DELETE livechat/message/:_id`` {token, rid}: a visitor deletes their message."""
        self._livechat_enabled()
        body = call.body
        for key in ("token", "rid"):
            if not isinstance(body.get(key), str):
                raise RCError("invalid-params", f"must have required property '{key}'")
        msg_id = call.url_param or ""
        self.state.delete_visitor_message(body["token"], body["rid"], msg_id)
        return {"message": {"_id": msg_id, "ts": iso(self.state.now())},
                "success": True}
    def livechat_messages_history(self, call: Call) -> dict[str, Any]:
        """The room's messages for whoever holds the visitor's token: the token is the
        only credential (``v1/message.ts`` ``livechat/messages.history/:rid``: plain
        errors ``error-token-param-not-provided``, ``invalid-token``, ``invalid-room``)."""
        token = call.query.get("token")
        if not token:
            raise PlainError("error-token-param-not-provided")
        if token not in self.state.visitors:
            raise PlainError("invalid-token")
        room = self.state.rooms.get(call.url_param or "")
        if room is None or room.get("t") != "l" or (room.get("v") or {}).get("token") != token:
            raise PlainError("invalid-room")
        limit = int(call.query.get("limit") or 20)
        history = self.state.visible_messages(room["_id"])
        return {"messages": history[::-1][:limit], "success": True}  # newest first

    def livechat_room_close(self, call: Call) -> dict[str, Any]:
        token, rid = call.body.get("token"), call.body.get("rid")
        if not isinstance(token, str) or not isinstance(rid, str):
            raise RCError("invalid-params", "must have required property 'token'")
        if token not in self.state.visitors:
            raise PlainError("invalid-token")
        if not self.state.setting("Omnichannel_allow_visitors_to_close_conversation"):
            raise PlainError("error-not-allowed-to-close-conversation")
        self.state.close_livechat_room(rid, token=token)
        return {"rid": rid, "comment": "Closed by visitor", "success": True}

    def livechat_close_by_user(self, call: Call) -> dict[str, Any]:
        rid = call.body.get("rid")
        if not isinstance(rid, str):
            raise RCError("invalid-params", "must have required property 'rid'")
        room = self.state.rooms.get(rid)
        if room is None or room["t"] != "l":
            raise RCError("error-invalid-room", "Invalid room")
        served = (room.get("servedBy") or {}).get("_id")
        if served != call.uid and not self.state.has_permission(
            call.uid, "close-others-livechat-room"
        ):
            raise RCError("error-not-allowed", "Not allowed")
        if not room.get("open"):
            raise RCError("error-room-already-closed", "Room already closed")
        self.state.close_livechat_room(rid, by_uid=call.uid, comment=call.body.get("comment"))
        return {"success": True}

    def livechat_departments(self, call: Call) -> dict[str, Any]:
        text = (call.query.get("text") or "").lower()
        deps = [
            {k: v for k, v in d.items() if not k.startswith("__")}
            for d in self.state.departments.values()
            if text in d["name"].lower()
        ]
        offset = int(call.query.get("offset") or 0)
        count = int(call.query.get("count") or 50)
        page = deps[offset : offset + count]
        return {
            "departments": page,
            "count": len(page),
            "offset": offset,
            "total": len(deps),
            "success": True,
        }

    def livechat_config(self, call: Call) -> dict[str, Any]:
        if not self.state.setting("Livechat_enabled"):
            return {"config": {"enabled": False}, "success": True}
        department = call.query.get("department") or None
        config: dict[str, Any] = {
            "enabled": True,
            "online": self.state.online(department),
            "settings": {
                "registrationForm": True,
                "allowSwitchingDepartments": True,
                "nameFieldRegistrationForm": True,
                "emailFieldRegistrationForm": True,
                "fileUpload": False,
                "forceAcceptDataProcessingConsent": False,
            },
            "theme": {"title": self.state.setting("Livechat_title")},
            "messages": {},
            "survey": {},
            "departments": [
                {
                    "_id": d["_id"],
                    "name": d["name"],
                    "showOnRegistration": d["showOnRegistration"],
                    "showOnOfflineForm": d["showOnOfflineForm"],
                }
                for d in self.state.departments.values()
                if d["enabled"]
            ],
        }
        token = call.query.get("token")
        if token and token in self.state.visitors:
            config["guest"] = dict(self.state.visitors[token])
            for room in self.state.rooms.values():
                if room["t"] == "l" and room.get("open") and room["v"]["token"] == token:
                    config["room"] = self.state.room_for_client(room)
        return {"config": config, "success": True}

    def livechat_integration_settings(self, call: Call) -> dict[str, Any]:
        """The Omnichannel webhook settings (``app/livechat/imports/server/rest/integrations.ts``,
        ``findIntegrationSettings``), full setting documents, for ``view-livechat-manager``."""
        docs = [
            {"_id": s["_id"], "value": s["value"], "type": s.get("type", "string")}
            for s in self.state.settings.values()
            if s["_id"] in INTEGRATION_SETTINGS
        ]
        return {"settings": docs, "success": True}

    def livechat_offline_message(self, call: Call) -> dict[str, Any]:
        for key in ("name", "email", "message"):
            if not isinstance(call.body.get(key), str):
                raise RCError("invalid-params", f"must have required property '{key}'")
        self.state.offline_message(call.body)
        return {"message": "Livechat offline message sent", "success": True}


INTEGRATION_SETTINGS = frozenset(
    {
        "Livechat_webhookUrl",
        "Livechat_secret_token",
        "Livechat_http_timeout",
        "Livechat_webhook_on_start",
        "Livechat_webhook_on_close",
        "Livechat_webhook_on_chat_taken",
        "Livechat_webhook_on_chat_queued",
        "Livechat_webhook_on_forward",
        "Livechat_webhook_on_offline_msg",
        "Livechat_webhook_on_visitor_message",
        "Livechat_webhook_on_agent_message",
    }
)


async def _read_body(request: web.Request) -> dict[str, Any]:
    if request.method not in ("POST", "PUT", "DELETE"):
        return {}
    raw = await request.read()
    if not raw:
        return {}
    ctype = request.content_type
    if ctype == "application/x-www-form-urlencoded":
        return dict(parse_qsl(raw.decode(), keep_blank_values=True))
    try:
        data = json.loads(raw)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _json(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        text=rest_dumps(body), status=status, content_type="application/json", headers=headers
    )
