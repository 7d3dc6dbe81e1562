"""``SandboxRocketChat``: a loopback Rocket.Chat (DDP + REST + Omnichannel webhooks).

The server runs in its own daemon thread with its own asyncio loop. The control API is
synchronous and thread-safe: it takes the state lock (quick, never awaits) and hands
socket work to the sandbox loop, so it may be called from any thread, including the loop
thread of an asyncio test, without deadlocking.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

import aiohttp
from aiohttp import web

from .ddp import DDPServer
from .files import FileStore, StoredFile
from .model import Doc, State
from .rest import Failure, RecordedRequest, RestAPI
from .versions import DEFAULT_VERSION, VersionProfile
from .wire import RCError, random_id, rest_dumps, rest_json

log = logging.getLogger("sandbox.rocketchat")

T = TypeVar("T")


class SandboxRocketChat:
    """A real loopback Rocket.Chat stand-in speaking the wire formats of protocols/rocketchat.md.

    ``version`` picks the release it impersonates (``"7.4.0"`` by default, e.g. ``"6.13.0"``);
    every version-dependent behaviour follows from it (see :mod:`sandbox.rocketchat.versions`).
    ``webhook_max_attempts`` overrides the release's retry count (tests that need patience).
    """

    def __init__(
        self,
        *,
        version: str = DEFAULT_VERSION,
        rest_latency: float = 0.0,
        heartbeat_interval: float = 15.0,
        heartbeat_timeout: float = 15.0,
        webhook_retry_delay: float | None = None,
        webhook_max_attempts: int | None = None,
        duplicate_send_fails: bool = True,
        record_rest: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.profile = VersionProfile(version)
        self._base_clock = clock
        self._offset = 0.0
        self._state = State(clock=lambda: self._base_clock() + self._offset)
        self._files = FileStore(self._state)
        self._state.webhook_sink = self._schedule_webhook
        self._ddp = DDPServer(
            self._state, heartbeat_interval=heartbeat_interval, heartbeat_timeout=heartbeat_timeout
        )
        self._rest = RestAPI(
            self._state, profile=self.profile, duplicate_send_fails=duplicate_send_fails
        )
        self._rest.latency = rest_latency
        if record_rest:
            self._rest.recorded = []
        self.webhook_retry_delay = webhook_retry_delay
        self.webhook_max_attempts = (
            webhook_max_attempts or self.profile.webhooks.max_attempts
        )
        self._webhooks: list[Doc] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self._pending: set[asyncio.Task[None]] = set()
        self._port: int | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> SandboxRocketChat:
        """Start listening on 127.0.0.1 (free port); returns once the socket is bound."""
        if self._thread is not None:
            return self
        ready = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self._setup())
            except BaseException as exc:
                errors.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._teardown())
            loop.close()

        self._thread = threading.Thread(target=run, name="sandbox-rocketchat", daemon=True)
        self._thread.start()
        ready.wait(10)
        if errors:
            raise RuntimeError("sandbox Rocket.Chat failed to start") from errors[0]
        log.info("sandbox Rocket.Chat listening on %s", self.url)
        return self

    async def _setup(self) -> None:
        app = web.Application()
        app.router.add_get("/websocket", self._ddp.handle)
        app.router.add_route("*", "/api/{tail:.*}", self._rest.handle)
        app.router.add_get("/file-upload/{file_id}/{name:.*}", self._files.handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self._port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._http = aiohttp.ClientSession()

    async def _teardown(self) -> None:
        for task in list(self._pending):
            task.cancel()
        for session in list(self._state.sessions.values()):
            session.abort()  # type: ignore[attr-defined]
        if self._http is not None:
            await self._http.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def stop(self) -> None:
        """Close every socket and stop the server thread."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = self._loop = None
        log.info("sandbox Rocket.Chat stopped")

    def __enter__(self) -> SandboxRocketChat:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:PORT`` (websocket at ``/websocket``)."""
        if self._port is None:
            raise RuntimeError("sandbox not started")
        return f"http://127.0.0.1:{self._port}"

    @property
    def ws_url(self) -> str:
        """The DDP endpoint ``ws://127.0.0.1:PORT/websocket``."""
        return self.url.replace("http://", "ws://") + "/websocket"

    def _on_loop(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the sandbox loop and wait for it (directly when already there)."""
        loop = self._loop
        if loop is None:
            return fn()
        if self._thread is threading.current_thread():
            return fn()

        async def call() -> T:
            return fn()

        return asyncio.run_coroutine_threadsafe(call(), loop).result(10)

    # ------------------------------------------------------------------ webhooks
    def _schedule_webhook(self, kind: str, payload: Doc) -> None:
        """Called under the state lock: snapshot the request and send it from the loop."""
        url = self._state.setting("Livechat_webhookUrl")
        secret = self._state.setting("Livechat_secret_token")
        timeout_ms = float(self._state.setting("Livechat_http_timeout") or 5000)
        delay = self.webhook_retry_delay
        if delay is None:
            fixed = self.profile.webhooks.fixed_delay
            delay = timeout_ms * 4 / 1000 if fixed is None else fixed
        body = rest_dumps(payload)
        headers = {"Content-Type": "application/json"}
        if secret:
            headers["X-RocketChat-Livechat-Token"] = str(secret)
        rid = payload.get("_id")
        loop = self._loop
        if loop is None:
            return

        def spawn() -> None:
            task = loop.create_task(self._deliver(kind, rid, url, body, headers, timeout_ms, delay))
            self._pending.add(task)
            task.add_done_callback(self._pending.discard)

        loop.call_soon_threadsafe(spawn)

    async def _deliver(
        self,
        kind: str,
        rid: Any,
        url: str,
        body: str,
        headers: dict[str, str],
        timeout_ms: float,
        delay: float,
    ) -> None:
        """POST one CRM event, judged and retried by the release's rules (``profile.webhooks``)."""
        assert self._http is not None
        webhook_id = random_id()
        rules = self.profile.webhooks
        for attempt in range(1, self.webhook_max_attempts + 1):
            status: int | None = None
            error: str | None = None
            text = ""
            try:
                async with self._http.post(
                    url,
                    data=body.encode(),
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=timeout_ms / 1000),
                ) as resp:
                    status = resp.status
                    text = await resp.text()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = type(exc).__name__
            with self._state.lock:
                self._webhooks.append(
                    {
                        "id": webhook_id,
                        "type": kind,
                        "url": url,
                        "attempt": attempt,
                        "status": status,
                        "error": error,
                        "headers": dict(headers),
                        "payload": json.loads(body),
                        "ts": time.time(),
                    }
                )
                if rules.delivered(status) and isinstance(rid, str):
                    try:
                        self._state.store_crm_data(rid, json.loads(text) if text else None)
                    except ValueError:
                        self._state.store_crm_data(rid, text)
            log.info(
                "webhook %s type=%s rid=%s attempt=%d status=%s error=%s",
                webhook_id,
                kind,
                rid,
                attempt,
                status,
                error,
            )
            if rules.delivered(status):
                return
            if not rules.retry(status):
                log.warning("webhook %s type=%s rid=%s dropped (HTTP %s is not retried)",
                            webhook_id, kind, rid, status)
                return
            if attempt < self.webhook_max_attempts:
                await asyncio.sleep(delay)
        log.warning("webhook %s type=%s rid=%s gave up", webhook_id, kind, rid)

    def webhooks_sent(self) -> list[Doc]:
        """Every webhook attempt so far: id, type, url, attempt, status, error, headers, payload."""
        with self._state.lock:
            return json.loads(json.dumps(self._webhooks))

    # ------------------------------------------------------------------ control: users
    def create_user(
        self,
        username: str,
        password: str | None = None,
        roles: Iterable[str] = ("user",),
        name: str | None = None,
        *,
        email: str | None = None,
        join_default: bool = True,
    ) -> str:
        """Create a user (joins #general by default); returns the user id."""
        with self._state.lock:
            return self._state.create_user(
                username, password, roles, name, email=email, join_default=join_default
            )

    def user_id(self, username: str) -> str:
        """The id of a user."""
        with self._state.lock:
            return str(self._state.require_user(username)["_id"])

    def user(self, username: str) -> Doc:
        """A user as an admin would see it over REST (roles, emails, status)."""
        with self._state.lock:
            uid = self._state.require_user(username)["_id"]
            return rest_json(self._state.user_doc(uid, full=True))

    def create_personal_access_token(self, username: str) -> str:
        """A PAT usable as ``X-Auth-Token`` and as a DDP resume token."""
        with self._state.lock:
            return self._state.create_personal_access_token(username)

    def set_role(self, username: str, roles: Iterable[str]) -> None:
        """Replace the user's global roles."""
        with self._state.lock:
            self._state.set_roles(username, roles)

    set_roles = set_role

    # ------------------------------------------------------------------ control: rooms
    def create_channel(self, name: str, members: Iterable[str] = (), private: bool = False) -> str:
        """Create a public (or private) channel with the member usernames; returns the rid."""
        with self._state.lock:
            return self._state.create_channel(name, members, private)

    def add_member(self, rid: str, username: str) -> None:
        """Add a user to a room."""
        with self._state.lock:
            self._state.add_member(rid, self._state.require_user(username)["_id"])

    def remove_member(self, rid: str, username: str) -> None:
        """Remove a user from a room."""
        with self._state.lock:
            self._state.remove_member(rid, self._state.require_user(username)["_id"])

    def create_dm(self, user_a: str, user_b: str) -> str:
        """Find or create the DM between two users; returns its rid."""
        with self._state.lock:
            uid = self._state.require_user(user_a)["_id"]
            return str(self._state.create_direct_message(uid, [user_b])["_id"])

    def post_message(self, username: str, rid: str, text: str, **fields: Any) -> Doc:
        """Send as ``username`` through the sendMessage path (broadcast, hooks, webhooks).

        Raises ``RCError`` where the server would refuse. Extra fields (``tmid``, ``_id``,
        ``attachments``...) are passed in the message object.
        """
        with self._state.lock:
            uid = self._state.require_user(username)["_id"]
            stored = self._state.execute_send_message(uid, {"rid": rid, "msg": text, **fields})
            if stored is None:
                raise RCError("duplicate-message", "A message with this _id exists")
            return rest_json(self._state.message_for_client(stored))

    def send_dm(self, from_user: str, to_user: str, text: str, **fields: Any) -> Doc:
        """Post ``text`` in the DM between two users (created if needed)."""
        rid = self.create_dm(from_user, to_user)
        return self.post_message(from_user, rid, text, **fields)

    def buttons(self, msg_id: str) -> list[Doc]:
        """The action buttons the web client renders under a message [ACT
        ActionAttachment filter]: ``type`` "button", a ``text`` (or ``image_url``), and a
        ``url`` or ``msg_in_chat_window``; others are not shown."""
        with self._state.lock:
            msg = self._state.messages.get(msg_id) or {}
            return [
                dict(action)
                for attachment in msg.get("attachments") or []
                for action in attachment.get("actions") or []
                if action.get("type") == "button"
                and (action.get("text") or action.get("image_url"))
                and (action.get("url") or action.get("msg_in_chat_window"))
            ]

    def click_button(self, username: str, msg_id: str, text: str) -> Doc | str:
        """Click the button ``text`` under message ``msg_id`` as ``username``, as the
        client does [ACT usePerformActionMutation]: a ``url`` button opens the link (its
        URL is returned); a ``msg_in_chat_window`` button with the default processing type
        ``sendMessage`` posts ``msg`` into the room as a message of the clicking user
        (returned), verbatim, never as a slash command."""
        found = [b for b in self.buttons(msg_id) if b.get("text") == text]
        if not found:
            raise KeyError(f"no rendered button {text!r} under message {msg_id}")
        button = found[0]
        if button.get("url"):
            return str(button["url"])
        processing = button.get("msg_processing_type") or "sendMessage"
        if processing != "sendMessage":
            raise NotImplementedError(f"processing type {processing} only fills the composer")
        with self._state.lock:
            rid = self._state.messages[msg_id]["rid"]
        return self.post_message(username, rid, str(button.get("msg") or ""))

    def edit_message(self, msg_id: str, text: str) -> Doc:
        """Edit a message: re-emitted with the same ``_id`` plus editedAt/editedBy."""
        with self._state.lock:
            return rest_json(self._state.edit_message(msg_id, text))

    def react(self, msg_id: str, username: str, emoji: str) -> Doc:
        """Toggle a reaction: re-emitted with the same ``_id`` plus ``reactions``."""
        with self._state.lock:
            return rest_json(self._state.react(msg_id, username, emoji))

    def dm_messages(self, user_a: str, user_b: str) -> list[Doc]:
        """Messages of the DM between two users, oldest first ([] when no DM exists)."""
        with self._state.lock:
            uids = [
                self._state.require_user(user_a)["_id"],
                self._state.require_user(user_b)["_id"],
            ]
            return rest_json(self._state.visible_messages(self._state.dm_room_id(uids)))

    def room_messages(self, rid: str) -> list[Doc]:
        """Messages of a room, oldest first."""
        with self._state.lock:
            return rest_json(self._state.visible_messages(rid))

    def message(self, msg_id: str) -> Doc | None:
        """One message by id."""
        with self._state.lock:
            msg = self._state.messages.get(msg_id)
            return None if msg is None else rest_json(self._state.message_for_client(msg))

    def deleted_messages(self) -> list[str]:
        """``_id``s visitors deleted through ``DELETE livechat/message/:_id``, in order."""
        with self._state.lock:
            return list(self._state.deleted_messages)

    def room(self, rid: str) -> Doc | None:
        """One room document."""
        with self._state.lock:
            room = self._state.rooms.get(rid)
            return None if room is None else rest_json(self._state.room_for_client(room))

    # ------------------------------------------------------------------ control: omnichannel
    def set_agent_status(self, username: str, status: str) -> None:
        """``"online"`` (available) or ``"offline"`` for a livechat agent."""
        with self._state.lock:
            self._state.set_agent_status(username, status)

    def create_department(self, name: str, agents: Iterable[str] = ()) -> str:
        """Create a department with the given agent usernames; returns its id."""
        with self._state.lock:
            return self._state.create_department(name, agents)

    def add_department_agent(self, department_id: str, username: str) -> None:
        """Add an agent to a department."""
        with self._state.lock:
            dep = self._state.departments[department_id]
            uid = self._state.require_user(username)["_id"]
            if uid not in dep["__agents"]:
                dep["__agents"].append(uid)
                dep["numAgents"] = len(dep["__agents"])

    def prevent_visitor_messages(self, predicate: Callable[[str], bool] | None) -> None:
        """Install (or remove, with None) an app that silently blocks visitor texts."""
        with self._state.lock:
            self._state.prevent_message = predicate

    def delete_department(self, department_id: str) -> None:
        """Remove a department (visitors keep its id until their next new room)."""
        with self._state.lock:
            del self._state.departments[department_id]

    def departments(self) -> list[Doc]:
        """All departments."""
        with self._state.lock:
            return [
                rest_json({k: v for k, v in d.items() if not k.startswith("__")})
                for d in self._state.departments.values()
            ]

    def agent_reply(self, username: str, rid: str, text: str) -> Doc:
        """An agent answers in a livechat room (same path as DDP sendMessage)."""
        return self.post_message(username, rid, text)

    def agent_send_file(
        self,
        username: str,
        rid: str,
        name: str,
        mime: str,
        data: bytes,
        caption: str | None = None,
    ) -> Doc:
        """An agent uploads ``data`` into a livechat room; the webhook carries ``fileUpload``.

        The file is then served at ``/file-upload/<id>/<name>`` under the real server's
        access rule (``sandbox/rocketchat/files.py``); ``publicFilePath`` is the
        ``Site_Url`` link with a one-hour JWT, as the real webhook has it.
        """
        file_id = random_id()
        size = len(data)
        with self._state.lock:
            uid = self._state.require_user(username)["_id"]
            stored = StoredFile(file_id, name, mime, bytes(data), rid, uid)
            self._files.add(stored)
            url = self._files.public_path(stored)
            link = url.split("?", 1)[0].replace(
                str(self._state.setting("Site_Url") or "").rstrip("/"), "", 1
            )
            attachment: Doc = {
                "title": name,
                "type": "file",
                "title_link": link,
                "title_link_download": True,
            }
            if caption:
                attachment["description"] = caption
            kind = mime.split("/", 1)[0]
            if kind in ("image", "video", "audio"):
                attachment[f"{kind}_url"] = link
                attachment[f"{kind}_type"] = mime
                attachment[f"{kind}_size"] = size
            file_doc = {"_id": file_id, "name": name, "type": mime, "size": size}
            message = {
                "rid": rid,
                "msg": "",
                "file": file_doc,
                "files": [file_doc],
                "attachments": [attachment],
            }
            stored_msg = self._state.execute_send_message(
                uid,
                message,
                extra={"__fileUpload": {"publicFilePath": url, "type": mime, "size": size}},
            )
            assert stored_msg is not None
            return rest_json(self._state.message_for_client(stored_msg))

    def file_requests(self) -> list[Doc]:
        """Every ``GET /file-upload`` so far: file_id, status, auth (open/jwt/user/None)."""
        with self._state.lock:
            return [dict(r) for r in self._files.requests]

    def advance(self, seconds: float) -> None:
        """Move the server clock forward (file JWTs and login tokens expire)."""
        with self._state.lock:
            self._offset += seconds

    def close_room(self, rid: str, by: str | None = None, comment: str | None = None) -> Doc:
        """Close a livechat room as user ``by`` (or as the visitor when ``by`` is None)."""
        with self._state.lock:
            if by is None:
                room = self._state.rooms[rid]
                closed = self._state.close_livechat_room(
                    rid, token=room["v"]["token"], comment=comment
                )
            else:
                uid = self._state.require_user(by)["_id"]
                closed = self._state.close_livechat_room(rid, by_uid=uid, comment=comment)
            return rest_json(self._state.room_for_client(closed))

    def livechat_rooms(self, *, open_only: bool = False) -> list[Doc]:
        """Every livechat room (``t: "l"``), oldest first."""
        with self._state.lock:
            rooms = [
                r
                for r in self._state.rooms.values()
                if r["t"] == "l" and (r.get("open") or not open_only)
            ]
            rooms.sort(key=lambda r: r["ts"])
            return [rest_json(self._state.room_for_client(r)) for r in rooms]

    def visitor(self, token: str) -> Doc | None:
        """The visitor registered with ``token``, or None."""
        with self._state.lock:
            v = self._state.visitors.get(token)
            return None if v is None else rest_json(v)

    def offline_messages(self) -> list[Doc]:
        """Messages left through livechat/offline.message."""
        with self._state.lock:
            return rest_json(self._state.offline_messages)

    # ------------------------------------------------------------------ control: settings
    def set_setting(self, setting_id: str, value: Any, *, public: bool | None = None) -> None:
        """Change a setting (e.g. ``API_Enable_Rate_Limiter``); ``public`` also sets whether
        ``settings.public`` lists it (new settings are private)."""
        with self._state.lock:
            self._state.set_setting(setting_id, value)
            if public is not None:
                self._state.settings[setting_id]["public"] = public

    def get_setting(self, setting_id: str) -> Any:
        """A setting's current value."""
        with self._state.lock:
            return self._state.setting(setting_id)

    def set_permission(self, permission: str, roles: Iterable[str]) -> None:
        """Replace the roles holding a permission."""
        with self._state.lock:
            self._state.permissions[permission] = list(roles)

    # ------------------------------------------------------------------ control: faults
    @property
    def rest_latency(self) -> float:
        """Seconds added before every REST response."""
        return self._rest.latency

    @rest_latency.setter
    def rest_latency(self, value: float) -> None:
        self._rest.latency = float(value)

    @property
    def heartbeat_interval(self) -> float:
        """Idle seconds before the server pings a DDP client."""
        return self._ddp.heartbeat_interval

    @heartbeat_interval.setter
    def heartbeat_interval(self, value: float) -> None:
        self._ddp.heartbeat_interval = float(value)

    @property
    def heartbeat_timeout(self) -> float:
        """Seconds the server waits after its ping before closing."""
        return self._ddp.heartbeat_timeout

    @heartbeat_timeout.setter
    def heartbeat_timeout(self, value: float) -> None:
        self._ddp.heartbeat_timeout = float(value)

    def fail_rest(
        self,
        status: int = 503,
        routes: Iterable[str] | None = None,
        until: float | None = None,
        *,
        after_processing: bool = False,
    ) -> None:
        """Answer REST calls with ``status`` (routes like ``"chat.sendMessage"``; None = all).

        ``until`` is a duration in seconds (None = until ``clear_rest_failures()``).
        ``after_processing`` performs the call first, then fails (a lost response).
        """
        deadline = None if until is None else time.monotonic() + until
        self._rest.failure = Failure(
            status, None if routes is None else frozenset(routes), deadline, after_processing
        )

    def clear_rest_failures(self) -> None:
        """Stop injecting REST failures."""
        self._rest.failure = None

    def set_route_rate_limit(self, route: str, calls: int, interval_ms: int) -> None:
        """Give ``route`` its own limit (as a release's ``rateLimiterOptions`` would)."""
        with self._state.lock:
            self._rest.route_limits[route] = (calls, interval_ms)

    def reset_rate_limits(self) -> None:
        """Forget all rate-limiter counters."""
        with self._state.lock:
            self._rest.limiter.buckets.clear()

    def block_connections(self, blocked: bool = True) -> None:
        """Refuse (503) new websocket handshakes while ``blocked``."""
        self._ddp.blocked = blocked

    def drop_all_sockets(self) -> int:
        """Abruptly drop every DDP socket (no close frame); returns how many."""

        def drop() -> int:
            sessions = list(self._state.sessions.values())
            for session in sessions:
                session.abort()  # type: ignore[attr-defined]
            return len(sessions)

        count = self._on_loop(drop)
        log.info("dropped %d websocket(s)", count)
        return count

    # ------------------------------------------------------------------ observation
    def call_counts(self) -> dict[str, int]:
        """Calls per REST route (``"chat.sendMessage"``) and DDP method (``"ddp:sendMessage"``)."""
        with self._state.lock:
            return dict(self._state.call_counts)

    def rest_requests(self) -> list[RecordedRequest]:
        """Every REST request received so far, in arrival order (needs ``record_rest=True``)."""
        recorded = self._rest.recorded
        if recorded is None:
            raise RuntimeError("start the sandbox with record_rest=True to record REST requests")
        return list(recorded)

    def connected_clients(self) -> list[Doc]:
        """Live DDP sockets: session, user id/username, subscriptions, remote address."""
        with self._state.lock:
            out = []
            for s in self._state.sessions.values():
                uid = s.user_id
                user = self._state.users.get(uid) if uid else None
                out.append(
                    {
                        "session": s.session_id,
                        "user_id": uid,
                        "username": user["username"] if user else None,
                        "connected": getattr(s, "connected", False),
                        "subscriptions": [list(v) for v in s.subs.values()],
                        "remote": getattr(s, "remote", None),
                    }
                )
            return out
