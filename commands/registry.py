"""The command registry: one place that knows every sub-command.

``help`` is generated from it, so the command list can never drift from what exists.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable, Iterator

from commands.base import Command

#: Modules that define a ``command``; order is the order ``help`` lists them in.
COMMAND_MODULES = (
    "commands.help",
    "commands.authorize",
    "commands.unauthorize",
    "commands.pages",
    "commands.subscribe",
    "commands.unsubscribe",
    "commands.edit",
)


class Registry:
    """Commands by name; refuses duplicates."""

    def __init__(self, commands: Iterable[Command] = ()) -> None:
        self._commands: dict[str, Command] = {}
        for command in commands:
            self.register(command)

    def register(self, command: Command) -> None:
        name = command.name.lower()
        if name in self._commands:
            raise ValueError(f"duplicate command name: {name}")
        self._commands[name] = command

    def get(self, name: str) -> Command | None:
        return self._commands.get(name.lower())

    def __iter__(self) -> Iterator[Command]:
        return iter(self._commands.values())

    def __len__(self) -> int:
        return len(self._commands)


def default_registry() -> Registry:
    """The registry of every command module in :data:`COMMAND_MODULES`."""
    return Registry(importlib.import_module(name).command for name in COMMAND_MODULES)
