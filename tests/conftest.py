"""Shared fixtures: a started sandbox Rocket.Chat and an async polling helper."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterator

import pytest

from sandbox.rocketchat import SandboxRocketChat


@pytest.fixture
def rocketchat() -> Iterator[SandboxRocketChat]:
    """A sandbox Rocket.Chat on a free loopback port, API rate limiter disabled."""
    server = SandboxRocketChat(webhook_retry_delay=0.05).start()
    server.set_setting("API_Enable_Rate_Limiter", False)
    try:
        yield server
    finally:
        server.stop()


Predicate = Callable[[], object | Awaitable[object]]


async def _eventually(predicate: Predicate, timeout: float = 5.0, interval: float = 0.02) -> object:
    """Poll ``predicate`` (sync or async) until it returns a truthy value; return that value.

    Raises AssertionError after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(interval)


@pytest.fixture
def eventually() -> Callable[..., Awaitable[object]]:
    """``await eventually(predicate, timeout=5.0)``: poll until truthy or fail the test."""
    return _eventually
