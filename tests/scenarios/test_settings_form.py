"""The page-settings form (``/settings/<state>``) over HTTP: single use, admin-bound,
the edit command's rules, a summary DM, and the OAuth pages' protections."""

from __future__ import annotations

import re
import time

import pytest

from sandbox.meta import DEFAULT_PAGE_ID
from tests.scenarios.harness import ADMIN
from tests.scenarios.oauth_harness import SANDBOX_TOKEN, OAuthBridge

SETTINGS_LINK = re.compile(r"https?://\S+/settings/[\w-]+")
ACTION = re.compile(r'<form method="post" action="(/settings/[\w-]+)"')


@pytest.fixture
async def connected(oauth: OAuthBridge) -> OAuthBridge:
    """The bot with the default page connected; departments Sales and Care exist."""
    oauth.rc.create_department("Sales")
    oauth.rc.create_department("Care")
    status, _ = await oauth.login()
    assert status == 200
    return oauth


async def settings_link(oauth: OAuthBridge) -> str:
    """``/instagram edit <pageId>`` as the admin; the form link from the DM."""
    before = len(oauth.dms())
    await oauth.command(f"/instagram edit {DEFAULT_PAGE_ID}")
    text = (await oauth.wait_dms(before + 1))[-1]
    match = SETTINGS_LINK.search(text)
    assert match, text
    return match.group(0)


async def open_form(oauth: OAuthBridge) -> tuple[str, str]:
    """Open a fresh link; the form page and its action URL."""
    status, page = await oauth.get(await settings_link(oauth))
    assert status == 200, page
    return page, oauth.base_url + ACTION.search(page).group(1)


def department_id(oauth: OAuthBridge, name: str) -> str:
    return next(d["_id"] for d in oauth.rc.departments() if d["name"] == name)


async def post(oauth: OAuthBridge, url: str, fields: dict[str, str],
               origin: str | None = None) -> tuple[int, str]:
    headers = {"Origin": origin} if origin else {}
    async with oauth.http.post(url, data=fields, headers=headers) as resp:
        return resp.status, await resp.text()


async def test_form_saves_department_and_texts_like_the_edit_command(connected: OAuthBridge):
    """Saving routes the page to the chosen department, sets the texts, DMs a summary."""
    oauth = connected
    page, action = await open_form(oauth)
    assert "Sales" in page and "Care" in page and 'name="welcome"' in page
    before = len(oauth.dms())
    status, done = await post(oauth, action, {
        "department": department_id(oauth, "Care"), "welcome": "Hi! It's us.",
        "finished": "Thanks!", "offline": "",
    }, origin=oauth.base_url)
    assert status == 200, done
    assert "Settings saved" in done
    saved = await oauth.bot.store.page(DEFAULT_PAGE_ID)
    assert saved.department_name == "Care"
    assert saved.welcome_text == "Hi! It's us." and saved.finished_text == "Thanks!"
    assert saved.offline_text is None
    summary = (await oauth.wait_dms(before + 1))[-1]
    assert "*Care*" in summary and "Hi! It's us." in summary


async def test_used_form_and_used_link_change_nothing(connected: OAuthBridge):
    """A form posted twice, or a link opened twice, answers 4xx and changes nothing."""
    oauth = connected
    link = await settings_link(oauth)
    status, page = await oauth.get(link)
    assert status == 200
    action = oauth.base_url + ACTION.search(page).group(1)
    assert (await post(oauth, action, {"welcome": "first"}))[0] == 200
    status, _ = await post(oauth, action, {"welcome": "replayed"})
    assert 400 <= status < 500
    status, again = await oauth.get(link)
    assert 400 <= status < 500 and "cannot be used" in again
    assert (await oauth.bot.store.page(DEFAULT_PAGE_ID)).welcome_text == "first"


async def test_expired_link_is_refused(connected: OAuthBridge):
    """A link older than 10 minutes answers 4xx."""
    oauth = connected
    link = await settings_link(oauth)
    oauth.clock.advance(601)
    status, page = await oauth.get(link)
    assert 400 <= status < 500 and "cannot be used" in page


async def test_over_limit_text_is_refused_and_nothing_saved(connected: OAuthBridge):
    """A text over 1000 bytes gets the form back with the reason; nothing is saved, and the
    fresh form keeps what was typed."""
    oauth = connected
    _, action = await open_form(oauth)
    too_long = "é" * 501  # 1002 bytes, 501 characters
    status, page = await post(oauth, action, {"department": department_id(oauth, "Sales"),
                                              "welcome": too_long})
    assert status == 400
    assert "1002 bytes" in page and "at most 1000" in page
    assert too_long in page and 'role="alert"' in page
    saved = await oauth.bot.store.page(DEFAULT_PAGE_ID)
    assert saved.welcome_text is None and saved.department_id is None
    retry = oauth.base_url + ACTION.search(page).group(1)
    assert (await post(oauth, retry, {"welcome": "short"}))[0] == 200


async def test_unknown_department_is_refused(connected: OAuthBridge):
    """A department id that does not exist (deleted meanwhile, or forged) is refused."""
    oauth = connected
    _, action = await open_form(oauth)
    status, page = await post(oauth, action, {"department": "no-such-department"})
    assert status == 400 and "no Omnichannel department" in page
    assert (await oauth.bot.store.page(DEFAULT_PAGE_ID)).department_id is None


async def test_cross_origin_post_is_refused(connected: OAuthBridge):
    """A POST from another site (CSRF) is refused and changes nothing."""
    oauth = connected
    _, action = await open_form(oauth)
    status, _ = await post(oauth, action, {"welcome": "forged"}, origin="https://evil.example")
    assert status == 403
    assert (await oauth.bot.store.page(DEFAULT_PAGE_ID)).welcome_text is None


async def test_demoted_admin_cannot_use_a_link_issued_before(connected: OAuthBridge, mocker):
    """The link is bound to an admin; once they lose the role it no longer opens."""
    oauth = connected
    link = await settings_link(oauth)
    oauth.rc.set_role(ADMIN, ["user"])
    # The REST client's clock, past its roles cache (the only clock it reads).
    mocker.patch.object(oauth.bot.rest, "_clock", lambda: time.time() + 3600)
    status, page = await oauth.get(link)
    assert status == 403 and "Not allowed" in page


async def test_form_pages_carry_no_token_and_forbid_framing(connected: OAuthBridge):
    """The form and its answers hold no access token; CSP allows only its own nonce'd script."""
    oauth = connected
    link = await settings_link(oauth)
    async with oauth.http.get(link) as resp:
        page = await resp.text()
        headers = resp.headers
    assert not SANDBOX_TOKEN.search(page)
    assert headers["X-Frame-Options"] == "DENY"
    csp = headers["Content-Security-Policy"]
    assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp
    nonce = re.search(r"script-src 'nonce-([\w-]+)'", csp).group(1)
    assert f'<script nonce="{nonce}">' in page
    assert "http://" not in page.split("<form")[1].split("</form>")[0].replace(
        oauth.base_url, "")  # no external asset inside the form
    assert headers["Cache-Control"] == "no-store"


async def test_page_texts_are_escaped_in_the_form(connected: OAuthBridge):
    """Texts are shown as text: markup in a welcome text cannot inject into the page."""
    oauth = connected
    page = await oauth.bot.store.page(DEFAULT_PAGE_ID)
    page.welcome_text = '</textarea><script>alert(1)</script>'
    await oauth.bot.store.save_page(page)
    form, _ = await open_form(oauth)
    assert "<script>alert(1)</script>" not in form
    assert "&lt;/textarea&gt;&lt;script&gt;" in form
