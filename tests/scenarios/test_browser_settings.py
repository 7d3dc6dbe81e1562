"""A real browser edits a page's settings through the form the edit DM links to."""

from __future__ import annotations

import re
from typing import Any

import pytest

from sandbox.meta import DEFAULT_PAGE_ID
from tests.scenarios.browser import ARTIFACTS, BROWSER
from tests.scenarios.oauth_harness import OAuthBridge

pytestmark = BROWSER
SETTINGS_LINK = re.compile(r"https?://\S+/settings/[\w-]+")


@pytest.fixture
async def link(oauth: OAuthBridge) -> str:
    """The default page connected, departments Sales and Care, a fresh settings link."""
    oauth.rc.create_department("Sales")
    oauth.rc.create_department("Care")
    status, _ = await oauth.login()
    assert status == 200
    before = len(oauth.dms())
    await oauth.command(f"/instagram edit {DEFAULT_PAGE_ID}")
    return SETTINGS_LINK.search((await oauth.wait_dms(before + 1))[-1]).group(0)


async def test_browser_edits_settings_with_live_byte_counter(
    oauth: OAuthBridge, link: str, browser_page: Any
) -> None:
    """Pick a department, type texts (the counter counts UTF-8 bytes), an over-limit text
    is refused with the reason, then save; the link does not open twice."""
    page = browser_page
    ARTIFACTS.mkdir(exist_ok=True)
    await page.goto(link)
    assert await page.text_content("h1") == "Settings of Sandbox Shop"
    await page.select_option("#department", label="Care")
    await page.fill("#welcome", "Héllo")  # é is two bytes
    assert await page.text_content("#welcome-count") == "6 / 1000 bytes"
    await page.fill("#offline", "€" * 334)  # 1002 bytes
    assert await page.text_content("#offline-count") == "1002 / 1000 bytes"
    assert await page.get_attribute("#offline", "aria-invalid") == "true"
    await page.screenshot(path=str(ARTIFACTS / "settings-form.png"), full_page=True)

    await page.get_by_role("button", name="Save").click()
    await page.wait_for_load_state()
    assert "1002 bytes" in await page.text_content("[role=alert]")
    assert (await oauth.bot.store.page(DEFAULT_PAGE_ID)).department_id is None
    await page.screenshot(path=str(ARTIFACTS / "settings-refused.png"), full_page=True)

    await page.fill("#offline", "We are away; we answer soon.")
    await page.get_by_role("button", name="Save").click()
    await page.wait_for_load_state()
    assert await page.text_content("h1") == "Settings saved"
    await page.screenshot(path=str(ARTIFACTS / "settings-saved.png"), full_page=True)
    saved = await oauth.bot.store.page(DEFAULT_PAGE_ID)
    assert (saved.department_name, saved.welcome_text, saved.offline_text) == (
        "Care", "Héllo", "We are away; we answer soon.")

    await page.goto(link)  # the DM'd link works once
    assert await page.text_content("h1") == "This link cannot be used"
