"""bot.relay.media: Instagram's formats judged from the bytes, names made ASCII."""

from __future__ import annotations

import pytest

from bot.relay.media import MediaRefused, ascii_name, attachment_kind, prepare, sniff

HEIC = b"\0\0\0\x18ftypheic" + b"\0" * 16
MP4 = b"\0\0\0\x18ftypisom" + b"\0" * 16


@pytest.mark.parametrize(("data", "mime", "kind"), [
    (MP4, "audio/mp4", "audio"), (MP4, "video/mp4", "video"), (HEIC, "image/heic", "image"),
    (b"OggS\0", "audio/ogg", "audio"), (b"OggS\0", "video/ogg", "video"),
    (b"ID3\x04", "application/octet-stream", "audio"), (b"%PDF-1", "", "file"),
    (b"PK\x03\x04", "application/zip", "file"), (b"RIFF\0\0\0\0WAVE", "audio/wav", "audio"),
])
def test_kind_follows_the_bytes_and_the_mime_only_breaks_ties(
    data: bytes, mime: str, kind: str
) -> None:
    """mp3 bytes are audio whatever they are labelled; mp4/ogg follow the declared type."""
    assert attachment_kind(sniff(data), mime) == kind


def test_heic_image_is_refused_with_its_format_named() -> None:
    """heic is outside png/jpeg/gif and is not converted: the reason names it."""
    with pytest.raises(MediaRefused) as refused:
        prepare(HEIC, "image/heic", "IMG_1.HEIC")
    assert refused.value.key == "type" and "heic" in refused.value.reason


def test_mp4_audio_goes_as_m4a_unconverted() -> None:
    """An mp4 container declared audio is accepted as it is, named .m4a."""
    media = prepare(MP4, "audio/mp4", "note.mp4")
    assert (media.kind, media.filename, media.mime, media.converted_from) == (
        "audio", "note.m4a", "audio/mp4", None)


def test_undecodable_audio_is_refused_not_crashed() -> None:
    """Bytes labelled mp3 that FFmpeg cannot decode are refused with a reason."""
    with pytest.raises(MediaRefused) as refused:
        prepare(b"ID3\x04" + b"\x13" * 64, "audio/mpeg", "broken.mp3")
    assert refused.value.key == "conversion"


@pytest.mark.parametrize(("name", "fmt", "out"), [
    ("menú del día.png", "png", "menu del dia.png"), ("Audio record.mp3", "m4a",
                                                       "Audio record.m4a"),
    ("写真.jpeg", "jpeg", "file.jpg"), ("a/../b.pdf", "pdf", "a_.._b.pdf"),
])
def test_file_names_become_ascii_with_the_real_extension(name: str, fmt: str, out: str) -> None:
    """Meta refuses non-ASCII upload names; the extension matches what is sent."""
    assert ascii_name(name, fmt) == out
