"""A real browser connects an Instagram account with Instagram Login (no Facebook Page)."""

from __future__ import annotations

from typing import Any

from tests.scenarios.browser import ARTIFACTS, BROWSER
from tests.scenarios.oauth_harness import OAuthBridge
from tests.scenarios.test_instagram_login import IG_ID, authorize_links, ig  # noqa: F401

pytestmark = BROWSER


async def test_browser_logs_in_with_instagram(ig: OAuthBridge, browser_page: Any) -> None:  # noqa: F811
    """From the DM'd Instagram link, "Allow" on Instagram's page lands on the bot's
    success page (Meta's ``#_`` and all) and the account is connected and subscribed."""
    _, link, _ = await authorize_links(ig)
    await browser_page.goto(link)
    await browser_page.click("#allow")
    await browser_page.wait_for_url(f"{ig.base_url}/oauth/instagram/callback*")
    assert browser_page.url.endswith("#_")
    assert await browser_page.text_content("h1") == "Instagram connected"
    assert "@nopageshop" in await browser_page.content()
    ARTIFACTS.mkdir(exist_ok=True)
    await browser_page.screenshot(path=str(ARTIFACTS / "instagram-login-connected.png"))
    page = await ig.bot.store.page(IG_ID)
    assert page is not None and page.subscribed and page.route == "instagram"
