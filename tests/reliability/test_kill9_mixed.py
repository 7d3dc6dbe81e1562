"""Drill 1: mixed inbound and outbound traffic while the bot is ``kill -9``'d at random.

The bot runs as a real subprocess (``rc-instagram run --config …``). Visitors write on
Instagram (the sandbox Meta's webhooks, retried like Meta until answered 200) and
agents answer in Rocket.Chat (Omnichannel webhooks, retried like Rocket.Chat), all
interleaved, while a killer SIGKILLs the bot at random moments and restarts it at once.
At the end every acknowledged message must have arrived: inbound in the Omnichannel
rooms exactly once and in order; outbound at the Send API exactly once: a send in
flight at a kill is settled by reading the thread back, and one the record cannot
settle (the thread moved past the 20 messages Meta shows) is never resent: its agent
gets a note instead, and the drill counts those apart. Outbound order: Rocket.Chat
retries an unanswered webhook on its own timer (4 × the HTTP timeout in production),
so a reply typed while the bot was down can reach it after replies typed later; the
bot reads such rooms after a start and queues them in typing order, so none may be
reordered by a retried webhook. Under load an unretried webhook can still be
overtaken ("slow", reported); no reply may go out before an earlier one it had
acknowledged.

Fast variant (default): 600 messages, 4 kills. Long variant (``--run-slow`` or
``RCIG_LONG_DRILLS=1``, see conftest.py): 10,000 messages, 20 kills. Run with ``-s`` to
see the printed figures.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.instagram.events import visitor_token
from bot.relay.outbound import note_id
from sandbox.meta import DEFAULT_IG_ID, DEFAULT_PAGE_ID, DEFAULT_PAGE_NAME, SandboxMeta
from sandbox.rocketchat import SandboxRocketChat
from storage import Page
from tests.reliability.drills import (
    BotProcess,
    deliver_until_ok,
    reorderings_by_the_bot,
    save_page,
    tally,
)
from tests.scenarios.harness import (
    AGENT,
    WEBHOOK_SECRET,
    config_dict,
    free_port,
    setup_rocketchat,
    store_secret,
    write_config,
)
from tests.scenarios.outbound_crash import reconcile_counts

#: Upper bound of a send's time between leaving the queue and reaching the sandbox Meta.
SEND_IN_FLIGHT = 0.25


@pytest.fixture
def rocketchat() -> Iterator[SandboxRocketChat]:
    """Rocket.Chat retrying unacknowledged Omnichannel webhooks for ~30 s (the real one
    retries 10 times, 4 × the HTTP timeout apart: minutes), so a restart never outlasts it."""
    server = SandboxRocketChat(webhook_retry_delay=0.25, webhook_max_attempts=120).start()
    server.set_setting("API_Enable_Rate_Limiter", False)
    try:
        yield server
    finally:
        server.stop()


def rooms_by_token(rc: SandboxRocketChat) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for room in rc.livechat_rooms():
        out.setdefault(room["v"]["token"], []).append(room["_id"])
    return out


def inbound_texts(rc: SandboxRocketChat) -> dict[str, list[str]]:
    """Visitor token → texts posted as that visitor, across their rooms, in order."""
    out: dict[str, list[str]] = {}
    for room in rc.livechat_rooms():
        token = room["v"]["token"]
        out.setdefault(token, []).extend(
            m["msg"] for m in rc.room_messages(room["_id"])
            if m.get("token") == token and not m.get("t")
        )
    return out


def unknown_texts(rc: SandboxRocketChat, agent_ids: dict[str, str]) -> set[str]:
    """Agent messages whose room got the "not sure this reached Instagram" note."""
    return {text for msg_id, text in agent_ids.items()
            if rc.message(note_id(f"note:rc-msg:{msg_id}:unknown:0")) is not None}


def outbound_texts(meta: SandboxMeta) -> dict[str, list[str]]:
    """IGSID → texts Meta accepted for that recipient, in arrival order."""
    out: dict[str, list[str]] = {}
    for sent in meta.sent_messages(DEFAULT_PAGE_ID, ok=True):
        text = sent["body"]["message"].get("text")
        if text is not None:
            out.setdefault(sent["recipient"], []).append(text)
    return out


async def test_kill9_at_random_points_loses_nothing_in_either_direction(
    rocketchat: SandboxRocketChat, meta: SandboxMeta, tmp_path: Path, long_drills: bool
) -> None:
    """Interleaved inbound/outbound traffic, bot SIGKILLed at random points and restarted:
    nothing acknowledged is lost either way; inbound never duplicated and stays in order."""
    total, kills, visitors_n = (10_000, 20, 50) if long_drills else (600, 4, 12)
    per_visitor = total // visitors_n
    rng = random.Random(8)
    rc = rocketchat
    department = setup_rocketchat(rc)
    rc.rest_latency = 0.002  # a little network latency, so kills land mid-call
    port = free_port()
    store_path = str(tmp_path / "data" / "store.json")
    config = write_config(
        tmp_path / "config.yaml", config_dict(rc.url, meta, store_path, f"127.0.0.1:{port}")
    )
    await save_page(store_path, Page(
        page_id=DEFAULT_PAGE_ID, name=DEFAULT_PAGE_NAME, instagram_id=DEFAULT_IG_ID,
        username="sandboxshop", page_token=meta.issue_page_token(DEFAULT_PAGE_ID),
        department_id=department, department_name="Instagram", subscribed=True,
    ))
    bot = BotProcess(config, tmp_path / "bot.log", port)
    url = f"{bot.base}/webhooks/instagram"
    rc.set_setting("Livechat_webhookUrl", f"{bot.base}/webhooks/rocketchat")
    rc.set_setting("Livechat_secret_token", WEBHOOK_SECRET)
    rc.set_setting("Livechat_webhook_on_agent_message", True)
    meta.set_webhook(url, echoes=True)  # our own sends come back as echoes, to be dropped

    visitors = [meta.new_igsid() for _ in range(visitors_n)]
    for n, igsid in enumerate(visitors):
        meta.set_profile(igsid, name=f"Visitor {n}")
    secret = await store_secret(store_path)
    token = {igsid: visitor_token(secret, DEFAULT_PAGE_ID, igsid) for igsid in visitors}
    expected_in: dict[str, list[str]] = {token[v]: [] for v in visitors}
    expected_out: dict[str, list[str]] = {v: [] for v in visitors}
    agent_ids: dict[str, str] = {}  # Rocket.Chat message _id -> text
    attempts: list[int] = []  # Meta deliveries per acknowledged inbound message
    started = time.monotonic()
    await bot.start()
    try:
        # Every visitor writes first, so each conversation has a room for agents to answer.
        hellos = [deliver_until_ok(meta, url, meta.text_event(DEFAULT_IG_ID, v, f"{v} hello"))
                  for v in visitors]
        await asyncio.gather(*hellos)
        for v in visitors:
            expected_in[token[v]].append(f"{v} hello")
        deadline = time.monotonic() + 30
        while len(rooms_by_token(rc)) < visitors_n:
            assert time.monotonic() < deadline, f"rooms not opened: {bot.tail()}"
            await asyncio.sleep(0.05)
        room_of = {v: rooms_by_token(rc)[token[v]][0] for v in visitors}

        async def visitor(v: str, seed: int) -> None:
            own = random.Random(seed)
            for k in range(per_visitor):
                if own.random() < 0.5:
                    text = f"{v} in {k:05d}"
                    event = meta.text_event(DEFAULT_IG_ID, v, text)
                    attempts.append(await deliver_until_ok(meta, url, event))
                    expected_in[token[v]].append(text)
                else:
                    text = f"{v} out {k:05d}"
                    message = rc.agent_reply(AGENT, room_of[v], text)
                    agent_ids[message["_id"]] = text
                    expected_out[v].append(text)
                # Paced like people typing: Omnichannel webhooks are fire-and-forget,
                # two replies of one room in the same instant could arrive either way.
                await asyncio.sleep(own.uniform(0.02, 0.08))

        traffic = asyncio.gather(*(visitor(v, n) for n, v in enumerate(visitors)))
        for _ in range(kills):
            await asyncio.sleep(rng.uniform(0.3, 1.5) if not long_drills
                                else rng.uniform(0.5, 3.0))
            bot.kill9()
            await bot.start()
        await traffic
        sent_done = time.monotonic()

        def complete() -> bool:
            got_in, got_out = inbound_texts(rc), outbound_texts(meta)
            told = unknown_texts(rc, agent_ids)
            return all(set(t) <= set(got_in.get(k, [])) for k, t in expected_in.items()) and \
                all(set(t) - told <= set(got_out.get(k, [])) for k, t in expected_out.items())

        deadline = time.monotonic() + (300 if long_drills else 30)
        while not complete() and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        await asyncio.sleep(1.0)  # a late duplicate would show up now
    finally:
        bot.stop()
    drained = time.monotonic()

    inbound = tally("inbound", expected_in, inbound_texts(rc))
    # A part whose outcome Instagram's record could not settle is never resent: its
    # agent was told in the room (and may send it again by hand). Such a part is not
    # expected at Meta; one that arrived anyway was delivered once.
    told = unknown_texts(rc, agent_ids)
    expected_out = {v: [t for t in texts if t not in told] for v, texts in expected_out.items()}
    outbound = tally("outbound", expected_out, outbound_texts(meta))
    settled, unknown = await reconcile_counts(store_path, DEFAULT_PAGE_ID)
    # The bot can only keep the order of what it has heard of (see reorderings_by_the_bot).
    unexplained, retried, acked, refused_first = reorderings_by_the_bot(
        rc, meta, DEFAULT_PAGE_ID, agent_ids, outbound.late, SEND_IN_FLIGHT)
    never_acked = [text for text in agent_ids.values() if text not in acked]
    print(f"\n[drill 1] {inbound.expected + outbound.expected} messages "
          f"({inbound.expected} inbound, {outbound.expected} outbound), "
          f"{bot.kills} kill -9, {bot.starts} starts "
          f"(startup {min(bot.startup_seconds):.2f}-{max(bot.startup_seconds):.2f} s), "
          f"{sum(attempts) - len(attempts)} Meta webhook retries, "
          f"sent in {sent_done - started:.1f} s, drained {drained - sent_done:.1f} s later")
    print(f"[drill 1] {inbound.line()}")
    print(f"[drill 1] {outbound.line()}; Omnichannel webhooks never acknowledged: "
          f"{len(never_acked)}, first attempt refused (bot down): {len(refused_first)}; "
          f"reorderings by a late webhook {retried} retried, "
          f"{len(outbound.late) - len(unexplained) - retried} slow; "
          f"by the bot {len(unexplained)} {unexplained}")
    print(f"[drill 1] read back after kills: {settled} part(s) settled, {unknown} unknown "
          f"(agent told: {len(told)}, of which delivered "
          f"{sum(1 for v in outbound_texts(meta).values() for t in v if t in told)})")
    for example in inbound.examples + outbound.examples:
        print(f"[drill 1]   {example}")
    assert bot.kills == kills
    assert inbound.lost == 0, inbound.examples
    assert inbound.duplicated == 0, inbound.examples
    assert inbound.out_of_order == 0, inbound.examples
    assert never_acked == []
    assert outbound.lost == 0, outbound.examples
    # Sends in flight at a kill are settled by reading the thread back: none repeats.
    assert outbound.duplicated == 0, outbound.examples
    assert unknown == len(told)
    # Outbound order is kept for everything the bot had acknowledged, and replies whose
    # webhook Rocket.Chat redelivered after a restart are queued in typing order.
    assert unexplained == [], outbound.examples
    assert retried == 0, outbound.examples
