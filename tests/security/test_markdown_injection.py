"""Names and arguments from outside cannot write markup into the bot's DMs and notes."""

from __future__ import annotations

from typing import Any

from tests.scenarios.oauth_harness import OAuthBridge

EVIL = "Shop [Re-authorize here](https://evil.example) *urgent* `x"


def _page(name: str, username: str = "shop_north") -> list[dict[str, Any]]:
    return [{"id": "301", "name": name,
             "instagram_business_account": {"id": "17841000000000301", "username": username}}]


async def test_page_name_with_a_link_is_no_link_in_the_admins_dm(oauth: OAuthBridge) -> None:
    """A Facebook Page named like a markdown link is connected; the DM and ``pages``
    show the name as text: no ``[label](url)``, no emphasis, no broken code span."""
    oauth.meta.set_login_user("Owner", pages=_page(EVIL))
    status, _ = await oauth.login()
    assert status == 200
    await oauth.command("/instagram pages")
    texts = oauth.dms()[-2:]
    assert len(texts) == 2
    for text in texts:
        assert "[Re-authorize here](" not in text, text
        assert "]\u200b(https://evil.example)" in text
        assert "\\*urgent\\*" in text
    # Inside a code span nothing escapes with a backslash: the backtick is replaced.
    await oauth.command("/instagram edit 30`1 welcome hi")
    reply = oauth.dms()[-1]
    assert "`30ˋ1`" in reply, reply


async def test_display_name_with_a_mention_pings_nobody_in_a_note() -> None:
    """A visitor named ``@all`` appears in notes as ``@\u200ball`` (no mention)."""
    from bot.messages import OUTBOUND_WINDOW_EXPIRED, render

    note = render(OUTBOUND_WINDOW_EXPIRED, visitor="@all [x](https://e)", error="",
                  partial="")
    assert "@all" not in note and "@\u200ball" in note and "](" not in note
