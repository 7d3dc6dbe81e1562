"""Memory with 100,000 conversations: process RSS, store open time, file sizes.

Run: ``python -m tests.benchmarks.bench_rss [--conversations 100000] [--quick] [--json PATH]``

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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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

from storage import Conversation, Page, WorkItem, open_store

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


def inbound(n: int, conv: Conversation, now: float) -> WorkItem:
    mid = f"aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOjE3ODQx{n:012d}"
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
    await store.close(compact=False)
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


async def bot_rss(store_path: str, settle: float = 2.0) -> float:
    """RSS of ``rc-instagram run`` on ``store_path`` once connected to the sandbox."""
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
        config = Path(store_path).parent / "config.yaml"
        config.write_text(yaml.safe_dump(
            config_dict(rc.url, meta, store_path, f"127.0.0.1:{port}")))
        exe = Path(sys.executable).parent / "rc-instagram"
        with (Path(store_path).parent / "bot.log").open("ab") as log:
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
    parser.add_argument("--conversations", type=int, default=100_000)
    parser.add_argument("--quick", action="store_true", help="10,000 conversations")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--reopen", metavar="PATH", help=argparse.SUPPRESS)  # child mode
    args = parser.parse_args()
    if args.reopen:
        print(json.dumps(asyncio.run(reopen(args.reopen))))
        return
    count = 10_000 if args.quick else args.conversations
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
