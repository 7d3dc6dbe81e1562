"""OAuth state: forged, replayed, expired or cross-used states change nothing and call
nobody; pages and DMs never carry a token; names from Meta cannot inject HTML."""

from __future__ import annotations

import re
from urllib.parse import parse_qs, urlsplit

from bot.instagram.oauth import STATE_TTL
from tests.scenarios.harness import ADMIN
from tests.scenarios.oauth_harness import SANDBOX_TOKEN, OAuthBridge, parse_form, two_pages


def _state_of(dialog_url: str) -> str:
    return parse_qs(urlsplit(dialog_url).query)["state"][0]


def _callback_url(bridge: OAuthBridge, state: str, code: str = "forged-code") -> str:
    return f"{bridge.base_url}/oauth/callback?state={state}&code={code}"


async def _nothing_connected(bridge: OAuthBridge) -> None:
    assert await bridge.bot.store.pages() == []
    assert bridge.graph_calls("/oauth/access_token") == []


async def test_forged_state_is_refused_without_calling_meta(oauth: OAuthBridge) -> None:
    """A state the bot never issued gets 400 and the code is never exchanged."""
    await oauth.authorize()  # a real state exists, but we do not use it
    for forged in ("x", "A" * 43, "", "%00", "../../oauth/callback", "state\r\nSet-Cookie: a=b"):
        status, page = await oauth.get(_callback_url(oauth, forged))
        assert status == 400, forged
        assert "cannot be used" in page
    await _nothing_connected(oauth)


async def test_replayed_login_state_is_refused(oauth: OAuthBridge) -> None:
    """The Meta redirect works once; replaying the same URL (state and code) gets 400."""
    oauth.meta.set_login_user("Solo", pages=two_pages()[:1])
    url = await oauth.authorize()
    location = oauth.meta.approve_url(url)
    status, _ = await oauth.get(location)
    assert status == 200
    calls = len(oauth.meta.calls())
    status, page = await oauth.get(location)
    assert status == 400 and "cannot be used" in page
    assert len(oauth.meta.calls()) == calls  # the replay reached nobody


async def test_expired_login_state_is_refused(oauth: OAuthBridge) -> None:
    """A login link older than its lifetime is refused even with a valid code."""
    oauth.meta.set_login_user("Late", pages=two_pages()[:1])
    url = await oauth.authorize()
    location = oauth.meta.approve_url(url)
    oauth.clock.advance(STATE_TTL + 1)
    status, _ = await oauth.get(location)
    assert status == 400
    await _nothing_connected(oauth)


async def test_login_state_cannot_be_used_as_a_select_state(oauth: OAuthBridge) -> None:
    """The login link's state posted to /oauth/select is refused, and the link still works
    afterwards only for its own purpose (it is not consumed by the wrong kind either)."""
    oauth.meta.set_login_user("Mixer", pages=two_pages())
    url = await oauth.authorize()
    state = _state_of(url)
    status, _ = await oauth.select(state, "301")
    assert status == 400
    assert await oauth.bot.store.pages() == []
    status, page = await oauth.get(oauth.meta.approve_url(url))  # still a valid login link
    assert status == 200
    select_state = parse_form(page).hidden["state"]
    status, _ = await oauth.get(_callback_url(oauth, select_state))  # and not the reverse
    assert status == 400
    assert oauth.graph_calls("/oauth/access_token") and await oauth.bot.store.pages() == []


async def test_select_form_replay_and_forgery_are_refused(oauth: OAuthBridge) -> None:
    """The page-choice form works once; a replay, a forged state, a page not offered or a
    cross-site POST connects nothing more."""
    oauth.meta.set_login_user("Two Pages", pages=two_pages())
    status, page = await oauth.login()
    assert status == 200
    state = parse_form(page).hidden["state"]

    status, _ = await oauth.select("forged-" + state, "301")
    assert status == 400
    status, _ = await oauth.select(state, "301", origin="https://evil.example")
    assert status == 403
    status, again = await oauth.select(state, "999")  # not offered: a NEW form, old state used
    assert status == 400
    new_state = parse_form(again).hidden["state"]
    assert new_state != state
    status, _ = await oauth.select(state, "301")  # the old state is spent
    assert status == 400
    assert await oauth.bot.store.pages() == []

    status, _ = await oauth.select(new_state, "302")
    assert status == 200
    status, _ = await oauth.select(new_state, "301")  # replay of a used form
    assert status == 400
    assert [p.page_id for p in await oauth.bot.store.pages()] == ["302"]


async def test_login_state_is_bound_to_the_admin_who_asked(oauth: OAuthBridge) -> None:
    """The outcome DM goes to the admin whose /instagram authorize issued the state."""
    oauth.meta.set_login_user("Solo", pages=two_pages()[:1])
    await oauth.login()
    texts = await oauth.wait_dms(2)
    assert "Connected Instagram" in texts[-1]
    page = await oauth.bot.store.page("301")
    assert page is not None and page.owner_id == oauth.admin_id


async def test_pages_and_dms_carry_no_token_and_escape_names(oauth: OAuthBridge) -> None:
    """Page names and usernames from Meta are HTML-escaped in every page; no page or DM
    contains a user or page token; pages forbid framing and caching."""
    evil = "<script>alert(1)</script>"
    pages = [
        {"id": "301", "name": f"Shop {evil}",
         "instagram_business_account": {"id": "17841000000000301",
                                        "username": 'north"><img src=x onerror=alert(1)>'}},
        {"id": "302", "name": "Shop & <b>South</b>",
         "instagram_business_account": {"id": "17841000000000302", "username": "south"}},
        {"id": "303", "name": f"Unlinked {evil}"},
    ]
    oauth.meta.set_login_user("Evil Names", pages=pages)
    status, page = await oauth.login()
    assert status == 200
    status, done = await oauth.select(parse_form(page).hidden["state"], "301")
    assert status == 200
    for html in oauth.pages_seen:
        assert "<script>" not in html and "<img" not in html and "<b>South" not in html
        assert SANDBOX_TOKEN.search(html) is None
    assert "&lt;script&gt;" in done
    for text in oauth.dms():
        assert SANDBOX_TOKEN.search(text) is None


async def test_oauth_pages_send_protective_headers(oauth: OAuthBridge) -> None:
    """Every OAuth page is no-store, unframeable, nosniff, with a CSP allowing no script."""
    async with oauth.http.get(_callback_url(oauth, "nope")) as resp:
        headers = resp.headers
    assert headers["Cache-Control"] == "no-store"
    assert headers["X-Frame-Options"] == "DENY"
    assert headers["X-Content-Type-Options"] == "nosniff"
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "script-src" not in csp
    assert re.search(r"frame-ancestors 'none'", csp)


async def test_login_link_of_a_demoted_admin_connects_nothing(oauth: OAuthBridge) -> None:
    """An admin asks for a link, loses the admin role (inside the roles cache's life),
    then completes the Meta login: the callback refuses and no page is connected."""
    oauth.meta.set_login_user("Owner", pages=two_pages()[:1])
    url = await oauth.authorize()
    assert await oauth.bot.is_admin(oauth.rc.user_id(ADMIN))  # roles now cached as admin
    oauth.rc.set_role(ADMIN, ["user"])
    status, page = await oauth.get(oauth.meta.approve_url(url))
    assert status == 403 and "no longer an administrator" in page
    assert await oauth.bot.store.pages() == []
