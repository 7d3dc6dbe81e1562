"""Agents' files made fit for Instagram before they are uploaded (issue 13 item 6).

Instagram accepts (protocols/instagram.md §3.2; Meta's "Upload Media for Instagram
Messaging", 2026 revision, which is the API we upload through):

========  =============================  =======
type      formats                        limit
========  =============================  =======
audio     aac, m4a, wav, mp4             25 MB
image     png, jpeg, gif                 8 MB
video     mp4, ogg, avi, mov, webm       25 MB
file      pdf                            25 MB
========  =============================  =======

Meta judges the bytes, not the name or the declared MIME type (a Rocket.Chat voice note
is named "Audio record.mp3" and typed audio/mpeg whatever the browser recorded), so the
format here is sniffed from magic numbers too. Two conversions keep common files
deliverable: audio in another format (mp3, ogg/opus, webm/opus: Rocket.Chat's voice
notes) becomes AAC in an m4a container, and a webp image becomes png (its first frame).
Both use PyAV, whose wheels bundle FFmpeg. Anything else outside the table, or over its
limit, is refused with a reason the agent is shown.
"""

from __future__ import annotations

import io
import logging
import re
import unicodedata
from dataclasses import dataclass
from types import ModuleType

from bot import messages

log = logging.getLogger("bot.relay")

MB = 1024 * 1024
#: attachment type -> (accepted formats, byte limit).
LIMITS: dict[str, tuple[frozenset[str], int]] = {
    "audio": (frozenset({"aac", "m4a", "wav", "mp4"}), 25 * MB),
    "image": (frozenset({"png", "jpeg", "gif"}), 8 * MB),
    "video": (frozenset({"mp4", "ogg", "avi", "mov", "webm"}), 25 * MB),
    "file": (frozenset({"pdf"}), 25 * MB),
}
#: The most the bridge downloads for one file: nothing bigger can be sent.
MAX_FETCH = 25 * MB

# (offset, magic bytes, format) checked in order; ftyp/RIFF boxes are looked at below.
_MAGIC: tuple[tuple[int, bytes, str], ...] = (
    (0, b"\x89PNG\r\n\x1a\n", "png"),
    (0, b"\xff\xd8\xff", "jpeg"),
    (0, b"GIF87a", "gif"),
    (0, b"GIF89a", "gif"),
    (0, b"%PDF-", "pdf"),
    (0, b"OggS", "ogg"),
    (0, b"\x1a\x45\xdf\xa3", "webm"),
    (0, b"fLaC", "flac"),
    (0, b"ID3", "mp3"),
)
_RIFF = {b"WAVE": "wav", b"AVI ": "avi", b"WEBP": "webp"}
_FTYP = {b"qt  ": "mov", b"M4A ": "m4a", b"M4B ": "m4a", b"heic": "heic", b"heix": "heic",
         b"mif1": "heic"}
_MP3_SYNC = (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2")
_ADTS_SYNC = (b"\xff\xf1", b"\xff\xf9")


class MediaRefused(Exception):
    """The file cannot go to Instagram; ``reason`` is the agent-facing explanation."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(reason)
        self.key = key  # metric label: type, size, conversion, fetch, meta
        self.reason = reason


@dataclass(frozen=True)
class Media:
    """A file ready to upload: its attachment type, bytes, ASCII file name and MIME type."""

    kind: str
    data: bytes
    filename: str
    mime: str
    converted_from: str | None = None


def sniff(data: bytes) -> str:
    """The format from the first bytes ("unknown" when nothing matches)."""
    for offset, magic, fmt in _MAGIC:
        if data[offset:offset + len(magic)] == magic:
            return fmt
    if data[:4] == b"RIFF" and data[8:12] in _RIFF:
        return _RIFF[data[8:12]]
    if data[4:8] == b"ftyp":
        return _FTYP.get(data[8:12], "mp4")
    if data[:2] in _MP3_SYNC:
        return "mp3"
    if data[:2] in _ADTS_SYNC:
        return "aac"
    return "unknown"


def attachment_kind(fmt: str, mime: str) -> str:
    """Instagram's attachment type for a sniffed format (the MIME type breaks ties)."""
    major = (mime or "").split("/", 1)[0].lower()
    if fmt in ("png", "jpeg", "gif", "webp", "heic"):
        return "image"
    if fmt in ("mp3", "aac", "m4a", "wav", "flac"):
        return "audio"
    if fmt in ("mp4", "ogg", "webm"):
        # The same containers carry sound only or pictures: the declared type decides.
        return "audio" if major == "audio" else "video"
    if fmt in ("mov", "avi"):
        return "video"
    if fmt == "unknown" and major == "audio":
        return "audio"
    return "file"


def ascii_name(name: str, fmt: str) -> str:
    """A file name Meta accepts (ASCII only) ending in the extension of ``fmt``."""
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    folded = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    stem = re.sub(r"[^A-Za-z0-9._ -]+", "_", folded).strip(" ._")[:80] or "file"
    ext = "jpg" if fmt == "jpeg" else fmt
    return f"{stem}.{ext}"


_MIMES = {"png": "image/png", "jpeg": "image/jpeg", "gif": "image/gif", "pdf": "application/pdf",
          "m4a": "audio/mp4", "aac": "audio/aac", "wav": "audio/wav", "mov": "video/quicktime",
          "avi": "video/x-msvideo", "webm": "video/webm", "ogg": "video/ogg"}


def prepare(data: bytes, mime: str, name: str) -> Media:
    """Check (and where useful convert) one file; raises :class:`MediaRefused`.

    CPU-bound when converting: call it off the event loop.
    """
    fmt = sniff(data)
    kind = attachment_kind(fmt, mime)
    formats, limit = LIMITS[kind]
    converted_from = None
    if fmt not in formats:
        if kind == "audio":
            data, converted_from, fmt = _to_m4a(data), fmt, "m4a"
        elif fmt == "webp":
            data, converted_from, fmt = _to_png(data), fmt, "png"
        elif kind == "image":
            raise MediaRefused("type", messages.MEDIA_IMAGE_FORMAT.format(format=fmt))
        elif kind == "video":
            raise MediaRefused("type", messages.MEDIA_VIDEO_FORMAT.format(format=fmt))
        else:
            raise MediaRefused("type", messages.MEDIA_FILE_FORMAT)
    if len(data) > limit:
        raise MediaRefused("size", messages.MEDIA_TOO_LARGE.format(
            kind=kind, size=len(data) / MB, limit=limit // MB))
    if kind == "audio" and fmt == "mp4":
        fmt = "m4a"
    mime_out = "video/mp4" if (kind, fmt) == ("video", "mp4") else _MIMES.get(fmt, mime)
    if kind == "audio" and fmt == "m4a":
        mime_out = "audio/mp4"
    return Media(kind, data, ascii_name(name or "file", fmt), mime_out, converted_from)


def _to_m4a(data: bytes) -> bytes:
    """Any audio FFmpeg can decode → AAC (64 kbit/s, mono, 44.1 kHz) in an m4a container."""
    av = _pyav()
    try:
        with av.open(io.BytesIO(data)) as src:
            if not src.streams.audio:
                raise MediaRefused("conversion", messages.MEDIA_NOT_AUDIO)
            out_buf = io.BytesIO()
            with av.open(out_buf, "w", format="ipod") as out:
                stream = out.add_stream("aac", rate=44100, layout="mono")
                stream.bit_rate = 64000
                resampler = av.AudioResampler(format="fltp", layout="mono", rate=44100)
                for frame in src.decode(src.streams.audio[0]):
                    for chunk in resampler.resample(frame):
                        out.mux(stream.encode(chunk))
                for chunk in resampler.resample(None):
                    out.mux(stream.encode(chunk))
                out.mux(stream.encode(None))
    except av.FFmpegError as exc:
        log.info("audio conversion failed: %s", exc)
        raise MediaRefused("conversion", messages.MEDIA_CONVERSION_FAILED) from None
    return out_buf.getvalue()


def _to_png(data: bytes) -> bytes:
    """The first frame of a webp image as png."""
    av = _pyav()
    try:
        with av.open(io.BytesIO(data)) as src:
            frame = next(src.decode(video=0))
            out_buf = io.BytesIO()
            with av.open(out_buf, "w", format="image2pipe") as out:
                stream = out.add_stream("png", rate=1)
                stream.width, stream.height, stream.pix_fmt = frame.width, frame.height, "rgba"
                out.mux(stream.encode(frame.reformat(format="rgba")))
                out.mux(stream.encode(None))
    except (av.FFmpegError, StopIteration) as exc:
        log.info("image conversion failed: %s", exc)
        raise MediaRefused("conversion", messages.MEDIA_CONVERSION_FAILED) from None
    return out_buf.getvalue()


def _pyav() -> ModuleType:
    """PyAV, imported late: only conversions need FFmpeg."""
    try:
        import av
    except ImportError:
        raise MediaRefused("conversion", messages.MEDIA_CONVERSION_UNAVAILABLE) from None
    return av
