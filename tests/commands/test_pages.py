"""``/instagram pages``: what is connected, and in what state."""

from __future__ import annotations

import time

from bot.contacts import month_start
from storage import WorkItem
from storage.base import Conversation
from tests.scenarios.oauth_harness import OAuthBridge


async def test_no_pages_says_how_to_connect(oauth: OAuthBridge) -> None:
    """With nothing connected the reply points to /instagram authorize."""
    await oauth.command("/instagram pages")
    assert "/instagram authorize" in (await oauth.wait_dms(1))[0]


async def test_lists_id_name_username_department_subscribed(two_connected: OAuthBridge) -> None:
    """Each page shows id, name, @username, department and subscribed, plus re-auth state."""
    store = two_connected.bot.store
    north = await store.page("301")
    assert north is not None
    north.department_name, north.needs_reauth = "Sales", True
    await store.save_page(north)
    south = await store.page("302")
    assert south is not None
    south.subscribed = False
    await store.save_page(south)

    before = len(two_connected.dms())
    await two_connected.command("/instagram pages")
    text = (await two_connected.wait_dms(before + 1))[-1]
    lines = text.splitlines()
    assert "(2)" in lines[0]
    assert lines[1].startswith("• `301` — Shop North — @shopnorth — department: Sales — "
                               "subscribed: yes")
    assert "needs re-authorization" in lines[1]
    assert lines[2] == ("• `302` — Shop South — @shopsouth — department: none — "
                        "subscribed: no — visitors this month: 0")
    assert lines[3].startswith("0 Instagram visitor(s) wrote this month.")


async def test_set_aside_messages_are_shown_per_page(two_connected: OAuthBridge) -> None:
    """A page with set-aside messages says how many and the latest refusal."""
    store = two_connected.bot.store
    for n, reason in enumerate(("livechat/message: error-a", "livechat/message: error-b")):
        item = WorkItem(item_id=f"ig:m{n}", queue="inbound", conversation="301:u1",
                        kind="message", payload={"page_id": "301", "igsid": "u1"},
                        next_try_at=time.time() + 3600)  # the running relay leaves it be
        await store.enqueue([item])
        await store.set_aside(item, reason)
    before = len(two_connected.dms())
    await two_connected.command("/instagram pages")
    lines = (await two_connected.wait_dms(before + 1))[-1].splitlines()
    assert lines[1].endswith("— *2 message(s) set aside*, last: livechat/message: error-b")
    assert "set aside" not in lines[2]


async def test_reconciliation_figures_are_shown_per_page(two_connected: OAuthBridge) -> None:
    """A page whose sends were settled from Instagram's record says so; others do not."""
    await two_connected.bot.store.add_marks({"reconcile:301:settled": 3,
                                             "reconcile:301:unknown": 1})
    before = len(two_connected.dms())
    await two_connected.command("/instagram pages")
    lines = (await two_connected.wait_dms(before + 1))[-1].splitlines()
    assert lines[1].endswith("— Instagram's record: 3 send(s) settled by read-back, 1 unknown, "
                             "0 message(s) backfilled, last backfill: never")
    assert "Instagram's record" not in lines[2]


async def test_non_admin_is_refused(two_connected: OAuthBridge) -> None:
    """A plain user cannot list the pages."""
    two_connected.rc.create_user("bob", "bob-password", roles=["user"])
    await two_connected.command("/instagram pages", username="bob")
    text = (await two_connected.wait_dms(1, username="bob"))[0]
    assert "for administrators only" in text and "301" not in text


async def test_counts_visitors_who_wrote_this_month(two_connected: OAuthBridge) -> None:
    """Visitors whose last message is in this calendar month (UTC) count per page; one who
    last wrote before the month began does not."""
    store = two_connected.bot.store
    now = time.time()
    for igsid, when in (("a", now), ("b", now - 60), ("c", month_start(now) - 1)):
        await store.save_conversation(Conversation(
            page_id="301", igsid=igsid, visitor_token=f"t-{igsid}", last_inbound_at=when))
    await store.save_conversation(Conversation(page_id="302", igsid="d", visitor_token="t-d",
                                               last_inbound_at=now))
    before = len(two_connected.dms())
    await two_connected.command("/instagram pages")
    lines = (await two_connected.wait_dms(before + 1))[-1].splitlines()
    assert lines[1].endswith("visitors this month: 2")
    assert lines[2].endswith("visitors this month: 1")
    assert lines[3].startswith("3 Instagram visitor(s) wrote this month.")
