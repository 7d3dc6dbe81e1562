"""Agents' files reach Instagram from any Rocket.Chat, at any age, in a format Meta takes.

The bridge downloads each file from Rocket.Chat itself and uploads it to Meta's
attachment upload API (issue 12 item 9, issue 13 item 6); the sandbox Rocket.Chat serves
files only under the real access rule and the sandbox Meta cannot reach private hosts.
"""

from __future__ import annotations

import json

import aiohttp
import pytest

from tests.scenarios.harness import AGENT, WEBHOOK_SECRET, Bridge
from tests.scenarios.media_samples import mp3_voice_note, png, webm_opus_voice_note, webp
from tests.scenarios.outbound_helpers import (
    enable_omnichannel_webhooks,
    notes,
    post_webhook,
    sends,
    sent_texts,
    visitor_with_room,
    wait_for,
)

PRIVATE_SITE = "https://chat.internal.example"


@pytest.fixture
async def live(bridge: Bridge) -> Bridge:
    enable_omnichannel_webhooks(bridge)
    bridge.rc.set_setting("Site_Url", PRIVATE_SITE)
    # Meta reaches neither the intranet name nor the loopback sandboxes.
    bridge.meta.set_private_hosts("chat.internal.example", "127.0.0.1")
    bridge.bot.outbound_relay.retry_base = 0.05
    return bridge


def attachments_sent(bridge: Bridge, igsid: str) -> list[dict]:
    return [s["body"]["message"]["attachment"] for s in sends(bridge, igsid)
            if "attachment" in s["body"]["message"]]


async def test_private_site_url_file_still_reaches_instagram(live: Bridge) -> None:
    """With Site_Url private to Meta, the file is uploaded by the bridge and delivered."""
    igsid, rid = await visitor_with_room(live)
    data = png()
    live.rc.agent_send_file(AGENT, rid, "menu.png", "image/png", data)
    [attachment] = await wait_for(lambda: attachments_sent(live, igsid))
    [upload] = live.meta.uploads()
    assert attachment == {"type": "image", "payload": {"attachment_id": upload["attachment_id"]}}
    assert upload["size"] == len(data)
    # The bridge fetched it from rocketchat.url (not Site_Url), with the link's JWT.
    assert [(r["status"], r["auth"]) for r in live.rc.file_requests()] == [(200, "jwt")]
    assert not any("url" in a["payload"] for a in attachments_sent(live, igsid))


async def _after_an_hour(live: Bridge, rid: str, name: str, caption: str) -> None:
    """The agent's file waits out a Meta outage past the link's hour, then goes again."""
    # Three transient errors: the client's own retries are used up, the relay backs off.
    live.meta.inject_errors("message_attachments", [2, 2, 2])
    live.rc.agent_send_file(AGENT, rid, name, "application/pdf", b"%PDF-1.4 quote", caption)
    await wait_for(lambda: live.rc.file_requests())
    live.rc.advance(2 * 3600)  # the JWT in publicFilePath is now expired


async def test_file_older_than_an_hour_still_delivered(live: Bridge) -> None:
    """Past the JWT's hour the bridge's own credentials fetch the file (room file access)."""
    live.rc.set_setting("FileUpload_Restrict_to_room_members", False)
    live.rc.set_setting("FileUpload_Restrict_to_users_who_can_access_room", True)
    igsid, rid = await visitor_with_room(live)
    await _after_an_hour(live, rid, "quote.pdf", "Your quote")
    await wait_for(lambda: sent_texts(live, igsid) == ["Your quote"], timeout=20)
    [attachment] = attachments_sent(live, igsid)
    assert attachment["type"] == "file"
    assert [r["auth"] for r in live.rc.file_requests()] == ["jwt", "user"]


async def test_expired_link_without_file_access_tells_agent(live: Bridge) -> None:
    """Past the hour, if Rocket.Chat refuses the bot the file, the agent is told how to fix
    it and the caption is still delivered: nothing is silently lost."""
    igsid, rid = await visitor_with_room(live)
    await _after_an_hour(live, rid, "quote.pdf", "Your quote")
    [note] = await wait_for(lambda: notes(live, rid), timeout=20)
    assert "quote.pdf" in note and "HTTP 403" in note and "users who can access room" in note
    await wait_for(lambda: sent_texts(live, igsid) == ["Your quote"])
    assert attachments_sent(live, igsid) == []


@pytest.mark.parametrize("recording", [mp3_voice_note, webm_opus_voice_note])
async def test_mp3_voice_note_converted_or_refused_with_note(live: Bridge, recording) -> None:
    """Rocket.Chat's "Audio record.mp3" (mp3, or webm/opus from a browser) arrives as m4a."""
    igsid, rid = await visitor_with_room(live)
    live.rc.agent_send_file(AGENT, rid, "Audio record.mp3", "audio/mpeg", recording())
    [attachment] = await wait_for(lambda: attachments_sent(live, igsid))
    [upload] = live.meta.uploads()
    assert attachment["type"] == "audio"
    assert (upload["format"], upload["filename"]) == ("m4a", "Audio record.m4a")
    assert notes(live, rid) == []


async def test_oversized_image_refused_with_note(live: Bridge) -> None:
    """A 9 MB PNG (Instagram takes 8 MB) is not sent; the agent learns why; caption goes."""
    igsid, rid = await visitor_with_room(live)
    live.rc.agent_send_file(AGENT, rid, "poster.png", "image/png", png(9 * 1024 * 1024),
                            caption="Here is the poster")
    [note] = await wait_for(lambda: notes(live, rid))
    assert "poster.png" in note and "8 MB" in note
    await wait_for(lambda: sent_texts(live, igsid) == ["Here is the poster"])
    assert live.meta.uploads() == [] and attachments_sent(live, igsid) == []


async def test_webp_image_refused_or_converted(live: Bridge) -> None:
    """A webp image (not accepted by Instagram) is converted to png and delivered."""
    igsid, rid = await visitor_with_room(live)
    live.rc.agent_send_file(AGENT, rid, "sticker.webp", "image/webp", webp())
    [attachment] = await wait_for(lambda: attachments_sent(live, igsid))
    [upload] = live.meta.uploads()
    assert attachment["type"] == "image"
    assert (upload["format"], upload["filename"]) == ("png", "sticker.png")


async def test_non_pdf_document_refused_with_note(live: Bridge) -> None:
    """A .docx (Instagram takes only PDF documents) is refused with a note saying so."""
    igsid, rid = await visitor_with_room(live)
    docx = b"PK\x03\x04" + b"\0" * 200
    live.rc.agent_send_file(AGENT, rid, "offer.docx", "application/vnd.openxmlformats-"
                            "officedocument.wordprocessingml.document", docx)
    [note] = await wait_for(lambda: notes(live, rid))
    assert "offer.docx" in note and "PDF" in note
    assert live.meta.uploads() == [] and sends(live, igsid, ok=None) == []


async def test_non_ascii_file_name_is_delivered(live: Bridge) -> None:
    """Meta refuses non-ASCII upload names: "menú del día.png" goes as "menu del dia.png"."""
    igsid, rid = await visitor_with_room(live)
    live.rc.agent_send_file(AGENT, rid, "menú del día.png", "image/png", png())
    await wait_for(lambda: attachments_sent(live, igsid))
    assert live.meta.uploads()[0]["filename"] == "menu del dia.png"


async def test_slow_attachment_send_not_duplicated(live: Bridge) -> None:
    """An upload slower than the normal Graph timeout completes once: one upload, one send."""
    live.bot.graph.timeout = 0.5  # text sends and other calls
    live.meta.set_upload_latency(1.5)
    igsid, rid = await visitor_with_room(live)
    live.rc.agent_send_file(AGENT, rid, "photo.png", "image/png", png(), caption="Enjoy")
    await wait_for(lambda: sent_texts(live, igsid) == ["Enjoy"], timeout=20)
    assert len(live.meta.uploads()) == 1
    assert len(attachments_sent(live, igsid)) == 1
    assert len(sends(live, igsid, ok=None)) == 2  # nothing was retried


async def test_large_close_body_still_sends_finished_text(live: Bridge) -> None:
    """A 3 MB LivechatSession close (every message of a long room) still sends the text."""
    page = await live.bot.store.page(live.page_id)
    assert page is not None
    page.finished_text = "Thanks, see you soon!"
    await live.bot.store.save_page(page)
    igsid, rid = await visitor_with_room(live)
    live.rc.set_setting("Livechat_webhook_on_close", False)  # we post the big one ourselves
    live.rc.close_room(rid, by=AGENT)
    template = {"_id": "m", "msg": "x" * 500, "u": {"_id": "a", "username": AGENT},
                "ts": "2025-01-01T10:00:00.000Z"}
    body = {"_id": rid, "type": "LivechatSession", "closedAt": "2025-01-01T11:00:00.000Z",
            "visitor": {"token": live.token(igsid)},
            "messages": [dict(template, _id=f"m{i}") for i in range(5200)]}
    assert len(json.dumps(body)) > 3 * 1024 * 1024
    status = await post_webhook(live, body, {"X-RocketChat-Livechat-Token": WEBHOOK_SECRET})
    assert status == 200
    await wait_for(lambda: sent_texts(live, igsid) == ["Thanks, see you soon!"])


async def test_close_body_over_the_cap_is_refused_not_read_forever(live: Bridge) -> None:
    """A chunked body past the 32 MiB cap (no Content-Length) is cut off with 413."""
    async def chunks():
        for _ in range(33):
            yield b" " * (1024 * 1024)

    url = f"http://127.0.0.1:{live.bot.port}/webhooks/rocketchat"
    async with aiohttp.ClientSession() as session, session.post(
        url, data=chunks(), headers={"X-RocketChat-Livechat-Token": WEBHOOK_SECRET,
                                     "Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 413
