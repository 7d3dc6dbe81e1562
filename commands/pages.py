"""``/instagram pages``: the connected pages and their state."""

from __future__ import annotations

import time
from collections.abc import Sequence
from datetime import UTC, datetime

from bot import messages
from bot.contacts import INCLUDED_CONTACTS, month_start
from commands.base import Button, ButtonRow, Command, CommandContext, UsageError
from storage.base import Page, SetAsideItem


async def handle(ctx: CommandContext, args: Sequence[str]) -> None:
    if args:
        raise UsageError("`pages` takes no arguments.")
    pages = sorted(await ctx.store.pages(), key=lambda p: (p.name.lower(), p.page_id))
    if not pages:
        await ctx.reply(messages.PAGES_NONE)
        return
    lines = [messages.render(messages.PAGES_HEADER, count=len(pages))]
    rows = [page_buttons(page) for page in pages]
    visitors = await ctx.store.visitors_since(month_start(time.time()))
    set_aside: dict[str, list[SetAsideItem]] = {}
    for kept in await ctx.store.set_aside_items():
        set_aside.setdefault(kept.page_id, []).append(kept)
    for page in pages:
        line = messages.render(messages.PAGES_LINE,
            page_id=page.page_id,
            name=page.name,
            username=page.username or "?",
            department=page.department_name or page.department_id or "none",
            subscribed="yes" if page.subscribed else "no",
        )
        if page.route == "instagram":
            until = time.strftime("%Y-%m-%d", time.gmtime(page.token_expires_at))
            line += messages.render(messages.PAGES_ROUTE_INSTAGRAM, until=until)
        line += messages.render(messages.PAGES_VISITORS, count=visitors.get(page.page_id, 0))
        if page.needs_reauth:
            line += messages.PAGES_NEEDS_REAUTH
        kept = set_aside.get(page.page_id)
        if kept:
            line += messages.render(messages.PAGES_SET_ASIDE, count=len(kept),
                                    reason=kept[-1].reason)
        line += await _reconcile_suffix(ctx, page.page_id)
        lines.append(line)
    total = sum(visitors.values())
    lines.append(messages.render(messages.PAGES_CONTACTS, total=total, included=INCLUDED_CONTACTS))
    await ctx.reply("\n".join(lines), rows)


def page_buttons(page: Page) -> ButtonRow:
    """Edit, and Subscribe or Unsubscribe, for one page (a click posts the command)."""
    if page.subscribed:
        toggle = Button(messages.PAGES_BUTTON_UNSUBSCRIBE,
                        command=f"instagram unsubscribe {page.page_id}")
    else:
        toggle = Button(messages.PAGES_BUTTON_SUBSCRIBE,
                        command=f"instagram subscribe {page.page_id}")
    edit = Button(messages.PAGES_BUTTON_EDIT, command=f"instagram edit {page.page_id}")
    username = f" (@{page.username})" if page.username else ""
    return ButtonRow((edit, toggle), title=f"{page.name}{username}")


async def _reconcile_suffix(ctx: CommandContext, page_id: str) -> str:
    """What reconciliation did for the page (bot.relay.backfill marks); "" if nothing."""
    counts = {what: await ctx.store.mark(f"reconcile:{page_id}:{what}")
              for what in ("settled", "unknown", "backfilled", "last_backfill")}
    if not any(counts.values()):
        return ""
    last = counts["last_backfill"]
    when = (datetime.fromtimestamp(last, tz=UTC).strftime("%Y-%m-%d %H:%M UTC")
            if last else "never")
    return messages.PAGES_RECONCILE.format(
        settled=int(counts["settled"] or 0), unknown=int(counts["unknown"] or 0),
        backfilled=int(counts["backfilled"] or 0), last=when,
    )


command = Command(
    name="pages",
    summary="list the connected pages: id, name, @username, department, subscribed",
    usage="/instagram pages",
    handle=handle,
)
