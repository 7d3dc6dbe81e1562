"""Splitting agents' texts into Send API parts and building the message objects."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.relay.outbound import MAX_TEXT_BYTES, attachment_type, build_parts, split_text


def _size(text: str) -> int:
    return len(text.encode("utf-8"))


def test_short_text_is_one_part() -> None:
    """A text within 1000 bytes is sent as it is."""
    assert split_text("hello there") == ["hello there"]


def test_empty_text_has_no_parts() -> None:
    """Nothing to send for an empty text."""
    assert split_text("") == []


def test_long_reply_splits_at_whitespace_in_order() -> None:
    """A 2,500-character reply becomes ordered parts ≤ 1000 bytes, words kept whole."""
    words = [f"word{i:04d}" for i in range(300)]
    text = " ".join(words)[:2500]
    parts = split_text(text)
    assert len(parts) == 3
    assert "".join(parts) == text
    assert all(_size(p) <= MAX_TEXT_BYTES for p in parts)
    for part in parts[:-1]:
        assert part.endswith(" ")  # the break is after whitespace, not inside a word


def test_multibyte_text_counts_bytes_not_characters() -> None:
    """900 emoji are 3600 bytes: split by UTF-8 size, never inside a character."""
    text = " ".join(["😀"] * 900)
    parts = split_text(text)
    assert "".join(parts) == text
    assert all(_size(p) <= MAX_TEXT_BYTES for p in parts)
    assert len(parts) >= 4


def test_word_longer_than_limit_is_cut_at_a_character_boundary() -> None:
    """A 2,500-byte word without spaces is hard-cut, still valid UTF-8 and complete."""
    text = "é" * 1250
    parts = split_text(text)
    assert "".join(parts) == text
    assert [_size(p) for p in parts] == [998, 998, 504]


def test_part_of_exactly_1000_ascii_characters_is_split() -> None:
    """1000 ASCII characters meet "less than 1000 characters": never one part."""
    parts = split_text("x" * 1000)
    assert "".join(parts) == "x" * 1000
    assert all(len(p) < 1000 and _size(p) < 1000 for p in parts)


def test_prefers_a_line_break_late_in_the_part() -> None:
    """A paragraph break in the second half of a part is where it ends."""
    text = "a" * 700 + "\n" + "b " * 200 + "c" * 500
    parts = split_text(text)
    assert parts[0] == "a" * 700 + "\n"
    assert "".join(parts) == text


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet=st.characters(codec="utf-8"), max_size=3000),
       st.integers(min_value=4, max_value=1200))
def test_split_always_reassembles_and_fits(text: str, limit: int) -> None:
    """For any text and limit: parts concatenate to the text and each fits the limit."""
    parts = split_text(text, limit)
    assert "".join(parts) == text
    assert all(0 < _size(p) <= limit for p in parts)


def test_limit_below_one_character_is_refused() -> None:
    """A limit that cannot hold a 4-byte character is a programming error."""
    with pytest.raises(ValueError):
        split_text("x", 3)


@pytest.mark.parametrize(
    ("mime", "kind"),
    [("image/png", "image"), ("image/jpeg", "image"), ("video/mp4", "video"),
     ("audio/mpeg", "audio"), ("application/pdf", "file"), ("", "file"), (None, "file")],
)
def test_attachment_type_from_mime(mime: str | None, kind: str) -> None:
    """MIME types map to the Send API's attachment types."""
    assert attachment_type(mime) == kind


def test_file_then_caption_parts() -> None:
    """Files go first as attachments by URL, the caption follows as text."""
    parts = build_parts("look at this", [{"url": "https://rc/x.png?token=j", "type": "image/png"}])
    assert parts == [
        {"attachment": {"type": "image", "payload": {"url": "https://rc/x.png?token=j"}}},
        {"text": "look at this"},
    ]


def test_whitespace_only_text_sends_nothing() -> None:
    """Meta refuses empty texts, so whitespace-only parts are not sent."""
    assert build_parts("   \n ", []) == []
