"""GET/POST /webhooks/instagram: verification, signature, limits — through a running Bot."""

from __future__ import annotations

import asyncio
import errno
import hashlib
import hmac
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from storage.base import StorageError
from tests.scenarios.harness import APP_SECRET, VERIFY_TOKEN, Bridge


def received(bridge: Bridge) -> float:
    value = bridge.bot.metrics.registry.get_sample_value(
        "rcig_webhooks_received_total", {"source": "instagram"}
    )
    return value or 0.0


def rejected(bridge: Bridge, reason: str) -> float:
    value = bridge.bot.metrics.registry.get_sample_value(
        "rcig_webhooks_rejected_total", {"source": "instagram", "reason": reason}
    )
    return value or 0.0


async def assert_nothing_stored(bridge: Bridge) -> None:
    assert received(bridge) == 0
    assert bridge.bot.store.inbox.backlog == 0
    assert await bridge.bot.store.queue_depth("inbound") == 0
    await asyncio.sleep(0.1)
    assert bridge.rc.livechat_rooms() == []


async def test_verification_echoes_challenge_for_the_right_token(bridge: Bridge):
    """hub.mode=subscribe with the configured verify token answers the challenge."""
    status, body = await asyncio.to_thread(
        bridge.meta.verify_webhook, bridge.webhook_url, VERIFY_TOKEN, "1158201444"
    )
    assert (status, body) == (200, "1158201444")


@pytest.mark.parametrize(
    "params",
    [
        {"hub.mode": "subscribe", "hub.verify_token": "wrong", "hub.challenge": "1"},
        {"hub.mode": "subscribe", "hub.challenge": "1"},
        {"hub.mode": "unsubscribe", "hub.verify_token": VERIFY_TOKEN, "hub.challenge": "1"},
        {},
    ],
)
async def test_verification_with_wrong_token_or_mode_is_forbidden(bridge: Bridge, params):
    """A wrong/missing verify token or mode answers 403 without the challenge."""
    async with aiohttp.ClientSession() as session, session.get(
        bridge.webhook_url, params=params
    ) as resp:
        assert resp.status == 403
        assert await resp.text() != "1"


def _event(bridge: Bridge) -> dict:
    igsid = bridge.meta.new_igsid()
    return bridge.meta.text_event(bridge.ig_id, igsid, "hello")


async def test_missing_signature_is_forbidden(bridge: Bridge):
    """No X-Hub-Signature-256 (and no legacy header) → 403, nothing stored."""
    status, _ = await bridge.deliver(
        _event(bridge), headers={"X-Hub-Signature-256": None, "X-Hub-Signature": None}
    )
    assert status == 403
    assert rejected(bridge, "signature") == 1
    await assert_nothing_stored(bridge)


async def test_wrong_signature_is_forbidden(bridge: Bridge):
    """A signature made with another secret → 403, nothing stored."""
    status, _ = await bridge.deliver(_event(bridge), secret="not-the-app-secret")
    assert status == 403
    await assert_nothing_stored(bridge)


async def test_tampered_body_is_forbidden(bridge: Bridge):
    """A valid signature of a different body → 403 (HMAC covers the raw bytes)."""
    event = _event(bridge)
    body, headers = bridge.meta.webhook_request(event)
    tampered = body.replace(b"hello", b"HELLO")
    status, _ = await bridge.deliver(
        None, raw=tampered, headers={"X-Hub-Signature-256": headers["X-Hub-Signature-256"]}
    )
    assert status == 403
    await assert_nothing_stored(bridge)


async def test_legacy_sha1_signature_alone_is_forbidden(bridge: Bridge):
    """Only the legacy X-Hub-Signature (SHA-1), even valid, is not accepted → 403."""
    status, _ = await bridge.deliver(_event(bridge), headers={"X-Hub-Signature-256": None})
    assert status == 403
    await assert_nothing_stored(bridge)


async def test_non_json_body_is_bad_request(bridge: Bridge):
    """A correctly signed body that is not JSON → 400, nothing stored."""
    status, _ = await bridge.deliver(None, raw=b"this is not json {")
    assert status == 400
    assert rejected(bridge, "not_json") == 1
    await assert_nothing_stored(bridge)


def dropped(bridge: Bridge, reason: str) -> float:
    value = bridge.bot.metrics.registry.get_sample_value(
        "rcig_events_dropped_total", {"direction": "inbound", "reason": reason}
    )
    return value or 0.0


@pytest.mark.parametrize(
    "payload", [{"object": "page", "entry": []}, ["instagram"], {"entry": []}, 42]
)
async def test_page_object_body_answered_200_and_dropped(bridge: Bridge, payload):
    """A signed body of another object → 200 (a refusal would get the app unsubscribed
    from the Page), nothing stored, counted."""
    status, _ = await bridge.deliver(None, raw=json.dumps(payload).encode())
    assert status == 200
    assert dropped(bridge, "other_object") == 1
    await assert_nothing_stored(bridge)


@pytest.mark.parametrize("secret", [None, "not-the-app-secret"])
async def test_body_over_1_mib_is_refused_with_413(bridge: Bridge, secret: str | None):
    """A body over 1 MiB → 413 whether or not it is signed, nothing stored (the contract)."""
    event = _event(bridge)
    event["padding"] = "x" * (1024 * 1024)
    kwargs = {"secret": secret} if secret else {}
    status, _ = await bridge.deliver(event, **kwargs)
    assert status == 413
    await assert_nothing_stored(bridge)


async def test_real_sized_batch_of_1000_updates_is_accepted(bridge: Bridge, eventually):
    """Meta batches up to 1000 updates; 1000 ordinary ones fit in 1 MiB and are stored."""
    event = _event(bridge)
    igsid = event["entry"][0]["messaging"][0]["sender"]["id"]
    reads = [bridge.meta.read_event(bridge.ig_id, igsid, bridge.meta.new_mid())
             for _ in range(999)]
    batch = bridge.meta.batch([event, *reads], merge=True)
    assert len(json.dumps(batch).encode()) < 1024 * 1024
    status, _ = await bridge.deliver(batch)
    assert status == 200
    await eventually(lambda: bridge.texts(igsid) == ["hello"])


async def test_oversize_body_without_content_length_is_refused(bridge: Bridge):
    """A chunked body over 1 MiB (no Content-Length) is refused with 413 too."""
    raw = json.dumps({"object": "instagram", "pad": "x" * (1024 * 1024 + 10)}).encode()
    signature = "sha256=" + hmac.new(APP_SECRET.encode(), raw, hashlib.sha256).hexdigest()

    async def chunks() -> AsyncIterator[bytes]:
        for start in range(0, len(raw), 65536):
            yield raw[start:start + 65536]

    async with aiohttp.ClientSession() as session, session.post(
        bridge.webhook_url, data=chunks(), headers={"X-Hub-Signature-256": signature}
    ) as resp:
        assert resp.status == 413
    await assert_nothing_stored(bridge)


async def test_valid_webhook_is_stored_and_acknowledged(bridge: Bridge, eventually):
    """A signed instagram body → 200 and its message is relayed."""
    event = _event(bridge)
    igsid = event["entry"][0]["messaging"][0]["sender"]["id"]
    status, body = await bridge.deliver(event)
    assert (status, body) == (200, "EVENT_RECEIVED")
    assert received(bridge) == 1
    await eventually(lambda: bridge.texts(igsid) == ["hello"])


async def test_odd_items_in_a_valid_body_never_cause_5xx(bridge: Bridge, eventually):
    """Malformed items are skipped with 200; the good item in the same batch is relayed."""
    good = _event(bridge)
    igsid = good["entry"][0]["messaging"][0]["sender"]["id"]
    good["entry"][0]["messaging"][:0] = [
        {"sender": {"id": igsid}},  # no recipient, no timestamp
        "not an object",
        {"sender": {"id": igsid}, "recipient": {"id": bridge.ig_id}, "timestamp": 1,
         "message": {"text": "no mid"}},
        {"sender": {"id": igsid}, "recipient": {"id": bridge.ig_id}, "timestamp": 2,
         "something_new": {}},
    ]
    good["entry"].append("garbage entry")
    status, _ = await bridge.deliver(good)
    assert status == 200
    await eventually(lambda: bridge.texts(igsid) == ["hello"])


async def test_unknown_account_is_dropped_not_queued(bridge: Bridge):
    """Events for an Instagram account that is not connected → 200, never queued."""
    igsid = bridge.meta.new_igsid()
    event = bridge.meta.text_event("17841499999999999", igsid, "who?")
    status, _ = await bridge.deliver(event)
    assert status == 200
    await bridge.taken()
    assert await bridge.bot.store.queue_depth("inbound") == 0
    dropped = bridge.bot.metrics.registry.get_sample_value(
        "rcig_events_dropped_total", {"direction": "inbound", "reason": "unknown_account"}
    )
    assert dropped == 1


async def test_unsubscribed_page_is_dropped_not_queued(bridge: Bridge):
    """A connected but unsubscribed page's events are never queued (dropped, counted)."""
    assert bridge.page is not None
    bridge.page.subscribed = False
    await bridge.bot.store.save_page(bridge.page)
    status, _ = await bridge.deliver(_event(bridge))
    assert status == 200
    await bridge.taken()
    assert await bridge.bot.store.queue_depth("inbound") == 0
    dropped = bridge.bot.metrics.registry.get_sample_value(
        "rcig_events_dropped_total", {"direction": "inbound", "reason": "unknown_account"}
    )
    assert dropped == 1


async def test_storage_failure_answers_503_so_meta_retries(bridge: Bridge, mocker, eventually):
    """When the inbox cannot fsync the answer is 503, never 200 for an unstored event;
    Meta's retry once the disk recovers is acknowledged and relayed once."""
    mocker.patch.object(bridge.bot.store.inbox, "_fsync",
                        side_effect=OSError(errno.ENOSPC, "No space left on device"))
    event = _event(bridge)
    igsid = event["entry"][0]["messaging"][0]["sender"]["id"]
    status, _ = await bridge.deliver(event)
    assert status == 503
    assert rejected(bridge, "storage") == 1
    assert bridge.bot.store.inbox.backlog == 0
    mocker.stopall()  # space returns
    status, _ = await bridge.deliver(event)
    assert status == 200
    await eventually(lambda: bridge.texts(igsid) == ["hello"])
    await asyncio.sleep(0.2)
    assert bridge.texts(igsid) == ["hello"]


async def test_queue_failure_after_the_ack_loses_nothing(bridge: Bridge, mocker, eventually):
    """Acknowledged means in the inbox: when the queues cannot be written, the intake
    keeps the webhook and relays it once the store works again."""
    enqueue = mocker.patch.object(bridge.bot.store, "enqueue",
                                  side_effect=StorageError("disk full"))
    event = _event(bridge)
    igsid = event["entry"][0]["messaging"][0]["sender"]["id"]
    status, _ = await bridge.deliver(event)
    assert status == 200
    await eventually(lambda: enqueue.call_count >= 1)
    assert bridge.bot.store.inbox.backlog == 1
    mocker.stopall()
    await eventually(lambda: bridge.texts(igsid) == ["hello"])
    assert bridge.bot.store.inbox.backlog == 0
