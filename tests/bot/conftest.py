"""Fixtures for the runtime tests: people and a channel on the sandbox, clients, a TCP proxy."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from bot.backoff import exponential_backoff
from bot.rocketchat.realtime import IncomingMessage, RealtimeClient
from bot.rocketchat.rest import RocketChatREST
from sandbox.rocketchat import SandboxRocketChat

BOT_PASSWORD = "bot-Pa55word+&="
TINY_BACKOFF = exponential_backoff(initial=0.01, factor=2.0, max_delay=0.05, jitter=0.5)


@pytest.fixture
def people(rocketchat: SandboxRocketChat) -> dict[str, str]:
    """The bot (roles bot + livechat-manager), an admin and two plain users; ids by name."""
    return {
        "bot": rocketchat.create_user(
            "instagram.bot", BOT_PASSWORD, roles=["bot", "livechat-manager"], name="Bot"
        ),
        "admin": rocketchat.create_user("boss", "boss-pw", roles=["admin", "user"]),
        "alice": rocketchat.create_user("alice", "alice-pw", roles=["user"]),
        "carol": rocketchat.create_user("carol", "carol-pw", roles=["user"]),
    }


@pytest.fixture
def channel(rocketchat: SandboxRocketChat, people: dict[str, str]) -> str:
    """A public channel with the bot, the admin and alice in it; returns its rid."""
    return rocketchat.create_channel("ops", members=["instagram.bot", "boss", "alice"])


@pytest.fixture
async def rest(
    rocketchat: SandboxRocketChat, people: dict[str, str]
) -> AsyncIterator[RocketChatREST]:
    """The bot's REST wrapper, logged in by password."""
    client = RocketChatREST(rocketchat.url, user="instagram.bot", password=BOT_PASSWORD)
    try:
        yield client
    finally:
        await client.close()


class Inbox:
    """Collects what the realtime client hands to its callback."""

    def __init__(self) -> None:
        self.messages: list[IncomingMessage] = []

    async def __call__(self, message: IncomingMessage) -> None:
        self.messages.append(message)

    @property
    def ids(self) -> list[str]:
        return [m.id for m in self.messages]

    def counts(self) -> Counter[str]:
        return Counter(self.ids)

    def texts(self) -> list[str]:
        return [m.text for m in self.messages]


class Running:
    """A RealtimeClient whose run() loop is a background task."""

    def __init__(self, client: RealtimeClient, inbox: Inbox) -> None:
        self.client = client
        self.inbox = inbox
        self.task: asyncio.Task[None] = asyncio.create_task(client.run())


@pytest.fixture
async def start_client(
    rocketchat: SandboxRocketChat, people: dict[str, str]
) -> AsyncIterator[Callable[..., Running]]:
    """Factory: start a realtime client (tiny backoff) for the bot; stopped at teardown."""
    started: list[tuple[Running, RocketChatREST]] = []

    def start(url: str | None = None, **options: Any) -> Running:
        rest = RocketChatREST(rocketchat.url, user="instagram.bot", password=BOT_PASSWORD)
        inbox = Inbox()
        kwargs: dict[str, Any] = {
            "rest": rest,
            "user": "instagram.bot",
            "password": BOT_PASSWORD,
            "on_message": inbox,
            "backoff": TINY_BACKOFF,
            "ping_interval": 0.5,
            "open_timeout": 2.0,
        }
        kwargs.update(options)
        running = Running(RealtimeClient(url or rocketchat.url, **kwargs), inbox)
        started.append((running, rest))
        return running

    yield start
    for running, rest in started:
        await running.client.stop()
        running.task.cancel()
        with contextlib.suppress(BaseException):
            await running.task
        await rest.close()


class TcpProxy:
    """A loopback TCP relay that can turn the links it carries into silent black holes.

    It models a dead NAT mapping or a frozen peer: the sockets stay open but nothing
    passes any more, which only a client-side watchdog can detect.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port: int | None = None
        self._server: asyncio.Server | None = None
        self._links: list[dict[str, Any]] = []

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def links(self) -> int:
        """Connections accepted so far."""
        return len(self._links)

    def silence_existing(self) -> None:
        """Stop forwarding on every current connection (both ways), keeping them open."""
        for link in self._links:
            link["silent"] = True

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        link: dict[str, Any] = {"silent": False, "writers": [writer]}
        self._links.append(link)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        link["writers"].append(up_writer)
        await asyncio.gather(
            self._pump(reader, up_writer, link), self._pump(up_reader, writer, link),
            return_exceptions=True,
        )
        for w in link["writers"]:
            w.close()

    @staticmethod
    async def _pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter, link: dict) -> None:
        while data := await src.read(65536):
            if link["silent"]:
                continue  # swallow: the peer hears nothing
            dst.write(data)
            await dst.drain()
        dst.close()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in self._links:
            for w in link["writers"]:
                w.close()


@pytest.fixture
async def proxy(rocketchat: SandboxRocketChat) -> AsyncIterator[TcpProxy]:
    """A TcpProxy in front of the sandbox."""
    port = int(rocketchat.url.rsplit(":", 1)[1])
    relay = await TcpProxy(port).start()
    try:
        yield relay
    finally:
        await relay.close()
