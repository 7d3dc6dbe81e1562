"""Shared pieces of the failure drills: the bot as a real subprocess, Meta's retries,
and the per-direction tallies every drill prints.

Nothing here fakes the bot: it runs as ``rc-instagram run --config …`` (drill 1) or as
the in-process :class:`bot.app.Bot` of the scenario harness, against the sandbox
Rocket.Chat and Meta over loopback.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from sandbox.meta import SandboxMeta
from storage import Page, open_store

ROOT = Path(__file__).resolve().parents[2]


def bot_command() -> list[str]:
    """``rc-instagram`` as ``python -m bot.cli`` run in the repository: the code under
    test, whichever tree the venv's console script was installed from."""
    return [sys.executable, "-m", "bot.cli"]


async def save_page(store_path: str, page: Page) -> None:
    """Connect the page before the bot runs (the store allows one process at a time)."""
    store = open_store(store_path)
    await store.open()
    try:
        await store.save_page(page)
    finally:
        await store.close()


@dataclass
class BotProcess:
    """``rc-instagram run`` as a child process that a drill can SIGKILL and restart."""

    config: Path
    log: Path
    port: int
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0
    kills: int = 0
    startup_seconds: list[float] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self, timeout: float = 20.0) -> None:
        """Start the bot; return once its web receiver answers."""
        started = time.monotonic()
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        with self.log.open("ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(
                [*bot_command(), "run", "--config", str(self.config)],
                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            )
        self.starts += 1
        deadline = started + timeout
        async with aiohttp.ClientSession() as session:
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise AssertionError(
                        f"bot exited with {self.proc.returncode}: {self.tail()}"
                    )
                try:
                    async with session.get(f"{self.base}/healthz") as resp:
                        if resp.status in (200, 503):
                            self.startup_seconds.append(time.monotonic() - started)
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.02)
        raise AssertionError(f"bot did not come up: {self.tail()}")

    def kill9(self) -> None:
        """SIGKILL: no shutdown code runs, whatever the bot was doing."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.kills += 1

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


async def deliver_until_ok(
    meta: SandboxMeta, url: str, payload: dict[str, Any], *, retry_every: float = 0.1,
    timeout: float = 120.0,
) -> int:
    """POST a webhook the way Meta does: again and again until it is answered 200.

    Returns how many attempts it took. Meta keeps retrying a webhook that was not
    acknowledged (for hours); a refused connection, a reset or a 5xx all count.
    """
    attempts = 0
    deadline = time.monotonic() + timeout
    while True:
        attempts += 1
        try:
            status, _ = await meta.adeliver(url, payload, timeout=10.0)
        except (aiohttp.ClientError, TimeoutError, OSError):
            status = None
        if status == 200:
            return attempts
        if time.monotonic() > deadline:
            raise AssertionError(f"webhook never acknowledged after {attempts} attempts")
        await asyncio.sleep(retry_every)


@dataclass
class Tally:
    """Per-direction outcome of a drill: what was expected vs. what arrived."""

    direction: str
    expected: int = 0
    delivered: int = 0  # distinct expected messages that arrived
    lost: int = 0
    duplicated: int = 0
    out_of_order: int = 0  # conversations whose first occurrences are not in order
    examples: list[str] = field(default_factory=list)
    #: For each conversation out of order: (the message that was due, the one that came).
    late: list[tuple[str, str]] = field(default_factory=list)

    def line(self) -> str:
        return (f"{self.direction}: expected {self.expected}, delivered {self.delivered}, "
                f"lost {self.lost}, duplicated {self.duplicated}, "
                f"conversations out of order {self.out_of_order}")


def tally(direction: str, expected: dict[str, list[str]], got: dict[str, list[str]]) -> Tally:
    """Compare per-conversation expected texts with what arrived (in arrival order)."""
    result = Tally(direction)
    for key, wanted in expected.items():
        seen = got.get(key, [])
        wanted_set = set(wanted)
        relevant = [t for t in seen if t in wanted_set]
        result.expected += len(wanted)
        distinct = set(relevant)
        result.delivered += len(distinct)
        missing = [t for t in wanted if t not in distinct]
        result.lost += len(missing)
        if missing and len(result.examples) < 5:
            result.examples.append(f"{key}: missing {missing[:3]}")
        result.duplicated += len(relevant) - len(distinct)
        first: list[str] = []
        for text in relevant:
            if text not in first:
                first.append(text)
        in_order = [t for t in wanted if t in distinct]
        if first != in_order:
            result.out_of_order += 1
            at = next(i for i, (a, b) in enumerate(zip(first, in_order, strict=True)) if a != b)
            result.late.append((in_order[at], first[at]))
            if len(result.examples) < 5:
                result.examples.append(f"{key}: got {first[at]!r} where {in_order[at]!r} was due")
    return result


def reorderings_by_the_bot(
    rc: Any, meta: SandboxMeta, page_id: str, agent_ids: dict[str, str],
    late: list[tuple[str, str]], in_flight: float,
) -> tuple[list[str], int, set[str], set[str]]:
    """``(unexplained, retried, acked, refused_first)``: the outbound reorderings
    (``Tally.late``) that are the bot's fault, how many came from a retried webhook, the
    agent messages whose webhook the bot answered 200, and those whose first attempt it
    did not.

    Rocket.Chat's webhooks are fire-and-forget and retried on their own timer: a reply
    typed while the bot was down, or whose webhook simply arrived late, can reach it after
    a later reply was sent. A reordering is the bot's fault only if the due reply had been
    acknowledged before the later one left the queue; the later one's arrival at Meta
    trails that moment by its time in flight (``in_flight`` seconds: thread pool,
    loopback, a loaded CI machine). ``agent_ids`` maps Rocket.Chat message ids to texts.
    """
    acked_at: dict[str, float] = {}  # agent message text -> when the bot answered 200
    refused_first: set[str] = set()  # whose first webhook was not answered 200
    for hook in rc.webhooks_sent():
        if hook["type"] != "Message":
            continue
        text = agent_ids.get(hook["payload"]["messages"][0]["_id"], "")
        if hook["status"] == 200:
            acked_at.setdefault(text, hook["ts"])
        elif hook["attempt"] == 1:
            refused_first.add(text)
    sent_at: dict[str, float] = {}
    for sent in meta.sent_messages(page_id, ok=True):
        sent_at.setdefault(sent["body"]["message"].get("text", ""), sent["time"])
    unexplained = [
        f"{due!r} acked {acked_at[due] - sent_at[came]:+.3f} s from {came!r} sent"
        for due, came in late
        if due in acked_at and came in sent_at and acked_at[due] < sent_at[came] - in_flight
    ]
    retried = sum(1 for due, _ in late if due in refused_first)
    return unexplained, retried, set(acked_at), refused_first
