"""Persistence for rc-instagram: the repository API and its TinyDB implementation.

``open_store(path, encryption_key=None, *, clock=time.time)`` returns a :class:`Store`;
``await store.open()`` before use and ``await store.close()`` at shutdown. See
:mod:`storage.base` for the API and :mod:`storage.tinydb_store` for the files on disk.
"""

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
    StoreLocked,
    WorkItem,
    conversation_key,
)
from storage.crypto import TokenCipher
from storage.inbox import Inbox, InboxEvent
from storage.tinydb_store import StoreFiles, TinyDBStore, open_store

__all__ = [
    "DEFAULT_CONVERSATION_TTL",
    "DEFAULT_DEDUPE_TTL",
    "QUEUES",
    "Conversation",
    "Inbox",
    "InboxEvent",
    "LoginState",
    "Page",
    "QueueName",
    "SetAsideItem",
    "StorageError",
    "Store",
    "StoreFiles",
    "StoreLocked",
    "TinyDBStore",
    "TokenCipher",
    "WorkItem",
    "conversation_key",
    "open_store",
]
