"""Drill 3: Rocket.Chat's REST API answers 503 for a long spell (60 s in production terms).

The bridge keeps acknowledging Instagram webhooks (it stores them; nothing in the
receiver needs Rocket.Chat), and people keep typing commands (the realtime socket is
up; only REST fails). When REST comes back, every message must be delivered, once and
in order per visitor — for visitors whose room already existed and for visitors who
wrote for the first time during the outage — and every command answered.

Time is compressed in the fast variant: a 2.5 s outage, long enough for every item to
fail and back off at least once (the relay's first retry waits 1-2 s). The long
variant (``--run-slow`` or ``RCIG_LONG_DRILLS=1``) holds the 503 for the full 60 s.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

from sandbox.meta import SandboxMeta
from sandbox.rocketchat import SandboxRocketChat
from tests.reliability.drills import tally
from tests.scenarios.harness import ADMIN, BOT_USER, Bridge, running_bridge

TYPIST = "carol"


def admin_answers(rc: SandboxRocketChat) -> int:
    return sum(1 for m in rc.dm_messages(ADMIN, BOT_USER) if m["u"]["username"] == BOT_USER)


def commands_answered(rc: SandboxRocketChat) -> Counter[str]:
    """Command name → answers the typist got (unknown commands are named in the answer)."""
    counts: Counter[str] = Counter()
    for message in rc.dm_messages(TYPIST, BOT_USER):
        if message["u"]["username"] == BOT_USER and "`" in message["msg"]:
            counts[message["msg"].split("`")[1]] += 1
    return counts


async def test_rest_503_spell_then_every_message_delivered_in_order(
    rocketchat: SandboxRocketChat, meta: SandboxMeta, tmp_path: Path, long_drills: bool
) -> None:
    """REST answers 503 for a spell: webhooks are still acknowledged, and afterwards every
    message is delivered once, in order, and every command typed meanwhile is answered."""
    outage = 60.0 if long_drills else 2.5
    old_n, new_n, per_visitor = 10, 10, 6
    rocketchat.create_user(TYPIST, "carol-pw", roles=["user"])
    async with running_bridge(rocketchat, meta, tmp_path) as bridge:
        await run_drill(bridge, outage, old_n, new_n, per_visitor, long_drills)


async def run_drill(
    bridge: Bridge, outage: float, old_n: int, new_n: int, per_visitor: int, long_drills: bool
) -> None:
    rc, meta = bridge.rc, bridge.meta
    old = [meta.new_igsid() for _ in range(old_n)]
    new = [meta.new_igsid() for _ in range(new_n)]
    expected: dict[str, list[str]] = {v: [] for v in old + new}
    for v in old:
        status, _ = await bridge.deliver(meta.text_event(bridge.ig_id, v, f"{v} hello"))
        assert status == 200
        expected[v].append(f"{v} hello")
    deadline = time.monotonic() + 10
    while not all(bridge.texts(v) for v in old):
        assert time.monotonic() < deadline, "rooms of the existing visitors not opened"
        await asyncio.sleep(0.05)

    rc.fail_rest(503, until=outage)
    outage_start = time.monotonic()
    # An admin command needs a roles look-up (REST) before it can even run.
    rc.send_dm(ADMIN, BOT_USER, "instagram pages")
    statuses: Counter[int] = Counter()
    typed: list[str] = []
    # Spread the traffic over the first part of the outage, then keep writing after it.
    steps = per_visitor
    for k in range(steps):
        for v in old + new:
            text = f"{v} m{k}"
            status, _ = await bridge.deliver(meta.text_event(bridge.ig_id, v, text))
            statuses[status] += 1
            expected[v].append(text)
        name = f"during{k}"
        rc.send_dm(TYPIST, BOT_USER, f"instagram {name}")
        typed.append(name)
        await asyncio.sleep(min(outage * 0.6 / steps, 1.0))
    while time.monotonic() - outage_start < outage:
        await asyncio.sleep(0.05)
    outage_end = time.monotonic()
    for v in old + new:
        text = f"{v} after"
        status, _ = await bridge.deliver(meta.text_event(bridge.ig_id, v, text))
        statuses[status] += 1
        expected[v].append(text)
    rc.send_dm(TYPIST, BOT_USER, "instagram after")
    typed.append("after")

    def delivered() -> bool:
        return all(set(t) <= set(bridge.texts(v)) for v, t in expected.items())

    def answered() -> bool:
        return set(commands_answered(rc)) >= set(typed) and admin_answers(rc) >= 1

    deadline = time.monotonic() + (240 if long_drills else 25)
    recovered = answered_after = None
    while time.monotonic() < deadline and (recovered is None or answered_after is None):
        if recovered is None and delivered():
            recovered = time.monotonic() - outage_end
        if answered_after is None and answered():
            answered_after = time.monotonic() - outage_end
        await asyncio.sleep(0.1)
    await asyncio.sleep(0.3)
    result = tally("inbound", expected, {v: bridge.texts(v) for v in expected})
    answers = commands_answered(rc)
    retries = sum(
        bridge.bot.metrics.retries.labels("inbound", reason)._value.get()
        for reason in ("rocketchat Unavailable",)
    )
    print(f"\n[drill 3] REST 503 for {outage:.1f} s: {result.expected} messages "
          f"({old_n} visitors with a room, {new_n} new during the outage), webhook answers "
          f"{dict(statuses)}, inbound retries {retries:.0f}; messages all delivered "
          f"{_secs(recovered)} and commands all answered {_secs(answered_after)} "
          "after REST came back")
    print(f"[drill 3] {result.line()}")
    print(f"[drill 3] commands typed {len(typed)}, answered {len(answers)}, "
          f"unanswered {sorted(set(typed) - set(answers))}, "
          f"answered twice {sorted(n for n, c in answers.items() if c > 1)}; "
          f"admin command answers {admin_answers(rc)}")
    for example in result.examples:
        print(f"[drill 3]   {example}")
    assert statuses == {200: result.expected - old_n}
    assert result.lost == 0, result.examples
    assert result.duplicated == 0, result.examples
    assert result.out_of_order == 0, result.examples
    assert set(answers) == set(typed)
    assert set(answers.values()) == {1}
    assert admin_answers(rc) == 1


def _secs(value: float | None) -> str:
    return "never" if value is None else f"{value:.1f} s"
