"""Buttons under the bot's DMs: they open the right links and post the right commands,
and a click is an ordinary message of the clicking user (admin check unchanged)."""

from __future__ import annotations

import re

import pytest

from sandbox.meta import DEFAULT_PAGE_ID
from sandbox.rocketchat.wire import RCError
from tests.scenarios.harness import ADMIN, BOT_USER
from tests.scenarios.oauth_harness import OAuthBridge


def bot_dms(oauth: OAuthBridge, username: str = ADMIN) -> list[dict]:
    """The bot's messages in its DM with ``username``, oldest first."""
    return [m for m in oauth.rc.dm_messages(BOT_USER, username)
            if m.get("u", {}).get("username") == BOT_USER]


def newest(oauth: OAuthBridge, needle: str, seen: int = 0) -> dict | None:
    """The bot's newest DM to the admin containing ``needle``, among those after ``seen``."""
    found = [m for m in bot_dms(oauth)[seen:] if needle in m["msg"]]
    return found[-1] if found else None


async def connected(oauth: OAuthBridge) -> None:
    status, _ = await oauth.login()
    assert status == 200
    page = await oauth.bot.store.page(DEFAULT_PAGE_ID)
    assert page is not None and page.subscribed


async def test_authorize_dm_button_opens_the_login_link(oauth: OAuthBridge):
    """The authorize DM has a "Start authentication" button with the link of its text."""
    link = await oauth.authorize()
    dm = bot_dms(oauth)[-1]
    assert oauth.rc.click_button(ADMIN, dm["_id"], "Start authentication") == link


async def test_pages_dm_has_edit_and_unsubscribe_buttons_per_page(oauth: OAuthBridge, eventually):
    """`/instagram pages` puts Edit and Unsubscribe (subscribed page) under each page."""
    await connected(oauth)
    await oauth.command("/instagram pages")
    dm = await eventually(lambda: newest(oauth, "Connected Instagram accounts"))
    buttons = {b["text"]: b for b in oauth.rc.buttons(dm["_id"])}
    assert buttons["Edit"]["msg"] == f"instagram edit {DEFAULT_PAGE_ID}"
    assert buttons["Unsubscribe"]["msg"] == f"instagram unsubscribe {DEFAULT_PAGE_ID}"
    assert "Subscribe" not in buttons
    assert all(b["msg_in_chat_window"] for b in buttons.values())


async def test_clicked_unsubscribe_runs_for_an_admin_and_offers_subscribe(
    oauth: OAuthBridge, eventually
):
    """Clicking Unsubscribe posts the command as the admin; the bot runs it, and the next
    pages list offers Subscribe instead."""
    await connected(oauth)
    await oauth.command("/instagram pages")
    dm = await eventually(lambda: newest(oauth, "Connected Instagram accounts"))
    posted = oauth.rc.click_button(ADMIN, dm["_id"], "Unsubscribe")
    assert posted["u"]["username"] == ADMIN

    async def unsubscribed() -> bool:
        page = await oauth.bot.store.page(DEFAULT_PAGE_ID)
        return page is not None and not page.subscribed
    await eventually(unsubscribed)
    assert oauth.meta.subscription(DEFAULT_PAGE_ID) is None
    seen = len(bot_dms(oauth))
    await oauth.command("/instagram pages")
    dm = await eventually(lambda: newest(oauth, "Connected Instagram accounts", seen))
    texts = [b["text"] for b in oauth.rc.buttons(dm["_id"])]
    assert texts == ["Edit", "Subscribe"]


async def test_button_command_from_a_non_admin_is_refused(oauth: OAuthBridge, eventually):
    """The message a click posts is an ordinary message: from a non-admin it is refused."""
    await connected(oauth)
    oauth.rc.create_user("bob", "bob-password-1", roles=["user"])
    await oauth.command("/instagram pages")
    dm = await eventually(lambda: newest(oauth, "Connected Instagram accounts"))
    command = {b["text"]: b for b in oauth.rc.buttons(dm["_id"])}["Unsubscribe"]["msg"]
    oauth.rc.send_dm("bob", BOT_USER, command)  # exactly what a click posts, in bob's DM
    refusal = await eventually(lambda: [m for m in oauth.rc.dm_messages(BOT_USER, "bob")
                                        if m["u"]["username"] == BOT_USER])
    assert "admin" in refusal[-1]["msg"].lower()
    page = await oauth.bot.store.page(DEFAULT_PAGE_ID)
    assert page is not None and page.subscribed


async def test_edit_dm_button_opens_the_settings_form(oauth: OAuthBridge, eventually):
    """`/instagram edit <pageId>` DMs the settings and a button opening the form's link."""
    await connected(oauth)
    await oauth.command(f"/instagram edit {DEFAULT_PAGE_ID}")
    dm = await eventually(lambda: newest(oauth, "/settings/"))
    link = re.search(r"https?://\S+/settings/\S+", dm["msg"]).group(0)
    assert oauth.rc.click_button(ADMIN, dm["_id"], "Edit page configuration") == link
    status, page = await oauth.get(link)
    assert status == 200 and "<form" in page


@pytest.mark.parametrize("action", [
    {"type": "button", "text": "x", "url": "javascript:alert(1)"},
    {"type": "button", "text": "x", "url": "/relative"},
    {"type": "button", "text": 3, "msg": "hi", "msg_in_chat_window": True},
    {"type": "button", "text": "x", "msg": "hi", "msg_in_chat_window": "yes"},
])
def test_sandbox_refuses_buttons_the_server_refuses(oauth: OAuthBridge, action: dict):
    """The sandbox applies Rocket.Chat's validateAttachmentsActions (so would a real server)."""
    rid = oauth.rc.create_dm(ADMIN, BOT_USER)
    with pytest.raises(RCError):
        oauth.rc.post_message(ADMIN, rid, "buttons", attachments=[{"actions": [action]}])


async def test_connected_dm_offers_the_page_buttons(oauth: OAuthBridge, eventually):
    """The "connected" DM after a login carries the page's Edit and Unsubscribe buttons."""
    await connected(oauth)
    dm = await eventually(lambda: newest(oauth, "Connected Instagram"))
    buttons = {b["text"]: b["msg"] for b in oauth.rc.buttons(dm["_id"])}
    assert buttons == {"Edit": f"instagram edit {DEFAULT_PAGE_ID}",
                       "Unsubscribe": f"instagram unsubscribe {DEFAULT_PAGE_ID}"}
