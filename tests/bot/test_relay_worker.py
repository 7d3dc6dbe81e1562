"""QueueWorker's dispatch cap: a lowered limit holds new conversations back, never loses them."""

from __future__ import annotations

import asyncio
from pathlib import Path

from bot.relay.worker import Done, Outcome, QueueWorker
from storage import open_store
from storage.base import WorkItem


def _items(conversations: int) -> list[WorkItem]:
    return [
        WorkItem(item_id=f"i{n}", queue="inbound", conversation=f"c{n}", kind="text",
                 payload={}, order_ts=float(n))
        for n in range(conversations)
    ]


async def test_lowered_limit_caps_conversations_in_flight_and_raising_it_resumes(
    tmp_path: Path,
) -> None:
    """With the limit at 2 only two conversations run at once; raised, the rest follow unasked."""
    store = open_store(str(tmp_path / "store.json"))
    await store.open()
    limit = 2
    in_flight = 0
    peak = 0
    release = asyncio.Event()
    done: list[str] = []

    async def process(item: WorkItem) -> Outcome:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        await release.wait()
        in_flight -= 1
        done.append(item.conversation)
        return Done()

    worker = QueueWorker(store, "inbound", process, concurrency=8, limit=lambda: limit)
    task = asyncio.create_task(worker.run())
    try:
        await store.enqueue(_items(6))
        worker.notify()
        for _ in range(100):
            if worker.in_flight == 2:
                break
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.05)
        assert worker.in_flight == 2 and peak == 2
        limit = 8  # no notify: the worker looks again by itself while held back
        for _ in range(100):
            if worker.in_flight == 6:
                break
            await asyncio.sleep(0.01)
        assert worker.in_flight == 6
        release.set()
        for _ in range(200):
            if len(done) == 6 and await store.queue_depth("inbound") == 0:
                break
            await asyncio.sleep(0.01)
        assert sorted(done) == [f"c{n}" for n in range(6)]
        assert await store.queue_depth("inbound") == 0
    finally:
        await worker.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
