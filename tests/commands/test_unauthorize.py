"""``/instagram unauthorize``: uninstall everything, revoke the logins, forget the tokens."""

from __future__ import annotations

from tests.scenarios.oauth_harness import OAuthBridge


async def _reply(bridge: OAuthBridge, line: str, username: str = "admin.alice") -> str:
    before = len(bridge.dms(username))
    await bridge.command(line, username=username)
    return (await bridge.wait_dms(before + 1, username=username))[-1]


async def test_unauthorize_uninstalls_revokes_and_forgets(two_connected: OAuthBridge) -> None:
    """Every page is uninstalled at Meta, every login revoked, the store emptied."""
    bridge = two_connected
    pages = await bridge.bot.store.pages()
    user_tokens = {p.user_token for p in pages}
    text = await _reply(bridge, "/instagram unauthorize")
    assert "Disconnected 2 page(s)" in text and "`301`" in text and "`302`" in text
    assert "Meta confirmed" in text
    assert await bridge.bot.store.pages() == []
    assert bridge.meta.subscription("301") is None and bridge.meta.subscription("302") is None
    assert all(bridge.meta.is_revoked(t) for t in user_tokens)
    assert len(bridge.graph_calls("/me/permissions")) == len(user_tokens)
    bridge.assert_every_token_call_proved()


async def test_meta_failure_for_one_page_still_forgets_it_and_names_the_call(
    two_connected: OAuthBridge,
) -> None:
    """A failed uninstall is reported by call, and the page is forgotten anyway."""
    bridge = two_connected
    bridge.meta.inject_errors("subscribed_apps", [200])
    text = await _reply(bridge, "/instagram unauthorize")
    assert "DELETE /301/subscribed\\_apps code 200" in text  # "_" escaped for markdown
    assert await bridge.bot.store.pages() == []
    assert bridge.meta.subscription("302") is None


async def test_nothing_connected(oauth: OAuthBridge) -> None:
    """With no page connected the reply says there is nothing to do."""
    assert "nothing to unauthorize" in await _reply(oauth, "/instagram unauthorize")


async def test_non_admin_is_refused(two_connected: OAuthBridge) -> None:
    """A plain user cannot disconnect the pages."""
    two_connected.rc.create_user("bob", "bob-password", roles=["user"])
    text = await _reply(two_connected, "/instagram unauthorize", username="bob")
    assert "for administrators only" in text
    assert len(await two_connected.bot.store.pages()) == 2
