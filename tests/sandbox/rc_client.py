"""A minimal raw DDP client for testing the sandbox Rocket.Chat (websockets library only).

Deliberately independent of bot/: it speaks the frames from protocols/rocketchat.md directly.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
from collections.abc import Callable
from typing import Any

import websockets

Frame = dict[str, Any]


class RawDDP:
    """One DDP connection; received frames are buffered so tests can wait for any of them."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.buffer: list[Frame] = []
        self.greeting: Frame | None = None
        self._ids = itertools.count(1)
        self.auto_pong = True

    @classmethod
    async def open(cls, url: str, *, connect: bool = True) -> RawDDP:
        """Open the socket, read the greeting and (by default) complete ``connect``."""
        ws = await websockets.connect(
            url.replace("http://", "ws://") + "/websocket", ping_interval=None
        )
        client = cls(ws)
        client.greeting = json.loads(await asyncio.wait_for(ws.recv(), 2))
        if connect:
            await client.send({"msg": "connect", "version": "1", "support": ["1"]})
            await client.wait_for(lambda f: f.get("msg") == "connected")
        return client

    async def send(self, frame: Frame) -> None:
        """Send one frame."""
        await self.ws.send(json.dumps(frame))

    async def _read(self, timeout: float) -> Frame:
        frame = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
        if self.auto_pong and frame.get("msg") == "ping":
            await self.send({"msg": "pong", **({"id": frame["id"]} if "id" in frame else {})})
        return frame

    async def wait_for(self, pred: Callable[[Frame], bool], timeout: float = 3.0) -> Frame:
        """Return (and consume) the first buffered or incoming frame matching ``pred``."""
        for i, frame in enumerate(self.buffer):
            if pred(frame):
                return self.buffer.pop(i)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise TimeoutError(f"no matching frame; buffered: {self.buffer[-5:]}")
            frame = await self._read(remaining)
            if pred(frame):
                return frame
            self.buffer.append(frame)

    async def drain(self, seconds: float = 0.2) -> list[Frame]:
        """Collect whatever arrives within ``seconds`` (plus the buffer)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (remaining := deadline - loop.time()) > 0:
            try:
                self.buffer.append(await self._read(remaining))
            except TimeoutError:
                break
        out, self.buffer = self.buffer, []
        return out

    async def call(self, method: str, *params: Any) -> Frame:
        """Call a method and return its ``result`` frame."""
        call_id = str(next(self._ids))
        await self.send({"msg": "method", "id": call_id, "method": method, "params": list(params)})
        return await self.wait_for(lambda f: f.get("msg") == "result" and f.get("id") == call_id)

    async def sub(self, name: str, *params: Any) -> Frame:
        """Subscribe and return the ``ready`` or ``nosub`` frame."""
        sub_id = f"s{next(self._ids)}"
        await self.send({"msg": "sub", "id": sub_id, "name": name, "params": list(params)})
        return await self.wait_for(
            lambda f: (
                (f.get("msg") == "ready" and sub_id in f.get("subs", []))
                or (f.get("msg") == "nosub" and f.get("id") == sub_id)
            )
        )

    async def login_password(self, username: str, password: str) -> Frame:
        """``login`` with a SHA-256 digest."""
        digest = hashlib.sha256(password.encode()).hexdigest()
        return await self.call(
            "login",
            {
                "user": {"username": username},
                "password": {"digest": digest, "algorithm": "sha-256"},
            },
        )

    async def login_resume(self, token: str) -> Frame:
        """``login`` with a resume token or PAT."""
        return await self.call("login", {"resume": token})

    async def next_message(self, timeout: float = 3.0, event: str = "__my_messages__") -> Frame:
        """The next stream-room-messages ``changed`` frame for ``event``."""
        return await self.wait_for(
            lambda f: (
                f.get("msg") == "changed"
                and f.get("collection") == "stream-room-messages"
                and f["fields"]["eventName"] == event
            ),
            timeout,
        )

    async def close(self) -> None:
        """Close the socket."""
        await self.ws.close()
