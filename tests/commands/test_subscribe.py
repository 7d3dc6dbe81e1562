"""``/instagram subscribe`` and ``unsubscribe``: install/uninstall at Meta, gate the relay."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from bot.messages import md
from tests.scenarios.oauth_harness import OAuthBridge

Eventually = Callable[..., Awaitable[object]]
NORTH_IG = "17841000000000301"


async def _reply(bridge: OAuthBridge, line: str) -> str:
    before = len(bridge.dms())
    await bridge.command(line)
    return (await bridge.wait_dms(before + 1))[-1]


async def test_unsubscribe_uninstalls_and_stops_relaying(
    two_connected: OAuthBridge, eventually: Eventually
) -> None:
    """After unsubscribe the app is gone from the page and its DMs open no conversation."""
    bridge = two_connected
    text = await _reply(bridge, "/instagram unsubscribe 301")
    assert "Bridging is off for *Shop North*" in text
    assert bridge.meta.subscription("301") is None
    assert bridge.meta.subscription("302") == ["feed"]
    page = await bridge.bot.store.page("301")
    assert page is not None and not page.subscribed

    url = f"{bridge.base_url}/webhooks/instagram"
    igsid = bridge.meta.new_igsid()
    status, _ = await bridge.meta.adeliver(url, bridge.meta.text_event(NORTH_IG, igsid, "hi"))
    assert status == 200
    await bridge.command("/instagram subscribe 301")
    assert bridge.meta.subscription("301") == ["feed"]
    assert "Bridging is on" in bridge.dms()[-1]
    assert await bridge.bot.store.conversation("301", igsid) is None  # nothing relayed

    # Subscribed again: the next message is relayed.
    await bridge.meta.adeliver(url, bridge.meta.text_event(NORTH_IG, igsid, "hello again"))
    async def room_opened() -> bool:
        conv = await bridge.bot.store.conversation("301", igsid)
        return conv is not None and any(
            r["v"]["token"] == conv.visitor_token for r in bridge.rc.livechat_rooms())

    await eventually(room_opened)


@pytest.mark.parametrize("verb", ["subscribe", "unsubscribe"])
async def test_unknown_page_id_lists_the_known_ids(two_connected: OAuthBridge, verb: str) -> None:
    """An unknown page id changes nothing and the reply lists the ids that exist."""
    text = await _reply(two_connected, f"/instagram {verb} 999")
    assert "`999`" in text and "`301`, `302`" in text
    assert f"/instagram {verb} <pageId>" in text
    assert two_connected.graph_calls("subscribed_apps") == []


async def test_unknown_page_id_with_nothing_connected(oauth: OAuthBridge) -> None:
    """With no page at all, the reply says so and how to connect one."""
    text = await _reply(oauth, "/instagram subscribe 999")
    assert "no page is connected yet" in text


@pytest.mark.parametrize("line", ["/instagram subscribe", "/instagram unsubscribe 301 302"])
async def test_wrong_argument_count_gets_usage(two_connected: OAuthBridge, line: str) -> None:
    """Missing or extra arguments get a usage message, never silence."""
    assert "Usage:" in await _reply(two_connected, line)


async def test_subscribe_with_dead_token_marks_reauth_and_tells_admins_once(
    two_connected: OAuthBridge,
) -> None:
    """Meta's 190 on subscribe flags the page and DMs the admins one re-auth notice."""
    bridge = two_connected
    bridge.meta.expire_token("301")
    text = await _reply(bridge, "/instagram subscribe 301")
    assert "failed" in text and "/instagram authorize" in text
    page = await bridge.bot.store.page("301")
    assert page is not None and page.needs_reauth and page.reauth_notified
    await _reply(bridge, "/instagram subscribe 301")
    notices = [t for t in bridge.dms() if "lost its authorization" in t]
    assert len(notices) == 1


async def test_unsubscribe_when_meta_fails_still_stops_locally(
    two_connected: OAuthBridge,
) -> None:
    """If Meta refuses the uninstall, the page is still off here and the admin is told."""
    bridge = two_connected
    bridge.meta.inject_errors("subscribed_apps", [200])
    text = await _reply(bridge, "/instagram unsubscribe 302")
    assert "uninstalling the bot at Meta failed" in text and "code 200" in text
    page = await bridge.bot.store.page("302")
    assert page is not None and not page.subscribed


@pytest.mark.parametrize("verb", ["subscribe", "unsubscribe"])
async def test_non_admin_is_refused(two_connected: OAuthBridge, verb: str) -> None:
    """Plain users cannot change subscriptions."""
    two_connected.rc.create_user("bob", "bob-password", roles=["user"])
    await two_connected.command(f"/instagram {verb} 301", username="bob")
    assert "for administrators only" in (await two_connected.wait_dms(1, username="bob"))[0]
    assert two_connected.meta.subscription("301") == ["feed"]


async def test_refused_subscribe_with_nothing_installed_turns_bridging_off(
    two_connected: OAuthBridge,
) -> None:
    """Meta refuses the install and lists none: the reply says so and the page is off."""
    bridge = two_connected
    bridge.meta.drop_subscription("301")
    refusal = ("(#200) To subscribe to the feed field, one of these permissions is needed:"
               " pages_manage_metadata")
    bridge.meta.inject_errors("subscribed_apps", [{"code": 200, "message": refusal}])
    text = await _reply(bridge, "/instagram subscribe 301")
    assert md(refusal) in text and "bridging is off" in text  # escaped for markdown
    page = await bridge.bot.store.page("301")
    assert page is not None and not page.subscribed and not page.needs_reauth


async def test_refused_subscribe_keeps_an_installation_meta_still_lists(
    two_connected: OAuthBridge,
) -> None:
    """A refused re-install leaves a still-listed earlier installation (and the page) on."""
    bridge = two_connected
    bridge.meta.inject_errors("subscribed_apps", [200])
    text = await _reply(bridge, "/instagram subscribe 302")
    assert "failed" in text and "bridging is off" not in text
    page = await bridge.bot.store.page("302")
    assert page is not None and page.subscribed
    assert bridge.meta.subscription("302") == ["feed"]
