"""Security fixtures: an unconnected bot for the OAuth flow, and a connected bridge."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sandbox.meta import SandboxMeta
from sandbox.rocketchat import SandboxRocketChat
from tests.scenarios.harness import APP_SECRET, Bridge, running_bridge
from tests.scenarios.oauth_harness import OAuthBridge, running_unconnected


@pytest.fixture
def meta() -> Iterator[SandboxMeta]:
    """A sandbox Meta that signs webhooks with our app secret and demands appsecret_proof."""
    server = SandboxMeta(app_secret=APP_SECRET, require_proof=True).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def oauth(
    rocketchat: SandboxRocketChat, meta: SandboxMeta, tmp_path: Path
) -> AsyncIterator[OAuthBridge]:
    """A running bot with no page connected (public_url is its own loopback address)."""
    async with running_unconnected(rocketchat, meta, tmp_path) as bridge:
        yield bridge


@pytest.fixture
async def bridge(
    rocketchat: SandboxRocketChat, meta: SandboxMeta, tmp_path: Path
) -> AsyncIterator[Bridge]:
    """A running bot with the sandbox page connected."""
    async with running_bridge(rocketchat, meta, tmp_path) as running:
        yield running
