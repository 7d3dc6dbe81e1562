"""Drain one durable work queue: conversations concurrently, each strictly in order.

The store hands out the head item of each conversation; a conversation being worked
on is excluded, so two items of one conversation never run at the same time. An item
leaves the queue only when its effect is done (at-least-once); effects are made
idempotent by the processors (deterministic ids), so a crash loses and duplicates
nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from storage.base import QueueName, Store, WorkItem, conversation_label

log = logging.getLogger("bot.relay")

#: While a lowered ``limit`` holds dispatching back, look again this often (seconds).
LIMIT_RECHECK = 0.1


@dataclass(frozen=True)
class Done:
    """The item's effect happened; delete it (and remember ``remember`` keys)."""

    remember: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Retry:
    """Keep the item and try again at ``at`` (epoch seconds)."""

    at: float
    reason: str


@dataclass(frozen=True)
class SetAside:
    """Give up on the item for good: keep it in the store's set-aside list, move on.

    For permanent refusals only (bounded retries already spent); the processor has told
    whoever must know before returning this. ``reason`` names the refusal, no secrets.
    """

    reason: str


Outcome = Done | Retry | SetAside
Processor = Callable[[WorkItem], Awaitable[Outcome]]


def retry_delay(attempts: int, *, base: float = 1.0, cap: float = 300.0) -> float:
    """Exponential backoff with full jitter: the n-th retry waits up to base·2ⁿ (≤ cap)."""
    return random.uniform(0.5, 1.0) * min(cap, base * 2 ** max(0, attempts - 1))


class QueueWorker:
    """Runs ``process`` over ``queue``; call :meth:`notify` after enqueueing."""

    def __init__(
        self,
        store: Store,
        queue: QueueName,
        process: Processor,
        *,
        concurrency: int = 32,
        clock: Callable[[], float] = time.time,
        idle_poll: float = 5.0,
        on_retry: Callable[[WorkItem, str], None] | None = None,
        limit: Callable[[], int] | None = None,
    ) -> None:
        self._store = store
        self._queue = queue
        self._process = process
        self._slots = asyncio.Semaphore(concurrency)
        self._concurrency = concurrency
        #: The current cap on conversations in flight (≤ ``concurrency``), asked before
        #: each dispatch; conversations already in flight are never cut short.
        self._limit = limit or (lambda: concurrency)
        self._clock = clock
        self._idle_poll = idle_poll
        self._on_retry = on_retry
        self._wake = asyncio.Event()
        self._busy: dict[str, asyncio.Task[None]] = {}
        self._stopping = False

    def notify(self) -> None:
        """New or rescheduled work exists; look now rather than at the next poll."""
        self._wake.set()

    @property
    def in_flight(self) -> int:
        return len(self._busy)

    async def run(self) -> None:
        """Dispatch until :meth:`stop`; never returns on a processing error."""
        while not self._stopping:
            self._wake.clear()
            free = min(self._concurrency, self._limit()) - len(self._busy)
            if free > 0:
                now = self._clock()
                items = await self._store.next_items(
                    self._queue, now, exclude=set(self._busy), limit=free
                )
                for item in items:
                    name = f"{self._queue}:{item.conversation}"
                    self._busy[item.conversation] = asyncio.create_task(
                        self._drain(item), name=name
                    )
            await self._sleep_until_work()

    async def _sleep_until_work(self) -> None:
        if self._wake.is_set():
            # Work was signalled while dispatching (a conversation finished, an item
            # arrived): look again at once. Asking earliest_due first would cost a
            # query per finished conversation (PostgreSQL: a scan of every head).
            return
        limit = self._limit()
        if min(self._concurrency, limit) - len(self._busy) <= 0:
            # A finishing conversation wakes us; a lowered limit may also rise meanwhile.
            # No slot is free, so when the next item is due does not matter yet.
            timeout = self._idle_poll if limit >= self._concurrency else LIMIT_RECHECK
        else:
            timeout = self._idle_poll
            due = await self._store.earliest_due(self._queue)
            if due is not None:
                timeout = max(0.0, min(timeout, due - self._clock()))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout=max(timeout, 0.001))

    async def stop(self) -> None:
        """Stop dispatching and wait for in-flight conversations to reach a safe point."""
        self._stopping = True
        self._wake.set()
        tasks = list(self._busy.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _drain(self, item: WorkItem | None) -> None:
        conversation = item.conversation if item else ""
        try:
            while item is not None and not self._stopping:
                outcome = await self._attempt(item)
                if isinstance(outcome, Retry):
                    item.attempts += 1
                    item.next_try_at = outcome.at
                    item.last_error = outcome.reason
                    await self._store.update_item(item)
                    if self._on_retry:
                        self._on_retry(item, outcome.reason)
                    return
                if isinstance(outcome, SetAside):
                    log.warning("%s item %s (%s) set aside: %s", self._queue, item.item_id,
                                item.kind, outcome.reason)
                    await self._store.set_aside(item, outcome.reason)
                    item = await self._store.head(self._queue, conversation)
                else:
                    item = await self._store.complete_then_head(
                        item, remember=outcome.remember or None)
                if item is not None and item.next_try_at > self._clock():
                    return
        except asyncio.CancelledError:
            raise
        except Exception:
            # Storage failed: the item stays queued; the next pass retries it.
            page_id, _, igsid = conversation.partition(":")
            log.exception("%s worker: storage error in conversation %s", self._queue,
                          conversation_label(page_id, igsid))
        finally:
            self._busy.pop(conversation, None)
            self._wake.set()

    async def _attempt(self, item: WorkItem) -> Outcome:
        try:
            return await self._process(item)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # A bug must not lose the item nor spin on it: keep it, back off.
            delay = retry_delay(item.attempts + 1, base=5.0, cap=3600.0)
            log.exception(
                "%s item %s (%s) failed unexpectedly; retry in %.0f s",
                self._queue, item.item_id, item.kind, delay,
            )
            return Retry(self._clock() + delay, f"internal error: {type(exc).__name__}")
