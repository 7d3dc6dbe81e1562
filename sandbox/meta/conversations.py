"""The sandbox Meta's Conversations API: Instagram's own record of every thread.

Read from protocols/instagram.md §10 and Meta's pages cited there:

- ``GET /{page-id}/conversations?platform=instagram`` → ``{"data": [{"id",
  "updated_time"}], "paging": {"cursors": {"before", "after"}, "next"?}}``, most recently
  updated first, ``limit`` (default 25) per page of results, ``after`` to go on;
  ``user_id=<IGSID>`` keeps only that person's thread. Without ``platform=instagram``
  the Page's Messenger threads are listed (none here). No time-based paging.
- ``GET /{conversation-id}?fields=messages`` → ``{"messages": {"data": [{"id",
  "created_time"}]}, "id"}`` newest first; ``fields=messages{id,created_time,from,to,
  message}`` expands each message; ``GET /{conversation-id}/messages`` answers the list
  alone. **Only the 20 most recent messages** are returned.
- ``GET /{message-id}?fields=id,created_time,from,to,message``: one message; one older
  than the newest 20 of its thread answers error 100 "This message has been deleted".
- ``from`` is ``{"username", "id"}``, ``to`` is ``{"data": [{"username", "id"}]}``,
  ``message`` the text ("" for an attachment), ``created_time`` ISO 8601 ``+0000`` at
  one-second resolution.
- A Page token is required (210 otherwise) and the Page must be the token's.
- **2 calls per second per account**: a third call within one second answers code 613
  "Calls to this api have exceeded the rate limit." (HTTP 400).

The record: every visitor message a webhook carried, every message the Send API
accepted, and every echo delivered is in its thread, plus messages recorded without a
webhook (:meth:`ConversationsMixin.record_visitor_message`: the bridge was down, or
Meta stopped delivering). :meth:`ConversationsMixin.visitor_writes` is a person writing:
recorded, and delivered only while the page's subscription is installed (a
``drop_subscription`` page gets nothing, as when Meta unsubscribed the app).

Mixed into :class:`sandbox.meta.server.SandboxMeta`.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sandbox.meta.wire import _GraphFail, _parse_fields, _Token

#: Messages of a thread the API will return (protocols §10).
THREAD_WINDOW = 20
#: Conversations API calls allowed per account per second.
CALLS_PER_SECOND = 2
RATE_LIMIT_MESSAGE = "(#613) Calls to this api have exceeded the rate limit."
DELETED_MESSAGE = "(#100) This message has been deleted"


@dataclass
class _ThreadMessage:
    id: str
    created_time: float  # epoch seconds
    from_id: str
    to_id: str
    text: str


@dataclass
class _Thread:
    id: str
    ig_id: str
    igsid: str
    messages: list[_ThreadMessage] = field(default_factory=list)  # oldest first

    @property
    def updated_time(self) -> float:
        return self.messages[-1].created_time if self.messages else 0.0


def iso_time(seconds: float) -> str:
    """Graph's ``created_time``/``updated_time`` format: ``2026-01-02T03:04:05+0000``."""
    return datetime.fromtimestamp(int(seconds), tz=UTC).strftime("%Y-%m-%dT%H:%M:%S+0000")


class ConversationsMixin:
    """Threads, their read-back endpoints and the controls that fill them."""

    def _threads_init(self) -> None:
        self._threads: dict[tuple[str, str], _Thread] = {}
        self._thread_ids: dict[str, tuple[str, str]] = {}
        self._message_threads: dict[str, tuple[str, str]] = {}
        self._conv_calls: dict[str, list[float]] = {}  # account -> monotonic call times

    # ------------------------------------------------------------------ control

    def record_message(
        self, ig_id: str, igsid: str, mid: str, text: str, *, from_business: bool,
        ts: float | None = None,
    ) -> None:
        """Put one message into the (ig account, person) thread (caller holds no lock)."""
        with self._lock:
            self._record_locked(ig_id, igsid, mid, text, from_business, ts)

    def _record_locked(
        self, ig_id: str, igsid: str, mid: str, text: str, from_business: bool,
        ts: float | None,
    ) -> None:
        if mid in self._message_threads:
            return  # a webhook retried: Meta's record holds the message once
        key = (ig_id, igsid)
        thread = self._threads.get(key)
        if thread is None:
            raw = f"ig_thread:{ig_id}:{igsid}".encode()
            thread_id = "aWdfZAG06" + base64.b64encode(raw).decode().rstrip("=")
            thread = self._threads[key] = _Thread(thread_id, ig_id, igsid)
            self._thread_ids[thread_id] = key
        created = self._now() if ts is None else (ts / 1000.0 if ts >= 1e11 else float(ts))
        sender, to = (ig_id, igsid) if from_business else (igsid, ig_id)
        message = _ThreadMessage(mid, created, sender, to, text)
        # Keep the thread ordered by time (a late webhook may carry an earlier message).
        index = len(thread.messages)
        while index and thread.messages[index - 1].created_time > created:
            index -= 1
        thread.messages.insert(index, message)
        self._message_threads[mid] = key

    def record_visitor_message(
        self, page_or_ig_id: str, igsid: str, text: str, *, ts: float | None = None,
        mid: str | None = None,
    ) -> str:
        """A person's DM that reached Instagram but whose webhook never left: recorded in
        the thread (and the messaging window opens), nothing delivered. Returns its mid."""
        mid = mid or self.new_mid()
        with self._lock:
            ig_id = self._ig_key(page_or_ig_id)
            self._record_locked(ig_id, igsid, mid, text, False, ts)
            stamp = self._now() if ts is None else (ts / 1000.0 if ts >= 1e11 else float(ts))
            key = (ig_id, igsid)
            self._last_inbound[key] = max(stamp, self._last_inbound.get(key, 0.0))
        return mid

    async def visitor_writes(
        self, page_id: str, igsid: str, text: str
    ) -> tuple[str, int | None]:
        """A person writes: recorded, and delivered to the webhook only while our app is
        subscribed on the page (awaited like `adeliver`). Returns ``(mid, status)``;
        status None = not delivered."""
        with self._lock:
            ig_id = self._ig_key(page_id)
            subscribed = self._subscriptions.get(page_id) is not None
            url = self._webhook_url
        if not subscribed or not url:
            return self.record_visitor_message(page_id, igsid, text), None
        event = self.text_event(ig_id, igsid, text)
        status, _ = await self.adeliver(None, event)
        return event["entry"][0]["messaging"][0]["message"]["mid"], status

    def thread(self, page_or_ig_id: str, igsid: str) -> list[dict[str, Any]]:
        """The whole thread, oldest first (tests): id, created_time, from, to, text."""
        with self._lock:
            thread = self._threads.get((self._ig_key(page_or_ig_id), igsid))
            return [dict(vars(m)) for m in thread.messages] if thread else []

    def _note_thread_payload(self, payload: Mapping[str, Any]) -> None:
        """Record the messages of a delivered webhook body (caller holds the lock)."""
        for entry in payload.get("entry") or []:
            if not isinstance(entry, Mapping):
                continue
            for item in list(entry.get("messaging") or []) + list(entry.get("standby") or []):
                try:
                    msg = item.get("message")
                    if not isinstance(msg, Mapping) or not msg.get("mid") or msg.get(
                        "is_deleted"
                    ):
                        continue
                    sender, recipient = str(item["sender"]["id"]), str(item["recipient"]["id"])
                    echo = bool(msg.get("is_echo"))
                    ig_id, igsid = (sender, recipient) if echo else (recipient, sender)
                    self._record_locked(
                        ig_id, igsid, str(msg["mid"]), str(msg.get("text") or ""), echo,
                        float(item.get("timestamp") or self._now() * 1000),
                    )
                except (KeyError, TypeError, ValueError, AttributeError):
                    continue

    # ------------------------------------------------------------------ HTTP

    def _conversations_call(self, tok: _Token) -> None:
        """Count a call against the account's 2/s and consume injected errors."""
        self._check_injected("conversations")
        account = tok.page_id or ""
        now = time.monotonic()
        with self._lock:
            recent = [t for t in self._conv_calls.get(account, []) if now - t < 1.0]
            if len(recent) >= CALLS_PER_SECOND:
                self._conv_calls[account] = recent
                raise _GraphFail(613, RATE_LIMIT_MESSAGE, status=400, type="OAuthException")
            recent.append(now)
            self._conv_calls[account] = recent

    def is_conversation_node(self, node: str) -> bool:
        with self._lock:
            return node in self._thread_ids or node in self._message_threads

    def _list_conversations(
        self, node: str, params: Mapping[str, str], tok: _Token
    ) -> dict[str, Any]:
        self._conversations_call(tok)
        if params.get("platform") != "instagram":
            return {"data": []}  # the Page's Messenger threads: none in the sandbox
        try:
            limit = max(1, min(100, int(params.get("limit") or 25)))
            start = int(base64.b64decode(params["after"]).decode()) if params.get("after") else 0
        except (ValueError, UnicodeDecodeError):
            raise _GraphFail(100, "(#100) Invalid cursor or limit") from None
        fields = _parse_fields(params.get("fields")) or {"id": None, "updated_time": None}
        with self._lock:
            page = self._pages.get(node)
            ig_id = (page.ig_id if page else None) or node
            threads = [t for (ig, _), t in self._threads.items() if ig == ig_id]
            user = params.get("user_id")
            if user:
                threads = [t for t in threads if t.igsid == user]
            threads.sort(key=lambda t: t.updated_time, reverse=True)
            chunk = threads[start:start + limit]
            data = [self._thread_obj(t, fields) for t in chunk]
        body: dict[str, Any] = {"data": data}
        if data:
            cursors = {
                "before": base64.b64encode(str(start).encode()).decode(),
                "after": base64.b64encode(str(start + len(chunk)).encode()).decode(),
            }
            body["paging"] = {"cursors": cursors}
            if start + len(chunk) < len(threads):
                body["paging"]["next"] = (
                    f"{self.graph_url}/{self.api_version}/{node}/conversations"
                    f"?platform=instagram&after={cursors['after']}"
                )
        return body

    def _thread_obj(self, thread: _Thread, fields: dict[str, Any]) -> dict[str, Any]:
        obj: dict[str, Any] = {"id": thread.id}
        if "updated_time" in fields:
            obj["updated_time"] = iso_time(thread.updated_time)
        if "messages" in fields:
            obj["messages"] = {"data": self._messages_of(thread, fields["messages"])}
        if "participants" in fields:
            obj["participants"] = {"data": [
                {"username": self._username(thread.ig_id), "id": thread.ig_id},
                {"username": self._username(thread.igsid), "id": thread.igsid},
            ]}
        return obj

    def _messages_of(self, thread: _Thread, sub: dict[str, Any] | None) -> list[dict]:
        wanted = sub or {"id": None, "created_time": None}
        newest = list(reversed(thread.messages[-THREAD_WINDOW:]))
        return [self._message_obj(m, wanted) for m in newest]

    def _message_obj(self, message: _ThreadMessage, wanted: Mapping[str, Any]) -> dict:
        full = {
            "id": message.id,
            "created_time": iso_time(message.created_time),
            "from": {"username": self._username(message.from_id), "id": message.from_id},
            "to": {"data": [{"username": self._username(message.to_id), "id": message.to_id}]},
            "message": message.text,
        }
        return {k: v for k, v in full.items() if k in wanted or k == "id"}

    def _username(self, some_id: str) -> str:
        for page in self._pages.values():
            if page.ig_id == some_id:
                return page.ig_username or ""
        profile = self._profiles.get(some_id) or {}
        return str(profile.get("username") or "")

    def _conversation_node(
        self, node: str, edge: str | None, params: Mapping[str, str], tok: _Token
    ) -> dict[str, Any]:
        """``GET /{conversation-id}[/messages]`` and ``GET /{message-id}``."""
        if tok.kind != "page":
            raise _GraphFail(210, "(#210) A page access token is required to request this"
                                  " resource.", type="OAuthException")
        self._conversations_call(tok)
        fields = _parse_fields(params.get("fields"))
        with self._lock:
            page = self._pages.get(tok.page_id or "")
            ig_id = (page.ig_id if page else None) or tok.page_id
            key = self._thread_ids.get(node)
            if key is not None:
                if key[0] != ig_id:
                    raise _GraphFail(100, self._unsupported("get", node), subcode=33,
                                     type="GraphMethodException")
                thread = self._threads[key]
                if edge == "messages":
                    return {"data": self._messages_of(thread, fields)}
                if edge is not None:
                    raise _GraphFail(100, f"(#100) Tried accessing nonexisting field ({edge})")
                return self._thread_obj(thread, fields or {"id": None})
            key = self._message_threads[node]
            if key[0] != ig_id:
                raise _GraphFail(100, self._unsupported("get", node), subcode=33,
                                 type="GraphMethodException")
            thread = self._threads[key]
            message = next(m for m in thread.messages if m.id == node)
            if message not in thread.messages[-THREAD_WINDOW:]:
                raise _GraphFail(100, DELETED_MESSAGE)
            return self._message_obj(message, fields or {"id": None, "created_time": None})
