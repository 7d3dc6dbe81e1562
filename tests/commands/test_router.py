"""The command grammar and the registry, without a server."""

from __future__ import annotations

import pytest

from bot import messages
from commands.base import Command
from commands.registry import COMMAND_MODULES, Registry, default_registry
from commands.router import Invocation, parse


@pytest.mark.parametrize(
    ("text", "direct", "expected"),
    [
        ("/instagram help", False, Invocation("help", ())),
        ("/Instagram HELP", False, Invocation("help", ())),
        ("  /instagram   help  ", False, Invocation("help", ())),
        ("/instagram", False, Invocation("help", ())),
        ("instagram help", True, Invocation("help", ())),
        ("Instagram pages", True, Invocation("pages", ())),
        ("instagram help", False, None),
        ("/instagramhelp", False, None),
        ("hello /instagram help", False, None),
        ("/instagram edit 123 welcome Hello there", False,
         Invocation("edit", ("123", "welcome", "Hello", "there"))),
        ('/instagram edit 123 welcome "Hi, welcome!"', False,
         Invocation("edit", ("123", "welcome", "Hi, welcome!"))),
        ("/instagram edit 123 welcome it's", False,
         Invocation("edit", (), error="No closing quotation")),
        ("", True, None),
    ],
)
def test_parse(text: str, direct: bool, expected: Invocation | None) -> None:
    """Prefix is case-insensitive, slash optional only in DMs, args split like a shell."""
    assert parse(text, direct=direct) == expected


def _noop_command(name: str) -> Command:
    async def handle(ctx, args) -> None:  # pragma: no cover - never run
        return None

    return Command(name=name, summary="s", usage=f"/instagram {name}", handle=handle)


def test_registry_refuses_duplicate_names() -> None:
    """Two commands with one name (case-insensitively) cannot be registered."""
    registry = Registry([_noop_command("pages")])
    with pytest.raises(ValueError, match="duplicate"):
        registry.register(_noop_command("Pages"))


def test_help_lists_every_registered_command() -> None:
    """The help text is generated from the registry, so it lists each command's usage."""
    registry = default_registry()
    assert len(registry) == len(COMMAND_MODULES)
    text = messages.help_text(registry)
    for command in registry:
        assert command.usage in text
