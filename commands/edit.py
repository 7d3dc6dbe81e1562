"""``/instagram edit <pageId> [<setting> <value…>]``: show or change a page's settings.

Settings: ``department`` (must exist in Omnichannel; its ``_id`` is stored, its name
shown), ``welcome``, ``finished`` and ``offline`` texts (each at most 1000 UTF-8 bytes,
Instagram's limit for one message). The value ``none`` clears a setting. Changes apply
to the next conversation or message: the relay reads the page when it needs it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from bot import messages
from commands.base import Command, CommandContext, CommandError, UsageError
from commands.pageref import require_page
from storage.base import Page

log = logging.getLogger("commands")

#: Instagram accepts at most this many UTF-8 bytes in one text message.
MAX_TEXT_BYTES = 1000
TEXT_SETTINGS = {"welcome": "welcome_text", "finished": "finished_text", "offline": "offline_text"}
SETTINGS = ("department", *TEXT_SETTINGS)


async def handle(ctx: CommandContext, args: Sequence[str]) -> None:
    if not args:
        raise UsageError("Give the page id (`/instagram pages` lists them).")
    page = await require_page(ctx.store, args[0])
    if len(args) == 1:
        await ctx.reply(settings_text(page))
        return
    setting = args[1].lower()
    if setting not in SETTINGS:
        raise UsageError(messages.EDIT_UNKNOWN_SETTING.format(setting=args[1]))
    value = " ".join(args[2:]).strip()
    if not value:
        raise UsageError(messages.EDIT_MISSING_VALUE.format(setting=setting))
    clear = value.lower() == "none"
    if setting == "department":
        reply = await _set_department(ctx, page, None if clear else value)
    else:
        reply = _set_text(page, setting, None if clear else value)
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


async def _set_department(ctx: CommandContext, page: Page, wanted: str | None) -> str:
    if wanted is None:
        page.department_id = page.department_name = None
        return messages.EDIT_DEPARTMENT_CLEARED.format(name=page.name)
    try:
        departments = await ctx.rest.departments()
    except Exception as exc:
        log.warning("could not list departments for edit of page %s: %s", page.page_id, exc)
        raise CommandError(f"I could not list the Omnichannel departments ({exc})") from None
    found = find_department(departments, wanted)
    if found is None:
        names = sorted(str(d.get("name")) for d in departments if d.get("name"))
        if not names:
            raise UsageError(messages.EDIT_NO_DEPARTMENTS.format(name=wanted))
        known = ", ".join(f"`{n}`" for n in names)
        raise UsageError(messages.EDIT_UNKNOWN_DEPARTMENT.format(name=wanted, known=known))
    page.department_id = str(found["_id"])
    page.department_name = str(found.get("name") or found["_id"])
    return messages.EDIT_DEPARTMENT_SET.format(name=page.name, department=page.department_name)


def find_department(departments: Sequence[dict], wanted: str) -> dict | None:
    """The department named ``wanted`` (exact, then case-insensitive) or with that ``_id``."""
    candidates = [d for d in departments if isinstance(d, dict) and d.get("_id")]
    for match in (
        lambda d: d.get("name") == wanted,
        lambda d: str(d.get("name", "")).casefold() == wanted.casefold(),
        lambda d: d.get("_id") == wanted,
    ):
        hits = [d for d in candidates if match(d)]
        if hits:
            return hits[0]
    return None


def _set_text(page: Page, setting: str, text: str | None) -> str:
    attribute = TEXT_SETTINGS[setting]
    if text is None:
        setattr(page, attribute, None)
        return messages.EDIT_TEXT_CLEARED.format(name=page.name, setting=setting)
    size = len(text.encode("utf-8"))
    if size > MAX_TEXT_BYTES:
        raise UsageError(
            messages.EDIT_TOO_LONG.format(setting=setting, size=size, limit=MAX_TEXT_BYTES)
        )
    setattr(page, attribute, text)
    return messages.EDIT_TEXT_SET.format(name=page.name, setting=setting, text=text)


command = Command(
    name="edit",
    summary="show a page's settings, or set its department, welcome, finished or offline text",
    usage="/instagram edit <pageId> [department|welcome|finished|offline <value…|none>]",
    handle=handle,
    verbatim_after=2,
)
