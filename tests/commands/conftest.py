"""Fixtures for the account commands: a running bot over both sandboxes (see oauth_harness)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from sandbox.meta import SandboxMeta
from sandbox.rocketchat import SandboxRocketChat
from tests.scenarios.oauth_harness import OAuthBridge, parse_form, running_unconnected, two_pages


@pytest.fixture
async def oauth(
    rocketchat: SandboxRocketChat, meta: SandboxMeta, tmp_path: Path
) -> AsyncIterator[OAuthBridge]:
    """A running bot with no page connected."""
    async with running_unconnected(rocketchat, meta, tmp_path) as bridge:
        yield bridge


@pytest.fixture
async def two_connected(oauth: OAuthBridge) -> OAuthBridge:
    """The bot with pages 301 and 302 connected through two real logins."""
    oauth.meta.set_login_user("Two Pages", pages=two_pages())
    for page_id in ("301", "302"):
        status, page = await oauth.login()
        assert status == 200
        status, _ = await oauth.select(parse_form(page).hidden["state"], page_id)
        assert status == 200
    assert sorted(p.page_id for p in await oauth.bot.store.pages()) == ["301", "302"]
    oauth.meta.clear_records()
    return oauth
