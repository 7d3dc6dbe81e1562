"""Fixtures for the storage tests: a controllable clock and stores of both kinds.

One contract suite for both stores: every test that uses a store runs against TinyDB
(always) and against PostgreSQL (whenever a server is available, see
:mod:`tests.storage.postgres_server`; otherwise that variant is skipped with the
reason). A test about the TinyDB files themselves (journal, file modes, locking) is
marked ``tinydb_only``. ``store_path`` is the store's location: a file path, or a
``postgresql://`` URL whose ``search_path`` is a schema of its own.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from storage import Store, open_store
from tests.storage import postgres_server

BACKENDS = ("tinydb", "postgres")


class FakeClock:
    """An injectable clock: ``clock()`` returns ``now``; tests move it with ``advance``."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "tinydb_only: about the TinyDB files; not run against PostgreSQL")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        only_tinydb = metafunc.definition.get_closest_marker("tinydb_only") is not None
        metafunc.parametrize("backend", BACKENDS[:1] if only_tinydb else BACKENDS,
                             indirect=True)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str | None]:
    """The test server's URL, or None (with the reason kept for the skips)."""
    try:
        url, stop = postgres_server.start()
    except postgres_server.Unavailable as exc:
        _unavailable.append(str(exc))
        yield None
        return
    try:
        yield url
    finally:
        stop()


_unavailable: list[str] = []


@pytest.fixture
def pg_url(postgres_url: str | None) -> str:
    """The test server's URL; the test is skipped (with the reason) without one."""
    if postgres_url is None:
        pytest.skip(f"PostgreSQL variant: {_unavailable[0]}")
    return postgres_url


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgres":
        request.getfixturevalue("pg_url")
    return request.param


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store_path(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[str]:
    """Where the store lives: a file path (TinyDB) or a URL with its own schema."""
    if backend == "tinydb":
        yield str(tmp_path / "data" / "rc-instagram.json")
        return
    with postgres_server.fresh_schema(request.getfixturevalue("pg_url")) as url:
        yield url


@pytest.fixture
async def make_store(store_path: str, clock: FakeClock) -> AsyncIterator[Callable[..., Any]]:
    """Open stores on ``store_path`` (fake clock by default); all closed at teardown."""
    opened: list[Store] = []

    async def make(path: str | None = None, **options: Any) -> Store:
        options.setdefault("clock", clock)
        store = open_store(path or store_path, **options)
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


@pytest.fixture
async def store(make_store: Callable[..., Any]) -> Store:
    return await make_store()
