"""Accounts connected with Instagram Login (no Facebook Page), end to end through the
sandboxes: the login, webhooks signed with the Instagram app secret, sending through
graph.instagram.com, 60-day tokens refreshed before they end, an expired token."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from bot.config import from_dict
from bot.doctor import FAIL, PASS, WARN, Checkup, check_instagram_account, check_instagram_login_app
from bot.instagram.graph import GraphError
from bot.instagram.instagram_login import (
    MIN_REFRESH_AGE,
    REFRESH_BEFORE,
    InstagramLoginClient,
    refresh_due,
)
from sandbox.meta import DEFAULT_IG_ID, SandboxMeta
from sandbox.rocketchat import SandboxRocketChat
from storage.base import Page
from tests.scenarios.harness import AGENT, WEBHOOK_SECRET
from tests.scenarios.oauth_harness import SANDBOX_TOKEN, OAuthBridge, running_unconnected

IG_ID = "17841499999999999"
IG_LINK = re.compile(r"https?://\S+/oauth/authorize\?\S+")
DAY = 86400.0


@pytest.fixture
async def ig(rocketchat: SandboxRocketChat, meta: SandboxMeta,
             tmp_path: Path) -> AsyncIterator[OAuthBridge]:
    """A running bot with ``instagram.instagram_login`` configured, nothing connected,
    and an Instagram professional account (no Page) ready to log in."""
    def configure(raw: dict[str, Any]) -> None:
        raw["instagram"]["instagram_login"] = {
            "app_id": meta.ig_app_id, "app_secret": meta.ig_app_secret,
            "graph_url": meta.instagram_url, "authorize_url": meta.instagram_url,
            "token_url": meta.instagram_url,
        }

    meta.set_instagram_login_account(IG_ID, "nopageshop", name="No Page Shop")
    async with running_unconnected(rocketchat, meta, tmp_path, configure=configure) as bridge:
        meta.set_redirect_uris([bridge.config.redirect_uri,
                                bridge.config.instagram_redirect_uri])
        yield bridge


async def authorize_links(ig: OAuthBridge) -> tuple[str, str, dict]:
    """``/instagram authorize``: (Facebook link, Instagram link, the DM)."""
    before = len(ig.dms())
    await ig.command("/instagram authorize")
    await ig.wait_dms(before + 1)
    dm = [m for m in ig.rc.dm_messages(ig.bot.config.rocketchat.user, "admin.alice")][-1]
    facebook = re.search(r"https?://\S+/dialog/oauth\?\S+", dm["msg"]).group(0)
    instagram = IG_LINK.search(dm["msg"]).group(0)
    return facebook, instagram, dm


async def connect(ig: OAuthBridge) -> Page:
    """The whole Instagram Login as the admin's browser would walk it."""
    _, link, _ = await authorize_links(ig)
    callback = ig.meta.ig_approve_url(link)
    assert callback.endswith("#_")
    status, page = await ig.get(callback.removesuffix("#_"))  # browsers keep the fragment
    assert status == 200, page
    found = await ig.bot.store.page(IG_ID)
    assert found is not None
    return found


async def deliver_ig(ig: OAuthBridge, payload: dict, *, secret: str | None = None) -> int:
    status, _ = await ig.meta.adeliver(f"{ig.base_url}/webhooks/instagram", payload,
                                       secret=secret or ig.meta.ig_app_secret)
    return status


def enable_agent_webhooks(ig: OAuthBridge) -> None:
    ig.rc.set_setting("Livechat_webhookUrl", f"{ig.base_url}/webhooks/rocketchat")
    ig.rc.set_setting("Livechat_secret_token", WEBHOOK_SECRET)
    ig.rc.set_setting("Livechat_webhook_on_agent_message", True)


async def room_of(ig: OAuthBridge, igsid: str, eventually: Any) -> dict:
    async def opened() -> dict | None:
        conv = await ig.bot.store.conversation(IG_ID, igsid)
        if conv is None or not conv.room_id:
            return None
        return ig.rc.room(conv.room_id)
    return await eventually(opened)


async def test_authorize_offers_both_routes_as_links_and_buttons(ig: OAuthBridge):
    """With instagram_login configured the DM offers Facebook and Instagram, each a button
    and a link; the Instagram link asks for the two messaging scopes only."""
    facebook, instagram, dm = await authorize_links(ig)
    assert ig.rc.click_button("admin.alice", dm["_id"], "Log in with Facebook") == facebook
    assert ig.rc.click_button("admin.alice", dm["_id"], "Log in with Instagram") == instagram
    assert "scope=instagram_business_basic%2Cinstagram_business_manage_messages" in instagram
    assert "redirect_uri=" + "http%3A%2F%2F127.0.0.1" in instagram


async def test_instagram_login_connects_an_account_without_a_page(ig: OAuthBridge):
    """Code → 1-hour → 60-day token, the account named, webhooks subscribed, the admin
    told; the account is listed like a Page, marked with its route."""
    page = await connect(ig)
    assert (page.route, page.username, page.instagram_id, page.subscribed) == (
        "instagram", "nopageshop", IG_ID, True)
    assert 59 * DAY < page.token_expires_at - page.token_issued_at <= 60 * DAY
    assert "messages" in ig.meta.ig_subscription(IG_ID)
    dm = (await ig.wait_dms(2))[-1]
    assert "@nopageshop" in dm and "Instagram Login" in dm and IG_ID in dm
    assert not SANDBOX_TOKEN.search(" ".join(ig.pages_seen))
    assert not any(p.startswith("IGAA") for p in dm.split())
    before = len(ig.dms())
    await ig.command("/instagram pages")
    listing = (await ig.wait_dms(before + 1))[-1]
    assert f"`{IG_ID}`" in listing and "via Instagram Login" in listing


async def test_used_instagram_state_is_refused(ig: OAuthBridge):
    """The Instagram Login state works once: a replayed callback changes nothing."""
    _, link, _ = await authorize_links(ig)
    callback = ig.meta.ig_approve_url(link).removesuffix("#_")
    assert (await ig.get(callback))[0] == 200
    status, page = await ig.get(callback)
    assert status == 400 and "cannot be used" in page


async def test_cancelled_instagram_login_connects_nothing(ig: OAuthBridge):
    """Cancel in Instagram's consent page: the admin is told, nothing is saved."""
    _, link, _ = await authorize_links(ig)
    status, _ = await ig.get(ig.meta.ig_cancel_url(link).removesuffix("#_"))
    assert status == 200
    assert await ig.bot.store.page(IG_ID) is None


async def test_instagram_login_account_relays_both_ways(ig: OAuthBridge, eventually):
    """A DM signed with the Instagram app secret opens a room; the agent's answer goes out
    through graph.instagram.com as the account."""
    await connect(ig)
    enable_agent_webhooks(ig)
    igsid = ig.meta.new_igsid()
    ig.meta.set_profile(igsid, name="Nora Nopage")
    assert await deliver_ig(ig, ig.meta.text_event(IG_ID, igsid, "Hi there")) == 200
    room = await room_of(ig, igsid, eventually)
    assert room["fname"] == "Nora Nopage"
    await eventually(lambda: ig.rc.room(room["_id"]).get("servedBy"))
    ig.rc.agent_reply(AGENT, room["_id"], "Hello Nora!")
    sent = await eventually(lambda: [s for s in ig.meta.sent_messages() if s["ok"]
                                     and s["recipient"] == igsid])
    assert sent[0]["page_id"] == IG_ID
    assert sent[0]["body"]["message"] == {"text": "Hello Nora!"}


async def test_webhook_with_wrong_secret_is_refused(ig: OAuthBridge):
    """A body signed with neither app secret is refused (403) and nothing is stored."""
    await connect(ig)
    payload = ig.meta.text_event(IG_ID, ig.meta.new_igsid(), "forged")
    status = await deliver_ig(ig, payload, secret="not-the-instagram-app-secret")
    assert status == 403
    assert ig.bot.store.inbox.backlog == 0


async def test_account_connected_by_both_routes_relays_each_message_once(
    ig: OAuthBridge, eventually
):
    """The same account through its Page and through Instagram Login: Meta delivers each
    message twice (once per app); the room shows it once."""
    status, _ = await ig.login()  # the Page route: Sandbox Shop, linked to DEFAULT_IG_ID
    assert status == 200
    ig.meta.set_instagram_login_account(DEFAULT_IG_ID, "sandboxshop")
    _, link, _ = await authorize_links(ig)
    assert (await ig.get(ig.meta.ig_approve_url(link).removesuffix("#_")))[0] == 200
    igsid = ig.meta.new_igsid()
    payload = ig.meta.text_event(DEFAULT_IG_ID, igsid, "Only once, please")
    assert await deliver_ig(ig, payload, secret=ig.meta.app_secret) == 200
    assert await deliver_ig(ig, payload, secret=ig.meta.ig_app_secret) == 200

    async def conversation_room() -> str | None:
        for page_id in (DEFAULT_IG_ID, "100000000000001"):
            conv = await ig.bot.store.conversation(page_id, igsid)
            if conv is not None and conv.room_id:
                return conv.room_id
        return None
    rid = await eventually(conversation_room)
    await eventually(lambda: ig.bot.store.inbox.backlog == 0)
    texts = [m["msg"] for m in ig.rc.room_messages(rid) if m.get("token")]
    assert texts == ["Only once, please"]
    assert len([r for r in ig.rc.livechat_rooms() if r["_id"] == rid]) == 1
    assert len(ig.rc.livechat_rooms()) == 1


async def test_token_is_refreshed_before_it_ends(ig: OAuthBridge):
    """51 days on (9 left), the refresher renews the token; the new one lasts 60 days and
    replaces the old in the store."""
    page = await connect(ig)
    old = page.page_token
    ig.clock.advance(51 * DAY)
    ig.meta.advance(51 * DAY)
    await ig.bot.token_refresher.check()
    renewed = await ig.bot.store.page(IG_ID)
    assert renewed.page_token != old and renewed.page_token == ig.meta.ig_token_for(IG_ID)
    assert renewed.token_expires_at - ig.clock.now == pytest.approx(60 * DAY, abs=DAY)
    assert not renewed.needs_reauth and ig.bot.token_refresher.refreshed == 1


async def test_expired_token_starts_reauth_and_keeps_inbound(ig: OAuthBridge, eventually):
    """A token that ended anyway (the bot was off for two months): admins are told once,
    and a visitor's message still reaches Omnichannel."""
    await connect(ig)
    before = len(ig.dms())
    ig.clock.advance(61 * DAY)
    ig.meta.advance(61 * DAY)
    await ig.bot.token_refresher.check()
    await ig.bot.token_refresher.check()
    page = await ig.bot.store.page(IG_ID)
    assert page.needs_reauth
    alerts = [t for t in (await ig.wait_dms(before + 1))[before:] if "authorize" in t]
    assert len(alerts) == 1
    igsid = ig.meta.new_igsid()
    ig.meta.set_profile(igsid, name="Late Visitor")
    assert await deliver_ig(ig, ig.meta.text_event(IG_ID, igsid, "Still there?")) == 200
    room = await room_of(ig, igsid, eventually)
    assert any(m.get("msg") == "Still there?" for m in ig.rc.room_messages(room["_id"]))


@pytest.mark.parametrize(("age_days", "left_days", "due"), [
    (0.5, 59.5, False),     # Meta refuses a token under 24 h old
    (30, 30, False),        # plenty left
    (50.5, 9.5, True),      # fewer than 10 days left
    (0.9, 5, False),        # too young even though it ends soon
])
def test_refresh_is_due_only_for_old_enough_tokens_near_their_end(age_days, left_days, due):
    """Refresh when fewer than 10 days remain and the token is at least 24 h old."""
    now = 1_000_000_000.0
    page = Page(page_id="1", name="n", instagram_id="1", route="instagram",
                token_issued_at=now - age_days * DAY, token_expires_at=now + left_days * DAY)
    assert refresh_due(page, now) is due
    assert REFRESH_BEFORE == 10 * DAY and MIN_REFRESH_AGE == DAY


async def test_sandbox_refuses_a_refresh_of_a_young_token(ig: OAuthBridge):
    """Meta's 24-hour rule holds in the sandbox: a fresh token cannot be refreshed yet."""
    page = await connect(ig)
    with pytest.raises(GraphError, match="24 hours"):
        await ig.bot.ig_graph.refresh_token(page.page_token)


async def test_doctor_checks_instagram_app_credentials_and_accounts(ig: OAuthBridge):
    """doctor: the Instagram app's secret is verified (a made-up code is refused as a code,
    a wrong secret as a secret); an account's token lifetime and webhooks are checked."""
    page = await connect(ig)
    good = Checkup(ig.config, None, None, ig_graph=InstagramLoginClient(ig.config))
    bad_config = from_dict(_with_ig_secret(ig, "wrong-secret"), env={})
    bad = Checkup(bad_config, None, None, ig_graph=InstagramLoginClient(bad_config))
    try:
        assert (await check_instagram_login_app(good)).status == PASS
        refused = await check_instagram_login_app(bad)
        assert refused.status == FAIL and "client secret" in refused.detail
        results = await check_instagram_account(good, page, ig.clock.now)
        assert [r.status for r in results] == [PASS, PASS], results
        ig.meta.advance(55 * DAY)  # the token still works, but was not refreshed
        late = await check_instagram_account(good, page, ig.clock.now + 55 * DAY)
        assert late[0].status == WARN and "not yet refreshed" in late[0].detail
        await ig.bot.ig_graph.unsubscribe_page(page.page_id, page.page_token)
        off = await check_instagram_account(good, page, ig.clock.now + 55 * DAY)
        assert off[1].status == FAIL and "webhooks are off" in off[1].detail
    finally:
        await good.ig_graph.close()
        await bad.ig_graph.close()


def _with_ig_secret(ig: OAuthBridge, secret: str) -> dict[str, Any]:
    c = ig.config
    login = c.instagram.instagram_login
    return {
        "rocketchat": {"url": c.rocketchat.url, "user": c.rocketchat.user,
                       "password": c.rocketchat.password.reveal(),
                       "webhook_secret": c.rocketchat.webhook_secret.reveal()},
        "instagram": {"app_id": c.instagram.app_id, "app_secret": c.instagram.app_secret.reveal(),
                      "verify_token": "v", "api_version": c.instagram.api_version,
                      "instagram_login": {"app_id": login.app_id, "app_secret": secret,
                                          "graph_url": login.graph_url,
                                          "authorize_url": login.authorize_url,
                                          "token_url": login.token_url}},
        "server": {"public_url": c.server.public_url},
    }


async def test_commands_work_on_an_instagram_login_account(ig: OAuthBridge):
    """unsubscribe, subscribe and unauthorize take the account id and act on
    graph.instagram.com's me/subscribed_apps; unauthorize forgets the token."""
    await connect(ig)
    await ig.command(f"/instagram unsubscribe {IG_ID}")
    await ig.wait_dms(3)
    assert ig.meta.ig_subscription(IG_ID) is None
    assert not (await ig.bot.store.page(IG_ID)).subscribed
    await ig.command(f"/instagram subscribe {IG_ID}")
    await ig.wait_dms(4)
    assert "messages" in ig.meta.ig_subscription(IG_ID)
    assert (await ig.bot.store.page(IG_ID)).subscribed
    await ig.command("/instagram unauthorize")
    await ig.wait_dms(5)
    assert ig.meta.ig_subscription(IG_ID) is None
    assert await ig.bot.store.page(IG_ID) is None


async def test_failed_refresh_is_retried_with_backoff(ig: OAuthBridge):
    """A refresh Meta fails transiently is not retried at once, but after a backoff; the
    token is renewed then, and nothing is marked for re-authorization."""
    page = await connect(ig)
    ig.clock.advance(51 * DAY)
    ig.meta.advance(51 * DAY)
    # A transient Meta error, more times than the client retries within one call.
    ig.meta.inject_errors("refresh_access_token", [2] * (ig.bot.ig_graph.retries + 1))
    refresher = ig.bot.token_refresher
    await refresher.check()
    assert (await ig.bot.store.page(IG_ID)).page_token == page.page_token
    await refresher.check()  # within the backoff: not tried again
    assert ig.meta.ig_refreshes == 0
    ig.clock.advance(61)
    await refresher.check()
    renewed = await ig.bot.store.page(IG_ID)
    assert renewed.page_token != page.page_token and not renewed.needs_reauth
