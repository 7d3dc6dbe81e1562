"""What to do when Meta answers 190 (token invalid, expired or revoked) for a page.

Meta never announces a dead token; we learn it from a 190 on whatever call comes next
(protocols §5.6). Any caller that catches :class:`bot.instagram.graph.GraphAuthError` for a page
awaits :func:`mark_needs_reauth`: the page is flagged and the admins are told once, with
the ``/instagram authorize`` hint, until a new login clears the flag.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Awaitable, Callable

from bot import messages
from storage.base import Store

log = logging.getLogger("bot.oauth")

NotifyAdmins = Callable[[str], Awaitable[None]]

# One lock per event loop: the read-check-write below spans awaits, and two relay
# workers hitting 190 on the same page at once must not both notify.
_locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
    weakref.WeakKeyDictionary()
)


def _lock() -> asyncio.Lock:
    loop = asyncio.get_running_loop()
    lock = _locks.get(loop)
    if lock is None:
        lock = _locks[loop] = asyncio.Lock()
    return lock


async def mark_needs_reauth(store: Store, notify_admins: NotifyAdmins, page_id: str) -> bool:
    """Flag ``page_id`` as needing re-authorization; DM the admins the first time.

    Returns True when this call notified the admins. Safe to call for every 190: later
    calls (and calls for unknown pages) do nothing. If the DM fails the page stays
    flagged but un-notified, so the next 190 tries to tell the admins again.
    """
    async with _lock():
        page = await store.page(page_id)
        if page is None:
            log.warning("190 for unknown page %s; nothing to flag", page_id)
            return False
        if page.needs_reauth and page.reauth_notified:
            return False
        if not page.needs_reauth:
            page.needs_reauth = True
            await store.save_page(page)
            log.warning("page %s needs re-authorization (Graph error 190)", page_id)
        text = messages.render(messages.REAUTH_NEEDED,
            name=page.name, page_id=page.page_id, username=page.username or page.instagram_id
        )
        try:
            await notify_admins(text)
        except Exception:
            log.exception("could not tell the admins that page %s needs re-authorization", page_id)
            return False
        # Re-read: the DM took time and the page may have changed (or been re-authorized).
        current = await store.page(page_id)
        if current is not None and current.needs_reauth:
            current.reauth_notified = True
            await store.save_page(current)
        return True
