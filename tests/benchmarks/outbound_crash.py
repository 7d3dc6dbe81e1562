"""How often does a crash duplicate an outbound message?

``python -m tests.benchmarks.outbound_crash [runs]``

Each run: 300 agent messages over 30 rooms acknowledged by a subprocess bot, SIGKILL
mid-send, restart, then the sandbox Send API log is checked (see
tests/scenarios/outbound_crash.py). Prints one line per run and the totals: parts
expected/delivered, duplicates (sends Meta accepted whose record the kill prevented),
losses and order violations (both must be zero).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
from pathlib import Path

from sandbox.meta import SandboxMeta
from sandbox.rocketchat import SandboxRocketChat
from tests.scenarios.harness import APP_SECRET
from tests.scenarios.outbound_crash import run_crash_experiment


async def once(workdir: Path, fraction: float) -> object:
    rc = SandboxRocketChat(webhook_retry_delay=0.05).start()
    rc.set_setting("API_Enable_Rate_Limiter", False)
    meta = SandboxMeta(app_secret=APP_SECRET).start()
    try:
        return await run_crash_experiment(rc, meta, workdir, kill_after_fraction=fraction)
    finally:
        meta.stop()
        rc.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="?", type=int, default=5)
    parser.add_argument("--json", type=Path, help="also write the totals to this file")
    runs = (args := parser.parse_args()).runs
    totals = {"parts": 0, "duplicates": 0, "lost": 0, "disorder": 0, "hit": 0}
    for run in range(runs):
        fraction = 0.2 + 0.6 * (run / max(1, runs - 1))
        with tempfile.TemporaryDirectory() as tmp:
            r = asyncio.run(once(Path(tmp), fraction))
        print(f"run {run + 1}: kill after {r.sent_at_kill}/{r.expected_parts} parts; "
              f"delivered {r.delivered_parts}; duplicates {r.duplicates} "
              f"(rooms {r.duplicate_rooms}, accepted at {r.duplicate_offsets} s from the kill); "
              f"lost {len(r.lost)}; out of order {len(r.out_of_order)} {r.out_of_order[:2]}; "
              f"webhook failures {r.webhook_failures}; {r.seconds:.1f} s")
        totals["parts"] += r.expected_parts
        totals["duplicates"] += r.duplicates
        totals["lost"] += len(r.lost)
        totals["disorder"] += len(r.out_of_order)
        totals["hit"] += 1 if r.duplicates else 0
    print(f"{runs} crashes: window hit in {totals['hit']} ({totals['duplicates']} duplicate "
          f"parts of {totals['parts']}, {totals['duplicates'] / runs:.2f} per crash); "
          f"lost {totals['lost']}; rooms out of order {totals['disorder']}")
    if args.json:
        args.json.write_text(json.dumps({
            "crashes": runs, "parts": totals["parts"], "window_hit": totals["hit"],
            "duplicates": totals["duplicates"],
            "duplicates_per_crash": totals["duplicates"] / runs,
            "lost": totals["lost"], "out_of_order_rooms": totals["disorder"],
        }, indent=2))


if __name__ == "__main__":
    main()
