"""What every ``/instagram`` sub-command is, and what it is handed when it runs.

A command module defines a module-level ``command = Command(...)``. Handlers receive a
:class:`CommandContext` — the only door to the outside world — so ``commands/`` never
imports the runtime: the bot builds the context, tests can build one over the sandbox.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from storage.base import Store


class UsageError(Exception):
    """Wrong or missing arguments; the message is the sentence the user sees."""


class CommandError(Exception):
    """A command that cannot be carried out; the message is shown to the user as is."""


@dataclass(frozen=True)
class Issuer:
    """The Rocket.Chat user who typed the command."""

    user_id: str
    username: str
    room_id: str
    room_type: str  # 'd' direct, 'c' channel, 'p' private group, 'l' livechat


@dataclass(frozen=True)
class Button:
    """A button under a DM: it opens ``url``, or it posts ``command`` in the DM as a
    message of the user who clicks (so the command runs as theirs, admin check and all)."""

    text: str
    url: str | None = None
    command: str | None = None


@dataclass(frozen=True)
class ButtonRow:
    """Buttons shown together under a DM, with an optional title (what they act on)."""

    buttons: tuple[Button, ...]
    title: str = ""


class CommandContext(Protocol):
    """Everything a handler may use. Implemented by the runtime (``bot.app``).

    Attributes are the shared clients; ``reply`` always DMs the issuer.
    """

    issuer: Issuer
    store: Store
    graph: Any  # bot.instagram.graph.GraphClient (Facebook Login's)
    graphs: Any  # bot.instagram.accounts.GraphRoutes: the client of each page's route
    rest: Any  # bot.rest.RocketChatREST
    config: Any  # bot.config.Config

    async def reply(self, text: str, rows: Sequence[ButtonRow] = ()) -> None:
        """Send ``text`` to the issuer by direct message, with ``rows`` of buttons under it."""
        ...

    async def issuer_is_admin(self) -> bool:
        """True when the issuer holds one of ``rocketchat.admin_roles``."""
        ...

    async def notify_admins(self, text: str) -> None:
        """DM every user holding one of ``rocketchat.admin_roles``."""
        ...


Handler = Callable[[CommandContext, Sequence[str]], Awaitable[None]]


@dataclass(frozen=True)
class Command:
    """One sub-command: ``/instagram <name> <args…>``."""

    name: str
    summary: str
    usage: str  # e.g. "/instagram edit <pageId> [<setting> <value…>]"
    handle: Handler
    requires_admin: bool = True
    #: Free text after this many words: the rest of the line is one verbatim argument
    #: (welcome texts contain apostrophes and line breaks, which shell-style splitting
    #: would eat). None: every argument is split like a shell word.
    verbatim_after: int | None = None
