"""The sandbox Meta's attachment upload API and Meta's own fetch of attachment URLs.

Our reading of Meta (protocols/instagram.md §3.2; "Upload Media for Instagram Messaging",
developers.facebook.com/documentation/business-messaging/instagram-messaging/features/
attachment-upload, revision of 2026):

- ``POST /{page-id}/message_attachments`` with ``platform=instagram`` and
  ``message={"attachment": {"type": …, "payload": {…}}}``; the media either as a
  multipart ``filedata`` part or as ``payload.url`` that Meta fetches itself. Answer
  ``{"attachment_id": "…"}``; a send then names it in ``payload.attachment_id``.
- Accepted formats and sizes: audio aac/m4a/wav/mp4 ≤ 25 MB; image png/jpeg/gif ≤ 8 MB;
  video mp4/ogg/avi/mov/webm ≤ 25 MB; file pdf ≤ 25 MB. File names with non-ASCII
  characters are not supported.
- Meta looks at the bytes, not at the name or the declared type (a Rocket.Chat
  "Audio record.mp3" may hold webm/opus): the sandbox sniffs magic numbers.

Errors, with where each comes from:

- ``(#100) Failed to fetch the file from the url`` (code 100): observed on the Send API
  (jgorset/facebook-messenger#43, pimax/fb-messenger-php#20). Given for a URL whose
  host a test flagged private (Meta cannot reach it), or that does not answer 200.
- ``(#546) The type of file you're trying to attach isn't allowed…`` (code 546):
  observed (jgorset/facebook-messenger#221) for a format outside the list.
- ``(#100) Incorrect number of files uploaded. Must upload exactly one file.``:
  observed (pimax/fb-messenger-php#142).
- Over the size limit and a non-ASCII file name: code 100 with our own wording (no
  capture of Meta's text was found).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from aiohttp import web

from sandbox.meta.wire import _GraphFail, _Token

log = logging.getLogger("sandbox.meta")

MB = 1024 * 1024
#: attachment type -> (accepted sniffed formats, byte limit).
LIMITS: dict[str, tuple[frozenset[str], int]] = {
    "audio": (frozenset({"aac", "m4a", "wav", "mp4"}), 25 * MB),
    "image": (frozenset({"png", "jpeg", "gif"}), 8 * MB),
    "video": (frozenset({"mp4", "ogg", "avi", "mov", "webm"}), 25 * MB),
    "file": (frozenset({"pdf"}), 25 * MB),
}
#: Multipart field holding the media (the Graph API's name for uploads).
FILE_FIELD = "filedata"
#: The biggest request body the sandbox reads (Meta refuses over-limit media itself).
MAX_REQUEST = 64 * MB

FETCH_FAILED = "(#100) Failed to fetch the file from the url"
TYPE_REFUSED = (
    "(#546) The type of file you're trying to attach isn't allowed."
    " Please try again with a different format"
)


def sniff(data: bytes) -> str:
    """The media format from magic numbers ("unknown" when none matches)."""
    head = data[:16]
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if head.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "gif"
    if head.startswith(b"%PDF-"):
        return "pdf"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "wav"
    if head[:4] == b"RIFF" and head[8:12] == b"AVI ":
        return "avi"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    if head.startswith(b"OggS"):
        return "ogg"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "webm"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand == b"qt  ":
            return "mov"
        if brand in (b"M4A ", b"M4B "):
            return "m4a"
        if brand in (b"heic", b"heix", b"mif1"):
            return "heic"
        return "mp4"
    if head.startswith(b"ID3") or head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "mp3"
    if head[:2] in (b"\xff\xf1", b"\xff\xf9"):
        return "aac"
    return "unknown"


def check_media(kind: str, data: bytes, filename: str | None = None) -> str:
    """Meta's checks on one piece of media; returns the sniffed format or raises."""
    if kind not in LIMITS:
        raise _GraphFail(
            100, "(#100) Param message[attachment][type] must be one of {image, audio, video, file}"
        )
    if filename is not None and not filename.isascii():
        raise _GraphFail(100, "(#100) Upload attachment failure: file names must be ASCII")
    formats, limit = LIMITS[kind]
    fmt = sniff(data)
    if fmt not in formats:
        raise _GraphFail(546, TYPE_REFUSED)
    if len(data) > limit:
        raise _GraphFail(
            100, f"(#100) Attachment size exceeds allowable limit ({limit // MB} MB for {kind})"
        )
    return fmt


class UploadMixin:
    """``POST /{page}/message_attachments`` and Meta's fetch of attachment URLs.

    Mixed into :class:`sandbox.meta.server.SandboxMeta`.
    """

    # ------------------------------------------------------------------ control

    def set_private_hosts(self, *hosts: str) -> None:
        """Hosts (``host`` or ``host:port``) Meta cannot reach: fetching them fails."""
        with self._lock:
            self._private_hosts = {h.lower() for h in hosts}

    def set_upload_latency(self, seconds: float) -> None:
        """Delay each upload answer by this many seconds (a large file, a slow link)."""
        with self._lock:
            self._upload_latency = max(0.0, seconds)

    def uploads(self) -> list[dict[str, Any]]:
        """Every accepted upload: attachment_id, page_id, type, format, size, filename."""
        with self._lock:
            return [dict(u) for u in self._attachments.values()]

    # ------------------------------------------------------------------ endpoint

    async def _message_attachments(
        self, request: web.Request, params: Mapping[str, str], node: str, tok: _Token
    ) -> dict[str, Any]:
        if tok.kind not in ("page", "ig_user"):  # ig_user: the Instagram Login route
            raise _GraphFail(
                210, "(#210) A page access token is required to request this resource."
            )
        if node != tok.page_id:
            raise _GraphFail(100, self._unsupported("post", node), subcode=33,
                             type="GraphMethodException")
        self._check_injected("message_attachments")
        with self._lock:
            latency = self._upload_latency
        if latency:
            await asyncio.sleep(latency)
        if params.get("platform") != "instagram":
            raise _GraphFail(100, "(#100) Param platform must be instagram for Instagram media")
        try:
            message = json.loads(params.get("message") or "null")
        except ValueError:
            message = None
        attachment = message.get("attachment") if isinstance(message, dict) else None
        if not isinstance(attachment, dict):
            raise _GraphFail(100, "(#100) The parameter message[attachment] is required")
        kind = attachment.get("type")
        payload = attachment.get("payload") if isinstance(attachment.get("payload"), dict) else {}
        files = request.get(_FILES) or []
        if payload.get("url"):
            if files:
                raise _GraphFail(100, "(#100) Incorrect number of files uploaded."
                                      " Must upload exactly one file.")
            data, filename = await self._fetch_media(str(payload["url"])), None
        else:
            if len(files) != 1:
                raise _GraphFail(100, "(#100) Incorrect number of files uploaded."
                                      " Must upload exactly one file.")
            filename, data = files[0]
        fmt = check_media(str(kind), data, filename)
        attachment_id = str(10**15 + secrets.randbelow(9 * 10**15))
        with self._lock:
            self._attachments[attachment_id] = {
                "attachment_id": attachment_id, "page_id": node, "type": kind,
                "format": fmt, "size": len(data), "filename": filename,
            }
        log.info("upload page=%s type=%s format=%s size=%d -> %s",
                 node, kind, fmt, len(data), attachment_id)
        return {"attachment_id": attachment_id}

    async def _fetch_media(self, url: str) -> bytes:
        """Meta fetching an attachment URL itself: private hosts and non-200 fail."""
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        with self._lock:
            private = self._private_hosts
        if not host or host in private or (parts.netloc.lower() in private):
            raise _GraphFail(100, FETCH_FAILED)
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.get(url, allow_redirects=True,
                                         timeout=aiohttp.ClientTimeout(total=30)) as resp:
                if resp.status != 200:
                    raise _GraphFail(100, FETCH_FAILED)
                return await resp.read()
        except (aiohttp.ClientError, TimeoutError):
            raise _GraphFail(100, FETCH_FAILED) from None

    async def _check_send_media(self, body: Any) -> None:
        """Before a send: fetch URL attachments (Meta does it during the call)."""
        if not isinstance(body, dict):
            return
        message = body.get("message")
        if isinstance(message, str) and message.startswith("{"):
            try:
                message = json.loads(message)
            except ValueError:
                return
        if not isinstance(message, dict):
            return
        atts = message.get("attachments") or [message.get("attachment")]
        for att in atts if isinstance(atts, list) else []:
            payload = att.get("payload") if isinstance(att, dict) else None
            if isinstance(payload, dict) and payload.get("url") and att.get("type") in LIMITS:
                check_media(str(att["type"]), await self._fetch_media(str(payload["url"])))

    def _uploaded(self, page_id: str, kind: Any, attachment_id: Any) -> None:
        """A send naming ``attachment_id``: it must be this page's upload of that type."""
        with self._lock:
            upload = self._attachments.get(str(attachment_id))
        if upload is None or upload["page_id"] != page_id:
            raise _GraphFail(100, "(#100) Param message[attachment][payload][attachment_id]"
                                  " is not a valid attachment id")
        if upload["type"] != kind:
            raise _GraphFail(100, f"(#100) Attachment {attachment_id} is of type"
                                  f" {upload['type']}, not {kind}")


_FILES: Any = web.RequestKey("files", list) if hasattr(web, "RequestKey") else "files"
