"""Every body of the real-world corpus (tests/fixtures/instagram) through the running bot."""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path
from typing import Any

import pytest

from tests.scenarios.harness import ADMIN, BOT_USER, Bridge

CORPUS = Path(__file__).resolve().parent.parent / "fixtures" / "instagram"
FIXTURES = sorted(CORPUS.glob("*.json"))


def load(path: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The body to send (``_source``/``_expect`` stripped) and its expectations."""
    data = json.loads(path.read_text(encoding="utf-8"))
    assert data.pop("_source"), f"{path.name}: no _source"
    return data, data.pop("_expect")


def _mid(value: Any, run: str) -> str:
    return f"{run}-{value}"


def rewrite(body: dict[str, Any], business: str, igsid: str, run: str, ts: int) -> dict:
    """Route the body to the sandbox page and a fresh visitor (see the corpus README)."""
    body = copy.deepcopy(body)
    body["object"] = "instagram"
    for entry in body["entry"]:
        entry["id"], entry["time"] = business, ts
        items = entry.get("messaging", []) + entry.get("standby", [])
        items += [c["value"] for c in entry.get("changes", [])]
        for item in items:
            message = item.get("message") or {}
            echo = bool(message.get("is_echo"))
            visitor_side, business_side = ("recipient", "sender") if echo else ("sender",
                                                                                  "recipient")
            if visitor_side in item:
                item[visitor_side] = {"id": igsid}
            item[business_side] = {"id": business}
            item["timestamp"] = ts
            for holder in (message, message.get("reply_to"), item.get("reaction"),
                           item.get("read"), item.get("postback")):
                if isinstance(holder, dict) and "mid" in holder:
                    holder["mid"] = _mid(holder["mid"], run)
    return body


def room_texts(bridge: Bridge, igsid: str) -> list[str]:
    """Everything in the visitor's rooms an agent reads (visitor lines and bot lines)."""
    texts = []
    for room in bridge.rooms(igsid):
        texts += [m["msg"] for m in bridge.rc.room_messages(room["_id"]) if not m.get("t")
                  and (m.get("token") or m.get("u", {}).get("username") == BOT_USER)]
    return texts


def test_corpus_covers_every_event_kind():
    """The corpus holds each kind of instagram.md §2 and the audit at least once."""
    kinds = " ".join(p.read_text(encoding="utf-8") for p in FIXTURES)
    for marker in ('"image"', '"video"', '"audio"', '"file"', '"share"', '"ig_reel"',
                   '"ig_post"', '"story_mention"', '"story"', '"reply_to"', '"react"',
                   '"unreact"', '"postback"', '"referral"', '"quick_reply"', '"read"',
                   '"is_echo"', '"is_deleted"', '"is_unsupported"', '"standby"',
                   '"changes"', '"unsupported_type"', '"policy-enforcement"', '"product"'):
        assert marker in kinds, f"no corpus body has {marker}"


async def test_every_corpus_body_is_answered_200_shown_and_stalls_nothing(
    bridge: Bridge, eventually
):
    """Each real body → 200; each visible kind reaches the room as an agent-readable line;
    a plain text after each still arrives (unsends take their original out)."""
    bridge.bot.inbound.echo_grace = 0.1
    run = str(int(time.time() * 1000))
    cases = []
    for n, path in enumerate(FIXTURES):
        body, expect = load(path)
        tag = f"{run}.{n}"  # mids repeat across sources (message-id-1): unique per body
        igsid = bridge.meta.new_igsid()
        bridge.meta.set_profile(igsid, name=f"Corpus {n}")
        base = int(time.time() * 1000) - 10_000
        first = body["entry"][0]
        target = expect.get("needs_target")
        if expect.get("unsends"):
            target = (first["messaging"][0]["message"])["mid"]
        opener = bridge.meta.text_event(
            bridge.ig_id, igsid, f"opener {path.stem}",
            mid=_mid(target, tag) if target else None, ts=base)
        assert (await bridge.deliver(opener))[0] == 200
        if expect.get("keep_ids"):
            sent = body
        else:
            business = bridge.page_id if expect.get("route_by_page_id") else bridge.ig_id
            sent = rewrite(body, business, igsid, tag, base + 1)
        status, _ = await bridge.deliver(sent)
        assert status == 200, path.name
        trailer = f"after {path.stem}"
        assert (await bridge.deliver(
            bridge.meta.text_event(bridge.ig_id, igsid, trailer, ts=base + 2)))[0] == 200
        cases.append((path, expect, igsid, trailer))

    for path, expect, igsid, trailer in cases:
        await eventually(lambda igsid=igsid, trailer=trailer: trailer in room_texts(
            bridge, igsid), timeout=20)
        texts = room_texts(bridge, igsid)
        opener = f"opener {path.stem}"
        if expect.get("unsends"):
            assert texts == [trailer], (path.name, texts)
            continue
        if expect.get("echo"):
            # Echoes have their own lane (they wait for our own sends to be recorded), so
            # they may land after the trailer.
            await eventually(lambda igsid=igsid: len(room_texts(bridge, igsid)) == 3,
                             timeout=20)
            texts = room_texts(bridge, igsid)
            between = [t for t in texts if t not in (opener, trailer)]
        else:
            assert texts[0] == opener and texts[-1] == trailer, (path.name, texts)
            between = texts[1:-1]
        if expect.get("admin_dm"):
            await eventually(lambda expect=expect: any(
                expect["admin_dm"] in m["msg"] for m in bridge.rc.dm_messages(BOT_USER, ADMIN)))
        if expect.get("shows") is None:
            assert between == [], (path.name, texts)
            continue
        assert any(expect["shows"] in text for text in between), (path.name, texts)
        if expect.get("not_shows"):
            assert not any(expect["not_shows"] in text for text in between), (path.name, texts)


@pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])
def test_corpus_file_cites_its_source(path: Path):
    """Every corpus body names where it comes from (repository path and commit, or a URL)."""
    source = json.loads(path.read_text(encoding="utf-8"))["_source"]
    assert source.get("url") or (source.get("repo") and source.get("path")
                                 and len(source.get("commit", "")) == 40)
