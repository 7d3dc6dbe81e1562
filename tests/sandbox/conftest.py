"""Fixtures for the sandbox servers' own tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from sandbox.rocketchat import SandboxRocketChat


@pytest.fixture
def rc(rc_version: str) -> Iterator[SandboxRocketChat]:
    """A started sandbox Rocket.Chat (release ``rc_version``) with default (faithful)
    settings; rate limiter on."""
    server = SandboxRocketChat(version=rc_version, webhook_retry_delay=0.05).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def rc_people(rc: SandboxRocketChat) -> dict[str, str]:
    """Bot (bot + livechat-manager), an admin, a plain user; passwords = usernames."""
    return {
        "bot": rc.create_user("mybot", "mybot", roles=["bot", "livechat-manager"], name="My Bot"),
        "admin": rc.create_user("boss", "boss", roles=["admin", "user"], name="The Boss"),
        "alice": rc.create_user("alice", "alice", roles=["user"], name="Alice"),
    }
