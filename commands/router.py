"""From a chat message to a command call: parse, authorize, dispatch, answer errors.

Parsing is a pure function (:func:`parse`), so the grammar is testable without a
server. :func:`dispatch` is the one boundary where user-facing errors are caught and
turned into a DM; handlers just raise :class:`~commands.base.UsageError` or
:class:`~commands.base.CommandError`.
"""

from __future__ import annotations

import logging
import re
import secrets
import shlex
from dataclasses import dataclass

from bot import messages
from bot.rocketchat.rest import RocketChatError
from commands.base import Command, CommandContext, CommandError, UsageError
from commands.registry import Registry

log = logging.getLogger("commands")

_PREFIX = re.compile(r"^\s*(/?)instagram(?:\s+|$)", re.IGNORECASE)


@dataclass(frozen=True)
class Invocation:
    """A parsed ``/instagram <name> <args…>`` line."""

    name: str
    args: tuple[str, ...]
    error: str | None = None  # set when the arguments could not be split (bad quoting)
    text: str = ""  # everything after the sub-command name, as typed

    def arguments_for(self, command: Command) -> tuple[str, ...]:
        """The handler's arguments: shell words, or words then one verbatim tail."""
        if command.verbatim_after is None:
            return self.args
        words = self.text.split(None, command.verbatim_after)
        head, tail = words[: command.verbatim_after], words[command.verbatim_after:]
        value = tail[0].strip() if tail else ""
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1].strip()
        return (*head, value) if value else tuple(head)


def parse(text: str, *, direct: bool) -> Invocation | None:
    """Parse a message; None when it is not addressed to us.

    ``/instagram`` is matched case-insensitively; in a direct message (``direct``) the
    slash may be left out. Arguments are split like a shell (quotes group words).
    A bare ``/instagram`` means ``help``.
    """
    match = _PREFIX.match(text)
    if not match or (not match.group(1) and not direct):
        return None
    rest = text[match.end():]
    first = rest.split(None, 1)
    if not first:
        return Invocation("help", ())
    name, after = first[0].lower(), first[1] if len(first) > 1 else ""
    try:
        words = shlex.split(after)
    except ValueError as exc:
        return Invocation(name, (), error=str(exc), text=after)
    return Invocation(name, tuple(words), text=after)


async def _admin_or_told(ctx: CommandContext, command: Command) -> bool | None:
    """Whether the issuer is an admin; None when that cannot be found out (issuer told).

    The check reads roles from Rocket.Chat (REST, or DDP on servers without the route);
    a failure here used to escape :func:`dispatch` and leave the command unanswered.
    """
    try:
        return await ctx.issuer_is_admin()
    except Exception as exc:
        ref = secrets.token_hex(4)
        # RocketChatError texts name the route and code, never a secret (bot.rocketchat.rest).
        reason = str(exc) if isinstance(exc, RocketChatError) else type(exc).__name__
        log.warning("admin check for %s (command %s) failed (ref %s): %s",
                    ctx.issuer.username, command.name, ref, reason)
        await ctx.reply(messages.render(messages.ADMIN_CHECK_FAILED, name=command.name,
                                        reason=reason, ref=ref))
        return None


async def dispatch(registry: Registry, ctx: CommandContext, invocation: Invocation) -> None:
    """Run one invocation; every outcome, good or bad, ends in a DM to the issuer."""
    command = registry.get(invocation.name)
    issuer = ctx.issuer
    if command is None:
        log.info("unknown command %r from %s", invocation.name[:100], issuer.username)
        await ctx.reply(messages.render(messages.UNKNOWN_COMMAND, name=invocation.name))
        return
    admin = await _admin_or_told(ctx, command) if command.requires_admin else True
    if admin is None:
        return
    if not admin:
        log.info("refused %s for non-admin %s", command.name, issuer.username)
        roles = messages.Markup(", ".join(
            messages.render(messages.CODE, value=r) for r in ctx.config.rocketchat.admin_roles))
        await ctx.reply(messages.render(messages.NOT_ADMIN, name=command.name, roles=roles))
        return
    if invocation.error is not None and command.verbatim_after is None:
        problem = f"I could not read the arguments ({invocation.error})."
        await ctx.reply(messages.render(messages.USAGE, problem=problem, usage=command.usage))
        return
    log.info("running %s for %s", command.name, issuer.username)
    try:
        await command.handle(ctx, invocation.arguments_for(command))
    except UsageError as exc:
        # Usage and command errors are our own wording, already rendered.
        await ctx.reply(messages.render(messages.USAGE, problem=messages.Markup(exc),
                                        usage=command.usage))
    except CommandError as exc:
        await ctx.reply(messages.render(messages.COMMAND_FAILED, name=command.name,
                                        reason=messages.Markup(exc)))
    except Exception:
        ref = secrets.token_hex(4)
        log.exception("command %s failed (ref %s)", command.name, ref)
        await ctx.reply(messages.render(messages.INTERNAL_ERROR, name=command.name, ref=ref))
