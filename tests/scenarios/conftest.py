"""Scenario fixtures: the sandbox Meta and a running bridge (see harness.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from sandbox.meta import SandboxMeta
from sandbox.rocketchat import SandboxRocketChat
from tests.scenarios.harness import APP_SECRET, Bridge, running_bridge


@pytest.fixture
def meta() -> Iterator[SandboxMeta]:
    """A sandbox Meta whose webhooks are signed with the bridge's app secret."""
    server = SandboxMeta(app_secret=APP_SECRET).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def bridge(
    rocketchat: SandboxRocketChat, meta: SandboxMeta, tmp_path: Path
) -> AsyncIterator[Bridge]:
    """A running Bot against both sandboxes, with the sandbox page connected."""
    async with running_bridge(rocketchat, meta, tmp_path) as bridge:
        yield bridge
