"""``/instagram edit <pageId> [<setting> <value…>]``: show or change a page's settings.

With only a page id it shows the settings and DMs a single-use link (and button) to the
settings form (:mod:`bot.settings_form`). Settings: ``department``, ``welcome``,
``finished`` and ``offline``; the value ``none`` clears one. The rules are
:mod:`bot.page_settings`, shared with the form. Changes apply to the next conversation
or message: the relay reads the page when it needs it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from bot import messages
from bot.page_settings import TEXT_SETTINGS, apply_department, apply_text
from bot.settings_form import SETTINGS_TTL, issue_link
from commands.base import Button, ButtonRow, Command, CommandContext, CommandError, UsageError
from commands.pageref import require_page
from storage.base import Page

log = logging.getLogger("commands")

SETTINGS = ("department", *TEXT_SETTINGS)


async def handle(ctx: CommandContext, args: Sequence[str]) -> None:
    if not args:
        raise UsageError("Give the page id (`/instagram pages` lists them).")
    page = await require_page(ctx.store, args[0])
    if len(args) == 1:
        url = await issue_link(ctx.store, ctx.config, ctx.issuer.user_id,
                               ctx.issuer.username, page.page_id)
        text = settings_text(page) + "\n" + messages.EDIT_FORM_LINK.format(
            url=url, minutes=int(SETTINGS_TTL // 60))
        await ctx.reply(text, [ButtonRow((Button(messages.EDIT_FORM_BUTTON, url=url),))])
        return
    setting = args[1].lower()
    if setting not in SETTINGS:
        raise UsageError(messages.EDIT_UNKNOWN_SETTING.format(setting=args[1]))
    value = " ".join(args[2:]).strip()
    if not value:
        raise UsageError(messages.EDIT_MISSING_VALUE.format(setting=setting))
    clear = value.lower() == "none"
    if setting == "department":
        departments = [] if clear else await _departments(ctx, page)
        reply = apply_department(page, departments, None if clear else value)
    else:
        reply = apply_text(page, setting, None if clear else value)
    await ctx.store.save_page(page)
    log.info("page %s: %s %s by %s", page.page_id, setting, "cleared" if clear else "changed",
             ctx.issuer.username)
    await ctx.reply(reply)


def settings_text(page: Page) -> str:
    """The page's current settings and how to change them."""

    def shown(text: str | None) -> str:
        return f"“{text}”" if text else messages.EDIT_UNSET

    department = page.department_name or page.department_id
    return messages.EDIT_SETTINGS.format(
        name=page.name,
        page_id=page.page_id,
        username=f", @{page.username}" if page.username else "",
        department=f"*{department}*" if department else messages.EDIT_UNSET,
        welcome=shown(page.welcome_text),
        finished=shown(page.finished_text),
        offline=shown(page.offline_text),
    )


async def _departments(ctx: CommandContext, page: Page) -> list[dict]:
    try:
        return await ctx.rest.departments()
    except Exception as exc:
        log.warning("could not list departments for edit of page %s: %s", page.page_id, exc)
        raise CommandError(f"I could not list the Omnichannel departments ({exc})") from None


command = Command(
    name="edit",
    summary="show a page's settings, or set its department, welcome, finished or offline text",
    usage="/instagram edit <pageId> [department|welcome|finished|offline <value…|none>]",
    handle=handle,
    verbatim_after=2,
)
