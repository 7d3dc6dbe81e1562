"""Fixtures for the account commands, on top of the root ``oauth`` fixture."""

from __future__ import annotations

import pytest

from tests.scenarios.oauth_harness import OAuthBridge, parse_form, two_pages


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
