"""``/instagram authorize``: DM the admin a single-use Facebook Login link, and with
``instagram.instagram_login`` an Instagram Login link too."""

from __future__ import annotations

from collections.abc import Sequence

from bot import messages
from bot.instagram import instagram_login
from bot.instagram.oauth import STATE_TTL, start_login
from commands.base import Button, ButtonRow, Command, CommandContext, UsageError


async def handle(ctx: CommandContext, args: Sequence[str]) -> None:
    if args:
        raise UsageError("`authorize` takes no arguments.")
    url = await start_login(ctx.store, ctx.config, ctx.issuer.user_id, ctx.issuer.username)
    minutes = int(STATE_TTL // 60)
    buttons = [Button(messages.AUTHORIZE_BUTTON, url=url)]
    if ctx.config.instagram.instagram_login.enabled:
        ig_url = await instagram_login.start_login(
            ctx.store, ctx.config, ctx.issuer.user_id, ctx.issuer.username)
        text = messages.AUTHORIZE_LINKS.format(url=url, instagram_url=ig_url, minutes=minutes)
        buttons = [Button(messages.AUTHORIZE_BUTTON_FACEBOOK, url=url),
                   Button(messages.AUTHORIZE_BUTTON_INSTAGRAM, url=ig_url)]
    else:
        text = messages.AUTHORIZE_LINK.format(url=url, minutes=minutes)
    if ctx.issuer.room_type != "d":
        text += "\n" + messages.AUTHORIZE_LINK_FROM_CHANNEL
    # Always a DM: the link must never be posted in a room. The button opens the same link
    # (the text keeps it for clients that show no buttons).
    await ctx.reply(text, [ButtonRow(tuple(buttons))])


command = Command(
    name="authorize",
    summary="connect an Instagram business account (DMs you a Facebook Login link)",
    usage="/instagram authorize",
    handle=handle,
)
