"""Fixtures for the storage tests: a controllable clock and stores in tmp dirs."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from storage import TinyDBStore, open_store


class FakeClock:
    """An injectable clock: ``clock()`` returns ``now``; tests move it with ``advance``."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store_path(tmp_path: Path) -> str:
    return str(tmp_path / "data" / "rc-instagram.json")


@pytest.fixture
async def make_store(store_path: str, clock: FakeClock) -> AsyncIterator[Callable[..., Any]]:
    """Open stores on ``store_path`` (fake clock by default); all closed at teardown."""
    opened: list[TinyDBStore] = []

    async def make(path: str | None = None, **options: Any) -> TinyDBStore:
        options.setdefault("clock", clock)
        store = open_store(path or store_path, **options)
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


@pytest.fixture
async def store(make_store: Callable[..., Any]) -> TinyDBStore:
    return await make_store()
