"""Run every benchmark, print one table of figures and goals, write bench-results/results.json.

Run: ``python -m tests.benchmarks [--quick] [--only NAME ...] [--out DIR] [--store-url URL]``
(``make bench``). The ``*_pg`` benchmarks run on PostgreSQL: a throwaway local cluster
each starts and removes (``initdb``/``pg_ctl`` needed), or ``--store-url``.

Each benchmark runs as its own child process (``python -m tests.benchmarks.<module>
--json FILE``), so one crash or hang does not stop the rest; its output is echoed and
kept in ``<out>/<name>.log`` (stderr in ``<name>.stderr.log``). ``--quick`` passes
smaller sizes to each (a smoke run of a few minutes; the figures are then noisier).
The JSON holds the machine (CPU model, cores, RAM, Python, kernel), the git commit,
the date, and per benchmark its status, duration and flat dict of figures.

Exit status: 1 if a benchmark crashed, timed out or wrote no figures; a missed goal
is shown as MISS in the table but is not an error (the figure is the result).
"""

from __future__ import annotations

import argparse
import json
import operator
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from storage import is_postgres_url, mask_url

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class Figure:
    """One row of the table: a key of the benchmark's JSON and how to read it."""

    key: str
    label: str
    unit: str = ""
    goal: tuple[str, float] | None = None  # (">=" | "<=" | "==", value)
    digits: int = 1
    #: Only some sizes produce it (e.g. not ``--quick``): no row when it is missing.
    optional: bool = False


@dataclass(frozen=True)
class Benchmark:
    name: str
    module: str
    args: tuple[str, ...]
    quick_args: tuple[str, ...]
    timeout: float
    figures: tuple[Figure, ...] = field(default_factory=tuple)
    #: Runs on PostgreSQL: gets ``--store-url`` when one is given.
    postgres: bool = False


BENCHMARKS: tuple[Benchmark, ...] = (
    Benchmark("inbound", "bench_inbound", (), ("--quick",), 900, (
        Figure("ack_ratio", "durable ingest / no-op aiohttp (median req/s ratio)", "",
               (">=", 0.5), 2),
        Figure("ack_bot_req_s", "webhooks acknowledged, rc-instagram", "req/s", None, 0),
        Figure("ack_noop_req_s", "webhooks acknowledged, no-op aiohttp handler", "req/s", None, 0),
        Figure("ack_bot_p99_ms", "webhook acknowledgement p99", "ms", ("<=", 50)),
        Figure("ack_relayed_all_after_s", "(a)'s messages all in rooms, after the last ack",
               "s", None, 1),
        Figure("ack_ingest_only_ratio", "durable ingest only / no-op (relay held back)", "",
               (">=", 0.5), 2),
        Figure("ack_busy_relay_ratio", "storm meeting a busy relay / no-op", "", None, 2),
        Figure("ack_busy_relay_p99_ms", "storm meeting a busy relay, ack p99", "ms"),
        Figure("relay_messages_per_s", "relay throughput, 1k conversations, 20 ms injected",
               "msg/s", (">=", 500), 0),
        Figure("relay_bot_cpu_ms_per_message", "  bot CPU per message", "ms", None, 2),
        Figure("first_contact_messages_per_s",
               "relay throughput, 1k new visitors x 3 messages, 20 ms injected", "msg/s",
               (">=", 500), 0),
        Figure("first_contact_bot_cpu_ms_per_message", "  bot CPU per message", "ms", None, 2),
        Figure("latency_p50_ms", "webhook -> room latency p50 at 100 msg/s", "ms"),
        Figure("latency_p99_ms", "webhook -> room latency p99 at 100 msg/s", "ms"),
    )),
    Benchmark("inbound_pg", "bench_inbound",
              ("--store", "postgres", "--parts", "ack", "relay", "first_contact"),
              ("--store", "postgres", "--parts", "ack", "relay", "first_contact", "--quick"),
              1200, (
        Figure("ack_ratio", "PostgreSQL: durable ingest / no-op aiohttp (median ratio)", "",
               (">=", 0.5), 2),
        Figure("ack_bot_req_s", "webhooks acknowledged, rc-instagram", "req/s", None, 0),
        Figure("ack_noop_req_s", "webhooks acknowledged, no-op aiohttp handler", "req/s", None, 0),
        Figure("ack_bot_p99_ms", "webhook acknowledgement p99", "ms", ("<=", 50)),
        Figure("ack_ingest_only_ratio", "durable ingest only / no-op (relay held back)", "",
               (">=", 0.5), 2),
        Figure("ack_ingest_only_p99_ms", "durable ingest only, ack p99", "ms", ("<=", 50)),
        Figure("relay_messages_per_s", "relay throughput, 1k conversations, 20 ms injected",
               "msg/s", (">=", 500), 0),
        Figure("relay_bot_cpu_ms_per_message", "  bot CPU per message", "ms", None, 2),
        Figure("first_contact_messages_per_s",
               "relay throughput, 1k new visitors x 3 messages, 20 ms injected", "msg/s",
               (">=", 500), 0),
        Figure("first_contact_bot_cpu_ms_per_message", "  bot CPU per message", "ms", None, 2),
    ), postgres=True),
    Benchmark("inbound_pg_2replicas", "bench_inbound",
              ("--store", "postgres", "--parts", "relay", "first_contact", "--replicas", "2"),
              ("--store", "postgres", "--parts", "relay", "first_contact", "--replicas", "2",
               "--quick"), 900, (
        Figure("relay_messages_per_s",
               "PostgreSQL, 2 replicas: relay throughput, 1k conversations, 20 ms injected",
               "msg/s", (">=", 500), 0),
        Figure("relay_bot_cpu_ms_per_message", "  both replicas' CPU per message", "ms",
               None, 2),
        Figure("first_contact_messages_per_s",
               "relay throughput, 1k new visitors x 3 messages, 20 ms injected", "msg/s",
               (">=", 500), 0),
        Figure("first_contact_bot_cpu_ms_per_message", "  both replicas' CPU per message",
               "ms", None, 2),
    ), postgres=True),
    Benchmark("storage", "bench_storage", (), ("--items", "5000", "--history", "20000"), 900, (
        Figure("enqueue_concurrent_acks_s", "durable enqueue, 64 producers", "acks/s",
               (">=", 2000), 0),
        Figure("enqueue_1_producer_acks_s", "durable enqueue, 1 producer", "acks/s", None, 0),
        Figure("pipeline_items_s", "enqueue -> process -> complete pipeline", "items/s", None, 0),
        Figure("flat_first_1k_items_s", "pipeline, fresh store, first 1k items", "items/s",
               None, 0),
        Figure("flat_after_history_items_s", "pipeline, 1k items after the history", "items/s",
               None, 0),
        Figure("flat_ratio", "throughput after history / first 1k", "", (">=", 0.8), 2),
        Figure("flat_cpu_ratio", "CPU per item, first 1k / after history", "", None, 2),
    )),
    Benchmark("commands", "bench_commands", (), ("--count", "200"), 600, (
        Figure("p50_ms", "command round trip p50 (in-process bot)", "ms", None, 2),
        Figure("p99_ms", "command round trip p99 (in-process bot)", "ms", None, 2),
    )),
    Benchmark("command_anchor", "bench_command_anchor", (), ("--quick",), 900, (
        Figure("rc_instagram_p50_ms", "'/instagram help' round trip p50, rc-instagram", "ms",
               None, 2),
        Figure("rc_instagram_p99_ms", "'/instagram help' round trip p99, rc-instagram", "ms",
               None, 2),
        Figure("node_sdk_p50_ms", "'/instagram help' round trip p50, Node SDK bot", "ms",
               None, 2),
        Figure("node_sdk_p99_ms", "'/instagram help' round trip p99, Node SDK bot", "ms",
               None, 2),
        Figure("p50_ratio_node_over_ours", "p50 Node SDK / rc-instagram", "", (">=", 1.0), 2),
    )),
    Benchmark("rss", "bench_rss", (), ("--quick",), 900, (
        Figure("conversations", "conversations in the store", "", None, 0),
        Figure("bot_rss_empty_store_mb", "bot RSS, empty store", "MiB"),
        Figure("bot_rss_filled_store_mb", "bot RSS, with the conversations", "MiB"),
        Figure("bot_rss_per_conversation_kb", "bot RSS per conversation", "KiB", None, 2),
        Figure("reopen_rss_after_mb", "store alone after open (fresh process)", "MiB"),
        Figure("open_seconds", "store open time", "s", None, 2),
        Figure("files_total_mb", "store files on disk", "MiB"),
    )),
    Benchmark("rss_pg", "bench_rss", ("--store", "postgres"), ("--store", "postgres", "--quick"),
              1800, (
        Figure("bot_rss_empty_store_mb", "PostgreSQL: bot RSS, empty store", "MiB"),
        Figure("bot_rss_10000_mb", "bot RSS, 10,000 conversations", "MiB", ("<=", 150),
               optional=True),
        Figure("bot_rss_30000_mb", "bot RSS, 30,000 conversations", "MiB", ("<=", 150),
               optional=True),
        Figure("bot_rss_100000_mb", "bot RSS, 100,000 conversations", "MiB", ("<=", 150),
               optional=True),
        Figure("bot_rss_1000000_mb", "bot RSS, 1,000,000 conversations", "MiB", ("<=", 150),
               optional=True),
        Figure("bot_rss_growth_mb", "bot RSS growth, smallest to largest size", "MiB"),
        Figure("open_seconds", "store open time (largest size, fresh process)", "s", None, 2),
        Figure("database_mb", "database size (largest size)", "MiB", None, 0),
    ), postgres=True),
    Benchmark("outbound_crash", "outbound_crash", ("5",), ("1",), 900, (
        Figure("duplicates_per_crash", "outbound duplicates per kill -9", "", None, 2),
        Figure("lost", "outbound parts lost over the kills", "", ("==", 0), 0),
        Figure("out_of_order_rooms", "rooms delivered out of order", "", ("==", 0), 0),
    )),
)

GOAL_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge, "<=": operator.le, "==": operator.eq}


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def _git(*args: str) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    return done.stdout.strip()


def machine_info() -> dict[str, Any]:
    """What the figures were measured on."""
    cpuinfo = _read("/proc/cpuinfo")
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines()
                  if line.startswith("model name")), platform.processor() or "unknown")
    meminfo = _read("/proc/meminfo")
    mem_kb = next((int(line.split()[1]) for line in meminfo.splitlines()
                   if line.startswith("MemTotal:")), 0)
    node = shutil.which("node")
    node_version = ""
    if node:
        try:
            node_version = subprocess.run([node, "--version"], capture_output=True, text=True,
                                          timeout=10, check=False).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            node_version = ""
    return {
        "cpu_model": model,
        "cores": os.cpu_count(),
        "ram_gib": round(mem_kb / 2**20, 1),
        "python": platform.python_version(),
        "kernel": f"{platform.system()} {platform.release()}",
        "node": node_version or None,
        # Other processes on the machine move these figures; the load says how much.
        "load_avg_1_5_15": [round(x, 2) for x in os.getloadavg()],
    }


def run_one(bench: Benchmark, quick: bool, out: Path,
            store_url: str | None = None) -> dict[str, Any]:
    """Run one benchmark child process; its status, seconds and figures."""
    figures_path = out / f"{bench.name}.json"
    figures_path.unlink(missing_ok=True)
    args = bench.quick_args if quick else bench.args
    if bench.postgres and store_url:
        args = (*args, "--store-url", store_url)
    command = [sys.executable, "-m", f"tests.benchmarks.{bench.module}", *args,
               "--json", str(figures_path)]
    print(f"\n=== {bench.name}: {' '.join(command[1:])}", flush=True)
    started = time.perf_counter()
    status = "ok"
    with (out / f"{bench.name}.log").open("w") as log, \
            (out / f"{bench.name}.stderr.log").open("w") as err:
        proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=err,
                                text=True, bufsize=1)
        assert proc.stdout is not None
        # A hung child is killed at its deadline (which also ends the echo loop below).
        watchdog = threading.Timer(bench.timeout, proc.kill)
        watchdog.start()
        try:
            for line in proc.stdout:
                print(f"  | {line}", end="", flush=True)
                log.write(line)
            proc.wait()
        finally:
            timed_out = not watchdog.is_alive()
            watchdog.cancel()
        if timed_out:
            status = f"timeout after {bench.timeout:.0f} s"
        elif proc.returncode != 0 and not figures_path.exists():
            status = f"crashed (exit {proc.returncode}, see {out / (bench.name + '.stderr.log')})"
    seconds = time.perf_counter() - started
    figures: dict[str, Any] = {}
    if figures_path.exists():
        try:
            figures = json.loads(figures_path.read_text())
        except ValueError:
            status = "figures unreadable"
    elif status == "ok":
        status = "no figures written"
    if status == "ok" and proc.returncode:
        status = f"ok (exit {proc.returncode}: a target of its own was missed)"
    # The password of a --store-url stays out of results.json.
    shown = [mask_url(a) if is_postgres_url(a) else a for a in args]
    return {"status": status, "seconds": round(seconds, 1), "args": shown,
            "figures": figures}


def fmt(value: Any, digits: int) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    return f"{value:,.{digits}f}"


def table(results: dict[str, dict[str, Any]]) -> list[str]:
    rows = [("benchmark", "figure", "value", "goal", "")]
    for bench in BENCHMARKS:
        if bench.name not in results:
            continue
        result = results[bench.name]
        figures = result["figures"]
        if not figures:
            rows.append((bench.name, result["status"], "-", "", ""))
            continue
        for fig in bench.figures:
            value = figures.get(fig.key)
            if value is None and fig.optional:
                continue
            goal = f"{fig.goal[0]} {fmt(fig.goal[1], fig.digits)}" if fig.goal else ""
            verdict = ""
            if value is None:
                shown = "-"
            else:
                shown = f"{fmt(value, fig.digits)} {fig.unit}".strip()
                if fig.goal and isinstance(value, int | float):
                    verdict = "ok" if GOAL_OPS[fig.goal[0]](value, fig.goal[1]) else "MISS"
            rows.append((bench.name, fig.label, shown, goal, verdict))
        for key, value in figures.items():  # a skip reason is a figure worth showing
            if key.endswith("_skipped"):
                rows.append((bench.name, f"SKIPPED: {value}", "-", "", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    lines = []
    for n, row in enumerate(rows):
        lines.append("  ".join([row[0].ljust(widths[0]), row[1].ljust(widths[1]),
                                row[2].rjust(widths[2]), row[3].ljust(widths[3]),
                                row[4]]).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    parser.add_argument("--only", nargs="+", choices=[b.name for b in BENCHMARKS],
                        help="run only these benchmarks")
    parser.add_argument("--store-url", metavar="URL",
                        help="PostgreSQL server for the *_pg benchmarks (default: each "
                             "starts a throwaway local cluster)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results",
                        help="where results.json and the logs go (default: bench-results/)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    commit = _git("rev-parse", "--short", "HEAD")
    dirty = bool(_git("status", "--porcelain", "--untracked-files=no"))
    report: dict[str, Any] = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "commit": commit + ("-dirty" if dirty else ""),
        "quick": args.quick,
        "machine": machine_info(),
        "benchmarks": {},
    }
    machine = report["machine"]
    print(f"machine: {machine['cpu_model']}, {machine['cores']} cores, "
          f"{machine['ram_gib']} GiB RAM, Python {machine['python']}, {machine['kernel']}, "
          f"load {machine['load_avg_1_5_15'][0]}; "
          f"commit {report['commit']}{' (quick sizes)' if args.quick else ''}")
    started = time.perf_counter()
    for bench in BENCHMARKS:
        if args.only and bench.name not in args.only:
            continue
        report["benchmarks"][bench.name] = run_one(bench, args.quick, args.out, args.store_url)
        # Written after each benchmark, so an interrupted run keeps what it measured.
        (args.out / "results.json").write_text(json.dumps(report, indent=2))
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    report["load_avg_1_5_15_at_end"] = [round(x, 2) for x in os.getloadavg()]
    (args.out / "results.json").write_text(json.dumps(report, indent=2))
    print()
    for line in table(report["benchmarks"]):
        print(line)
    print(f"\n{len(report['benchmarks'])} benchmarks in {report['total_seconds']:.0f} s; "
          f"figures and machine in {args.out / 'results.json'}")
    failed = {name: r["status"] for name, r in report["benchmarks"].items()
              if not r["status"].startswith("ok")}
    for name, status in failed.items():
        print(f"FAILED {name}: {status}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
