"""Memory with 100,000 conversations: process RSS, store open time, file sizes.

Run: ``python -m tests.benchmarks.bench_rss [--conversations 100000] [--quick] [--json PATH]``
or, for the PostgreSQL store, ``python -m tests.benchmarks.bench_rss --store postgres
[--conversations 10000 100000 1000000] [--store-url URL]`` (see "PostgreSQL" below).

1. Fill (this process): a fresh store gets 3 connected pages, ``--conversations``
   conversations (registered visitors with rooms, spread over the pages, active within
   the last 80 days so none expires), one relayed message per conversation (its dedupe
   key stays remembered for 24 h), 2,000 inbound items still pending over 2,000
   conversations and 500 outbound ones over 500. RSS before and after; clean close.
2. Reopen (a fresh child process, as after a restart): RSS before and after
   ``open()``, open time, peak RSS (VmHWM), and one lookup by visitor token.
3. The bot (``rc-instagram run`` against the sandbox Rocket.Chat, a child process):
   RSS with an empty store and with a copy of the filled one, once it is connected.

RSS is VmRSS from /proc (Linux); file sizes are of the store's files after the close.

PostgreSQL (``--store postgres``; a throwaway local cluster unless ``--store-url``, see
:mod:`tests.benchmarks.stores`): one schema grows through the sizes given (default
10,000, 100,000 and 1,000,000 conversations) and at each size the bot's RSS is measured
the same way (3.), plus a fresh process's RSS and time for ``open()`` and one lookup
(2.) and the database's size. The rows are written by :func:`bulk_fill_postgres` —
``COPY`` of the conversations (the same records as 1., in the store's row format) and
of one remembered dedupe key per conversation — not by the bot's per-item calls, which
would take hours for a million; pages and the pending items (2,000 inbound, 500
outbound, fresh ids at every size, the previous size's deleted) go through the store's
own ``save_page``/``enqueue``. The relay then works on those pending items while the
bot's RSS is read, as with TinyDB.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import gc
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from storage import DEFAULT_DEDUPE_TTL, Conversation, Page, TinyDBStore, WorkItem, open_store
from tests.benchmarks import stores as bench_stores
from tests.benchmarks.stores import BenchStores

ROOT = Path(__file__).resolve().parents[2]
PAGES = [("page-1001", "ig-1001"), ("page-1002", "ig-1002"), ("page-1003", "ig-1003")]
PENDING_INBOUND = 2000
PENDING_OUTBOUND = 500
CHUNK = 2000


def rss_mb(pid: int | str = "self", field: str = "VmRSS") -> float:
    """A memory figure of a process from /proc/<pid>/status, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/{pid}/status")


def conversation(n: int, now: float, rng: random.Random) -> Conversation:
    page_id, _ = PAGES[n % len(PAGES)]
    igsid = f"{17841400000000000 + n}"
    return Conversation(
        page_id=page_id, igsid=igsid, visitor_token=f"instagram-{page_id}-{igsid}",
        visitor_name=f"Visitor {n}", visitor_registered=True,
        room_id="".join(rng.choices("ABCDEFGHJKLMNPQRSTWXYZabcdefghijkmnopqrstuvwxyz23456789",
                                    k=17)),
        last_inbound_at=now - rng.uniform(0, 80 * 24 * 3600),
    )


def mid_of(n: int) -> str:
    return f"aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQx{n:012d}"


def inbound(n: int, conv: Conversation, now: float) -> WorkItem:
    mid = mid_of(n)
    return WorkItem(
        item_id=f"ig:{mid}", queue="inbound", conversation=conv.key, kind="message",
        order_ts=now, payload={
            "sender": {"id": conv.igsid}, "recipient": {"id": "ig"},
            "timestamp": int(now * 1000),
            "message": {"mid": mid, "text": "Hi! Is the blue one still available in M?"},
        },
    )


def outbound(n: int, conv: Conversation, now: float) -> WorkItem:
    return WorkItem(
        item_id=f"rc:out{n:012d}", queue="outbound", conversation=conv.key, kind="message",
        order_ts=now, payload={"rid": conv.room_id, "text": "Yes, we have it in M.",
                               "agent": "agent.ana", "_id": f"out{n:012d}"},
    )


async def gather_chunked(coros: list[Any]) -> None:
    for start in range(0, len(coros), CHUNK):
        await asyncio.gather(*coros[start:start + CHUNK])


async def fill(path: str, count: int) -> dict[str, Any]:
    rng = random.Random(8)
    now = time.time()
    rss_start = rss_mb()
    started = time.perf_counter()
    store = open_store(path)
    await store.open()
    for page_id, ig_id in PAGES:
        await store.save_page(Page(
            page_id=page_id, name=f"Shop {page_id}", instagram_id=ig_id, username="shop",
            page_token="EAAG" + "x" * 180, user_token="EAAG" + "y" * 180,
            department_id="dept1", welcome_text="Welcome! An agent will answer shortly.",
            connected_at=now,
        ))
    convs = [conversation(n, now, rng) for n in range(count)]
    await gather_chunked([store.save_conversation(c) for c in convs])
    items = [inbound(n, c, now) for n, c in enumerate(convs)]
    for start in range(0, len(items), 1000):
        await store.enqueue(items[start:start + 1000])
    # Relay the history: everything but the last PENDING_INBOUND items is done.
    await gather_chunked([store.complete(i) for i in items[:count - PENDING_INBOUND]])
    await store.enqueue([outbound(n, convs[n], now) for n in range(PENDING_OUTBOUND)])
    fill_seconds = time.perf_counter() - started
    stats = await store.stats()
    del convs, items  # the generator's own copies; what stays is the store's
    gc.collect()
    rss_filled = rss_mb()
    started = time.perf_counter()
    await store.close()
    close_seconds = time.perf_counter() - started
    return {
        "conversations": count,
        "fill_seconds": fill_seconds,
        "close_seconds": close_seconds,
        "fill_rss_start_mb": rss_start,
        "fill_rss_filled_mb": rss_filled,
        "store_conversations": stats.get("conversations", -1),
        "store_dedupe_keys": stats.get("dedupe_keys", -1),
        "store_inbound_pending": stats.get("inbound", -1),
        "store_outbound_pending": stats.get("outbound", -1),
    }


async def reopen(path: str) -> dict[str, Any]:
    """Run in a fresh process: what a restart with this store costs."""
    rss_before = rss_mb()
    started = time.perf_counter()
    store = open_store(path)
    await store.open()
    open_seconds = time.perf_counter() - started
    found = await store.conversation_by_token(f"instagram-{PAGES[1][0]}-{17841400000000001}")
    rss_after = rss_mb()
    peak = rss_mb(field="VmHWM")
    if isinstance(store, TinyDBStore):
        await store.close(compact=False)
    else:
        await store.close()
    return {
        "reopen_rss_before_mb": rss_before,
        "reopen_rss_after_mb": rss_after,
        "reopen_rss_peak_mb": peak,
        "open_seconds": open_seconds,
        "lookup_ok": found is not None,
    }


def file_sizes(path: str) -> dict[str, float]:
    folder = Path(path).parent
    sizes = {f"file_{p.name}_mb": p.stat().st_size / 2**20 for p in sorted(folder.iterdir())
             if p.is_file() and p.suffix != ".lock"}
    sizes["files_total_mb"] = sum(sizes.values())
    return sizes


async def bot_rss(store_path: str, settle: float = 2.0, *, workdir: Path | None = None,
                  storage: dict[str, str] | None = None) -> float:
    """RSS of ``rc-instagram run`` on ``store_path`` once connected to the sandbox.

    ``workdir`` holds its config and log (default: the store file's folder), ``storage``
    is the config's storage section (default: the TinyDB file at ``store_path``).
    """
    import aiohttp
    import yaml

    from sandbox.meta import SandboxMeta
    from sandbox.rocketchat import SandboxRocketChat
    from tests.scenarios.harness import config_dict, free_port, setup_rocketchat

    rc = SandboxRocketChat().start()
    meta = SandboxMeta().start()
    try:
        rc.set_setting("API_Enable_Rate_Limiter", False)
        setup_rocketchat(rc)
        port = free_port()
        folder = workdir or Path(store_path).parent
        config = folder / "config.yaml"
        raw = config_dict(rc.url, meta, store_path, f"127.0.0.1:{port}")
        if storage is not None:
            raw["storage"] = storage
        config.write_text(yaml.safe_dump(raw))
        exe = Path(sys.executable).parent / "rc-instagram"
        with (folder / "bot.log").open("ab") as log:
            proc = subprocess.Popen(
                [str(exe), "run", "--config", str(config), "--log-level", "WARNING"],
                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            async with aiohttp.ClientSession() as session:
                for _ in range(1200):
                    if proc.poll() is not None:
                        raise RuntimeError(f"rc-instagram exited with {proc.returncode}")
                    with contextlib.suppress(aiohttp.ClientError):
                        async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                            if (await resp.json()).get("realtime"):
                                break
                    await asyncio.sleep(0.05)
                else:
                    raise RuntimeError("rc-instagram did not connect")
            await asyncio.sleep(settle)
            return rss_mb(proc.pid)
        finally:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    finally:
        rc.stop()
        meta.stop()

def bulk_fill_postgres(url: str, start: int, stop: int, now: float) -> None:
    """Conversations ``start``..``stop - 1`` (as :func:`conversation`) by ``COPY``.

    The rows are what :meth:`PostgresStore.save_conversation` writes (key, token,
    updated_at, waiting, the record as JSON), plus one remembered dedupe key per
    conversation (its relayed message, as :meth:`PostgresStore.complete` keeps it), in
    one transaction; then ``ANALYZE``. For benchmarks only: it bypasses the store.
    """
    rng = random.Random(8 + start)
    exp = now + DEFAULT_DEDUPE_TTL
    with psycopg.connect(url) as conn:
        with conn.cursor() as cur:
            with cur.copy("COPY rcig_conversations (key, visitor_token, updated_at, waiting, "
                          "doc) FROM STDIN") as copy:
                for n in range(start, stop):
                    conv = conversation(n, now, rng)
                    conv.updated_at = now
                    copy.write_row((conv.key, conv.visitor_token, now, False,
                                    json.dumps(dataclasses.asdict(conv))))
            with cur.copy("COPY rcig_dedupe (key, exp) FROM STDIN") as copy:
                for n in range(start, stop):
                    copy.write_row((f"ig:{mid_of(n)}", exp))
        conn.commit()
        conn.autocommit = True
        conn.execute("ANALYZE")


async def reset_pending(url: str, count: int, generation: int, now: float) -> None:
    """The pending work of 1., fresh: 2,000 inbound and 500 outbound items (new ids)."""
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DELETE FROM rcig_items")
        conn.execute("DELETE FROM rcig_inbox")
    rng = random.Random(generation)
    store = open_store(url)
    await store.open()
    try:
        base = (generation + 1) * 10_000_000  # ids no earlier size used
        picks = rng.sample(range(count), PENDING_INBOUND)
        await store.enqueue([inbound(base + k, conversation(n, now, rng), now)
                             for k, n in enumerate(picks)])
        await store.enqueue([outbound(base + k, conversation(n, now, rng), now)
                             for k, n in enumerate(picks[:PENDING_OUTBOUND])])
    finally:
        await store.close()


def database_mb(url: str) -> float:
    """The store's tables and indexes (its schema), in MiB."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'm')").fetchone()
    return int(row[0]) / 2**20 if row else 0.0


async def run_postgres(stores: BenchStores, counts: list[int]) -> dict[str, Any]:
    """Bot RSS with the PostgreSQL store at each size of ``counts`` (one growing schema)."""
    now = time.time()
    figures: dict[str, Any] = {"store": "postgres", "sizes": counts}
    with tempfile.TemporaryDirectory(prefix="bench-rss-pg-") as tmp:
        workdir = Path(tmp)
        url = stores.location(workdir)
        storage = stores.storage_config(url)
        store = open_store(url)
        await store.open()
        for page_id, ig_id in PAGES:
            await store.save_page(Page(
                page_id=page_id, name=f"Shop {page_id}", instagram_id=ig_id, username="shop",
                page_token="EAAG" + "x" * 180, user_token="EAAG" + "y" * 180,
                department_id="dept1", welcome_text="Welcome! An agent will answer shortly.",
                connected_at=now,
            ))
        await store.close()
        figures["bot_rss_empty_store_mb"] = await bot_rss(url, workdir=workdir, storage=storage)
        print(f"  empty store: bot RSS {figures['bot_rss_empty_store_mb']:.1f} MiB", flush=True)
        filled = 0
        for generation, count in enumerate(sorted(counts)):
            started = time.perf_counter()
            bulk_fill_postgres(url, filled, count, now)
            filled = count
            await reset_pending(url, count, generation, now)
            fill_seconds = time.perf_counter() - started
            child = subprocess.run(
                [sys.executable, "-m", "tests.benchmarks.bench_rss", "--reopen", url],
                cwd=ROOT, capture_output=True, text=True, check=True)
            reopened = json.loads(child.stdout.strip().splitlines()[-1])
            rss = await bot_rss(url, workdir=workdir, storage=storage)
            size = database_mb(url)
            figures.update({
                f"bot_rss_{count}_mb": rss,
                f"fill_seconds_{count}": fill_seconds,
                f"open_seconds_{count}": reopened["open_seconds"],
                f"reopen_rss_after_{count}_mb": reopened["reopen_rss_after_mb"],
                f"lookup_ok_{count}": reopened["lookup_ok"],
                f"database_{count}_mb": size,
            })
            print(f"  {count:>9,} conversations (+{count:,} dedupe keys, {PENDING_INBOUND} "
                  f"inbound and {PENDING_OUTBOUND} outbound pending): bulk fill "
                  f"{fill_seconds:.1f} s; bot RSS {rss:.1f} MiB; a fresh process's open "
                  f"{reopened['open_seconds']:.2f} s, RSS {reopened['reopen_rss_after_mb']:.1f}"
                  f" MiB; database {size:.0f} MiB", flush=True)
    largest, smallest = max(counts), min(counts)
    figures["conversations"] = largest
    figures["bot_rss_filled_store_mb"] = figures[f"bot_rss_{largest}_mb"]
    figures["bot_rss_growth_mb"] = (figures[f"bot_rss_{largest}_mb"]
                                    - figures[f"bot_rss_{smallest}_mb"])
    figures["bot_rss_per_conversation_kb"] = (
        (figures["bot_rss_filled_store_mb"] - figures["bot_rss_empty_store_mb"]) * 1024
        / largest)
    figures["open_seconds"] = figures[f"open_seconds_{largest}"]
    figures["reopen_rss_after_mb"] = figures[f"reopen_rss_after_{largest}_mb"]
    figures["database_mb"] = figures[f"database_{largest}_mb"]
    return figures


async def run(count: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-rss-") as tmp:
        path = os.path.join(tmp, "filled", "rc-instagram.json")
        figures = await fill(path, count)
        figures.update(file_sizes(path))
        child = subprocess.run(
            [sys.executable, "-m", "tests.benchmarks.bench_rss", "--reopen", path],
            cwd=ROOT, capture_output=True, text=True, check=True)
        figures.update(json.loads(child.stdout.strip().splitlines()[-1]))
        empty = os.path.join(tmp, "empty", "rc-instagram.json")
        os.makedirs(os.path.dirname(empty))
        figures["bot_rss_empty_store_mb"] = await bot_rss(empty)
        copy = os.path.join(tmp, "bot", "rc-instagram.json")
        shutil.copytree(os.path.dirname(path), os.path.dirname(copy))
        with contextlib.suppress(FileNotFoundError):
            os.remove(os.path.join(os.path.dirname(copy), "rc-instagram.lock"))
        figures["bot_rss_filled_store_mb"] = await bot_rss(copy)
    figures["bot_rss_per_conversation_kb"] = (
        (figures["bot_rss_filled_store_mb"] - figures["bot_rss_empty_store_mb"]) * 1024 / count)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--conversations", type=int, nargs="+",
                        help="conversations (TinyDB: one size, default 100,000; "
                             "PostgreSQL: the sizes, default 10,000 100,000 1,000,000)")
    parser.add_argument("--quick", action="store_true",
                        help="10,000 conversations (PostgreSQL: 10,000 and 30,000)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    bench_stores.add_arguments(parser)
    parser.add_argument("--reopen", metavar="PATH", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    if args.reopen:
        print(json.dumps(asyncio.run(reopen(args.reopen))))
        return
    with BenchStores.from_args(args) as stores:
        if stores.kind == "postgres":
            counts = ([10_000, 30_000] if args.quick
                      else args.conversations or [10_000, 100_000, 1_000_000])
            print(f"memory with the PostgreSQL store at {', '.join(f'{c:,}' for c in counts)}"
                  f" conversations (3 pages)", flush=True)
            figures = asyncio.run(run_postgres(stores, counts))
            print(f"  bot RSS grew {figures['bot_rss_growth_mb']:.1f} MiB from "
                  f"{min(counts):,} to {max(counts):,} conversations")
            if args.json:
                args.json.write_text(json.dumps(figures, indent=2))
            return
    if args.conversations and len(args.conversations) > 1:
        parser.error("the TinyDB store takes one --conversations size per run")
    count = 10_000 if args.quick else (args.conversations or [100_000])[0]
    figures = asyncio.run(run(count))
    print(f"memory with {count} conversations "
          f"(+{figures['store_dedupe_keys']} dedupe keys, "
          f"{figures['store_inbound_pending']} inbound and "
          f"{figures['store_outbound_pending']} outbound items pending, 3 pages)")
    print(f"  fill: {figures['fill_seconds']:.1f} s; RSS {figures['fill_rss_start_mb']:.1f} -> "
          f"{figures['fill_rss_filled_mb']:.1f} MiB; clean close {figures['close_seconds']:.2f} s")
    print(f"  restart: open {figures['open_seconds']:.2f} s; RSS "
          f"{figures['reopen_rss_before_mb']:.1f} -> {figures['reopen_rss_after_mb']:.1f} MiB "
          f"(peak {figures['reopen_rss_peak_mb']:.1f})")
    print(f"  bot process RSS: empty store {figures['bot_rss_empty_store_mb']:.1f} MiB, "
          f"with the store {figures['bot_rss_filled_store_mb']:.1f} MiB "
          f"({figures['bot_rss_per_conversation_kb']:.2f} KiB per conversation)")
    files = ", ".join(f"{k[5:-3]} {v:.1f}" for k, v in figures.items()
                      if k.startswith("file_"))
    print(f"  files (MiB): {files}; total {figures['files_total_mb']:.1f}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
