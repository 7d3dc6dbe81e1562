"""``rc-instagram demo`` as a user runs it: a subprocess, its exit code and its transcript."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from queue import Empty, Queue

import requests

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}
DEMO = [sys.executable, "-m", "bot.cli", "demo"]


def test_demo_plays_the_whole_story_and_exits_0_in_under_30_s() -> None:
    """Every step of the story shows in the transcript, timed, and the demo exits 0 fast."""
    started = time.monotonic()
    proc = subprocess.run(DEMO, capture_output=True, text=True, timeout=60, env=ENV, cwd=ROOT)
    took = time.monotonic() - started
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    assert took < 30, f"demo took {took:.1f} s"
    # The story, in order.
    expected = [
        r"bot +started: rc-instagram run --config .*\(pid \d+\)",
        r"GET /healthz -> .*'status': 'ok'",
        r"admin +-> instagram.bot \(DM\): /instagram authorize",
        r"Facebook Login dialog",
        r"/oauth/callback -> HTTP 200",
        r"2 pages offered; picks Sandbox Shop",
        r"POST /oauth/select -> HTTP 200 \"Instagram connected",
        r"app installed on Sandbox Shop",
        r"bot +-> admin.alice \(DM\): Connected Instagram \*@sandboxshop\*",
        r"edit 100000000000001 welcome ",
        r"Jane Doe .* on Instagram: \"Hi! Do you ship to Canada\?\"",
        r"omni +room \w+ opened for \"Jane Doe\".*served by agent.ana",
        r"Jane receives: \"Hi! Thanks for writing",
        r"agent +agent.ana in room \w+: \"Hi Jane!",
        r"Jane receives: \"Hi Jane! Yes, we ship",
        r"agent.ana goes offline",
        r"Sam receives: \"We are offline right now",
        r"waits in the bridge's queue",
        r"agent.ana is back online",
        r"room \w+ opened for \"Sam Lee\"; the waiting message delivered",
        r"agent.ana closes room",
        r"Jane receives: \"Thanks for chatting",
        r"GET /metrics -> relayed inbound [1-9]",
        r"stopped cleanly on SIGTERM \(exit 0\)",
        r"demo finished in \d+\.\d s",
    ]
    position = 0
    for pattern in expected:
        match = re.compile(pattern).search(out, position)
        assert match, f"missing (in order): {pattern}\n{out}"
        position = match.end()
    # Every story line carries its timing.
    story = out.splitlines()[1:-1]
    assert all(re.match(r"\[ *\d+\.\d\ds\] ", line) for line in story), out
    # Operator output never shows a secret.
    for secret in ("demo-bot-password", "demo-app-secret", "demo-rocketchat-webhook-secret"):
        assert secret not in out


def test_keep_running_prints_the_urls_and_stops_cleanly_on_sigterm() -> None:
    """--keep-running leaves the bot up with working URLs until SIGTERM, then exits 0."""
    proc = subprocess.Popen([*DEMO, "--keep-running"], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=ENV, cwd=ROOT)
    lines: Queue[str] = Queue()
    reader = threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout or []],
                              daemon=True)
    reader.start()
    seen: list[str] = []
    try:
        deadline = time.monotonic() + 45
        while not any(line.startswith("  bot log") for line in seen):
            try:
                seen.append(lines.get(timeout=max(0.1, deadline - time.monotonic())))
            except Empty:
                raise AssertionError("no URLs printed:\n" + "".join(seen)) from None
        text = "".join(seen)
        health = re.search(r"bot health +(\S+)", text)
        metrics = re.search(r"bot metrics +(\S+)", text)
        login = re.search(r"OAuth login +(\S+)", text)
        assert health and metrics and login, text
        assert requests.get(health.group(1), timeout=5).json()["status"] == "ok"
        assert "rcig_messages_relayed_total" in requests.get(metrics.group(1), timeout=5).text
        dialog = requests.get(login.group(1), timeout=5)
        assert dialog.status_code == 200 and "Continue as" in dialog.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    reader.join(5)  # the pipe is at EOF once the demo exited
    while not lines.empty():
        seen.append(lines.get())
    assert "stopped cleanly on SIGTERM" in "".join(seen)
