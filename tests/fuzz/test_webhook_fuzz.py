"""Fuzzed webhook bodies through a running Bot: never a 5xx, never a stuck work item.

Every example is POSTed over loopback to one bot (correctly signed / with the right
secret), so the receiver, the parser, the store and the relay workers all see it. After
the run both queues must drain: each stored item relayed or dropped with a log line,
none retried as an "internal error".
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import time
from typing import Any

import aiohttp
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from storage.base import Conversation
from tests.fuzz.conftest import FUZZ, LoopBridge, internal_errors, pending, run_property
from tests.fuzz.strategies import instagram_bodies, json_values, rocketchat_bodies
from tests.scenarios.harness import APP_SECRET, WEBHOOK_SECRET, Bridge

IGSIDS = ["6543210987654321", "6543210987654322", "1", "0"]  # as in strategies.IGSIDS
IG_ID = "17841400000000001"  # placeholder in @example bodies; replaced by the real ig id


def sign(raw: bytes) -> dict[str, str]:
    digest = hmac.new(APP_SECRET.encode(), raw, hashlib.sha256).hexdigest()
    return {"X-Hub-Signature-256": f"sha256={digest}", "Content-Type": "application/json"}


def encode(body: Any) -> bytes:
    if isinstance(body, bytes):
        return body
    return json.dumps(body).encode("utf-8")


async def post(http: aiohttp.ClientSession, url: str, raw: bytes,
               headers: dict[str, str]) -> int:
    async with http.post(url, data=raw, headers=headers) as resp:
        await resp.read()
        return resp.status


def deep(depth: int) -> str:
    """A JSON array nested ``depth`` levels (as text: too deep for json.dumps)."""
    return "[" * depth + "1" + "]" * depth


def ig_message(ig_id: str, **message: Any) -> dict[str, Any]:
    return {"object": "instagram", "entry": [{"id": ig_id, "time": 1, "messaging": [{
        "sender": {"id": "6543210987654321"}, "recipient": {"id": ig_id},
        "timestamp": int(time.time() * 1000), "message": {"mid": "m-x", **message}}]}]}


def counted(bridge: Bridge, metric_name: str, direction: str) -> dict[str, float]:
    """A counter's values for one direction, by its other label."""
    out: dict[str, float] = {}
    for metric in bridge.bot.metrics.registry.collect():
        if metric.name != metric_name:
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total") and sample.labels.get("direction") == direction:
                other = sample.labels.get("kind") or sample.labels.get("reason") or ""
                out[other] = out.get(other, 0.0) + sample.value
    return out


def relayed(bridge: Bridge, direction: str) -> float:
    return sum(counted(bridge, "rcig_messages_relayed", direction).values())


async def drain(bridge: Bridge, eventually: Any, records: list[logging.LogRecord]) -> None:
    """Both queues empty, and no bug on the way."""
    bridge.bot.inbound.worker.notify()
    bridge.bot.outbound.notify()

    async def empty() -> bool:
        store = bridge.bot.store
        return (store.inbox.backlog == 0 and await store.queue_depth("inbound") == 0
                and await store.queue_depth("outbound") == 0)

    try:
        await eventually(empty, timeout=20)
    except AssertionError:
        raise AssertionError(f"queues did not drain: {await pending(bridge)}") from None
    assert internal_errors(bridge, records) == []


async def test_fuzzed_instagram_webhooks_never_5xx_and_drain(
    bridge: Bridge, eventually: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Signed random/mutated Instagram bodies get a non-5xx answer and every stored item
    is relayed or dropped; none crashes the worker."""
    caplog.set_level(logging.INFO)
    url = bridge.webhook_url
    ig_id = bridge.ig_id
    statuses: list[int] = []
    async with aiohttp.ClientSession() as http:
        loop = LoopBridge(asyncio.get_running_loop())

        @FUZZ
        @given(body=st.one_of(instagram_bodies(ig_id), instagram_bodies(ig_id), json_values))
        @example(body=b"[" * 200_000)  # deep nesting that is not even JSON
        # JSON too deep for the parser; then just shallow enough to parse and be stored
        @example(body=f'{{"object": "instagram", "entry": {deep(5000)}}}'.encode())
        @example(body=(
            f'{{"object": "instagram", "entry": [{{"id": "{IG_ID}", "messaging": ['
            f'{{"sender": {{"id": "1"}}, "recipient": {{"id": "{IG_ID}"}}, "timestamp": 1,'
            f'"message": {{"mid": "deep", "text": {deep(960)}}}}}]}}]}}').encode())
        @example(body=ig_message(IG_ID) | {"entry": [{"id": IG_ID, "messaging": [
            {"sender": {"id": "1"}, "recipient": {"id": IG_ID}, "timestamp": float("inf"),
             "message": {"mid": "inf"}}]}]})
        @example(body=ig_message(IG_ID) | {"entry": [{"id": IG_ID, "messaging": [
            {"sender": {"id": "1"}, "recipient": {"id": IG_ID}, "timestamp": 10**400,
             "message": {"mid": "huge"}}]}]})
        @example(body=ig_message(IG_ID, attachments=[{"type": ["image"], "payload": {}}]))
        @example(body={"object": "instagram", "entry": [{"id": IG_ID, "messaging": [
            {"sender": {"id": "2"}, "recipient": {"id": IG_ID}, "timestamp": 1,
             "reaction": {"mid": "m-1", "reaction": {"love": 1}}}]}]})
        @example(body=ig_message(IG_ID, text="x" * 6000))  # longer than a Rocket.Chat message
        @example(body={"object": "instagram", "entry": [{"id": IG_ID, "messaging": [
            {"sender": {"id": str(n)}, "recipient": {"id": IG_ID}, "timestamp": 1,
             "read": {"mid": "m"}} for n in range(3000)]}]})  # a huge (ignorable) batch
        def prop(body: Any) -> None:
            raw = encode(body).replace(IG_ID.encode(), ig_id.encode())
            if len(raw) > 1024 * 1024:
                return
            status = loop.run(post(http, url, raw, sign(raw)))
            statuses.append(status)
            assert status < 500, (status, raw[:300])

        await run_property(prop)
    await drain(bridge, eventually, caplog.records)
    # Not vacuous: many bodies were accepted and some items really reached Omnichannel.
    assert statuses.count(200) >= len(statuses) // 4, statuses
    assert relayed(bridge, "inbound") > 0


async def test_fuzzed_rocketchat_webhooks_never_5xx_and_drain(
    bridge: Bridge, eventually: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Random/mutated Omnichannel bodies with the right secret get a non-5xx answer and
    every stored outbound item is sent or dropped; none crashes the worker."""
    caplog.set_level(logging.INFO)
    url = bridge.webhook_url.replace("/instagram", "/rocketchat")
    page_id = bridge.page_id
    headers = {"X-RocketChat-Livechat-Token": WEBHOOK_SECRET,
               "Content-Type": "application/json"}
    for igsid in IGSIDS:  # the visitors wrote recently: sends to them succeed
        bridge.meta.set_last_inbound(bridge.ig_id, igsid)
        # Conversations the bridge holds (stored tokens, as from a store of the old
        # token form), each with room-1 as the room it opened: only those relay.
        await bridge.bot.store.save_conversation(Conversation(
            page_id, igsid, f"instagram-{page_id}-{igsid}", room_id="room-1",
            visitor_registered=True, last_inbound_at=time.time()))
    async with aiohttp.ClientSession() as http:
        loop = LoopBridge(asyncio.get_running_loop())

        @FUZZ
        @given(body=st.one_of(rocketchat_bodies(page_id), rocketchat_bodies(page_id), json_values))
        @example(body=b"{" * 200_000)
        @example(body=f'{{"type": "Message", "messages": {deep(5000)}}}'.encode())
        @example(body={"type": "Message", "_id": "room-1",
                       "visitor": {"token": "instagram-PAGE-1"},
                       "messages": [{"_id": "r-ok", "agentId": "a-1", "msg": "hi"}]})
        @example(body={"type": "Message", "visitor": {"token": "instagram-PAGE-1"},
                       "messages": 5})
        @example(body={"type": "Message", "visitor": {"token": "instagram-PAGE-1"},
                       "messages": [{"_id": "r", "agentId": "a", "msg": "hi",
                                     "attachments": 7, "files": 3}]})
        @example(body={"type": "Message", "visitor": {"token": "instagram-PAGE-1"},
                       "messages": [{"_id": "r-huge", "agentId": "a", "msg": "hi",
                                     "ts": 10**400}]})
        @example(body={"type": "Message", "visitor": {"token": "instagram-PAGE-1"},
                       "messages": [{"_id": "r-nan", "agentId": "a", "msg": "hi",
                                     "ts": {"$date": float("nan")}}]})
        @example(body={"type": "LivechatSession", "_id": "room-9",
                       "visitor": {"token": "instagram-PAGE-1"},
                       "closedAt": "0001-01-01T00:00:00-23:59"})
        def prop(body: Any) -> None:
            raw = encode(body).replace(b"PAGE", page_id.encode())
            if len(raw) > 1024 * 1024:
                return
            status = loop.run(post(http, url, raw, headers))
            assert status < 500, (status, raw[:300])

        await run_property(prop)
    await drain(bridge, eventually, caplog.records)
    assert relayed(bridge, "outbound") > 0
