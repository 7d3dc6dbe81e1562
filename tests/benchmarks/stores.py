"""Which store a benchmark's bots use: a fresh TinyDB file, or a fresh PostgreSQL schema.

``--store postgres`` without ``--store-url`` starts a throwaway cluster (the storage
tests' :mod:`tests.storage.postgres_server`: a temporary directory, a free loopback
port, removed at the end); with ``--store-url`` that server is used, and the schemas
the benchmark created in it are dropped at the end. Every bot run gets a schema of its
own (``search_path`` in the URL), so one run never sees another's rows.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg

from tests.storage import postgres_server

KINDS = ("tinydb", "postgres")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``--store`` and ``--store-url``, the same in every benchmark that takes them."""
    parser.add_argument("--store", choices=KINDS, default="tinydb",
                        help="the bots' store (default tinydb; postgres: a throwaway "
                             "local cluster unless --store-url)")
    parser.add_argument("--store-url", metavar="URL",
                        help="a PostgreSQL server to use (implies --store postgres); the "
                             "benchmark creates schemas in it and drops them afterwards")


class BenchStores:
    """Hands out a fresh store location per bot run; :meth:`close` cleans up."""

    def __init__(self, kind: str = "tinydb", url: str | None = None) -> None:
        self.kind = "postgres" if url else kind
        self._url = url
        self._stop: Callable[[], None] = lambda: None
        self._schemas: list[str] = []

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BenchStores:
        return cls(args.store, args.store_url)

    def __enter__(self) -> BenchStores:
        if self.kind == "postgres" and self._url is None:
            self._url, self._stop = postgres_server.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    @property
    def server_url(self) -> str:
        if self._url is None:
            raise RuntimeError("no PostgreSQL server (kind tinydb, or not entered)")
        return self._url

    def location(self, run_dir: Path) -> str:
        """A new, empty store: a file in ``run_dir``, or a URL with a new schema."""
        if self.kind == "tinydb":
            return str(run_dir / "store.json")
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.server_url, autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {schema}")
        self._schemas.append(schema)
        return postgres_server.with_schema(self.server_url, schema)

    def storage_config(self, location: str) -> dict[str, str]:
        """The config's ``storage`` section for ``location``."""
        if self.kind == "tinydb":
            return {"path": location, "encryption_key": ""}
        return {"url": location, "encryption_key": ""}

    def server_cpu_seconds(self) -> float | None:
        """CPU seconds used so far by the server's processes (postmaster and backends),
        for a server on this machine listening on the URL's port; else None.

        Backends that exited are not counted: read it while the bot is connected.
        """
        if self.kind != "postgres" or self._url is None:
            return None
        port = urlsplit(self._url).port or 5432
        postmasters = []
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                args = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if args and args[0].endswith(b"postgres") and b"-p" in args \
                    and args[args.index(b"-p") + 1:][:1] == [str(port).encode()]:
                postmasters.append(proc.name)
        if not postmasters:
            return None
        total = 0.0
        tick = os.sysconf("SC_CLK_TCK")
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if proc.name in postmasters or fields[1] in postmasters:
                total += (int(fields[11]) + int(fields[12])) / tick
        return total

    def close(self) -> None:
        if self._url is not None and self._schemas:
            with contextlib.suppress(psycopg.Error), \
                    psycopg.connect(self._url, autocommit=True) as conn:
                for schema in self._schemas:
                    conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
        self._schemas.clear()
        self._stop()
        self._stop = lambda: None
