"""Storage benchmark: durable acknowledgements per second, latency, and flat cost.

Run: ``python -m tests.benchmarks.bench_storage [--items N] [--history N] [--path DIR]``

Every figure is *durable*: a call counts only when its await returned, i.e. after
the batch holding it was fsynced. Scenarios:

- ``enqueue, 1 producer``: one webhook at a time (pure latency, one fsync each).
- ``enqueue, N producers``: N concurrent webhooks (group commit shares fsyncs).
- ``pipeline``: N producers enqueue while a dispatcher and workers process each item
  as the relay would (head -> save conversation -> complete); acks/s counts items
  fully processed; at most 2,000 items are pending at a time (steady state).
- ``flat cost``: the pipeline run for ``--history`` items (default 100,000) with every
  dedupe key kept (24 h TTL) and conversations spread over 5,000 visitors; then
  throughput over 1,000 more items is compared with a fresh store's first 1,000, in
  interleaved rounds so that other load on the machine affects both sides alike.

The process exits 1 if a target is missed (>= 2,000 durable acks/s concurrent,
flat-cost ratio >= 0.80).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field

from storage import Conversation, WorkItem, conversation_key, open_store

TARGET_ACKS = 2000.0
TARGET_RATIO = 0.80
WINDOW = 1000


@dataclass
class Result:
    name: str
    items: int
    seconds: float
    latencies: list[float] = field(default_factory=list)
    cpu: float = 0.0  # process CPU seconds

    @property
    def rate(self) -> float:
        return self.items / self.seconds

    def percentile(self, p: float) -> float | None:
        if not self.latencies:
            return None
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000


def make_item(n: int, conversations: int) -> WorkItem:
    igsid = f"u{n % conversations}"
    return WorkItem(
        item_id=f"mid.{n:09d}",
        queue="inbound",
        conversation=conversation_key("page1", igsid),
        kind="message",
        payload={
            "sender": igsid,
            "recipient": "ig-page1",
            "timestamp": 1_700_000_000_000 + n,
            "message": {"mid": f"mid.{n:09d}", "text": "Hello, is this still available?"},
        },
    )


async def bench_enqueue(path: str, items: int, producers: int) -> Result:
    store = open_store(path)
    await store.open()
    numbers = iter(range(items))
    latencies: list[float] = []

    async def producer() -> None:
        for n in numbers:
            started = time.perf_counter()
            await store.enqueue([make_item(n, 1000)])
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(producer() for _ in range(producers)))
    elapsed = time.perf_counter() - started
    await store.close(compact=False)
    return Result(
        f"enqueue, {producers} producer{'s' * (producers > 1)}", items, elapsed, latencies
    )


class Pipeline:
    """The relay's shape on one open store: producers enqueue; a dispatcher hands heads
    to workers that read + save the conversation and complete the item.

    At most ``max_backlog`` items are pending (producers wait, as Meta would see
    slower answers), so a run measures a steady state rather than a growing queue.
    ``run`` may be called repeatedly; numbering continues, so history accumulates.
    """

    def __init__(
        self, path: str, producers: int, conversations: int, max_backlog: int = 2000
    ) -> None:
        self.store = open_store(path)
        self.producers = producers
        self.conversations = conversations
        self.max_backlog = max_backlog
        self.next_number = 0

    async def open(self) -> Pipeline:
        await self.store.open()
        return self

    async def close(self) -> None:
        await self.store.close(compact=False)

    async def run(self, items: int, name: str = "") -> Result:
        store = self.store
        numbers = iter(range(self.next_number, self.next_number + items))
        self.next_number += items
        latencies: list[float] = []
        claimed: set[str] = set()
        work: asyncio.Queue[WorkItem] = asyncio.Queue()
        done = asyncio.Event()
        backlog = asyncio.Semaphore(self.max_backlog)
        completed = 0

        async def producer() -> None:
            for n in numbers:
                await backlog.acquire()
                started = time.perf_counter()
                await store.enqueue([make_item(n, self.conversations)])
                latencies.append(time.perf_counter() - started)

        async def dispatcher() -> None:
            while not done.is_set():
                heads = await store.next_items("inbound", time.time(), set(claimed), 256)
                for head in heads:
                    if head.conversation not in claimed:
                        claimed.add(head.conversation)
                        work.put_nowait(head)
                await asyncio.sleep(0 if heads else 0.001)

        async def worker() -> None:
            nonlocal completed
            while True:
                head = await work.get()
                page_id, igsid = head.conversation.split(":", 1)
                conv = await store.conversation(page_id, igsid) or Conversation(
                    page_id, igsid, f"instagram-{page_id}-{igsid}"
                )
                conv.last_inbound_at = time.time()
                await store.save_conversation(conv)
                await store.complete(head)
                claimed.discard(head.conversation)
                backlog.release()
                completed += 1
                if completed == items:
                    done.set()

        workers = [asyncio.create_task(worker()) for _ in range(self.producers)]
        started = time.perf_counter()
        cpu_started = time.process_time()
        await asyncio.gather(*(producer() for _ in range(self.producers)), dispatcher())
        elapsed = time.perf_counter() - started
        cpu = time.process_time() - cpu_started
        for task in workers:
            task.cancel()
        result = Result(name or f"pipeline, {self.producers} producers", items, elapsed, latencies)
        result.cpu = cpu
        return result


async def bench_flat(base: str, history: int, producers: int, rounds: int = 5) -> dict:
    """Throughput over a fresh store's first 1,000 items vs. 1,000 items after ``history``.

    Measured as interleaved A/B rounds (fresh store, aged store, fresh, aged, ...) so
    that load from other processes on the machine hits both sides alike; the ratio is
    of the medians. CPU seconds per item are compared too (insensitive to such load).
    """
    aged = await Pipeline(os.path.join(base, "aged", "rc-instagram.json"), producers, 5000).open()
    history_run = await aged.run(history, f"pipeline, {history // 1000}k history")
    fresh_rates, aged_rates, fresh_cpu, aged_cpu = [], [], [], []
    for round_ in range(rounds):
        path = os.path.join(base, f"fresh{round_}", "rc-instagram.json")
        fresh = await Pipeline(path, producers, 5000).open()
        first = await fresh.run(WINDOW)
        await fresh.close()
        later = await aged.run(WINDOW)
        fresh_rates.append(first.rate)
        aged_rates.append(later.rate)
        fresh_cpu.append(first.cpu / WINDOW)
        aged_cpu.append(later.cpu / WINDOW)
    stats = await aged.store.stats()
    await aged.close()
    return {
        "history": history_run,
        "fresh": statistics.median(fresh_rates),
        "aged": statistics.median(aged_rates),
        "fresh_cpu": statistics.median(fresh_cpu),
        "aged_cpu": statistics.median(aged_cpu),
        "stats": stats,
    }


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


async def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000, help="items per throughput run")
    parser.add_argument("--history", type=int, default=100_000, help="items before flat check")
    parser.add_argument("--producers", type=int, default=64, help="concurrent producers")
    parser.add_argument("--path", help="directory for the data files (default: a temp dir)")
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args(argv)

    if args.path is None:
        with tempfile.TemporaryDirectory(prefix="rc-instagram-bench-") as base:
            return await run_all(args, base)
    os.makedirs(args.path, exist_ok=True)
    return await run_all(args, args.path)


async def run_all(args: argparse.Namespace, base: str) -> int:

    def fresh(name: str) -> str:
        return os.path.join(base, name, "rc-instagram.json")

    print(f"storage benchmark — data in {base}, {os.cpu_count()} CPUs", flush=True)
    results = [
        await bench_enqueue(fresh("seq"), min(args.items, 3000), 1),
        await bench_enqueue(fresh("conc"), args.items, args.producers),
    ]
    pipeline = await Pipeline(fresh("pipe"), args.producers, 1000).open()
    results.append(await pipeline.run(args.items))
    await pipeline.close()
    flat = await bench_flat(base, args.history, args.producers)
    results.append(flat["history"])

    print()
    print(f"{'scenario':<34}{'items':>9}{'acks/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
    for r in results:
        print(
            f"{r.name:<34}{r.items:>9}{r.rate:>10.0f}"
            f"{fmt(r.percentile(0.50), '.2f'):>9}{fmt(r.percentile(0.99), '.2f'):>9}"
        )
    ratio = flat["aged"] / flat["fresh"]
    cpu_ratio = flat["fresh_cpu"] / flat["aged_cpu"]
    stats = flat["stats"]
    print()
    print(f"flat cost ({WINDOW}-item windows, median of 5 interleaved rounds):")
    print(
        f"  fresh store, first {WINDOW} items      {flat['fresh']:>8.0f} items/s"
        f"  {flat['fresh_cpu'] * 1e6:>6.0f} us CPU/item"
    )
    print(
        f"  after {args.history} items            {flat['aged']:>8.0f} items/s"
        f"  {flat['aged_cpu'] * 1e6:>6.0f} us CPU/item"
    )
    print(
        f"  (aged store holds {stats['dedupe_keys']} dedupe keys, "
        f"{stats['conversations']} conversations; {stats['compactions']} compactions)"
    )
    print(
        f"  ratio after/first: throughput {ratio:.2f}, CPU efficiency {cpu_ratio:.2f}"
        f"  (target >= {TARGET_RATIO})"
    )

    concurrent = results[1].rate
    ok = concurrent >= TARGET_ACKS and ratio >= TARGET_RATIO
    print(
        f"\ndurable enqueue acks/s with {args.producers} producers: {concurrent:.0f} "
        f"(target >= {TARGET_ACKS:.0f}); flat ratio {ratio:.2f} -> {'PASS' if ok else 'FAIL'}"
    )
    if args.json:
        figures = {
            "producers": args.producers,
            "enqueue_1_producer_acks_s": results[0].rate,
            "enqueue_concurrent_acks_s": concurrent,
            "enqueue_concurrent_p99_ms": results[1].percentile(0.99),
            "pipeline_items_s": results[2].rate,
            "pipeline_with_history_items_s": results[3].rate,
            "history_items": args.history,
            "flat_first_1k_items_s": flat["fresh"],
            "flat_after_history_items_s": flat["aged"],
            "flat_ratio": ratio,
            "flat_cpu_ratio": cpu_ratio,
        }
        with open(args.json, "w") as out:
            json.dump(figures, out, indent=2)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
