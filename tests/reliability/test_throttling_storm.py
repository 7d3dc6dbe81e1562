"""Drill 4: a Graph throttling storm — 613, 4 and 32 on half the Send API calls.

Agents answer visitors in many rooms at once while the sandbox Meta refuses about every
other Send API call with a throttling error (codes 613, 4, 32 in turn). Throttled sends
were refused, so retrying them cannot duplicate: every reply must reach the visitor
exactly once and in the agent's order, and the backoff must be visible to operators
in ``/metrics``: every throttled answer counts once in ``rcig_retries_total`` (queue
``graph`` for a retry inside the Graph client, ``outbound`` once the item is
rescheduled). Before this drill only the rescheduled items counted, about one throttle
in twenty: the storm hardly showed.

The relay's retry base is compressed (``OutboundRelay.retry_base``, 2 s in production)
so the fast variant takes seconds; the long variant (``--run-slow`` or
``RCIG_LONG_DRILLS=1``) keeps production timing and sends more.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time

import aiohttp

from tests.reliability.drills import reorderings_by_the_bot, tally
from tests.reliability.test_kill9_mixed import SEND_IN_FLIGHT
from tests.scenarios.harness import Bridge
from tests.scenarios.outbound_helpers import (
    enable_omnichannel_webhooks,
    reply,
    sent_texts,
    visitor_with_room,
)

THROTTLE_CODES = (613, 4, 32)
_RETRIES = re.compile(r'^rcig_retries_total\{queue="(\w+)",reason="([^"]*)"\} (\S+)$', re.M)


async def retries_metric(bridge: Bridge) -> dict[tuple[str, str], float]:
    """``rcig_retries_total`` by (queue, reason), read from GET /metrics."""
    async with aiohttp.ClientSession() as session, session.get(
        f"http://127.0.0.1:{bridge.bot.port}/metrics"
    ) as resp:
        text = await resp.text()
    return {(q, r): float(v) for q, r, v in _RETRIES.findall(text)}


async def storm(bridge: Bridge, stop: asyncio.Event) -> int:
    """Keep about half of all Send API calls failing with a throttling code."""
    meta = bridge.meta
    codes = itertools.cycle(THROTTLE_CODES)
    injected = 0
    while not stop.is_set():
        calls = meta.sent_messages()
        failed = sum(1 for c in calls if not c["ok"])
        pending = injected - failed
        if pending < 1 and failed + pending < (len(calls) + 1) / 2:
            meta.inject_errors("messages", [next(codes)])
            injected += 1
        await asyncio.sleep(0.002)
    return injected


async def test_throttling_storm_on_half_the_sends_loses_and_reorders_nothing(
    bridge: Bridge, long_drills: bool
) -> None:
    """Half the Send API calls throttled (613/4/32): every reply delivered once, in
    order, and the retries show in /metrics."""
    rooms, per_room = (30, 20) if long_drills else (10, 8)
    if not long_drills:
        bridge.bot.outbound_relay.retry_base = 0.1
    enable_omnichannel_webhooks(bridge)
    visitors = [await visitor_with_room(bridge, f"Visitor {n}") for n in range(rooms)]
    stop = asyncio.Event()
    storm_task = asyncio.create_task(storm(bridge, stop))
    expected: dict[str, list[str]] = {igsid: [] for igsid, _ in visitors}
    agent_ids: dict[str, str] = {}
    started = time.monotonic()
    try:
        for k in range(per_room):
            for igsid, rid in visitors:
                text = f"{igsid} reply {k:03d}"
                agent_ids[reply(bridge, rid, text)["_id"]] = text
                expected[igsid].append(text)
            await asyncio.sleep(0.02)  # agents typing: one room's replies never share a ms
        deadline = time.monotonic() + (600 if long_drills else 60)
        while time.monotonic() < deadline and not all(
            set(texts) <= set(sent_texts(bridge, igsid)) for igsid, texts in expected.items()
        ):
            await asyncio.sleep(0.1)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        injected = await storm_task
    await asyncio.sleep(0.3)
    result = tally("outbound", expected, {v: sent_texts(bridge, v) for v in expected})
    calls = bridge.meta.sent_messages(bridge.page_id)
    refused = [c for c in calls if not c["ok"]]
    metric = await retries_metric(bridge)
    throttled_retries = {q: v for (q, r), v in metric.items() if r == "throttled"}
    # A reply whose webhook reached the bot after a later reply was sent (a loaded
    # machine) cannot be put back in order; one the bot had acknowledged must be.
    unexplained, _, _, _ = reorderings_by_the_bot(bridge.rc, bridge.meta, bridge.page_id,
                                                  agent_ids, result.late, SEND_IN_FLIGHT)
    print(f"\n[drill 4] {result.expected} replies in {rooms} rooms; Send API calls "
          f"{len(calls)}, throttled {len(refused)} "
          f"({100 * len(refused) / max(1, len(calls)):.0f} %, codes "
          f"{sorted({c['error_code'] for c in refused})}), injected {injected}; "
          f"all delivered in {elapsed:.1f} s")
    print(f"[drill 4] {result.line()}; by a late webhook "
          f"{len(result.late) - len(unexplained)}, by the bot {len(unexplained)}")
    print(f"[drill 4] /metrics rcig_retries_total{{reason=\"throttled\"}} by queue: "
          f"{throttled_retries}")
    for example in result.examples:
        print(f"[drill 4]   {example}")
    assert len(refused) >= len(calls) // 3
    assert result.lost == 0, result.examples
    assert result.duplicated == 0, result.examples
    assert unexplained == [], result.examples
    # Every throttled answer was retried, by the Graph client (queue="graph") or, once
    # its own retries ran out, by the outbound queue: each must show in /metrics.
    assert sum(throttled_retries.values()) == len(refused), metric
