"""A real browser connects an Instagram account: DM'd link → Meta dialog → bot's pages."""

from __future__ import annotations

from typing import Any

from sandbox.meta import DEFAULT_IG_USERNAME, DEFAULT_PAGE_ID
from tests.scenarios.browser import BROWSER
from tests.scenarios.oauth_harness import (
    SANDBOX_TOKEN,
    OAuthBridge,
    two_pages,
)

pytestmark = BROWSER


async def test_browser_follows_dm_link_through_dialog_to_success(
    oauth: OAuthBridge, browser_page: Any
) -> None:
    """From the DM'd link, 'Continue' in the dialog lands on the bot's success page."""
    link = await oauth.authorize()
    await browser_page.goto(link)
    await browser_page.click("#continue")
    await browser_page.wait_for_url(f"{oauth.base_url}/oauth/callback*")
    heading = await browser_page.text_content("h1")
    assert heading == "Instagram connected"
    body = await browser_page.content()
    assert f"@{DEFAULT_IG_USERNAME}" in body
    assert not SANDBOX_TOKEN.search(body)

    page = await oauth.bot.store.page(DEFAULT_PAGE_ID)
    assert page is not None and page.subscribed
    assert f"/instagram edit {DEFAULT_PAGE_ID}" in (await oauth.wait_dms(2))[-1]
    oauth.assert_every_token_call_proved()


async def test_browser_chooses_one_of_two_pages(oauth: OAuthBridge, browser_page: Any) -> None:
    """With two eligible pages the browser gets the choice form and connects the chosen one."""
    oauth.meta.set_login_user("Two Pages", pages=two_pages())
    await browser_page.goto(await oauth.authorize())
    await browser_page.click("#continue")
    await browser_page.wait_for_url(f"{oauth.base_url}/oauth/callback*")
    assert await browser_page.text_content("h1") == "Choose the Instagram account"

    await browser_page.get_by_label("Shop South", exact=False).check()
    await browser_page.get_by_role("button", name="Connect").click()
    await browser_page.wait_for_url(f"{oauth.base_url}/oauth/select")
    assert await browser_page.text_content("h1") == "Instagram connected"
    assert [p.page_id for p in await oauth.bot.store.pages()] == ["302"]

    # Back: the callback page is no-store, so the browser asks again with the used state.
    await browser_page.go_back()
    assert await browser_page.text_content("h1") == "This link cannot be used"
    assert [p.page_id for p in await oauth.bot.store.pages()] == ["302"]


async def test_browser_connects_through_login_for_business(
    business_oauth: OAuthBridge, browser_page: Any
) -> None:
    """A Business-type app: the config_id link opens the dialog, Continue connects the page."""
    await browser_page.goto(await business_oauth.authorize())
    await browser_page.click("#continue")
    await browser_page.wait_for_url(f"{business_oauth.base_url}/oauth/callback*")
    assert await browser_page.text_content("h1") == "Instagram connected"
    page = await business_oauth.bot.store.page(DEFAULT_PAGE_ID)
    assert page is not None and page.subscribed
    assert business_oauth.meta.subscription(DEFAULT_PAGE_ID) == ["feed"]
