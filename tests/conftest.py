"""Shared fixtures: the sandbox servers, a running bridge, and an async polling helper."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from sandbox.meta import SandboxMeta
from sandbox.rocketchat import SandboxRocketChat
from sandbox.rocketchat.versions import DEFAULT_VERSION
from tests.oracle import oracle
from tests.scenarios.harness import APP_SECRET, Bridge, running_bridge
from tests.scenarios.oauth_harness import OAuthBridge, running_business_app, running_unconnected


@pytest.fixture
def rc_version(request: pytest.FixtureRequest) -> str:
    """The Rocket.Chat release the sandboxes impersonate: current 7.x unless the test is
    decorated with ``tests.scenarios.harness.every_rc_version`` (then once per profile)."""
    return str(getattr(request, "param", DEFAULT_VERSION))


@pytest.fixture
def rocketchat(rc_version: str) -> Iterator[SandboxRocketChat]:
    """A sandbox Rocket.Chat (release ``rc_version``) on a free loopback port, API rate
    limiter disabled.

    It records every REST request; at teardown each one is checked against the validator
    Rocket.Chat's server applies to its route (tests/oracle), and any violation fails the test.
    """
    server = SandboxRocketChat(version=rc_version, webhook_retry_delay=0.05,
                               record_rest=True).start()
    server.set_setting("API_Enable_Rate_Limiter", False)
    try:
        yield server
    finally:
        server.stop()
    requests = server.rest_requests()
    for request in requests:
        spec = oracle.route_for(request.method, request.path)
        if spec is not None:
            _ORACLE_ROUTES.add(spec.validator or f"{spec.method} {spec.path} (no schema)")
    problems = oracle.violations(requests)
    if problems:
        pytest.fail(
            "requests the real Rocket.Chat would refuse (published rest-typings schemas):\n  "
            + "\n  ".join(problems),
            pytrace=False,
        )


# Validators (or unvalidated routes) the oracle saw during this session, for the summary.
_ORACLE_ROUTES: set[str] = set()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Name the routes whose requests the protocol oracle checked in this run."""
    if _ORACLE_ROUTES:
        terminalreporter.write_line("protocol oracle checked: " + ", ".join(sorted(_ORACLE_ROUTES)))


@pytest.fixture
def meta() -> Iterator[SandboxMeta]:
    """A sandbox Meta signing webhooks with the bridge's app secret; it refuses every
    user/page-token call without a valid appsecret_proof."""
    server = SandboxMeta(app_secret=APP_SECRET, require_proof=True).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def bridge(
    rocketchat: SandboxRocketChat, meta: SandboxMeta, tmp_path: Path
) -> AsyncIterator[Bridge]:
    """A running Bot against both sandboxes, with the sandbox page connected."""
    async with running_bridge(rocketchat, meta, tmp_path) as running:
        yield running


@pytest.fixture
async def oauth(
    rocketchat: SandboxRocketChat, meta: SandboxMeta, tmp_path: Path
) -> AsyncIterator[OAuthBridge]:
    """A running bot with no page connected (public_url is its own loopback address)."""
    async with running_unconnected(rocketchat, meta, tmp_path) as running:
        yield running


@pytest.fixture
async def business_oauth(
    rocketchat: SandboxRocketChat, meta: SandboxMeta, tmp_path: Path
) -> AsyncIterator[OAuthBridge]:
    """Like ``oauth``, for a Business-type Meta app (Facebook Login for Business)."""
    async with running_business_app(rocketchat, meta, tmp_path) as running:
        yield running


Predicate = Callable[[], object | Awaitable[object]]


async def _eventually(
    predicate: Predicate, timeout: float = 10.0, interval: float = 0.02
) -> object:
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
    """``await eventually(predicate, timeout=10.0)``: poll until truthy or fail the test.

    The default is generous on purpose: it only costs time when a test fails, and a
    loaded 2-core CI machine is slow.
    """
    return _eventually
