"""Webhook authentication: only the exact signature / secret is accepted; every near miss
(wrong length, prefix, algorithm, body, key, secret case or affix) is refused and stores
nothing."""

from __future__ import annotations

import hashlib
import hmac
import json

import aiohttp

from tests.scenarios.harness import APP_SECRET, WEBHOOK_SECRET, Bridge


def _body(bridge: Bridge, mid: str) -> bytes:
    return json.dumps({"object": "instagram", "entry": [{"id": bridge.ig_id, "messaging": [{
        "sender": {"id": "6543210987654321"}, "recipient": {"id": bridge.ig_id},
        "timestamp": 1735689599870, "message": {"mid": mid, "text": "hi"}}]}]}).encode()


def _hex(raw: bytes, key: str = APP_SECRET, algo=hashlib.sha256) -> str:
    return hmac.new(key.encode(), raw, algo).hexdigest()


async def _post(url: str, raw: bytes, headers: dict[str, str]) -> int:
    async with aiohttp.ClientSession() as http, http.post(url, data=raw, headers=headers) as r:
        return r.status


async def test_instagram_signature_near_misses_are_refused(bridge: Bridge) -> None:
    """Only sha256=<hex HMAC of these bytes with the app secret> is accepted."""
    raw = _body(bridge, "m-sig")
    good = _hex(raw)
    variants = {
        "missing prefix": good,
        "sha1 prefix": f"sha1={good}",
        "sha1 digest": f"sha1={_hex(raw, algo=hashlib.sha1)}",
        "upper-case prefix": f"SHA256={good}",
        "truncated": f"sha256={good[:-1]}",
        "half": f"sha256={good[:32]}",
        "extended": f"sha256={good}0",
        "doubled": f"sha256={good}{good}",
        "empty digest": "sha256=",
        "wrong key": f"sha256={_hex(raw, key=APP_SECRET + 'x')}",
        "key prefix": f"sha256={_hex(raw, key=APP_SECRET[:-1])}",
        "empty key": f"sha256={_hex(raw, key='')}",
        "other body": f"sha256={_hex(raw + b' ')}",
        "non-hex": "sha256=" + "z" * 64,
        "non-ascii": "sha256=" + "é" * 64,
        "two headers": f"sha256={good}, sha256={good}",
    }
    for name, header in variants.items():
        headers = {"X-Hub-Signature-256": header, "Content-Type": "application/json"}
        assert await _post(bridge.webhook_url, raw, headers) == 403, name
    assert await _post(bridge.webhook_url, raw, {"Content-Type": "application/json"}) == 403
    assert await _post(bridge.webhook_url, raw,
                       {"X-Hub-Signature": f"sha1={_hex(raw, algo=hashlib.sha1)}"}) == 403
    assert bridge.bot.store.inbox.backlog == 0
    assert await bridge.bot.store.queue_depth("inbound") == 0
    assert not await bridge.bot.store.seen("ig:m-sig")
    # The exact signature is accepted (so the refusals above were about the signature).
    headers = {"X-Hub-Signature-256": f"sha256={good}"}
    assert await _post(bridge.webhook_url, raw, headers) == 200


async def test_rocketchat_secret_near_misses_are_refused(bridge: Bridge) -> None:
    """Only the exact X-RocketChat-Livechat-Token is accepted; nothing is stored otherwise."""
    url = bridge.webhook_url.replace("/instagram", "/rocketchat")
    raw = json.dumps({"_id": "room-1", "type": "Message",
                      "visitor": {"token": bridge.token("6543210987654321")},
                      "messages": [{"_id": "r-sec", "agentId": "a-1", "msg": "hi"}]}).encode()
    # (Whitespace around a header value is not part of it in HTTP: " secret" IS the secret.)
    variants = [
        WEBHOOK_SECRET.upper(), WEBHOOK_SECRET[:-1], WEBHOOK_SECRET + "x", WEBHOOK_SECRET[:1],
        "", "x" * len(WEBHOOK_SECRET), "é" + WEBHOOK_SECRET,
        WEBHOOK_SECRET + "," + WEBHOOK_SECRET,
    ]
    for secret in variants:
        status = await _post(url, raw, {"X-RocketChat-Livechat-Token": secret})
        assert status == 403, repr(secret)
    assert await _post(url, raw, {}) == 403
    assert await _post(url, raw, {"X-RocketChat-Livechat-Token-x": WEBHOOK_SECRET}) == 403
    assert await bridge.bot.store.queue_depth("outbound") == 0
    assert await _post(url, raw, {"X-RocketChat-Livechat-Token": WEBHOOK_SECRET}) == 200


async def test_verify_token_near_misses_are_refused(bridge: Bridge) -> None:
    """GET verification echoes the challenge only for the exact verify token."""
    from tests.scenarios.harness import VERIFY_TOKEN

    async with aiohttp.ClientSession() as http:
        for token in (VERIFY_TOKEN.upper(), VERIFY_TOKEN[:-1], VERIFY_TOKEN + "x", ""):
            params = {"hub.mode": "subscribe", "hub.verify_token": token, "hub.challenge": "c"}
            async with http.get(bridge.webhook_url, params=params) as resp:
                assert resp.status == 403, token
                assert await resp.text() != "c"
