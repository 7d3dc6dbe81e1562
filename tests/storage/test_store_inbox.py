"""The store's inbox, as the webhook receiver and the intake use it, on both stores.

(``test_inbox.py`` covers the TinyDB inbox's segment files themselves.)
"""

from __future__ import annotations

import asyncio

import pytest

from storage import StorageError
from tests.storage.helpers import crash


def contents(store) -> list[tuple[int, bytes]]:
    return [(event.seq, event.raw) for event in store.inbox.pending()]


async def test_acknowledged_webhooks_survive_a_crash_in_order(make_store):
    """Every append that returned is there after a crash, oldest first, bytes intact."""
    store = await make_store()
    raws = [b'{"entry": 1}', b"\x00\xffbinary\n", b"", b"x" * 5000]
    acked = [await store.inbox.append(raw, body={"n": n}) for n, raw in enumerate(raws)]
    assert [e.body for e in acked] == [{"n": n} for n in range(4)]
    assert store.inbox.backlog == 4
    await crash(store)
    reopened = await make_store()
    assert [raw for _seq, raw in contents(reopened)] == raws
    assert all(e.body is None for e in reopened.inbox.pending())
    later = await reopened.inbox.append(b"later")
    assert later.seq > max(seq for seq, _ in contents(reopened)[:-1])


@pytest.mark.parametrize("clean", [False, True], ids=["crash", "close"])
async def test_released_webhooks_do_not_come_back(make_store, clean):
    """Released events stay released across a restart, crashed or clean."""
    store = await make_store()
    acked = [await store.inbox.append(f"e{n}".encode()) for n in range(5)]
    store.inbox.release(acked[2].seq)
    assert [e.seq for e in store.inbox.pending()] == [e.seq for e in acked[3:]]
    assert await store.inbox.probe()  # a durable write after the release
    if clean:
        await store.close()
    else:
        await crash(store)
    reopened = await make_store()
    assert [raw for _seq, raw in contents(reopened)] == [b"e3", b"e4"]


async def test_pending_limit_gives_the_oldest(make_store):
    """pending(limit) is the oldest ``limit`` events."""
    store = await make_store()
    acked = [await store.inbox.append(bytes([n])) for n in range(5)]
    assert [e.seq for e in store.inbox.pending(2)] == [acked[0].seq, acked[1].seq]
    assert [e.seq for e in store.inbox.pending(99)] == [e.seq for e in acked]


async def test_concurrent_appends_are_each_stored_once(make_store):
    """300 webhooks acknowledged together are all there after a crash, none twice."""
    store = await make_store()
    raws = [f"body {n}".encode() for n in range(300)]
    events = await asyncio.gather(*(store.inbox.append(raw) for raw in raws))
    assert len({e.seq for e in events}) == 300
    await crash(store)
    reopened = await make_store()
    recovered = [raw for _seq, raw in contents(reopened)]
    assert sorted(recovered) == sorted(raws)


async def test_closed_store_inbox_refuses_appends(make_store):
    """After close, an append raises StorageError: nothing is acknowledged unstored."""
    store = await make_store()
    await store.close()
    with pytest.raises(StorageError, match="not open"):
        await store.inbox.append(b"x")
    assert not store.inbox.healthy
