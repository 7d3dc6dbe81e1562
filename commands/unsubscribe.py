"""``/instagram unsubscribe <pageId>``: stop bridging a page and uninstall the bot from it."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from bot import messages
from bot.instagram.graph import GraphAuthError, GraphError
from bot.instagram.reauth import mark_needs_reauth
from commands.base import Command, CommandContext
from commands.pageref import one_page_id, require_page

log = logging.getLogger("commands")


async def handle(ctx: CommandContext, args: Sequence[str]) -> None:
    page = await require_page(ctx.store, one_page_id(args))
    # Local first: the admin's intent (stop relaying) must hold even if Meta is down.
    page.subscribed = False
    await ctx.store.save_page(page)
    log.info("page %s unsubscribed by %s", page.page_id, ctx.issuer.username)
    fmt = dict(name=page.name, page_id=page.page_id, username=page.username)
    try:
        await ctx.graphs.for_page(page).unsubscribe_page(page.page_id, page.page_token)
    except GraphError as exc:
        if isinstance(exc, GraphAuthError):
            await mark_needs_reauth(ctx.store, ctx.notify_admins, page.page_id)
        await ctx.reply(messages.UNSUBSCRIBE_META_FAILED.format(reason=exc, **fmt))
        return
    await ctx.reply(messages.UNSUBSCRIBED.format(**fmt))


command = Command(
    name="unsubscribe",
    summary="stop bridging a page (uninstalls the bot from it at Meta)",
    usage="/instagram unsubscribe <pageId>",
    handle=handle,
)
