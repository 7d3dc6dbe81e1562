"""Splitting agents' texts into Send API parts and building the message objects."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.relay.outbound import MAX_TEXT_BYTES, build_parts, split_text, upload_path


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


def test_file_then_caption_parts() -> None:
    """Files go first (sent one by one after upload), the caption follows as text."""
    file = {"url": "https://rc/file-upload/f/x.png?token=j", "type": "image/png"}
    assert build_parts("look at this", [file]) == [{"file": file}, {"text": "look at this"}]


@pytest.mark.parametrize(
    ("url", "path"),
    [("https://chat.example/file-upload/f1/a%20b.png?token=j", "/file-upload/f1/a%20b.png?token=j"),
     ("https://example.org/chat/file-upload/f1/x.pdf", "/file-upload/f1/x.pdf"),
     ("https://cdn.example/other/x.png", None)],
)
def test_upload_path_keeps_only_the_rocketchat_path(url: str, path: str | None) -> None:
    """Only /file-upload/… (with the JWT query) is kept: the host comes from rocketchat.url."""
    assert upload_path(url) == path


def test_whitespace_only_text_sends_nothing() -> None:
    """Meta refuses empty texts, so whitespace-only parts are not sent."""
    assert build_parts("   \n ", []) == []
