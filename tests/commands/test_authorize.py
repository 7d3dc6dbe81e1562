"""``/instagram authorize``: the login link goes to admins only, and only by DM."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from tests.scenarios.harness import ADMIN, BOT_USER
from tests.scenarios.oauth_harness import LINK, OAuthBridge

Eventually = Callable[..., Awaitable[object]]


async def test_admin_dm_gets_a_login_link_over_realtime(
    oauth: OAuthBridge, eventually: Eventually
) -> None:
    """An admin typing `instagram authorize` in a DM to the bot gets the link back by DM."""
    oauth.rc.send_dm(ADMIN, BOT_USER, "instagram authorize")
    texts = await eventually(lambda: [t for t in oauth.dms() if LINK.search(t)])
    assert "10 minutes" in texts[0]


async def test_link_typed_in_a_channel_is_sent_only_by_dm(
    oauth: OAuthBridge, eventually: Eventually
) -> None:
    """Typed in a channel, the link still goes only to the admin's DM, never the channel."""
    rid = oauth.rc.create_channel("support", members=[BOT_USER, ADMIN, "agent.ana"])
    oauth.rc.post_message(ADMIN, rid, "/instagram authorize")
    texts = await eventually(lambda: [t for t in oauth.dms() if LINK.search(t)])
    assert "only ever sent here" in texts[0]
    channel = [m["msg"] for m in oauth.rc.room_messages(rid)]
    assert channel == ["/instagram authorize"]


async def test_each_request_gets_its_own_link(oauth: OAuthBridge) -> None:
    """Two requests give two different states, each usable once."""
    first, second = await oauth.authorize(), await oauth.authorize()
    assert first != second
    for url in (first, second):
        assert (await oauth.get(oauth.meta.approve_url(url)))[0] == 200


async def test_non_admin_is_refused(oauth: OAuthBridge) -> None:
    """A user without an admin role gets a refusal by DM and no link."""
    oauth.rc.create_user("bob", "bob-password", roles=["user"])
    await oauth.command("/instagram authorize", username="bob")
    texts = await oauth.wait_dms(1, username="bob")
    assert "for administrators only" in texts[0]
    assert not LINK.search(texts[0])


async def test_arguments_get_usage(oauth: OAuthBridge) -> None:
    """`authorize` with arguments answers with the usage line instead of a link."""
    await oauth.command("/instagram authorize now")
    text = (await oauth.wait_dms(1))[0]
    assert "Usage: `/instagram authorize`" in text and not LINK.search(text)
