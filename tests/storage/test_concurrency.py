"""Many coroutines at once: no loss, no duplicates, per-conversation order kept."""

from __future__ import annotations

import asyncio
import time

from storage import WorkItem
from tests.storage.helpers import item

PRODUCERS = 500
WORKERS = 500
PER_PRODUCER = 6


async def test_thousand_coroutines_lose_nothing_and_keep_order(make_store):
    """500 producers and 500 workers: every item processed once, in conversation order."""
    store = await make_store(clock=time.time)
    total = PRODUCERS * PER_PRODUCER
    processed: dict[str, list[int]] = {}
    claimed: set[str] = set()  # conversations being worked on (as the relay does)
    work: asyncio.Queue[WorkItem] = asyncio.Queue()
    done = asyncio.Event()
    count = 0

    async def producer(p: int) -> None:
        conversation = f"page:{p}"
        for n in range(PER_PRODUCER):
            added = await store.enqueue([item(f"{p}-{n}", conversation, n=n)])
            assert len(added) == 1
            # A redelivery racing with the workers is refused, pending or completed.
            assert await store.enqueue([item(f"{p}-{n}", conversation, n=n)]) == []
            await asyncio.sleep(0)

    async def dispatcher() -> None:
        while not done.is_set():
            heads = await store.next_items("inbound", time.time(), set(claimed), 200)
            for head in heads:
                if head.conversation not in claimed:
                    claimed.add(head.conversation)
                    work.put_nowait(head)
            await asyncio.sleep(0.001 if heads else 0.005)

    async def worker() -> None:
        nonlocal count
        while True:
            head = await work.get()
            processed.setdefault(head.conversation, []).append(head.payload["n"])
            await asyncio.sleep(0)  # the "effect"
            await store.complete(head)
            claimed.discard(head.conversation)  # only after the completion is durable
            count += 1
            if count == total:
                done.set()

    workers = [asyncio.create_task(worker()) for _ in range(WORKERS)]
    try:
        await asyncio.wait_for(
            asyncio.gather(*(producer(p) for p in range(PRODUCERS)), dispatcher()), timeout=60
        )
    finally:
        for task in workers:
            task.cancel()
    assert sum(len(v) for v in processed.values()) == total
    for conversation, numbers in processed.items():
        assert numbers == list(range(PER_PRODUCER)), conversation
    assert await store.queue_depth("inbound") == 0
    assert (await store.stats())["dedupe_keys"] == total
