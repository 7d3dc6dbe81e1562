"""A page's settings as the ``edit`` command and the settings form change them.

One set of rules for both doors: a department must exist in Omnichannel (its ``_id`` is
stored, its name shown); each text is at most 1000 UTF-8 bytes (Instagram's limit for
one message); None clears a setting. A refusal is a :class:`SettingError` whose message
is the sentence to show.
"""

from __future__ import annotations

from collections.abc import Sequence

from bot import messages
from commands.base import UsageError
from storage.base import Page

#: Instagram accepts at most this many UTF-8 bytes in one text message.
MAX_TEXT_BYTES = 1000
TEXT_SETTINGS = {"welcome": "welcome_text", "finished": "finished_text", "offline": "offline_text"}


class SettingError(UsageError):
    """A value the page's settings refuse; the message says why (shown as is)."""


def apply_department(page: Page, departments: Sequence[dict], wanted: str | None) -> str:
    """Route ``page`` to the department ``wanted`` (name or id; None clears); the reply.

    Raises :class:`SettingError` when no department of ``departments`` matches.
    """
    if wanted is None:
        page.department_id = page.department_name = None
        return messages.EDIT_DEPARTMENT_CLEARED.format(name=page.name)
    found = find_department(departments, wanted)
    if found is None:
        names = sorted(str(d.get("name")) for d in departments if d.get("name"))
        if not names:
            raise SettingError(messages.EDIT_NO_DEPARTMENTS.format(name=wanted))
        known = ", ".join(f"`{n}`" for n in names)
        raise SettingError(messages.EDIT_UNKNOWN_DEPARTMENT.format(name=wanted, known=known))
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


def apply_text(page: Page, setting: str, text: str | None) -> str:
    """Set (or, with None, clear) the ``welcome``/``finished``/``offline`` text; the reply.

    Raises :class:`SettingError` for a text over Instagram's 1000 bytes.
    """
    attribute = TEXT_SETTINGS[setting]
    if text is None:
        setattr(page, attribute, None)
        return messages.EDIT_TEXT_CLEARED.format(name=page.name, setting=setting)
    size = len(text.encode("utf-8"))
    if size > MAX_TEXT_BYTES:
        raise SettingError(
            messages.EDIT_TOO_LONG.format(setting=setting, size=size, limit=MAX_TEXT_BYTES)
        )
    setattr(page, attribute, text)
    return messages.EDIT_TEXT_SET.format(name=page.name, setting=setting, text=text)
