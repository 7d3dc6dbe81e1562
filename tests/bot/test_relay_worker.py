"""QueueWorker's dispatch cap: a lowered limit holds new conversations back, never loses them."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from pytest_mock import MockerFixture

from bot.relay.worker import Done, Outcome, QueueWorker
from storage import open_store
from storage.base import WorkItem, conversation_label


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


async def test_full_worker_does_not_query_when_the_next_item_is_due(tmp_path: Path) -> None:
    """With every slot busy the worker waits for a finish, not for earliest_due answers.

    On PostgreSQL earliest_due scans every head; a full relay asked it after each dispatch
    and threw the answer away (bench_inbound (b2): once per conversation).
    """
    store = open_store(str(tmp_path / "store.json"))
    await store.open()
    asked = 0
    earliest_due = store.earliest_due

    async def counted(queue: str) -> float | None:
        nonlocal asked
        asked += 1
        return await earliest_due(queue)  # type: ignore[arg-type]

    store.earliest_due = counted  # type: ignore[method-assign]
    release = asyncio.Event()
    done: list[str] = []

    async def process(item: WorkItem) -> Outcome:
        await release.wait()
        done.append(item.conversation)
        return Done()

    worker = QueueWorker(store, "inbound", process, concurrency=2, idle_poll=0.05)
    task = asyncio.create_task(worker.run())
    try:
        await store.enqueue(_items(4))
        worker.notify()
        for _ in range(100):
            if worker.in_flight == 2:
                break
            await asyncio.sleep(0.01)
        asked_when_full = asked
        await asyncio.sleep(0.3)  # six idle polls with both slots busy
        assert worker.in_flight == 2 and asked == asked_when_full
        release.set()
        for _ in range(200):
            if len(done) == 4:
                break
            await asyncio.sleep(0.01)
        assert sorted(done) == [f"c{n}" for n in range(4)]
    finally:
        await worker.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()


async def test_storage_error_keeps_the_item_and_logs_no_igsid(
    tmp_path: Path, mocker: MockerFixture, caplog: pytest.LogCaptureFixture
) -> None:
    """A store that fails to complete an item leaves it queued for the next pass, and the
    error line names the conversation by its label, never by the visitor's IGSID."""
    store = open_store(str(tmp_path / "store.json"))
    await store.open()
    igsid = "6543210000007919"
    item = WorkItem(item_id="i0", queue="inbound", conversation=f"p1:{igsid}", kind="text",
                    payload={}, order_ts=1.0)
    mocker.patch.object(store, "complete_then_head", side_effect=OSError("disk unplugged"))
    processed: list[str] = []

    async def process(item: WorkItem) -> Outcome:
        processed.append(item.item_id)
        return Done()

    worker = QueueWorker(store, "inbound", process, concurrency=1)
    task = asyncio.create_task(worker.run())
    try:
        await store.enqueue([item])
        worker.notify()
        for _ in range(200):
            if any("storage error" in r.getMessage() for r in caplog.records):
                break
            await asyncio.sleep(0.01)
        # The next pass may already have failed again: every such line is checked.
        lines = [r.getMessage() for r in caplog.records if "storage error" in r.getMessage()]
        assert lines
        assert all(conversation_label("p1", igsid) in line and igsid not in line
                   for line in lines), lines
        assert await store.queue_depth("inbound") == 1 and processed[:1] == ["i0"]
    finally:
        await worker.stop()
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await store.close()
