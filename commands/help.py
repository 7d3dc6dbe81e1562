"""``/instagram help``: the command list, generated from the registry."""

from __future__ import annotations

from collections.abc import Sequence

from bot import messages
from commands.base import Command, CommandContext


async def handle(ctx: CommandContext, args: Sequence[str]) -> None:
    from commands.registry import default_registry

    await ctx.reply(messages.help_text(default_registry()))


command = Command(
    name="help",
    summary="show this list",
    usage="/instagram help",
    handle=handle,
    requires_admin=False,
)
