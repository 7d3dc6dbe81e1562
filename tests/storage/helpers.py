"""Small builders and helpers shared by the storage tests (both stores)."""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import psycopg

from storage import PostgresStore, Store, StoreFiles, TinyDBStore, WorkItem, is_postgres_url


def item(
    item_id: str,
    conversation: str = "p1:u1",
    *,
    queue: str = "inbound",
    order_ts: float = 0.0,
    **payload: Any,
) -> WorkItem:
    """A work item with a small payload."""
    return WorkItem(
        item_id=item_id,
        queue=queue,  # type: ignore[arg-type]
        conversation=conversation,
        kind="message",
        payload={"text": f"hello {item_id}", **payload},
        order_ts=order_ts,
    )


def stored_bytes(location: str) -> bytes:
    """Everything the store keeps at rest: its files, or its tables' rows as text."""
    if is_postgres_url(location):
        with psycopg.connect(location) as conn:
            tables = [row[0] for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")]
            return b"".join(
                str(row).encode() + b"\n"
                for table in tables
                for row in conn.execute(f"SELECT t::text FROM {table} t"))
    files = StoreFiles.for_path(location)
    return b"".join(Path(f).read_bytes() for f in files.all() if Path(f).exists())


async def crash(store: Store) -> None:
    """Stop a store as kill -9 would: nothing flushed or compacted at the end.

    TinyDB: the journals are left unfolded (``close(compact=False)``). PostgreSQL: the
    server ends the store's sessions (as it does when the process dies), which drops
    its locks; the abandoned store is then closed without touching the database.
    """
    if isinstance(store, TinyDBStore):
        await store.close(compact=False)
        return
    assert isinstance(store, PostgresStore)
    sessions = [store._locks, store.inbox._conn, *list(store._pool._idle._queue)]
    pids = [conn.info.backend_pid for conn in sessions if conn is not None and not conn.closed]
    with psycopg.connect(store.url, autocommit=True) as conn:
        conn.execute("SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", (pids,))
    with contextlib.suppress(Exception):
        await store.close()
