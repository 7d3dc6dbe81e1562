"""The sandbox Meta's attachment upload API: Meta's formats, sizes and its own URL fetch."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from sandbox.meta import DEFAULT_PAGE_ID, SandboxMeta
from tests.sandbox.test_meta import error, graph, send, sender  # noqa: F401 (fixture)

PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
MP3 = b"ID3\x04" + b"\0" * 64
M4A = b"\0\0\0\x20ftypM4A " + b"\0" * 64


def upload(meta: SandboxMeta, token: str, kind: str, data: bytes, name: str = "a.bin",
           platform: str | None = "instagram") -> requests.Response:
    form = {"message": json.dumps({"attachment": {"type": kind, "payload": {}}})}
    if platform:
        form["platform"] = platform
    return graph(meta, "POST", f"{DEFAULT_PAGE_ID}/message_attachments", token, data=form,
                 files={"filedata": (name, data, "application/octet-stream")})


@pytest.fixture
def media_server() -> Iterator[str]:
    """A loopback HTTP server answering GET /p.png with a PNG."""
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(PNG)))
            self.end_headers()
            self.wfile.write(PNG)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_uploaded_file_is_sent_by_attachment_id(meta: SandboxMeta, sender) -> None:  # noqa: F811
    """An upload answers attachment_id; a send naming it succeeds, a made-up id is 100."""
    token, igsid = sender
    resp = upload(meta, token, "image", PNG, "p.png")
    assert resp.status_code == 200, resp.text
    attachment_id = resp.json()["attachment_id"]
    [rec] = meta.uploads()
    assert (rec["type"], rec["format"], rec["size"]) == ("image", "png", len(PNG))
    ok = send(meta, token, igsid, {"attachment": {"type": "image",
                                                  "payload": {"attachment_id": attachment_id}}})
    assert ok.status_code == 200
    bad = send(meta, token, igsid, {"attachment": {"type": "image",
                                                   "payload": {"attachment_id": "123"}}})
    assert bad.status_code == 400 and error(bad)[0] == 100
    wrong_type = send(meta, token, igsid, {"attachment": {
        "type": "video", "payload": {"attachment_id": attachment_id}}})
    assert wrong_type.status_code == 400


def test_mp3_and_webp_are_refused_546_by_their_bytes(meta: SandboxMeta, sender) -> None:  # noqa: F811
    """Meta sniffs the bytes: mp3 audio and webp images get 546 whatever the name says."""
    token, _ = sender
    assert upload(meta, token, "audio", M4A, "voice.m4a").status_code == 200
    mp3 = upload(meta, token, "audio", MP3, "voice.m4a")
    webp = upload(meta, token, "image", b"RIFF\0\0\0\0WEBPVP8 " + b"\0" * 32, "p.png")
    assert error(mp3)[0] == 546 and error(webp)[0] == 546


def test_over_size_non_ascii_and_missing_platform_are_refused(
    meta: SandboxMeta, sender  # noqa: F811
) -> None:
    """Images over 8 MB, non-ASCII file names and a missing platform are code 100."""
    token, _ = sender
    big = upload(meta, token, "image", PNG + b"\0" * (8 * 1024 * 1024), "big.png")
    assert big.status_code == 400 and error(big)[0] == 100 and "size" in big.text
    assert error(upload(meta, token, "image", PNG, "café.png"))[0] == 100
    assert error(upload(meta, token, "image", PNG, "p.png", platform=None))[0] == 100
    assert meta.uploads() == []


def test_url_media_is_fetched_by_meta_unless_private(
    meta: SandboxMeta, sender, media_server: str  # noqa: F811
) -> None:
    """A URL send works when Meta can fetch it, and fails (#100) when the host is private."""
    token, igsid = sender
    message = {"attachment": {"type": "image", "payload": {"url": f"{media_server}/p.png"}}}
    assert send(meta, token, igsid, message).status_code == 200
    meta.set_private_hosts("127.0.0.1")
    refused = send(meta, token, igsid, message)
    assert refused.status_code == 400
    assert refused.json()["error"]["message"] == "(#100) Failed to fetch the file from the url"
    assert [s["ok"] for s in meta.sent_messages(recipient=igsid)] == [True, False]
