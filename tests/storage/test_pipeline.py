"""Pipelined group commit: reads never wait for an fsync, mutations always do (TinyDB)."""

from __future__ import annotations

import asyncio
import json
import os
import threading

import pytest

from storage import Page, StoreFiles
from storage.journal import encode_tables
from tests.storage.helpers import item

pytestmark = pytest.mark.tinydb_only  # the TinyDB writer's own fsync pipeline


class SlowFsync:
    """An injectable ``fsync`` that holds journal syncs of matching files until released.

    Which file an fd belongs to is read from /proc (Linux), so one family can be held
    while the other syncs freely.
    """

    def __init__(self, suffix: str = ".journal") -> None:
        self.suffix = suffix
        self.entered = threading.Event()
        self.release = threading.Event()
        self.release.set()  # open until a test closes it
        self.synced: list[str] = []

    def __call__(self, fd: int) -> None:
        path = os.readlink(f"/proc/self/fd/{fd}")
        if path.endswith(self.suffix):
            self.entered.set()
            if not self.release.wait(10):
                raise AssertionError("the test never released the fsync")
        os.fdatasync(fd)
        self.synced.append(path)

    async def wait_entered(self) -> None:
        assert await asyncio.to_thread(self.entered.wait, 10), "no fsync started"


async def test_read_is_not_blocked_by_a_slow_fsync(make_store):
    """While a commit's fsync hangs, reads (and other work) are still answered."""
    fsync = SlowFsync()
    store = await make_store(fsync=fsync)
    await store.save_page(Page("p1", "Shop", "ig1"))
    fsync.release.clear()
    enqueue = asyncio.create_task(store.enqueue([item("m1")]))
    await fsync.wait_entered()
    try:
        # Each read is a full round trip through the writer thread.
        page = await asyncio.wait_for(store.page_by_instagram_id("ig1"), 2)
        assert page is not None and page.page_id == "p1"
        assert await asyncio.wait_for(store.queue_depth("inbound"), 2) == 1  # applied
        assert await asyncio.wait_for(store.head("inbound", "p1:u1"), 2) is not None
        assert not enqueue.done()
    finally:
        fsync.release.set()
    assert [i.item_id for i in await enqueue] == ["m1"]


async def test_mutation_does_not_return_before_its_fsync(make_store, store_path):
    """enqueue returns only after fdatasync of the queue journal has completed."""
    fsync = SlowFsync()
    store = await make_store(fsync=fsync)
    fsync.release.clear()
    enqueue = asyncio.create_task(store.enqueue([item("m1")]))
    await fsync.wait_entered()
    try:
        await store.seen("anything")  # the writer thread has moved on meanwhile
        await asyncio.sleep(0)
        assert not enqueue.done(), "acknowledged before the fsync completed"
        assert fsync.synced == []
    finally:
        fsync.release.set()
    await enqueue
    assert fsync.synced == [StoreFiles.for_path(store_path).queues_journal]


async def test_later_mutation_waits_for_an_earlier_pending_fsync(make_store):
    """A config write does not return while an earlier queue write is still syncing."""
    fsync = SlowFsync(suffix=".queues.journal")
    store = await make_store(fsync=fsync)
    fsync.release.clear()
    enqueue = asyncio.create_task(store.enqueue([item("m1")]))
    await fsync.wait_entered()
    save = asyncio.create_task(store.save_page(Page("p1", "Shop", "ig1")))
    try:
        await store.seen("anything")
        await asyncio.sleep(0)
        assert not save.done() and not enqueue.done()
    finally:
        fsync.release.set()
    await asyncio.wait_for(asyncio.gather(enqueue, save), 5)


async def test_slow_fsync_batches_queued_writes_into_one_sync(make_store):
    """Writes issued during a slow fsync share the next single write + fsync."""
    fsync = SlowFsync(suffix=".queues.journal")
    store = await make_store(fsync=fsync)
    fsync.release.clear()
    first = asyncio.create_task(store.enqueue([item("m0")]))
    await fsync.wait_entered()
    rest = [asyncio.create_task(store.enqueue([item(f"m{n}")])) for n in range(1, 50)]
    await asyncio.sleep(0)  # every task has queued its operation
    try:
        assert await store.queue_depth("inbound") == 50  # all applied, none durable yet
        before = len(fsync.synced)
    finally:
        fsync.release.set()
    await asyncio.gather(first, *rest)
    assert len(fsync.synced) - before <= 2  # the held one, then one for the other 49


def test_chunked_snapshot_encoding_is_plain_tinydb_json():
    """Snapshots encoded chunk by chunk are byte-identical to one json.dumps call."""
    tables = {
        "empty": {},
        "pages": {"p1": {"name": "Café \u2028", "tags": [1, None, 2.5, True]}},
        "inbound": {f"m{n}": {"n": n, "payload": {"text": "x" * (n % 7)}} for n in range(1000)},
    }
    for chunk in (1, 7, 256, 5000):
        assert encode_tables(tables, chunk) == json.dumps(tables, separators=(",", ":")).encode()
    assert encode_tables({}) == b"{}"
