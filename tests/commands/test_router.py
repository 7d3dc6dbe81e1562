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
        ("/instagram pages 123 'two words'", False,
         Invocation("pages", ("123", "two words"), text="123 'two words'")),
        ("/instagram pages it's", False,
         Invocation("pages", (), error="No closing quotation", text="it's")),
        ("", True, None),
    ],
)
def test_parse(text: str, direct: bool, expected: Invocation | None) -> None:
    """Prefix is case-insensitive, slash optional only in DMs, args split like a shell."""
    assert parse(text, direct=direct) == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/instagram edit 123 welcome Hello there", ("123", "welcome", "Hello there")),
        ('/instagram edit 123 welcome "Hi, welcome!"', ("123", "welcome", "Hi, welcome!")),
        ("/instagram edit 123 offline We're away, we'll answer soon",
         ("123", "offline", "We're away, we'll answer soon")),
        ("/instagram edit 123 welcome Line one\n  line two", ("123", "welcome",
                                                              "Line one\n  line two")),
        ("/instagram edit 123 department", ("123", "department")),
        ("/instagram edit 123", ("123",)),
    ],
)
def test_verbatim_tail_keeps_prose_intact(text: str, expected: tuple[str, ...]) -> None:
    """After the setting name, the value is taken as typed: apostrophes, line breaks."""
    command = default_registry().get("edit")
    assert command is not None
    invocation = parse(text, direct=False)
    assert invocation is not None
    assert invocation.arguments_for(command) == expected


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
