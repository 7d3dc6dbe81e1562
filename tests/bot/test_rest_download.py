"""RocketChatREST.download: the bot's credentials stay on the Rocket.Chat server."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from bot.rocketchat.rest import FileRefused, RocketChatREST


class Server:
    """A loopback HTTP server recording request headers; ``answer`` decides each reply."""

    def __init__(self, answer: Any) -> None:
        self.seen: list[tuple[str, dict[str, str]]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.seen.append((self.path, dict(self.headers)))
                status, headers, body = answer(self.path)
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(body))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def store() -> Iterator[Server]:
    """An object store answering any signed URL with a PDF."""
    server = Server(lambda path: (200, {"Content-Type": "application/pdf"}, b"%PDF-1 x"))
    yield server
    server.httpd.shutdown()


@pytest.fixture
def rocketchat(store: Server) -> Iterator[Server]:
    """A Rocket.Chat whose /file-upload redirects to the object store (S3 without proxy)."""
    def answer(path: str) -> tuple[int, dict[str, str], bytes]:
        if path.startswith("/api/v1/me"):
            return 200, {"Content-Type": "application/json"}, json.dumps(
                {"success": True, "_id": "bot-id", "username": "bot"}).encode()
        if path.startswith("/file-upload/big/"):
            return 200, {"Content-Type": "image/png"}, b"\0" * 2048
        if path.startswith("/file-upload/gone/"):
            return 404, {}, b""
        return 302, {"Location": f"{store.url}/bucket/f1?X-Amz-Signature=s"}, b""
    server = Server(answer)
    yield server
    server.httpd.shutdown()


async def test_redirect_to_object_store_does_not_carry_the_bot_token(
    rocketchat: Server, store: Server
) -> None:
    """The bot's X-Auth-Token goes to Rocket.Chat only, never to the redirect target."""
    rest = RocketChatREST(rocketchat.url, user_id="bot-id", token="secret-pat")
    try:
        data, mime = await rest.download("/file-upload/f1/q.pdf?token=j", max_bytes=1000,
                                         timeout=5)
    finally:
        await rest.close()
    assert (data, mime) == (b"%PDF-1 x", "application/pdf")
    [(path, sent)] = [s for s in rocketchat.seen if s[0].startswith("/file-upload/")]
    assert path == "/file-upload/f1/q.pdf?token=j" and sent["X-Auth-Token"] == "secret-pat"
    [(_, to_store)] = store.seen
    assert "X-Auth-Token" not in to_store and "X-User-Id" not in to_store


@pytest.mark.parametrize(("path", "status"), [("/file-upload/big/x.png", 413),
                                              ("/file-upload/gone/x.png", 404)])
async def test_oversized_or_missing_file_is_refused(
    rocketchat: Server, path: str, status: int
) -> None:
    """A body over max_bytes (413) and a deleted file (404) are FileRefused."""
    rest = RocketChatREST(rocketchat.url, user_id="bot-id", token="secret-pat")
    try:
        with pytest.raises(FileRefused) as refused:
            await rest.download(path, max_bytes=1000, timeout=5)
    finally:
        await rest.close()
    assert refused.value.status == status
