"""``/instagram pages``: the connected pages and their state."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime

from bot import messages
from commands.base import Command, CommandContext, UsageError
from storage.base import SetAsideItem


async def handle(ctx: CommandContext, args: Sequence[str]) -> None:
    if args:
        raise UsageError("`pages` takes no arguments.")
    pages = sorted(await ctx.store.pages(), key=lambda p: (p.name.lower(), p.page_id))
    if not pages:
        await ctx.reply(messages.PAGES_NONE)
        return
    lines = [messages.PAGES_HEADER.format(count=len(pages))]
    set_aside: dict[str, list[SetAsideItem]] = {}
    for kept in await ctx.store.set_aside_items():
        set_aside.setdefault(kept.page_id, []).append(kept)
    for page in pages:
        line = messages.PAGES_LINE.format(
            page_id=page.page_id,
            name=page.name,
            username=page.username or "?",
            department=page.department_name or page.department_id or "none",
            subscribed="yes" if page.subscribed else "no",
        )
        if page.needs_reauth:
            line += messages.PAGES_NEEDS_REAUTH
        kept = set_aside.get(page.page_id)
        if kept:
            line += messages.PAGES_SET_ASIDE.format(count=len(kept), reason=kept[-1].reason)
        line += await _reconcile_suffix(ctx, page.page_id)
        lines.append(line)
    await ctx.reply("\n".join(lines))


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
