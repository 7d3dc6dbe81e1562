"""The reconnecting Rocket.Chat realtime (DDP) client: how the bot hears messages.

One :meth:`RealtimeClient.run` loop owns the whole life of a connection:
connect → DDP handshake → login → subscribe ``__my_messages__`` → read. On any close
it throws all of that away and starts again from scratch after a jittered backoff, so
a subscription can never be stacked on an old one (the classic "every message twice
after a reconnect" bug). Messages posted while the socket was down are fetched over
REST once the new subscription is ready, deduplicated with the live stream by ``_id``.

Only bad credentials are fatal (:class:`bot.rocketchat.rest.AuthenticationFailed` out of ``run``);
every network failure is retried forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, InvalidURI

from bot.backoff import BackoffFactory, default_backoff
from bot.rocketchat import ddp
from bot.rocketchat.rest import AuthenticationFailed, RocketChatError, RocketChatREST

log = logging.getLogger("bot.realtime")

#: Fields only an update adds to a message: their presence means "re-emission, not new".
UPDATE_MARKERS = ("editedAt", "reactions", "tcount", "tlm", "dcount", "dlm", "pinnedAt")
#: A live message whose ``_updatedAt`` is this much later than its ``ts`` is an update
#: of an older message (pin, star, read receipt, preview…). Clients may set ``ts`` up to
#: 60 s in the past, hence the slack.
REEMIT_AFTER_SECONDS = 90.0
#: Catch-up starts this long before the last frame we heard, for in-flight messages and
#: small clock differences; the seen-set removes the overlap.
CATCH_UP_MARGIN_SECONDS = 5.0
#: Login errors that mean "try again later" rather than "the credentials are wrong".
_TRANSIENT_LOGIN_ERRORS = {"too-many-requests", "error-too-many-requests", "internal-server-error"}


@dataclass(frozen=True, slots=True)
class IncomingMessage:
    """A chat message for the bot, already filtered and deduplicated."""

    id: str
    rid: str
    text: str
    user_id: str
    username: str
    room_type: str  # 'd' (DM), 'c' (channel), 'p' (private group), 'l' (livechat), …
    ts: datetime
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_raw(cls, message: dict[str, Any], room_type: str | None) -> IncomingMessage:
        """Build from a message document (DDP EJSON or REST ISO dates both work)."""
        user = message.get("u") or {}
        return cls(
            id=str(message.get("_id")),
            rid=str(message.get("rid")),
            text=message.get("msg") or "",
            user_id=str(user.get("_id") or ""),
            username=str(user.get("username") or ""),
            room_type=room_type or "",
            ts=ddp.parse_date(message.get("ts")) or datetime.now(UTC),
            raw=message,
        )


def skip_reason(
    message: dict[str, Any], meta: dict[str, Any], *, self_id: str | None, live: bool = True
) -> str | None:
    """Why a message must not reach the bot, or None to deliver it (pure).

    Own messages, system messages (``t``), livechat visitors' messages, edited messages
    (live and in the catch-up alike), rooms we do not participate in and — on the live
    stream — other updates of existing messages are skipped.
    """
    if not message.get("_id") or not message.get("rid"):
        return "malformed"
    if message.get("t"):
        return "system message"
    if self_id and (message.get("u") or {}).get("_id") == self_id:
        return "own message"
    if message.get("token"):
        # A livechat visitor (anyone on the internet picks its name and username).
        return "livechat visitor"
    if message.get("editedAt"):
        # A command is a message as first posted: room owners and moderators may edit
        # others' messages, which must not make them run a command as the author.
        return "edited message"
    if meta.get("roomParticipant") is False:
        return "not a participant"
    if live:
        if any(message.get(key) for key in UPDATE_MARKERS):
            return "update of an existing message"
        ts, updated = ddp.parse_date(message.get("ts")), ddp.parse_date(message.get("_updatedAt"))
        if ts and updated and (updated - ts).total_seconds() > REEMIT_AFTER_SECONDS:
            return "update of an older message"
    return None


class SeenIds:
    """A bounded set of message ids, forgetting the oldest first."""

    def __init__(self, capacity: int = 10_000) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._capacity = capacity

    def add(self, message_id: str) -> bool:
        """Record ``message_id``; False if it was already there (then it becomes newest)."""
        if message_id in self._ids:
            self._ids.move_to_end(message_id)
            return False
        self._ids[message_id] = None
        if len(self._ids) > self._capacity:
            self._ids.popitem(last=False)
        return True

    def __contains__(self, message_id: object) -> bool:
        return message_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)


class _Retry(Exception):
    """This connection is unusable; reconnect (message says why, never secrets)."""


def is_fatal(exc: BaseException) -> bool:
    """Whether ``run()`` must give up instead of reconnecting (pure).

    Bad credentials and an unusable URL are fatal; everything else (network errors,
    timeouts, closes, server errors, even unexpected bugs in one session) is retried.
    """
    return isinstance(exc, AuthenticationFailed | InvalidURI)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, ConnectionClosed):
        rcvd = exc.rcvd
        return f"closed ({rcvd.code} {rcvd.reason})".strip() if rcvd else "connection lost"
    if isinstance(exc, InvalidStatus):
        return f"HTTP {exc.response.status_code} on upgrade"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


class RealtimeClient:
    """Reconnecting DDP client; see the module docstring for the life cycle.

    Public state: ``connected`` (logged in and subscribed), ``user_id`` and ``username``
    (known after the first login), ``reconnects`` (connections re-established after the
    first one). ``backoff`` is a factory of delay iterators (bot.backoff); a fresh one is
    taken after every healthy connection. The watchdog reconnects when no frame arrived,
    or our pings went unanswered, for ``ping_interval * watchdog_intervals`` seconds.
    """

    def __init__(
        self,
        url: str,
        *,
        rest: RocketChatREST,
        user: str | None = None,
        password: str | None = None,
        user_id: str | None = None,
        token: str | None = None,
        on_message: Callable[[IncomingMessage], Awaitable[None]],
        backoff: BackoffFactory = default_backoff,
        ping_interval: float = 20.0,
        watchdog_intervals: int = 3,
        open_timeout: float = 10.0,
        seen_capacity: int = 10_000,
        handler_grace: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not (token and user_id) and not (user and password):
            raise ValueError("RealtimeClient needs user+password or user_id+token")
        self.url = url
        self.ws_url = ddp.websocket_url(url)
        self._rest = rest
        self._user = user
        self._password = password
        self._resume_token = token if token and user_id else None
        self._on_message = on_message
        self._backoff = backoff
        self._ping_interval = ping_interval
        self._silence = ping_interval * max(1, watchdog_intervals)
        self._open_timeout = open_timeout
        self._handler_grace = handler_grace
        self._clock = clock

        self.user_id: str | None = user_id
        self.username: str | None = user if user and "@" not in user else None
        self.reconnects = 0

        self._ids = itertools.count(1)
        self._seen = SeenIds(seen_capacity)
        self._connected = asyncio.Event()
        self._stop = asyncio.Event()
        self._done = asyncio.Event()
        self._running = False
        self._fatal: BaseException | None = None
        self._ws: ClientConnection | None = None
        #: Method calls made while the read loop runs: call id -> future of the result.
        self._pending: dict[str, asyncio.Future[ddp.Result]] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        self._session_tasks: set[asyncio.Task[None]] = set()
        self._ever_connected = False
        self._healthy = False
        self._last_frame_wall: float | None = None
        self._last_frame: float = 0.0
        self._unanswered_ping_since: float | None = None
        self._catch_up_since: datetime | None = None

    # --- public --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """True while logged in with the message subscription ready."""
        return self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Return once connected; TimeoutError after ``timeout`` s; re-raise a fatal error."""
        if self._fatal is not None:
            raise self._fatal
        if self.connected:
            return
        waiters = {
            asyncio.ensure_future(self._connected.wait()),
            asyncio.ensure_future(self._done.wait()),
        }
        try:
            await asyncio.wait(
                waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            for waiter in waiters:
                waiter.cancel()
        if self._fatal is not None:
            raise self._fatal
        if not self.connected:
            raise TimeoutError("realtime client not connected")

    async def stop(self) -> None:
        """Close the connection, end ``run()`` and let in-flight handlers finish (bounded)."""
        self._stop.set()
        ws = self._ws
        if ws is not None:
            with contextlib.suppress(Exception):
                await ws.close()
        if self._running:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._done.wait(), timeout=self._handler_grace + 5)
        if self._handlers:
            _, pending = await asyncio.wait(set(self._handlers), timeout=self._handler_grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def run(self) -> None:
        """Connect and keep reconnecting until :meth:`stop`; raises AuthenticationFailed."""
        if self._running:
            raise RuntimeError("RealtimeClient.run() is already running")
        self._running = True
        self._done.clear()
        delays: Iterator[float] | None = None
        try:
            while not self._stop.is_set():
                self._healthy = False
                try:
                    await self._connect_once()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if is_fatal(exc):
                        self._fatal = exc
                        log.error("realtime: giving up: %s", exc)
                        raise
                    if not self._stop.is_set():
                        try:
                            reason = _describe(exc)
                        except Exception:  # never let a log line end the loop
                            reason = type(exc).__name__
                        log.warning("realtime connection to %s failed: %s", self.ws_url, reason)
                        if not isinstance(exc, ConnectionClosed | OSError | TimeoutError | _Retry):
                            log.debug("realtime failure detail", exc_info=exc)
                finally:
                    self._lost()
                if self._stop.is_set():
                    break
                if self._healthy or delays is None:
                    delays = self._backoff()  # a healthy connection resets the backoff
                delay = next(delays)
                log.info("realtime: reconnecting in %.2f s", delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stop.wait(), timeout=delay)
        finally:
            self._running = False
            self._done.set()
            log.info("realtime client stopped")

    # --- one connection ------------------------------------------------------------------

    async def _connect_once(self) -> None:
        log.info("realtime: connecting to %s", self.ws_url)
        async with connect(
            self.ws_url,
            open_timeout=self._open_timeout,
            ping_interval=None,  # DDP-level pings below; one keepalive mechanism only
            close_timeout=min(2.0, self._silence),
            max_size=2**24,
            # No permessage-deflate: holding livechat-manager, the bot is sent every
            # visitor message it relays and discards them; inflating each cost CPU the
            # receiver needs, and DDP frames are small.
            compression=None,
        ) as ws:
            self._ws = ws
            loop = asyncio.get_running_loop()
            self._last_frame = loop.time()
            self._unanswered_ping_since = None
            try:
                async with asyncio.timeout(max(self._silence, self._open_timeout)):
                    await self._handshake(ws)
                    self._spawn(self._pinger(ws), "ddp-pinger")
                    await self._login(ws)
                await self._subscribe_and_read(ws)
            finally:
                self._ws = None
                for future in self._pending.values():
                    if not future.done():
                        future.set_exception(ConnectionError("realtime connection lost"))
                self._pending.clear()
                for task in self._session_tasks:
                    task.cancel()
                await asyncio.gather(*self._session_tasks, return_exceptions=True)
                self._session_tasks.clear()

    def _spawn(self, coro: Awaitable[None], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._session_tasks.add(task)
        task.add_done_callback(self._session_tasks.discard)

    def _lost(self) -> None:
        """Bookkeeping when a connection ends, however it ended."""
        if self._connected.is_set():
            self._connected.clear()
            log.warning("realtime: disconnected from %s", self.ws_url)
        if self._ever_connected and self._catch_up_since is None and self._last_frame_wall:
            # Keep an older pending moment if the previous catch-up never finished.
            self._catch_up_since = datetime.fromtimestamp(
                self._last_frame_wall - CATCH_UP_MARGIN_SECONDS, tz=UTC
            )

    async def _send(self, ws: ClientConnection, frame: dict[str, Any]) -> None:
        await ws.send(ddp.encode(frame))

    async def _next_frame(self, ws: ClientConnection) -> ddp.Frame:
        """The next non-ping frame; answers server pings; enforces the watchdog."""
        loop = asyncio.get_running_loop()
        while True:
            deadline = self._last_frame + self._silence
            if self._unanswered_ping_since is not None:
                deadline = min(deadline, self._unanswered_ping_since + self._silence)
            try:
                async with asyncio.timeout_at(deadline):
                    text = await ws.recv()
            except TimeoutError:
                raise _Retry(
                    f"watchdog: no answer for {self._silence:.1f} s, forcing reconnect"
                ) from None
            self._last_frame = loop.time()
            self._last_frame_wall = self._clock()
            try:
                frame = ddp.parse(text)
            except ddp.ProtocolError:
                log.warning("realtime: ignoring a frame that is not DDP")
                continue
            if isinstance(frame, ddp.Ping):
                await self._send(ws, ddp.pong_frame(frame.id))
                continue
            if isinstance(frame, ddp.Pong):
                self._unanswered_ping_since = None
                continue
            return frame

    async def _pinger(self, ws: ClientConnection) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self._ping_interval)
            if self._unanswered_ping_since is None:
                self._unanswered_ping_since = loop.time()
            try:
                await self._send(ws, ddp.ping_frame(f"p{next(self._ids)}"))
            except ConnectionClosed:
                return

    async def _handshake(self, ws: ClientConnection) -> None:
        await self._send(ws, ddp.connect_frame())
        while True:
            frame = await self._next_frame(ws)
            if isinstance(frame, ddp.Connected):
                log.debug("realtime: DDP session %s", frame.session)
                return
            if isinstance(frame, ddp.Failed):
                raise _Retry(f"server refused DDP version (wants {frame.version})")
            if isinstance(frame, ddp.ServerError):
                raise _Retry(f"server error during handshake: {frame.reason}")

    async def _call(self, ws: ClientConnection, method: str, params: list[Any]) -> ddp.Result:
        """Call a method before the read loop runs (only login does this)."""
        call_id = str(next(self._ids))
        await self._send(ws, ddp.method_frame(call_id, method, params))
        while True:
            frame = await self._next_frame(ws)
            if isinstance(frame, ddp.Result) and frame.id == call_id:
                return frame

    async def _login(self, ws: ClientConnection) -> None:
        result: ddp.Result | None = None
        if self._resume_token:
            result = await self._call(ws, "login", ddp.login_resume_params(self._resume_token))
            if result.error is not None:
                self._raise_if_transient(result.error)
                if not (self._user and self._password):
                    raise AuthenticationFailed(
                        f"Rocket.Chat rejected the token for user id {self.user_id}: "
                        f"{result.error.reason or result.error.error}"
                    )
                log.info("realtime: resume token rejected; logging in with the password")
                self._resume_token = None
                result = None
        if result is None:
            assert self._user and self._password
            result = await self._call(
                ws, "login", ddp.login_password_params(self._user, self._password)
            )
            if result.error is not None:
                self._raise_if_transient(result.error)
                raise AuthenticationFailed(
                    f"Rocket.Chat rejected the login of user {self._user!r}: "
                    f"{result.error.reason or result.error.error}"
                )
            if isinstance(result.result, dict) and result.result.get("token"):
                # Reconnect with the session's resume token, not the password again.
                self._resume_token = result.result["token"]
        info = result.result if isinstance(result.result, dict) else {}
        self.user_id = info.get("id") or self.user_id
        if self.username is None:
            me = await self._rest.me()
            self.username = me.get("username")
        log.info("realtime: logged in as %s (%s)", self.username, self.user_id)

    @staticmethod
    def _raise_if_transient(error: ddp.MethodError) -> None:
        code = error.error
        if code in _TRANSIENT_LOGIN_ERRORS or (isinstance(code, int) and code >= 500):
            raise _Retry(f"login failed temporarily: {error.reason or code}")

    async def _subscribe_and_read(self, ws: ClientConnection) -> None:
        sub_id = f"s{next(self._ids)}"
        await self._send(ws, ddp.my_messages_sub(sub_id))
        while True:
            frame = await self._next_frame(ws)
            item = ddp.stream_message(frame)
            if item is not None:
                self._on_live(*item)
            elif isinstance(frame, ddp.Result) and frame.id in self._pending:
                future = self._pending.pop(frame.id)
                if not future.done():
                    future.set_result(frame)
            elif isinstance(frame, ddp.Ready) and sub_id in frame.subs:
                self._on_ready()
            elif isinstance(frame, ddp.NoSub) and frame.id == sub_id:
                reason = frame.error.reason or frame.error.error if frame.error else "none"
                raise _Retry(f"message subscription refused: {reason}")
            elif isinstance(frame, ddp.ServerError):
                log.warning("realtime: server reported a protocol error: %s", frame.reason)

    async def call(self, method: str, params: list[Any], timeout: float = 10.0) -> Any:
        """Call a DDP method on the live connection and return its result.

        Raises ConnectionError when not connected (or the connection drops meanwhile),
        RocketChatError when the server answers with an error, TimeoutError on silence.
        """
        ws = self._ws
        if ws is None or not self._connected.is_set():
            raise ConnectionError("realtime client is not connected")
        call_id = f"c{next(self._ids)}"
        future: asyncio.Future[ddp.Result] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        try:
            await self._send(ws, ddp.method_frame(call_id, method, params))
            async with asyncio.timeout(timeout):
                result = await future
        finally:
            self._pending.pop(call_id, None)
        if result.error is not None:
            error = result.error
            raise RocketChatError(
                f"{method} failed: {error.reason or error.error}",
                error_type=str(error.error) if error.error is not None else None,
            )
        return result.result

    def _on_ready(self) -> None:
        if self._ever_connected:
            self.reconnects += 1
        self._ever_connected = True
        self._healthy = True
        self._connected.set()
        log.info("realtime: connected and subscribed (reconnects: %d)", self.reconnects)
        since = self._catch_up_since
        if since is not None:
            self._spawn(self._catch_up(since), "ddp-catch-up")

    # --- messages ------------------------------------------------------------------------

    def _on_live(self, message: dict[str, Any], meta: dict[str, Any]) -> None:
        mid = str(message.get("_id"))
        if not self._seen.add(mid):
            log.debug("message %s seen before (edit/reaction/duplicate); skipped", mid)
            return
        reason = skip_reason(message, meta, self_id=self.user_id, live=True)
        if reason is not None:
            log.debug("message %s skipped: %s", mid, reason)
            return
        self._dispatch(IncomingMessage.from_raw(message, meta.get("roomType")))

    async def _catch_up(self, since: datetime) -> None:
        """Deliver messages posted since ``since`` that the live stream did not bring."""
        delays: Iterator[float] | None = None
        while True:
            try:
                delivered = await self._catch_up_once(since)
            except RocketChatError as exc:
                delays = delays or self._backoff()
                delay = next(delays)
                log.warning("realtime: catch-up failed (%s); retrying in %.2f s", exc, delay)
                await asyncio.sleep(delay)
                continue
            if self._catch_up_since == since:
                self._catch_up_since = None
            log.info("realtime: catch-up since %s done, %d message(s)", ddp.iso_date(since),
                     delivered)
            return

    async def _catch_up_once(self, since: datetime) -> int:
        rooms: dict[str, str | None] = {}
        for sub in await self._rest.subscriptions_since(since):
            if sub.get("rid"):
                rooms[sub["rid"]] = sub.get("t")
        try:
            for room in await self._rest.rooms_since(since):
                if room.get("_id"):
                    rooms.setdefault(room["_id"], room.get("t"))
        except RocketChatError as exc:
            if exc.status is None or exc.status >= 500 or exc.status == 429:
                raise
            log.debug("realtime: rooms.get unavailable (%s); using subscriptions only", exc)
        delivered = 0
        for rid, room_type in rooms.items():
            messages = await self._rest.sync_messages(rid, since)
            messages.sort(key=lambda m: ddp.parse_date(m.get("ts")) or since)
            for message in messages:
                ts = ddp.parse_date(message.get("ts"))
                if ts is None or ts < since:
                    continue  # an edit of an old message, not something we missed
                mid = str(message.get("_id"))
                if mid in self._seen:
                    continue
                self._seen.add(mid)
                meta = {"roomParticipant": True, "roomType": room_type}
                reason = skip_reason(message, meta, self_id=self.user_id, live=False)
                if reason is not None:
                    log.debug("caught-up message %s skipped: %s", mid, reason)
                    continue
                log.info("realtime: caught up message %s in room %s", mid, rid)
                self._dispatch(IncomingMessage.from_raw(message, room_type))
                delivered += 1
        return delivered

    def _dispatch(self, message: IncomingMessage) -> None:
        log.debug("message %s from %s in %s (%s)", message.id, message.username, message.rid,
                  message.room_type)
        task = asyncio.ensure_future(self._handle(message))
        task.set_name(f"message-{message.id}")
        self._handlers.add(task)
        task.add_done_callback(self._handlers.discard)

    async def _handle(self, message: IncomingMessage) -> None:
        try:
            await self._on_message(message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("handler failed for message %s", message.id)
