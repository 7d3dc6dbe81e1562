"""Shared by the commands that take a ``<pageId>``: find it or say which ids exist."""

from __future__ import annotations

from collections.abc import Sequence

from bot import messages
from commands.base import UsageError
from storage.base import Page, Store


def one_page_id(args: Sequence[str]) -> str:
    """The single ``<pageId>`` argument, or a UsageError."""
    if len(args) != 1:
        raise UsageError("Give exactly one page id (`/instagram pages` lists them).")
    return args[0]


async def require_page(store: Store, page_id: str) -> Page:
    """The connected page ``page_id``, or a UsageError listing the known ids."""
    page = await store.page(page_id)
    if page is not None:
        return page
    known = sorted(p.page_id for p in await store.pages())
    if not known:
        raise UsageError(messages.render(messages.UNKNOWN_PAGE_NONE, page_id=page_id))
    raise UsageError(
        messages.render(messages.UNKNOWN_PAGE, page_id=page_id, known=messages.Markup(
            ", ".join(messages.render(messages.CODE, value=k) for k in known)))
    )
