"""Inbound benchmark: webhook acknowledgement, end-to-end throughput, end-to-end latency.

Run: ``python -m tests.benchmarks.bench_inbound [--quick] [--store postgres] [--parts ...]``.
Prints its figures.

(a) Acknowledged webhooks/s and latency percentiles of ``POST /webhooks/instagram`` on the
    real bot (``rc-instagram run`` in a child process, relaying meanwhile), side by side
    with a no-op aiohttp handler (also a child process); the ratio bot/no-op is the
    figure of merit (goal ≥ 0.5), and p99 of the acknowledgement (goal < 50 ms).
    What is compared, exactly: the same load generator (aiohttp client, in a child
    process of its own, ``concurrency`` keep-alive connections, each POSTing its next
    body as soon as the previous answer arrived) sends each server 200 warm-up bodies,
    then the measured bodies: signed webhooks of one text message each, built the same
    way for both (same 1,000 visitors, same sizes, fresh message ids). The no-op
    handler reads the body and answers ``EVENT_RECEIVED`` (no signature check, no JSON,
    no storage, no relaying). The bot verifies the HMAC, checks the JSON, appends the
    body to its inbox with an fsync and answers; the intake (routing, parsing, the
    TinyDB queues) and the relay run in the same process. The relay posts every
    message to the sandbox Rocket.Chat (no injected latency; first contacts also fetch
    a profile, register the visitor and open a room); by design it gives way to the
    receiver during a storm like this one (bot/relay/pressure.py: the intake waits up to
    2 s, relay calls trickle at 20/s until 1 s after the storm), so the run also reports
    how long after the last acknowledgement every message of the run was in its room.
    Note: the warm-up is itself a storm, and the measured bodies follow it within that
    second, so the relay is already paced when they start; (a3) measures the other case.
    The sandboxes run in
    this process; the load generator has its own so that, during the bot's run only,
    it does not share an interpreter (GIL) with the sandbox Rocket.Chat serving the
    relay. All processes share the machine's cores. The no-op anchor alone varies by
    ±30% from run to run on a shared VM, so the three servers take turns for
    ``--rounds`` rounds (default 5) and the medians of the per-round figures are reported.
(a2) Durable ingest only: the same load (same generator, warm-up, bodies, concurrency)
    against a fresh real bot whose relay cannot make progress: once the bot has logged
    in, the sandbox Rocket.Chat delays every REST response by 30 s (longer than the
    run), so the relay's first few calls (at most its conversation limit) hang and it
    relays nothing. Failing the livechat routes with 503 instead does NOT isolate
    ingest: the relay keeps retrying visitor registration (thousands of calls a run).
    What remains is the ingest path alone (HMAC, JSON, one fsynced inbox append, 200)
    plus the intake and the relay's idle bookkeeping; (a) minus (a2) is what relaying
    concurrently costs. Reported as a ratio to the same no-op figure as (a),
    with its own p50/p99.
(a3) A storm meeting a busy relay: a fresh bot gets 1,000 warm-up bodies from 1,000 new
    visitors, then, past the warm-up storm's linger (1.3 s later, the relay working
    through those first contacts at full speed, 64 conversations in flight), the same
    measured bodies. The relay's calls in flight finish before pacing can take hold.
(b) End-to-end webhook → room throughput across 1,000 conversations with 20 ms latency
    injected into every sandbox Rocket.Chat REST response (goal ≥ 500 messages/s):
    10,000 messages, 10 per conversation.
(b2) The same, first-contact heavy: 1,000 new visitors with 3 messages each (each
    first message also fetches a profile, registers the visitor and opens a room).
(c) p50/p99 webhook → room latency at a steady 100 messages/s (same 20 ms injected),
    measured from just before the POST to the message's server timestamp.

The sandboxes run in this process (threads); the bot and the no-op server are separate
processes, so the numbers include real sockets, HMAC, JSON and durable storage.
``--store postgres`` runs every bot on the PostgreSQL store (a throwaway local cluster
unless ``--store-url``; a fresh schema per bot, see :mod:`tests.benchmarks.stores`);
``--parts`` picks the parts; ``--replicas 2`` (PostgreSQL) runs (b) and (b2) on two bots
sharing one store, the webhooks spread over both as a round-robin balancer would.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import pickle
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from bot.instagram.events import rc_message_id
from bot.relay.pressure import LINGER
from sandbox.meta import (
    DEFAULT_IG_ID,
    DEFAULT_PAGE_ID,
    DEFAULT_PAGE_NAME,
    SandboxMeta,
    encode_webhook,
    sign_webhook,
)
from sandbox.rocketchat import SandboxRocketChat
from storage import Page, open_store
from tests.benchmarks import stores as bench_stores
from tests.benchmarks.stores import BenchStores
from tests.scenarios.harness import APP_SECRET, config_dict, free_port, setup_rocketchat

ROOT = Path(__file__).resolve().parents[2]

NOOP_SERVER = textwrap.dedent("""
    import sys
    from aiohttp import web

    async def handle(request):
        await request.read()
        return web.Response(text="EVENT_RECEIVED")

    app = web.Application(client_max_size=1024 * 1024)
    app.router.add_post("/webhooks/instagram", handle)
    app.router.add_get("/healthz", lambda r: handle(r))
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None,
                print=None)
""")


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[index]


class Env:
    """Sandboxes in this process, bots as child processes (on ``stores``' stores)."""

    def __init__(self, workdir: Path, stores: BenchStores) -> None:
        self.workdir = workdir
        self.stores = stores
        self.rc = SandboxRocketChat().start()
        self.rc.set_setting("API_Enable_Rate_Limiter", False)
        self.meta = SandboxMeta(app_secret=APP_SECRET).start()
        self.department = setup_rocketchat(self.rc)
        self.meta.set_echoes(False)
        self.runs = 0
        self.last_store: str | None = None  # the store of the bot started last

    def close(self) -> None:
        self.rc.stop()
        self.meta.stop()

    async def start_bot(
        self, replica_of: str | None = None
    ) -> tuple[subprocess.Popen[bytes], str]:
        """A fresh bot (new store) with the sandbox page connected; returns (proc, url).

        ``replica_of``: a PostgreSQL store URL a running bot uses; this one joins it as a
        second replica (same config but its port) instead of getting a store of its own.
        """
        self.runs += 1
        run_dir = self.workdir / f"bot{self.runs}"
        run_dir.mkdir()
        port = free_port()
        store_path = replica_of or self.stores.location(run_dir)
        import yaml

        config = run_dir / "config.yaml"
        raw = config_dict(self.rc.url, self.meta, store_path, f"127.0.0.1:{port}")
        raw["storage"] = self.stores.storage_config(store_path)
        config.write_text(yaml.safe_dump(raw))
        if replica_of is None:
            store = open_store(store_path)
            await store.open()
            await store.save_page(Page(
                page_id=DEFAULT_PAGE_ID, name=DEFAULT_PAGE_NAME, instagram_id=DEFAULT_IG_ID,
                page_token=self.meta.issue_page_token(DEFAULT_PAGE_ID),
                department_id=self.department,
            ))
            await store.close()
        self.last_store = store_path
        exe = Path(sys.executable).parent / "rc-instagram"
        log = (run_dir / "bot.log").open("ab")
        proc = subprocess.Popen(
            [str(exe), "run", "--config", str(config), "--log-level", "WARNING"],
            cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env={**os.environ},
        )
        await wait_listening(port, proc)
        return proc, f"http://127.0.0.1:{port}/webhooks/instagram"

    async def start_noop(self) -> tuple[subprocess.Popen[bytes], str]:
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-c", NOOP_SERVER, str(port)], cwd=ROOT)
        await wait_listening(port, proc)
        return proc, f"http://127.0.0.1:{port}/webhooks/instagram"

    def message_count(self) -> int:
        return self.rc.call_counts().get("livechat/message", 0)


async def wait_listening(port: int, proc: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(400):
            if proc.poll() is not None:
                raise SystemExit(f"server exited with {proc.returncode}")
            try:
                async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                    await resp.read()
                    return
            except aiohttp.ClientError:
                await asyncio.sleep(0.05)
    raise SystemExit("server did not start")


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (Linux /proc), all threads.

    Throughput on a shared machine moves with the load; CPU per message much less.
    """
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


def signed(payload: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    body = encode_webhook(payload)
    return body, {"Content-Type": "application/json", **sign_webhook(body, APP_SECRET)}


def build_bodies(meta: SandboxMeta, visitors: list[str], count: int, per_body: int = 1,
                 start_ts: int | None = None) -> list[tuple[bytes, dict[str, str], list[str]]]:
    """``count`` signed webhooks of ``per_body`` messages each, visitors round-robin."""
    ts = start_ts or int(time.time() * 1000) - 3_600_000
    out = []
    n = 0
    for _ in range(count):
        items = []
        mids = []
        for _ in range(per_body):
            igsid = visitors[n % len(visitors)]
            mid = meta.new_mid()
            items.append({"sender": {"id": igsid}, "recipient": {"id": DEFAULT_IG_ID},
                          "timestamp": ts + n, "message": {"mid": mid, "text": f"m{n}"}})
            mids.append(mid)
            n += 1
        body, headers = signed({"object": "instagram", "entry": [
            {"id": DEFAULT_IG_ID, "time": ts + n, "messaging": items}]})
        out.append((body, headers, mids))
    return out


async def hammer(url: str | list[str], bodies: list[tuple[bytes, dict[str, str], list[str]]],
                 concurrency: int) -> tuple[float, list[float], int]:
    """POST every body with ``concurrency`` connections; (seconds, latencies, non-200s).

    Several URLs (replicas behind a balancer): the connections take them in turn.
    """
    urls = [url] if isinstance(url, str) else url
    latencies: list[float] = []
    failures = 0
    queue = list(reversed(bodies))
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:

        async def worker(target: str) -> None:
            nonlocal failures
            while queue:
                body, headers, _ = queue.pop()
                started = time.perf_counter()
                async with session.post(target, data=body, headers=headers) as resp:
                    await resp.read()
                    if resp.status != 200:
                        failures += 1
                latencies.append(time.perf_counter() - started)

        started = time.perf_counter()
        await asyncio.gather(*(worker(urls[n % len(urls)]) for n in range(concurrency)))
        elapsed = time.perf_counter() - started
    return elapsed, latencies, failures


async def hammer_in_child(
    url: str, bodies: list[tuple[bytes, dict[str, str], list[str]]], concurrency: int
) -> tuple[float, list[float], int]:
    """:func:`hammer` run by a separate load-generator process (see (a) above)."""
    with tempfile.NamedTemporaryFile(suffix=".pickle") as fh:
        pickle.dump(bodies, fh)
        fh.flush()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.benchmarks.bench_inbound", "--load-generator",
            fh.name, url, str(concurrency), cwd=ROOT, stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"load generator exited with {proc.returncode}")
    result = json.loads(out)
    return result["elapsed"], result["latencies"], result["failures"]


async def load_generator(path: str, url: str, concurrency: int) -> None:
    """The child's side of :func:`hammer_in_child`: POST, print the figures as JSON."""
    with open(path, "rb") as fh:
        bodies = pickle.load(fh)
    elapsed, latencies, failures = await hammer(url, bodies, concurrency)
    print(json.dumps({"elapsed": elapsed, "latencies": latencies, "failures": failures}))


INGEST_ONLY = "ingest only"
COLD = "busy relay"
#: Seconds added to every Rocket.Chat REST response during (a2): longer than the run.
HOLD_BACK_LATENCY = 30.0


async def hold_relay_back(env: Env) -> None:
    """Once the bot has logged in over REST, make every REST response take 30 s."""
    deadline = time.monotonic() + 10
    while not env.rc.call_counts().get("login") and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    env.rc.rest_latency = HOLD_BACK_LATENCY


async def ack_round(
    env: Env, visitors: list[str], requests: int, concurrency: int
) -> dict[str, tuple[float, list[float], int]]:
    """One round of (a)/(a2): each server gets the warm-up and the measured bodies."""
    results = {}
    drained = float("nan")
    busy_at_start = float("nan")
    for name in ("no-op aiohttp", "rc-instagram", INGEST_ONLY, COLD):
        # Built before the server starts: the sandboxes share this process, and a busy
        # benchmark process would freeze the relay's calls just as the load begins.
        warm = build_bodies(env.meta, visitors, 1000 if name == COLD else 200)
        bodies = build_bodies(env.meta, visitors, requests)
        try:
            proc, url = await (env.start_noop() if name.startswith("no-op") else env.start_bot())
            if name == INGEST_ONLY:
                await hold_relay_back(env)
            try:
                base = env.message_count()
                await hammer_in_child(url, warm, concurrency)
                if name == COLD:
                    # Past the warm-up storm's linger, its 1,000 first contacts still
                    # being relayed at full speed: the storm meets a busy relay.
                    await asyncio.sleep(LINGER + 0.3)
                    busy_at_start = env.message_count() - base
                elapsed, latencies, failures = await hammer_in_child(url, bodies, concurrency)
                if name == "rc-instagram":
                    # The price of acknowledging first: how long the relay needs afterwards.
                    ended = time.perf_counter()
                    drained = await wait_for_messages(env, base + 200 + requests, 300) - ended
            finally:
                stop(proc)
        finally:
            env.rc.rest_latency = 0.0
        results[name] = (requests / elapsed, latencies, failures)
    results["drained"] = (drained, [], 0)
    results["cold relayed before"] = (busy_at_start, [], 0)
    return results


async def bench_ack(env: Env, requests: int, concurrency: int, rounds: int) -> dict[str, float]:
    visitors = [env.meta.new_igsid() for _ in range(1000)]
    env.rc.rest_latency = 0.0
    print(f"(a) webhook acknowledgement: {requests} signed POSTs, 1 message each, "
          f"{concurrency} concurrent connections; {rounds} rounds, the three servers in turn")
    runs = []
    for n in range(rounds):
        results = await ack_round(env, visitors, requests, concurrency)
        runs.append(results)
        noop = results["no-op aiohttp"][0]
        for name in ("no-op aiohttp", "rc-instagram", INGEST_ONLY, COLD):
            rate, lat, failures = results[name]
            ratio = "" if name.startswith("no-op") else f"  ratio {rate / noop:.2f}"
            print(f"    round {n + 1}  {name:14s} {rate:8.0f} req/s   "
                  f"p50 {percentile(lat, 50) * 1000:6.1f} ms   "
                  f"p99 {percentile(lat, 99) * 1000:6.1f} ms   max {max(lat) * 1000:6.1f} ms   "
                  f"non-200: {failures}{ratio}")
        print(f"    round {n + 1}  ({COLD}: {results['cold relayed before'][0]:.0f} of its "
              f"1,000 warm-up messages relayed when the measured storm began)")
        print(f"    round {n + 1}  every message of the round was in its room "
              f"{results['drained'][0]:.1f} s after the bot's last acknowledgement "
              f"({200 + requests} messages, up to 1,000 first contacts)")

    def median_of(name: str, figure: Any) -> float:
        return statistics.median(figure(run[name], run) for run in runs)

    def ratio(rate: tuple[float, list[float], int], run: dict[str, Any]) -> float:
        return rate[0] / run["no-op aiohttp"][0]

    def p99(rate: tuple[float, list[float], int], _run: dict[str, Any]) -> float:
        return percentile(rate[1], 99) * 1000

    def p50(rate: tuple[float, list[float], int], _run: dict[str, Any]) -> float:
        return percentile(rate[1], 50) * 1000

    def rate_of(rate: tuple[float, list[float], int], _run: dict[str, Any]) -> float:
        return rate[0]

    figures = {
        "ack_requests": requests, "ack_rounds": rounds,
        "ack_noop_req_s": median_of("no-op aiohttp", rate_of),
        "ack_noop_p99_ms": median_of("no-op aiohttp", p99),
        "ack_bot_req_s": median_of("rc-instagram", rate_of),
        "ack_ratio": median_of("rc-instagram", ratio),
        "ack_bot_p50_ms": median_of("rc-instagram", p50),
        "ack_bot_p99_ms": median_of("rc-instagram", p99),
        "ack_non_200": sum(run["rc-instagram"][2] for run in runs),
        "ack_relayed_all_after_s": median_of("drained", rate_of),
        "ack_ingest_only_req_s": median_of(INGEST_ONLY, rate_of),
        "ack_ingest_only_ratio": median_of(INGEST_ONLY, ratio),
        "ack_ingest_only_p50_ms": median_of(INGEST_ONLY, p50),
        "ack_ingest_only_p99_ms": median_of(INGEST_ONLY, p99),
        "ack_ingest_only_non_200": sum(run[INGEST_ONLY][2] for run in runs),
        "ack_busy_relay_ratio": median_of(COLD, ratio),
        "ack_busy_relay_p99_ms": median_of(COLD, p99),
        "ack_busy_relay_non_200": sum(run[COLD][2] for run in runs),
    }
    print(f"    (a)  median ratio rc-instagram / no-op = {figures['ack_ratio']:.2f} (goal >= 0.5);"
          f" median p99 = {figures['ack_bot_p99_ms']:.1f} ms (goal < 50 ms)"
          f"  [relaying meanwhile, paced]; all relayed {figures['ack_relayed_all_after_s']:.1f} s"
          f" after the last acknowledgement")
    print(f"    (a2) median ratio ingest only / no-op  = {figures['ack_ingest_only_ratio']:.2f} "
          f"(goal >= 0.5); median p99 = {figures['ack_ingest_only_p99_ms']:.1f} ms "
          f"(goal < 50 ms)  [relay held back: REST answers delayed {HOLD_BACK_LATENCY:.0f} s]")
    print(f"    (a3) median ratio storm meeting a busy relay / no-op = "
          f"{figures['ack_busy_relay_ratio']:.2f}; median p99 = "
          f"{figures['ack_busy_relay_p99_ms']:.1f} ms  [1,000 first contacts in flight, "
          f"past the warm-up's linger]")
    return figures


async def wait_for_messages(env: Env, target: int, timeout: float) -> float:
    deadline = time.perf_counter() + timeout
    while env.message_count() < target:
        if time.perf_counter() > deadline:
            raise SystemExit(f"only {env.message_count()} of {target} messages after {timeout}s")
        await asyncio.sleep(0.01)
    return time.perf_counter()


async def wait_for_every(env: Env, mids: list[str], done: float, timeout: float) -> float:
    """When the last of ``mids`` was in a room: ``done`` if all are already there.

    The sandbox counts a call when it arrives, before the injected latency and the
    store, so the count can be reached with the last messages still in flight (or with
    a message missing, had a call been retried).
    """
    missing = [m for m in mids if env.rc.message(rc_message_id(f"ig:{m}")) is None]
    if not missing:
        return done
    deadline = time.perf_counter() + timeout
    while missing:
        if time.perf_counter() > deadline:
            raise SystemExit(f"{len(missing)} messages not in their rooms after {timeout}s")
        await asyncio.sleep(0.05)
        missing = [m for m in missing if env.rc.message(rc_message_id(f"ig:{m}")) is None]
    return time.perf_counter()


async def bench_throughput(
    env: Env, conversations: int, per_conversation: int, label: str = "(b)",
    prefix: str = "relay", replicas: int = 1,
) -> dict[str, float]:
    """End-to-end throughput: ``conversations`` new visitors, ``per_conversation`` each.

    (b) is 1,000 × 10 (first contacts are a tenth of the messages); (b2), first-contact
    heavy, is 1,000 × 3 (a third). The figures are keyed ``<prefix>_…``. ``replicas``
    > 1 (PostgreSQL): that many bots on one store, the webhooks spread over them like a
    round-robin balancer would; the bot CPU is the sum of theirs.
    """
    env.rc.rest_latency = 0.02
    visitors = [env.meta.new_igsid() for _ in range(conversations)]
    total = conversations * per_conversation
    bodies = build_bodies(env.meta, visitors, total // 50, per_body=50)
    bots = [await env.start_bot()]
    try:
        for _ in range(replicas - 1):
            bots.append(await env.start_bot(replica_of=env.last_store))
        urls = [url for _, url in bots]
        base = env.message_count()
        calls_before = env.rc.call_counts()
        bot_cpu_before = sum(cpu_seconds(proc.pid) for proc, _ in bots)
        own_cpu_before = time.process_time()
        server_cpu_before = env.stores.server_cpu_seconds()
        started = time.perf_counter()
        elapsed_post, _, failures = await hammer(urls, bodies, 8)
        done = await wait_for_messages(env, base + total, timeout=300)
        # Every message of the run must be in its room, under its deterministic id.
        done = await wait_for_every(env, [mid for *_, mids in bodies for mid in mids],
                                    done, timeout=300)
        calls = {route: n - calls_before.get(route, 0)
                 for route, n in env.rc.call_counts().items()
                 if n - calls_before.get(route, 0)}
        bot_cpu = sum(cpu_seconds(proc.pid) for proc, _ in bots) - bot_cpu_before
        own_cpu = time.process_time() - own_cpu_before
        server_cpu_after = env.stores.server_cpu_seconds()
    finally:
        for proc, _ in bots:
            stop(proc)
    seconds = done - started
    extra = env.message_count() - base - total
    print(f"    Rocket.Chat REST calls during the run: {calls}")
    server_cpu = (None if server_cpu_before is None or server_cpu_after is None
                  else server_cpu_after - server_cpu_before)
    server = ("" if server_cpu is None
              else f", PostgreSQL server {server_cpu / total * 1000:.2f} ms")
    bot_label = "bot" if replicas == 1 else f"{replicas} replicas together"
    print(f"    CPU per message: {bot_label} {bot_cpu / total * 1000:.2f} ms, this process "
          f"(sandboxes, load generator) {own_cpu / total * 1000:.2f} ms{server}")
    shape = "" if replicas == 1 else f", {replicas} replicas on one store"
    print(f"{label} end-to-end throughput ({env.stores.kind}{shape}): {total} messages, "
          f"{conversations} new conversations ({per_conversation} messages each), "
          f"20 ms injected on every Rocket.Chat REST response")
    print(f"    all acknowledged in {elapsed_post:.2f} s ({failures} non-200); all in rooms "
          f"after {seconds:.2f} s -> {total / seconds:.0f} messages/s (goal >= 500)"
          + (f"; {extra} livechat/message calls beyond the messages sent" if extra else ""))
    print(f"    (first message of each conversation also registers the visitor and opens "
          f"the room: {conversations} x livechat/visitor + livechat/room + Graph profile)")
    return {f"{prefix}_messages": total, f"{prefix}_conversations": conversations,
            f"{prefix}_messages_per_s": total / seconds, f"{prefix}_seconds": seconds,
            f"{prefix}_bot_cpu_ms_per_message": bot_cpu / total * 1000,
            f"{prefix}_sandbox_cpu_ms_per_message": own_cpu / total * 1000,
            **({} if replicas == 1 else {f"{prefix}_replicas": replicas}),
            **({} if server_cpu is None else
               {f"{prefix}_server_cpu_ms_per_message": server_cpu / total * 1000})}


async def bench_latency(
    env: Env, rate: float, seconds: float, conversations: int
) -> dict[str, float]:
    env.rc.rest_latency = 0.02
    visitors = [env.meta.new_igsid() for _ in range(conversations)]
    count = int(rate * seconds)
    bodies = build_bodies(env.meta, visitors, count)
    proc, url = await env.start_bot()
    sent_at: dict[str, float] = {}
    try:
        # Warm: register every visitor and open rooms first (steady state, not first contact).
        warm = build_bodies(env.meta, visitors, conversations)
        base = env.message_count()
        await hammer(url, warm, 8)
        await wait_for_messages(env, base + conversations, timeout=120)
        base = env.message_count()
        async with aiohttp.ClientSession() as session:
            start = time.perf_counter()
            tasks = []

            async def post(body: bytes, headers: dict[str, str], mid: str) -> None:
                sent_at[mid] = time.time()
                async with session.post(url, data=body, headers=headers) as resp:
                    await resp.read()

            for n, (body, headers, mids) in enumerate(bodies):
                delay = start + n / rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                tasks.append(asyncio.create_task(post(body, headers, mids[0])))
            await asyncio.gather(*tasks)
        await wait_for_messages(env, base + count, timeout=120)
    finally:
        stop(proc)
    latencies = []
    for mid, sent in sent_at.items():
        message = env.rc.message(rc_message_id(f"ig:{mid}"))
        if message is None:
            continue
        stored = datetime.fromisoformat(message["ts"].replace("Z", "+00:00")).timestamp()
        latencies.append(max(0.0, stored - sent))
    print(f"(c) webhook -> room latency at {rate:.0f} messages/s for {seconds:.0f} s "
          f"({count} messages, {conversations} warm conversations, 20 ms injected)")
    print(f"    p50 {percentile(latencies, 50) * 1000:.1f} ms   "
          f"p99 {percentile(latencies, 99) * 1000:.1f} ms   "
          f"max {max(latencies) * 1000:.1f} ms   mean {statistics.mean(latencies) * 1000:.1f} ms"
          f"   (n={len(latencies)}; includes the 20 ms injected before the message is stored)")
    return {"latency_rate_per_s": rate, "latency_messages": len(latencies),
            "latency_p50_ms": percentile(latencies, 50) * 1000,
            "latency_p99_ms": percentile(latencies, 99) * 1000,
            "latency_max_ms": max(latencies) * 1000}


#: The parts of this benchmark, for ``--parts``.
PARTS = ("ack", "relay", "first_contact", "latency")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller runs (smoke test)")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS),
                        help="run only these parts: ack = (a)-(a3), relay = (b), "
                             "first_contact = (b2), latency = (c) (default: all)")
    parser.add_argument("--ack-only", action="store_true", help="same as --parts ack")
    parser.add_argument("--rounds", type=int, default=5,
                        help="rounds of (a)-(a3); the medians are reported (default 5)")
    bench_stores.add_arguments(parser)
    parser.add_argument("--replicas", type=int, default=1,
                        help="(b) and (b2) with this many bots on one PostgreSQL store, "
                             "the webhooks spread over them (default 1)")
    parser.add_argument("--load-generator", nargs=3, metavar=("BODIES", "URL", "CONCURRENCY"),
                        help=argparse.SUPPRESS)  # internal: the child of hammer_in_child
    args = parser.parse_args()
    if args.load_generator:
        path, url, concurrency = args.load_generator
        await load_generator(path, url, int(concurrency))
        return
    parts = ["ack"] if args.ack_only else args.parts
    if args.replicas > 1 and args.store == "tinydb" and not args.store_url:
        parser.error("--replicas needs --store postgres: a TinyDB file has one process")
    figures: dict[str, float] = {}
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}, "
          f"load {os.getloadavg()[0]:.2f}")
    runs = {
        "ack": lambda env: bench_ack(env, 1000 if args.quick else 5000, 32,
                                     1 if args.quick else args.rounds),
        "relay": lambda env: bench_throughput(env, 1000, 2 if args.quick else 10,
                                              replicas=args.replicas),
        "first_contact": lambda env: bench_throughput(
            env, 300 if args.quick else 1000, 3, "(b2)", "first_contact", args.replicas),
        "latency": lambda env: bench_latency(env, 100.0, 3 if args.quick else 10, 200),
    }
    with tempfile.TemporaryDirectory(prefix="bench-inbound-") as tmp, \
            BenchStores.from_args(args) as stores:
        figures["store"] = stores.kind  # type: ignore[assignment]
        for name in PARTS:
            if name not in parts:
                continue
            # Fresh sandboxes for each figure: the sandbox Rocket.Chat slows down as its
            # rooms fill, which would charge (a)'s messages to (b) and (c).
            workdir = Path(tmp) / f"env-{name}"
            workdir.mkdir()
            env = Env(workdir, stores)
            try:
                figures.update(await runs[name](env))
            finally:
                env.close()
    figures["load_avg_1_at_end"] = round(os.getloadavg()[0], 2)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    asyncio.run(main())
