"""Every sentence a person reads: DM texts and HTML pages, in one reviewable place.

This module is a leaf (it imports nothing of ours except for type checking), so both
the runtime (``bot/``) and the command handlers (``commands/``) may use it.
Wording is plain Rocket.Chat markdown (``*bold*``, `` `code` ``).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from commands.base import Command

# --- commands: router -----------------------------------------------------------------

UNKNOWN_COMMAND = "Unknown command `{name}`. Type `/instagram help` for the list."
NOT_ADMIN = (
    "Sorry, `/instagram {name}` is for administrators only "
    "(a user holding one of the roles: {roles})."
)
USAGE = "{problem}\nUsage: `{usage}`"
COMMAND_FAILED = (
    "Sorry, `/instagram {name}` failed: {reason}. Nothing was changed that you were not told about."
)
INTERNAL_ERROR = (
    "Sorry, `/instagram {name}` failed unexpectedly. The error is in the bot's log "
    "(reference `{ref}`)."
)


def help_text(commands: Iterable[Command]) -> str:
    """The command list, one line per command, admin-only ones marked."""
    lines = ["*Instagram bridge commands*"]
    for command in commands:
        marker = "" if not command.requires_admin else " _(admin)_"
        lines.append(f"`{command.usage}` — {command.summary}{marker}")
    lines.append("In a direct message with me you can leave out the slash: `instagram help`.")
    return "\n".join(lines)
