"""The OAuth callback and page choice over HTTP: a real Bot on loopback, sandbox Meta + RC."""

from __future__ import annotations

import logging
from html.parser import HTMLParser
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from bot.instagram.oauth import SCOPES
from bot.instagram.reauth import mark_needs_reauth
from bot.messages import md
from sandbox.meta import DEFAULT_IG_USERNAME, DEFAULT_PAGE_ID, DEFAULT_PAGE_NAME
from tests.scenarios.oauth_harness import (
    CONFIG_ID,
    LINK,
    SANDBOX_TOKEN,
    OAuthBridge,
    parse_form,
    two_pages,
)


def _state_of(url: str) -> str:
    return parse_qs(urlsplit(url).query)["state"][0]


def _with_state(location: str, state: str) -> str:
    parts = urlsplit(location)
    query = parse_qs(parts.query)
    query["state"] = [state]
    return parts._replace(query=urlencode(query, doseq=True)).geturl()


async def test_login_link_carries_dialog_parameters(oauth: OAuthBridge) -> None:
    """The DM'd link opens the versioned dialog with client_id, redirect_uri, state, scopes."""
    url = await oauth.authorize()
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    assert f"{parts.scheme}://{parts.netloc}" == oauth.meta.dialog_url
    assert parts.path == f"/{oauth.meta.api_version}/dialog/oauth"
    assert query["client_id"] == oauth.meta.app_id
    assert query["redirect_uri"] == oauth.base_url + "/oauth/callback"
    assert query["response_type"] == "code"
    assert len(query["state"]) >= 22  # ≥ 128 bits, URL-safe base64
    for scope in ("instagram_basic", "instagram_manage_messages", "pages_manage_metadata",
                  "pages_show_list", "pages_read_engagement"):
        assert scope in query["scope"].split(",")


async def test_single_page_login_connects_subscribes_and_dms(oauth: OAuthBridge) -> None:
    """One eligible page: tokens stored, app installed, success page, DM with next steps."""
    status, page = await oauth.login()
    assert status == 200
    assert "Instagram connected" in page and DEFAULT_IG_USERNAME in page

    stored = await oauth.bot.store.page(DEFAULT_PAGE_ID)
    assert stored is not None and stored.subscribed and not stored.needs_reauth
    assert stored.page_token and stored.user_token and stored.owner_id == oauth.admin_id
    assert oauth.meta.subscription(DEFAULT_PAGE_ID) == ["feed"]

    dm = (await oauth.wait_dms(2))[-1]
    for part in (DEFAULT_PAGE_NAME, DEFAULT_PAGE_ID, f"@{DEFAULT_IG_USERNAME}",
                 f"/instagram edit {DEFAULT_PAGE_ID}"):
        assert part in dm
    oauth.assert_every_token_call_proved()


async def test_forged_state_gets_400_and_no_token_exchange(oauth: OAuthBridge) -> None:
    """A callback whose state the bot never issued is refused before any call to Meta."""
    url = await oauth.authorize()
    location = oauth.meta.approve_url(url)
    oauth.meta.clear_records()
    status, page = await oauth.get(_with_state(location, "forged-" + "A" * 40))
    assert status == 400
    assert "cannot be used" in page
    assert oauth.meta.calls() == []
    assert await oauth.bot.store.pages() == []


async def test_missing_state_gets_400(oauth: OAuthBridge) -> None:
    """A callback without any state is refused."""
    status, _ = await oauth.get(f"{oauth.base_url}/oauth/callback?code=abc")
    assert status == 400
    assert oauth.graph_calls("/oauth/access_token") == []


async def test_expired_state_gets_400_and_no_token_exchange(oauth: OAuthBridge) -> None:
    """A login link used after its 10 minutes is refused without exchanging the code."""
    url = await oauth.authorize()
    location = oauth.meta.approve_url(url)
    oauth.clock.advance(601)
    status, _ = await oauth.get(location)
    assert status == 400
    assert oauth.graph_calls("/oauth/access_token") == []


async def test_state_still_valid_just_before_expiry(oauth: OAuthBridge) -> None:
    """Within the 10 minutes the link works."""
    url = await oauth.authorize()
    location = oauth.meta.approve_url(url)
    oauth.clock.advance(590)
    status, _ = await oauth.get(location)
    assert status == 200


async def test_reused_state_gets_400_and_exchanges_once(oauth: OAuthBridge) -> None:
    """Replaying the callback URL (same state) is refused; the code is exchanged once."""
    url = await oauth.authorize()
    location = oauth.meta.approve_url(url)
    assert (await oauth.get(location))[0] == 200
    exchanges = len(oauth.graph_calls("/oauth/access_token"))
    status, _ = await oauth.get(location)
    assert status == 400
    assert len(oauth.graph_calls("/oauth/access_token")) == exchanges  # no second exchange


async def test_cancelled_login_gets_friendly_page_and_dm(oauth: OAuthBridge) -> None:
    """error=access_denied: a friendly page, a DM to the admin, no call to Meta."""
    status, page = await oauth.login(approve=False)
    assert status == 200
    assert "Login cancelled" in page
    assert "cancelled" in (await oauth.wait_dms(2))[-1]
    assert oauth.graph_calls("/oauth/access_token") == []


async def test_zero_pages_tells_admin_to_share_a_page(oauth: OAuthBridge) -> None:
    """A login that granted no Page connects nothing and says how to fix it."""
    oauth.meta.set_login_user("No Pages", pages=[])
    status, page = await oauth.login()
    assert status == 200
    assert "No Facebook Page was shared" in page
    assert "tick the Page" in (await oauth.wait_dms(2))[-1]
    assert await oauth.bot.store.pages() == []


async def test_page_without_instagram_is_skipped_with_the_fix(oauth: OAuthBridge) -> None:
    """Pages without an Instagram account are reported as skipped, with how to link them."""
    oauth.meta.set_login_user("Mixed", pages=[
        {"id": "401", "name": "No IG Page"},
        {"id": "402", "name": "IG Page",
         "instagram_business_account": {"id": "17841000000000402", "username": "igpage"}},
    ])
    status, page = await oauth.login()
    assert status == 200
    assert "Instagram connected" in page and "No IG Page" in page and "401" in page
    dm = (await oauth.wait_dms(2))[-1]
    assert "Skipped *No IG Page* (`401`)" in dm and "link the Page to Instagram" in dm
    assert [p.page_id for p in await oauth.bot.store.pages()] == ["402"]


async def test_only_pages_without_instagram_connect_nothing(oauth: OAuthBridge) -> None:
    """When no granted page has Instagram, nothing is connected and each is listed."""
    oauth.meta.set_login_user("Unlinked", pages=[{"id": "501", "name": "Plain Page"}])
    status, page = await oauth.login()
    assert status == 200
    assert "No Instagram account found" in page and "Plain Page" in page
    assert "Skipped *Plain Page*" in (await oauth.wait_dms(2))[-1]
    assert await oauth.bot.store.pages() == []
    assert oauth.meta.subscription("501") is None


async def test_two_pages_offer_a_choice_and_connect_only_the_chosen(oauth: OAuthBridge) -> None:
    """Several eligible pages: a form; posting it connects exactly the chosen page."""
    oauth.meta.set_login_user("Two Pages", pages=two_pages())
    status, page = await oauth.login()
    assert status == 200
    form = parse_form(page)
    assert form.action == "/oauth/select"
    assert sorted(form.radios) == ["301", "302"]
    assert set(form.hidden) == {"state"}
    assert oauth.meta.subscription("301") is None and oauth.meta.subscription("302") is None

    status, page = await oauth.select(form.hidden["state"], "302")
    assert status == 200 and "shopsouth" in page
    assert [p.page_id for p in await oauth.bot.store.pages()] == ["302"]
    assert oauth.meta.subscription("302") == ["feed"]
    assert oauth.meta.subscription("301") is None
    dms = await oauth.wait_dms(3)
    assert "choose one" in dms[-2] and "/instagram edit 302" in dms[-1]
    oauth.assert_every_token_call_proved()


async def test_replayed_select_form_is_refused(oauth: OAuthBridge) -> None:
    """The choice form works once: a replay (even naming the other page) gets 400."""
    oauth.meta.set_login_user("Two Pages", pages=two_pages())
    _, page = await oauth.login()
    state = parse_form(page).hidden["state"]
    assert (await oauth.select(state, "301"))[0] == 200
    calls = len(oauth.meta.calls())
    status, page = await oauth.select(state, "302")
    assert status == 400 and "cannot be used" in page
    assert len(oauth.meta.calls()) == calls
    assert [p.page_id for p in await oauth.bot.store.pages()] == ["301"]


async def test_forged_select_state_is_refused(oauth: OAuthBridge) -> None:
    """A select form whose state the bot never issued connects nothing."""
    status, _ = await oauth.select("made-up-state", DEFAULT_PAGE_ID)
    assert status == 400
    assert await oauth.bot.store.pages() == []


async def test_login_state_cannot_be_used_as_select_state(oauth: OAuthBridge) -> None:
    """States are typed: the login state from the link is no key to the choice form."""
    url = await oauth.authorize()
    status, _ = await oauth.select(_state_of(url), DEFAULT_PAGE_ID)
    assert status == 400
    assert oauth.graph_calls("/oauth/access_token") == []


async def test_cross_origin_select_is_refused_and_keeps_the_form_usable(
    oauth: OAuthBridge,
) -> None:
    """A POST from another origin (CSRF) is refused with 403 without burning the state."""
    oauth.meta.set_login_user("Two Pages", pages=two_pages())
    _, page = await oauth.login()
    state = parse_form(page).hidden["state"]
    status, _ = await oauth.select(state, "301", origin="https://evil.example")
    assert status == 403
    status, _ = await oauth.select(state, "301", origin="null")
    assert status == 403
    assert await oauth.bot.store.pages() == []
    status, _ = await oauth.select(state, "301", origin=oauth.base_url)
    assert status == 200


async def test_select_naming_an_unoffered_page_offers_the_choice_again(
    oauth: OAuthBridge,
) -> None:
    """A page id that was not offered connects nothing and re-renders a fresh form."""
    oauth.meta.set_login_user("Two Pages", pages=two_pages())
    _, page = await oauth.login()
    state = parse_form(page).hidden["state"]
    status, page = await oauth.select(state, "999")
    assert status == 400
    fresh = parse_form(page)
    assert sorted(fresh.radios) == ["301", "302"] and fresh.hidden["state"] != state
    assert (await oauth.select(fresh.hidden["state"], "301"))[0] == 200


async def test_expired_select_form_is_refused(oauth: OAuthBridge) -> None:
    """The choice form expires with its 10-minute state."""
    oauth.meta.set_login_user("Two Pages", pages=two_pages())
    _, page = await oauth.login()
    oauth.clock.advance(601)
    status, _ = await oauth.select(parse_form(page).hidden["state"], "301")
    assert status == 400
    assert await oauth.bot.store.pages() == []


async def test_reauthorize_updates_tokens_without_duplicating_and_clears_reauth(
    oauth: OAuthBridge,
) -> None:
    """Logging in again for a connected page renews its tokens, keeps its settings."""
    assert (await oauth.login())[0] == 200
    page = await oauth.bot.store.page(DEFAULT_PAGE_ID)
    assert page is not None
    old_token = page.page_token
    page.department_name, page.welcome_text = "Sales", "Hi!"
    await oauth.bot.store.save_page(page)
    oauth.meta.expire_token(DEFAULT_PAGE_ID)
    assert await mark_needs_reauth(oauth.bot.store, oauth.bot.notify_admins, DEFAULT_PAGE_ID)

    status, _ = await oauth.login()
    assert status == 200
    pages = await oauth.bot.store.pages()
    assert [p.page_id for p in pages] == [DEFAULT_PAGE_ID]
    page = pages[0]
    assert page.page_token != old_token
    assert not page.needs_reauth and not page.reauth_notified and page.subscribed
    assert (page.department_name, page.welcome_text) == ("Sales", "Hi!")
    assert "Re-authorized" in oauth.dms()[-1]


async def test_meta_refusing_the_code_gets_error_page_and_dm(oauth: OAuthBridge) -> None:
    """A failed code exchange shows what failed, by page and DM, and connects nothing."""
    oauth.meta.inject_errors("oauth", [100])
    status, page = await oauth.login()
    assert status == 502
    assert "Connecting Instagram failed" in page and "code 100" in page
    assert "Connecting Instagram failed" in (await oauth.wait_dms(2))[-1]
    assert await oauth.bot.store.pages() == []


async def test_install_failure_keeps_page_unsubscribed_with_retry_hint(
    oauth: OAuthBridge,
) -> None:
    """If subscribed_apps fails the page is saved unsubscribed and the admin told to retry."""
    oauth.meta.inject_errors("subscribed_apps", [200])
    status, page = await oauth.login()
    assert status == 502
    assert f"/instagram subscribe {DEFAULT_PAGE_ID}" in page
    stored = await oauth.bot.store.page(DEFAULT_PAGE_ID)
    assert stored is not None and not stored.subscribed
    assert f"/instagram subscribe {DEFAULT_PAGE_ID}" in (await oauth.wait_dms(2))[-1]


async def test_pages_have_strict_headers(oauth: OAuthBridge) -> None:
    """OAuth pages are never cached, framed, or allowed to load anything external."""
    async with oauth.http.get(f"{oauth.base_url}/oauth/callback?state=x") as resp:
        assert resp.status == 400
        assert resp.headers["Content-Type"].startswith("text/html")
        assert resp.headers["Cache-Control"] == "no-store"
        assert "default-src 'none'" in resp.headers["Content-Security-Policy"]
        assert resp.headers["X-Frame-Options"] == "DENY"


class _Checker(HTMLParser):
    """Balanced tags, one h1, lang set, labelled inputs, no external references."""

    VOID = frozenset({"meta", "input", "br", "img", "link", "hr"})

    def __init__(self) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.h1 = 0
        self.lang = False
        self.title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "html":
            self.lang = bool(a.get("lang"))
        if tag == "h1":
            self.h1 += 1
        if tag == "title":
            self.title = True
        if tag == "input" and a.get("type") == "radio" and "label" not in self.stack:
            self.errors.append("radio outside a label")
        for key in ("src", "href"):
            if a.get(key):
                self.errors.append(f"external reference {key}={a[key]}")
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unbalanced </{tag}> (open: {self.stack})")
        else:
            self.stack.pop()


async def test_every_page_is_valid_accessible_and_free_of_tokens(
    oauth: OAuthBridge, caplog: pytest.LogCaptureFixture
) -> None:
    """Across every outcome, pages are well-formed, labelled, self-contained and token-free."""
    caplog.set_level(logging.DEBUG)
    await oauth.login()  # success
    await oauth.login(approve=False)  # cancelled
    await oauth.get(f"{oauth.base_url}/oauth/callback?state=nope")  # invalid
    oauth.meta.set_login_user("Two Pages", pages=[*two_pages(), {"id": "9", "name": "<b>x"}])
    _, choice = await oauth.login()  # choice form, one skipped page with markup in its name
    await oauth.select(parse_form(choice).hidden["state"], "301")
    oauth.meta.set_login_user("None", pages=[])
    await oauth.login()

    tokens = [t for p in await oauth.bot.store.pages() for t in (p.page_token, p.user_token)]
    assert tokens
    for page in oauth.pages_seen:
        checker = _Checker()
        checker.feed(page)
        assert not checker.errors, checker.errors
        assert checker.h1 == 1 and checker.lang and checker.title and not checker.stack
        assert page.startswith("<!doctype html>")
        assert "<b>x" not in page
        assert not SANDBOX_TOKEN.search(page)
    texts = "\n".join(oauth.dms()) + caplog.text
    assert not SANDBOX_TOKEN.search(texts)
    for token in tokens:
        assert token not in texts


# -- Page subscription, granted permissions, Facebook Login for Business (issue 13) -------


async def test_subscription_uses_permitted_fields(oauth: OAuthBridge) -> None:
    """The Page is installed with feed (no pages_messaging needed) and read back."""
    status, page = await oauth.login()
    assert status == 200 and "Instagram connected" in page
    assert oauth.meta.subscription(DEFAULT_PAGE_ID) == ["feed"]
    calls = [(c["method"], c["status"]) for c in oauth.graph_calls("/subscribed_apps")]
    assert calls == [("POST", 200), ("GET", 200)]  # installed, then read back
    stored = await oauth.bot.store.page(DEFAULT_PAGE_ID)
    assert stored is not None and stored.subscribed
    dm = (await oauth.wait_dms(2))[-1]
    assert "Connected Instagram" in dm and "Page field `feed`" in dm


async def test_refused_subscription_is_reported_not_connected(oauth: OAuthBridge) -> None:
    """Meta refuses the install and lists none: the page is not bridged, and the DM says so."""
    assert (await oauth.login())[0] == 200
    oauth.meta.drop_subscription(DEFAULT_PAGE_ID)  # Meta removed it meanwhile
    refusal = ("(#200) To subscribe to the feed field, one of these permissions is needed:"
               " pages_manage_metadata")
    oauth.meta.inject_errors("subscribed_apps", [{"code": 200, "message": refusal}])
    status, page = await oauth.login()
    assert status == 502 and "not yet bridged" in page
    stored = await oauth.bot.store.page(DEFAULT_PAGE_ID)
    assert stored is not None and not stored.subscribed
    dm = oauth.dms()[-1]
    # Meta's words, escaped for markdown like every outside value.
    assert md(refusal) in dm and "not bridged" in dm and "Re-authorized" not in dm
    assert "earlier installation" not in dm


async def test_login_without_instagram_manage_messages_is_not_connected(
    oauth: OAuthBridge,
) -> None:
    """A declined permission connects nothing, names it, and DMs a rerequest link that works."""
    pages = [{"id": DEFAULT_PAGE_ID, "name": DEFAULT_PAGE_NAME,
              "instagram_business_account": {"id": "17841400000000001",
                                             "username": DEFAULT_IG_USERNAME}}]
    oauth.meta.set_login_user("Careful", pages=pages, decline=["instagram_manage_messages"])
    status, page = await oauth.login()
    assert status == 200 and "Permissions missing" in page
    assert "instagram_manage_messages" in page
    assert await oauth.bot.store.pages() == []
    assert oauth.meta.subscription(DEFAULT_PAGE_ID) is None
    dm = (await oauth.wait_dms(2))[-1]
    assert "`instagram_manage_messages`" in dm and "Connected" not in dm
    link = LINK.search(dm)
    assert link and parse_qs(urlsplit(link.group(0)).query)["auth_type"] == ["rerequest"]

    oauth.meta.set_login_user("Careful", pages=pages)  # this time they tick everything
    status, page = await oauth.get(oauth.meta.approve_url(link.group(0)))
    assert status == 200 and "Instagram connected" in page
    assert oauth.meta.subscription(DEFAULT_PAGE_ID) == ["feed"]


async def test_asset_picker_page_missing_from_accounts_is_connected(oauth: OAuthBridge) -> None:
    """A granted Page that /me/accounts leaves out is found through debug_token and connected."""
    oauth.meta.set_login_user("Picker", pages=two_pages()[:1], unlisted=["301"])
    status, page = await oauth.login()
    assert status == 200 and "Instagram connected" in page and "shopnorth" in page
    assert [p.page_id for p in await oauth.bot.store.pages()] == ["301"]
    assert oauth.meta.subscription("301") == ["feed"]


async def test_business_app_login_uses_config_id(business_oauth: OAuthBridge) -> None:
    """With login_config_id the link carries config_id, not scope, and the login connects."""
    url = await business_oauth.authorize()
    query = {k: v[0] for k, v in parse_qs(urlsplit(url).query).items()}
    assert query["config_id"] == CONFIG_ID and "scope" not in query
    assert query["response_type"] == "code" and query["override_default_response_type"] == "true"
    status, page = await business_oauth.get(business_oauth.meta.approve_url(url))
    assert status == 200 and "Instagram connected" in page
    assert business_oauth.meta.subscription(DEFAULT_PAGE_ID) == ["feed"]


async def test_scope_link_on_business_app_is_refused_by_meta(oauth: OAuthBridge) -> None:
    """Without login_config_id a Business-type app's dialog is 'not available' (why it exists)."""
    oauth.meta.set_app_type("business")
    with pytest.raises(ValueError, match="isn't available"):
        oauth.meta.approve_url(await oauth.authorize())


async def test_configuration_lacking_a_permission_names_it_and_the_configuration(
    business_oauth: OAuthBridge,
) -> None:
    """A Login for Business configuration without instagram_manage_messages connects nothing."""
    business_oauth.meta.add_login_configuration(
        CONFIG_ID, [s for s in SCOPES if s != "instagram_manage_messages"]
    )
    status, page = await business_oauth.login()
    assert status == 200 and "Permissions missing" in page
    dm = (await business_oauth.wait_dms(2))[-1]
    assert "`instagram_manage_messages`" in dm and f"`{CONFIG_ID}`" in dm
    assert await business_oauth.bot.store.pages() == []
