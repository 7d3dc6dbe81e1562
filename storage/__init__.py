"""Persistence for rc-instagram: the repository API and its two implementations.

``open_store(location, encryption_key=None, *, clock=time.time)`` returns a
:class:`Store`: a :class:`PostgresStore` when ``location`` is a ``postgresql://`` URL
(``storage.url``), else a :class:`TinyDBStore` on that path (``storage.path``).
``await store.open()`` before use and ``await store.close()`` at shutdown. See
:mod:`storage.base` for the API, :mod:`storage.tinydb_store` for the files on disk and
:mod:`storage.postgres` for the tables.
"""

import time
from collections.abc import Callable
from typing import Any

from storage.base import (
    DEFAULT_CONVERSATION_TTL,
    DEFAULT_DEDUPE_TTL,
    QUEUES,
    Conversation,
    LoginState,
    Page,
    QueueName,
    SetAsideItem,
    StorageError,
    Store,
    StoreDump,
    StoreLocked,
    WorkItem,
    conversation_key,
)
from storage.crypto import TokenCipher
from storage.inbox import Inbox, InboxEvent
from storage.postgres import PostgresStore, is_postgres_url, mask_url
from storage.tinydb_store import StoreFiles, TinyDBStore


def open_store(
    location: str,
    encryption_key: str | None = None,
    *,
    clock: Callable[[], float] = time.time,
    **options: Any,
) -> Store:
    """Create the store for ``location`` (a path, or a ``postgresql://`` URL).

    ``options`` are the implementation's keyword arguments (TTLs, expiry interval, and
    TinyDB's compaction thresholds or PostgreSQL's pool size). Raises StorageError at
    once for a malformed key.
    """
    if is_postgres_url(location):
        return PostgresStore(location, encryption_key, clock=clock, **options)
    return TinyDBStore(location, encryption_key, clock=clock, **options)


__all__ = [
    "DEFAULT_CONVERSATION_TTL",
    "DEFAULT_DEDUPE_TTL",
    "QUEUES",
    "Conversation",
    "Inbox",
    "InboxEvent",
    "LoginState",
    "Page",
    "PostgresStore",
    "QueueName",
    "SetAsideItem",
    "StorageError",
    "Store",
    "StoreDump",
    "StoreFiles",
    "StoreLocked",
    "TinyDBStore",
    "TokenCipher",
    "WorkItem",
    "conversation_key",
    "is_postgres_url",
    "mask_url",
    "open_store",
]
