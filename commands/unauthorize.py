"""``/instagram unauthorize``: uninstall every page, revoke the login, forget the tokens."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from bot import messages
from bot.instagram.graph import GraphAuthError, GraphError
from commands.base import Command, CommandContext, UsageError

log = logging.getLogger("commands")


async def handle(ctx: CommandContext, args: Sequence[str]) -> None:
    if args:
        raise UsageError("`unauthorize` takes no arguments.")
    pages = await ctx.store.pages()
    if not pages:
        await ctx.reply(messages.UNAUTHORIZE_NOTHING)
        return
    failures: list[str] = []
    user_tokens: list[str] = []
    for page in pages:
        try:
            await ctx.graphs.for_page(page).unsubscribe_page(page.page_id, page.page_token)
        except GraphError as exc:
            failures.append(str(exc))
        # Forget it whatever Meta said: the admin asked us to let go of these tokens.
        await ctx.store.delete_page(page.page_id)
        if page.user_token and page.user_token not in user_tokens:
            user_tokens.append(page.user_token)
    for token in user_tokens:  # one login may have connected several pages
        try:
            await ctx.graph.revoke_login(token)
        except GraphAuthError:
            # 190: Meta no longer accepts the login, which is what revoking wants (two
            # logins of one Facebook user are revoked together by the first call).
            continue
        except GraphError as exc:
            failures.append(str(exc))
    log.info(
        "unauthorize by %s: %d page(s) forgotten, %d login(s) revoked, %d Meta call(s) failed",
        ctx.issuer.username, len(pages), len(user_tokens), len(failures),
    )
    names = ", ".join(f"*{p.name}* (`{p.page_id}`)" for p in pages)
    lines = [messages.UNAUTHORIZE_SUMMARY.format(count=len(pages), pages=names)]
    if failures:
        lines.append(
            messages.UNAUTHORIZE_FAILURES.format(failures="\n".join(f"• {f}" for f in failures))
        )
    else:
        lines.append(messages.UNAUTHORIZE_ALL_OK)
    await ctx.reply("\n".join(lines))


command = Command(
    name="unauthorize",
    summary="disconnect every page: uninstall the bot, revoke the login, delete the tokens",
    usage="/instagram unauthorize",
    handle=handle,
)
