"""DDP (Meteor's realtime protocol) over the raw ``/websocket`` endpoint.

Behaviour follows protocols/rocketchat.md §1: greeting without ``msg``, connect/connected
(``failed`` on version mismatch, "Must connect first"), server heartbeat, pong echoing the
client's id, ``login`` by resume token or SHA-256 digest, ``sendMessage`` that rethrows only
``error-not-allowed``, streams ``stream-room-messages`` and ``stream-notify-user``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import WSMsgType, web

from .model import State
from .wire import PlainError, RCError, ejson_dumps, ejson_loads, random_id

if TYPE_CHECKING:
    from asyncio import AbstractEventLoop

log = logging.getLogger("sandbox.rocketchat")

SUPPORTED_DDP_VERSIONS = ["1", "pre2", "pre1"]
_STREAMS = {
    "stream-room-messages",
    "stream-notify-user",
    "stream-notify-room",
    "stream-notify-logged",
    "stream-notify-all",
    "stream-roles",
}
# DDP method rate limits for users without send-many-messages [SMM, DM]: (calls, seconds).
_METHOD_LIMITS = {"sendMessage": (5, 1.0), "createDirectMessage": (10, 60.0)}


class Session:
    """One websocket connection (a Meteor session once ``connect`` succeeded)."""

    def __init__(
        self, loop: AbstractEventLoop, ws: web.WebSocketResponse, request: web.Request
    ) -> None:
        self.session_id = random_id()
        self.user_id: str | None = None
        self.token: str | None = None
        self.subs: dict[str, tuple[str, str]] = {}
        self.after_result: list[dict[str, Any]] = []
        self.connected = False
        self.remote = request.remote
        self.ws = ws
        self.transport = request.transport
        self.queue: asyncio.Queue[str | None] = asyncio.Queue()
        self.last_received = time.monotonic()
        self._loop = loop
        self._loop_thread = threading.get_ident()

    def push(self, frame: dict[str, Any]) -> None:
        """Queue a frame for this socket; safe from any thread (serialised right away)."""
        data = ejson_dumps(frame)
        if threading.get_ident() == self._loop_thread:
            self.queue.put_nowait(data)
        else:
            self._loop.call_soon_threadsafe(self.queue.put_nowait, data)

    def abort(self) -> None:
        """Drop the TCP connection without a close handshake (loop thread only)."""
        if self.transport is not None:
            self.transport.abort()


class DDPServer:
    """The ``GET /websocket`` handler and DDP method table."""

    def __init__(
        self, state: State, *, heartbeat_interval: float, heartbeat_timeout: float
    ) -> None:
        self.state = state
        self.heartbeat_interval = heartbeat_interval
        self.heartbeat_timeout = heartbeat_timeout
        self.blocked = False
        self._method_calls: dict[str, list[float]] = {}
        self.methods: dict[str, Callable[[Session, list[Any]], Any]] = {
            "login": self._login,
            "logout": self._logout,
            "sendMessage": self._send_message,
            "createDirectMessage": self._create_direct_message,
            "getUserRoles": self._get_user_roles,
            "getRoomRoles": self._get_room_roles,
            "setReaction": self._set_reaction,
        }

    # ------------------------------------------------------------------ socket
    async def handle(self, request: web.Request) -> web.StreamResponse:
        """Serve one websocket until it closes."""
        if self.blocked:
            log.info("websocket handshake refused (blocked) from %s", request.remote)
            return web.Response(status=503, text="Service Unavailable")
        ws = web.WebSocketResponse(autoping=True, max_msg_size=16 * 1024 * 1024)
        await ws.prepare(request)
        loop = asyncio.get_running_loop()
        session = Session(loop, ws, request)
        with self.state.lock:
            self.state.sessions[session.session_id] = session
        log.info("websocket open session=%s remote=%s", session.session_id, session.remote)
        writer = asyncio.create_task(self._writer(session))
        heartbeat: asyncio.Task[None] | None = None
        session.push({"server_id": "0"})
        try:
            async for raw in ws:
                if raw.type != WSMsgType.TEXT:
                    continue
                session.last_received = time.monotonic()
                close = self._on_frame(session, raw.data)
                if session.connected and heartbeat is None:
                    heartbeat = asyncio.create_task(self._heartbeat(session))
                if close:
                    await session.queue.put(None)
                    await writer
                    await ws.close()
                    break
        except (ConnectionResetError, asyncio.CancelledError):
            pass
        finally:
            with self.state.lock:
                self.state.sessions.pop(session.session_id, None)
                session.subs.clear()
            if heartbeat is not None:
                heartbeat.cancel()
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await writer
            log.info("websocket closed session=%s user=%s", session.session_id, session.user_id)
        return ws

    async def _writer(self, session: Session) -> None:
        while True:
            data = await session.queue.get()
            if data is None:
                return
            if session.ws.closed:
                return
            try:
                await session.ws.send_str(data)
            except (ConnectionResetError, RuntimeError):
                return

    async def _heartbeat(self, session: Session) -> None:
        """Meteor heartbeat: ping after ``interval`` idle, close after ``timeout`` silence."""
        while not session.ws.closed:
            idle = time.monotonic() - session.last_received
            if idle < self.heartbeat_interval:
                await asyncio.sleep(self.heartbeat_interval - idle)
                continue
            sent_at = time.monotonic()
            session.push({"msg": "ping"})
            await asyncio.sleep(self.heartbeat_timeout)
            if session.last_received < sent_at:
                log.info("heartbeat timeout session=%s; closing", session.session_id)
                await session.ws.close()
                return

    # ------------------------------------------------------------------ frames
    def _on_frame(self, session: Session, data: str) -> bool:
        """Handle one client frame; returns True when the socket must be closed."""
        try:
            msg = ejson_loads(data)
        except ValueError:
            log.debug("discarding frame with invalid JSON session=%s", session.session_id)
            return False
        if not isinstance(msg, dict) or not isinstance(msg.get("msg"), str):
            session.push({"msg": "error", "reason": "Bad request", "offendingMessage": msg})
            return False
        kind = msg["msg"]
        if kind == "connect":
            if session.connected:
                session.push(
                    {"msg": "error", "reason": "Already connected", "offendingMessage": msg}
                )
                return False
            return self._connect(session, msg)
        if not session.connected:
            session.push({"msg": "error", "reason": "Must connect first", "offendingMessage": msg})
            return False
        if kind == "ping":
            pong: dict[str, Any] = {"msg": "pong"}
            if "id" in msg:
                pong["id"] = msg["id"]
            session.push(pong)
        elif kind == "pong":
            pass
        elif kind == "method":
            self._method(session, msg)
        elif kind == "sub":
            self._sub(session, msg)
        elif kind == "unsub":
            with self.state.lock:
                session.subs.pop(str(msg.get("id")), None)
            session.push({"msg": "nosub", "id": msg.get("id")})
        else:
            session.push({"msg": "error", "reason": "Bad request", "offendingMessage": msg})
        return False

    def _connect(self, session: Session, msg: dict[str, Any]) -> bool:
        version, support = msg.get("version"), msg.get("support")
        if (
            not isinstance(version, str)
            or not isinstance(support, list)
            or not all(isinstance(v, str) for v in support)
        ):
            session.push({"msg": "failed", "version": SUPPORTED_DDP_VERSIONS[0]})
            return True
        best = next((v for v in support if v in SUPPORTED_DDP_VERSIONS), SUPPORTED_DDP_VERSIONS[0])
        if version != best:
            session.push({"msg": "failed", "version": best})
            return True
        session.connected = True
        session.push({"msg": "connected", "session": session.session_id})
        return False

    def _sub(self, session: Session, msg: dict[str, Any]) -> None:
        sub_id, name, params = msg.get("id"), msg.get("name"), msg.get("params", [])
        if not isinstance(sub_id, str) or not isinstance(name, str) or not isinstance(params, list):
            session.push(
                {"msg": "error", "reason": "Malformed subscription", "offendingMessage": msg}
            )
            return
        if sub_id in session.subs:
            return
        if name not in _STREAMS:
            err = RCError(404, f"Subscription '{name}' not found")
            session.push({"msg": "nosub", "id": sub_id, "error": err.meteor()})
            return
        event = params[0] if params else None
        with self.state.lock:
            self.state.count(f"ddp:sub:{name}")
            if not isinstance(event, str) or not event:
                allowed = False
            else:
                allowed = self.state.can_subscribe(session.user_id, name, event)
            if allowed:
                session.subs[sub_id] = (name, event)
        if not allowed:
            log.info("subscription refused session=%s %s %s", session.session_id, name, event)
            session.push({"msg": "nosub", "id": sub_id, "error": RCError("not-allowed").meteor()})
            return
        session.push({"msg": "ready", "subs": [sub_id]})

    def _method(self, session: Session, msg: dict[str, Any]) -> None:
        call_id, name, params = msg.get("id"), msg.get("method"), msg.get("params", [])
        if (
            not isinstance(call_id, str)
            or not isinstance(name, str)
            or not isinstance(params, list)
        ):
            session.push(
                {"msg": "error", "reason": "Malformed method invocation", "offendingMessage": msg}
            )
            return
        frame: dict[str, Any] = {"msg": "result", "id": call_id}
        handler = self.methods.get(name)
        with self.state.lock:
            self.state.count(f"ddp:{name}")
            try:
                if handler is None:
                    raise RCError(404, f"Method '{name}' not found")
                self._check_method_rate(session, name)
                result = handler(session, params)
                if result is not None:
                    frame["result"] = result
            except RCError as exc:
                frame["error"] = exc.meteor()
            except Exception:
                log.exception("internal error in method %s", name)
                frame["error"] = RCError(500, "Internal server error").meteor()
        session.push(frame)
        # Data a method published (e.g. the logged-in user) arrives before "updated" [MET].
        for extra in session.after_result:
            session.push(extra)
        session.after_result = []
        session.push({"msg": "updated", "methods": [call_id]})

    def _check_method_rate(self, session: Session, name: str) -> None:
        limit = _METHOD_LIMITS.get(name)
        if limit is None or session.user_id is None:
            return
        if self.state.has_permission(session.user_id, "send-many-messages"):
            return
        calls, window = limit
        now = time.monotonic()
        key = f"{session.user_id}:{name}"
        recent = [t for t in self._method_calls.get(key, []) if now - t < window]
        if len(recent) >= calls:
            wait = max(1, round(window - (now - recent[0])))
            raise RCError(
                "too-many-requests",
                "Error, too many requests. Please slow down. "
                f"You must wait {wait} seconds before trying again.",
                {"timeToReset": int((window - (now - recent[0])) * 1000)},
            )
        recent.append(now)
        self._method_calls[key] = recent

    # ------------------------------------------------------------------ methods
    def _require_user(self, session: Session, method: str) -> str:
        if session.user_id is None or session.user_id not in self.state.users:
            raise RCError("error-invalid-user", "Invalid user", {"method": method})
        return session.user_id

    def _user_added(self, session: Session, uid: str) -> None:
        user = self.state.users[uid]
        fields = {
            "username": user["username"],
            "name": user["name"],
            "emails": user["emails"],
            "status": user["status"],
            "active": user["active"],
            "utcOffset": user["utcOffset"],
            "roles": list(user["roles"]),
            "type": user["type"],
        }
        session.after_result.append(
            {"msg": "added", "collection": "users", "id": uid, "fields": fields}
        )

    def _login(self, session: Session, params: list[Any]) -> dict[str, Any]:
        options = params[0] if params else None
        if not isinstance(options, dict):
            raise RCError(400, "Match failed")
        if "resume" in options:
            token = options.get("resume")
            uid, reason = self.state.user_for_token(token if isinstance(token, str) else None)
            if uid is None:
                raise RCError(403, reason)
            _, expires = self.state.tokens[token]
            if expires is None:
                expires = self.state.now().replace(year=self.state.now().year + 100)
            session.user_id, session.token = uid, token
            self._user_added(session, uid)
            log.info("ddp login by resume session=%s user=%s", session.session_id, uid)
            return {"id": uid, "token": token, "tokenExpires": expires, "type": "resume"}
        if "user" in options and "password" in options:
            uid = self.state.check_password(options["user"], options["password"])
            token, expires = self.state.issue_login_token(uid)
            session.user_id, session.token = uid, token
            self._user_added(session, uid)
            log.info("ddp login by password session=%s user=%s", session.session_id, uid)
            return {"id": uid, "token": token, "tokenExpires": expires, "type": "password"}
        raise RCError(400, "Unrecognized options for login request")

    def _logout(self, session: Session, params: list[Any]) -> None:
        if session.token is not None:
            entry = self.state.tokens.get(session.token)
            if entry is not None and entry[1] is not None:
                del self.state.tokens[session.token]
        session.user_id = session.token = None
        return None

    def _send_message(self, session: Session, params: list[Any]) -> dict[str, Any] | None:
        uid = self._require_user(session, "sendMessage")
        message = params[0] if params else None
        if not isinstance(message, dict):
            raise RCError(400, "Match failed")
        try:
            stored = self.state.execute_send_message(uid, message)
        except RCError as exc:
            if exc.error in ("error-not-allowed", "restricted-workspace"):
                raise RCError(exc.error, exc.reason, {"method": "sendMessage"}) from exc
            # Every other failure is swallowed: empty result plus an ephemeral notice [SMM].
            log.warning("sendMessage failed (swallowed) _id=%s: %s", message.get("_id"), exc.error)
            self.state.ephemeral(uid, message.get("rid"), str(exc.error))
            return None
        if stored is None:
            return None
        return self.state.message_for_client(stored)

    def _create_direct_message(self, session: Session, params: list[Any]) -> dict[str, Any]:
        uid = self._require_user(session, "createDirectMessage")
        room = self.state.create_direct_message(uid, [str(p) for p in params])
        return {"t": "d", "rid": room["_id"], **self.state.room_for_client(room)}

    def _get_user_roles(self, session: Session, params: list[Any]) -> list[dict[str, Any]]:
        self._require_user(session, "getUserRoles")
        return self.state.users_in_public_roles()

    def _get_room_roles(self, session: Session, params: list[Any]) -> list[dict[str, Any]]:
        uid = self._require_user(session, "getRoomRoles")
        rid = params[0] if params else None
        room = self.state.rooms.get(rid) if isinstance(rid, str) else None
        if room is None or not self.state.can_access_room(room, uid):
            raise RCError("error-invalid-room", "Invalid room", {"method": "getRoomRoles"})
        out = []
        for (_, sub_rid), sub in self.state.subscriptions.items():
            if sub_rid == rid and sub.get("roles"):
                out.append(
                    {
                        "_id": sub["_id"],
                        "rid": rid,
                        "u": dict(sub["u"]),
                        "roles": list(sub["roles"]),
                    }
                )
        return out

    def _set_reaction(self, session: Session, params: list[Any]) -> None:
        uid = self._require_user(session, "setReaction")
        if len(params) < 2 or params[1] not in self.state.messages:
            raise PlainError("error-not-allowed")
        self.state.react(params[1], self.state.users[uid]["username"], str(params[0]))
        return None
