"""``GET /metrics``: Prometheus text that parses, with counters that move as messages flow."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sandbox.meta import DEFAULT_IG_ID, SandboxMeta
from sandbox.rocketchat import SandboxRocketChat
from tests.scenarios.harness import AGENT, APP_SECRET, WEBHOOK_SECRET, Bridge, running_bridge

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest.fixture
def meta() -> Iterator[SandboxMeta]:
    server = SandboxMeta(app_secret=APP_SECRET).start()
    try:
        yield server
    finally:
        server.stop()


async def scrape(bridge: Bridge) -> Samples:
    """GET /metrics and parse it with prometheus_client's own parser."""
    url = f"http://127.0.0.1:{bridge.bot.port}/metrics"
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/plain")
        text = await resp.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """Sum over every series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, lbls), v in samples.items() if n == name and want <= set(lbls))


async def until(predicate, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def test_metrics_parse_and_move_when_messages_flow(
    rocketchat: SandboxRocketChat, meta: SandboxMeta, tmp_path: Path
) -> None:
    """Inbound, outbound, a rejected webhook and a reconnect each move their series."""
    async with running_bridge(rocketchat, meta, tmp_path) as bridge:
        await bridge.bot.realtime.wait_connected(5)
        rc = bridge.rc
        rc.set_setting("Livechat_webhookUrl",
                       f"http://127.0.0.1:{bridge.bot.port}/webhooks/rocketchat")
        rc.set_setting("Livechat_secret_token", WEBHOOK_SECRET)
        rc.set_setting("Livechat_webhook_on_agent_message", True)

        before = await scrape(bridge)
        assert value(before, "rcig_realtime_connected") == 1.0
        assert total(before, "rcig_messages_relayed_total") == 0.0

        # A visitor writes on Instagram: received, relayed inbound, room opened.
        igsid = meta.new_igsid()
        meta.set_profile(igsid, name="Jane Doe", username="jane")
        status, _ = await bridge.deliver(meta.text_event(DEFAULT_IG_ID, igsid, "hello"))
        assert status == 200
        await until(lambda: bridge.texts(igsid) == ["hello"])
        # A forged webhook is refused and counted by reason.
        status, _ = await bridge.deliver(meta.text_event(DEFAULT_IG_ID, igsid, "x"),
                                         secret="not-the-app-secret")
        assert status == 403

        # An agent answers: the Omnichannel webhook, then the Send API.
        room = bridge.rooms(igsid)[0]
        rc.agent_reply(AGENT, room["_id"], "hi Jane")
        await until(lambda: any(s["ok"] for s in meta.sent_messages(recipient=igsid)
                                if s["body"].get("message", {}).get("text") == "hi Jane"))

        # The realtime connection drops and comes back.
        rc.drop_all_sockets()
        await until(lambda: bridge.bot.realtime.reconnects >= 1, timeout=15)

        after = await scrape(bridge)
        assert value(after, "rcig_webhooks_received_total", source="instagram") >= 1
        assert value(after, "rcig_webhooks_received_total", source="rocketchat") >= 1
        assert total(after, "rcig_webhooks_rejected_total", source="instagram") == 1
        assert total(after, "rcig_messages_relayed_total", direction="inbound") >= 1
        assert total(after, "rcig_messages_relayed_total", direction="outbound") >= 1
        assert value(after, "rcig_realtime_reconnects_total") >= 1
        # Latency histograms are fed by the REST and Graph clients themselves.
        assert total(after, "rcig_rocketchat_call_seconds_count") > 0
        assert value(after, "rcig_rocketchat_call_seconds_count", call="livechat/message") >= 1
        assert value(after, "rcig_graph_call_seconds_count", call="POST /{id}/messages") >= 1
        # Gauges read from state are present.
        assert ("rcig_queue_depth", (("queue", "inbound"),)) in after
        assert ("rcig_conversations_waiting_for_agent", ()) in after
        assert value(after, "rcig_monthly_visitors") >= 1
        # No label carries an id: the Graph call label has the page id replaced.
        assert not any(bridge.page_id in str(lbls) for _, lbls in after)


async def test_relayed_messages_log_ids_but_never_text_or_tokens(
    rocketchat: SandboxRocketChat, meta: SandboxMeta, tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each relayed message has an INFO line with its ids; no INFO line holds text or a token."""
    caplog.set_level("INFO")
    async with running_bridge(rocketchat, meta, tmp_path) as bridge:
        await bridge.bot.realtime.wait_connected(5)
        rc = bridge.rc
        rc.set_setting("Livechat_webhookUrl",
                       f"http://127.0.0.1:{bridge.bot.port}/webhooks/rocketchat")
        rc.set_setting("Livechat_secret_token", WEBHOOK_SECRET)
        rc.set_setting("Livechat_webhook_on_agent_message", True)
        igsid = meta.new_igsid()
        meta.set_profile(igsid, name="Jane Doe", username="jane")
        event = meta.text_event(DEFAULT_IG_ID, igsid, "my secret order 4711")
        mid = event["entry"][0]["messaging"][0]["message"]["mid"]
        await bridge.deliver(event)
        await until(lambda: bridge.texts(igsid) == ["my secret order 4711"])
        room = bridge.rooms(igsid)[0]
        reply = rc.agent_reply(AGENT, room["_id"], "your parcel left today")
        await until(lambda: any(s["ok"] for s in meta.sent_messages(recipient=igsid)))
        page_token = bridge.page.page_token if bridge.page else ""
    info = [r.getMessage() for r in caplog.records if r.levelno >= 20]
    assert any(mid in line and room["_id"] in line for line in info), info
    assert any(reply["_id"] in line and "sent as" in line for line in info), info
    for line in info:
        assert "secret order" not in line and "parcel left" not in line, line
        assert page_token not in line and APP_SECRET not in line, line
