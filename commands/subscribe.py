"""``/instagram subscribe <pageId>``: install the bot on the page and bridge it again."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from bot import messages
from bot.instagram.graph import GraphAuthError, GraphError
from bot.instagram.reauth import mark_needs_reauth
from bot.instagram.subscription import install, still_installed
from commands.base import Command, CommandContext, CommandError
from commands.pageref import one_page_id, require_page

log = logging.getLogger("commands")


async def handle(ctx: CommandContext, args: Sequence[str]) -> None:
    page = await require_page(ctx.store, one_page_id(args))
    try:
        fields = await install(ctx.graphs.for_page(page), page.page_id, page.page_token)
    except GraphError as exc:
        reason = messages.SUBSCRIBE_FAILED.format(page_id=page.page_id, reason=exc)
        if isinstance(exc, GraphAuthError):
            await mark_needs_reauth(ctx.store, ctx.notify_admins, page.page_id)
            reason += ". " + messages.NEEDS_REAUTH_HINT.rstrip(".")
        elif page.subscribed and (
            await still_installed(ctx.graphs.for_page(page), page.page_id, page.page_token)
            is False
        ):
            # The page was marked bridged, but Meta lists no installation: say so, and
            # stop counting it as bridged rather than pretend.
            page.subscribed = False
            await ctx.store.save_page(page)
            reason += ". " + messages.SUBSCRIBE_NOW_OFF
        raise CommandError(reason) from None
    page.subscribed = True
    await ctx.store.save_page(page)
    log.info("page %s subscribed by %s (Meta lists %s)", page.page_id, ctx.issuer.username, fields)
    await ctx.reply(
        messages.SUBSCRIBED.format(name=page.name, page_id=page.page_id, username=page.username)
    )


command = Command(
    name="subscribe",
    summary="start bridging a page (installs the bot on it at Meta)",
    usage="/instagram subscribe <pageId>",
    handle=handle,
)
