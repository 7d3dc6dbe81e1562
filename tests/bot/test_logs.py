"""Log output: secrets are masked even when a library puts them in a message."""

from __future__ import annotations

import json
import logging

from bot.logs import JsonFormatter, RedactingFilter


def _record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("bot.test", logging.INFO, __file__, 1, msg, args, None)


def test_redacting_filter_masks_secret_in_args() -> None:
    """A secret passed as a %-argument never reaches the output."""
    record = _record("calling %s with token %s", "/me", "EAABsecrettoken")
    RedactingFilter(["EAABsecrettoken"]).filter(record)
    assert "EAABsecrettoken" not in record.getMessage()
    assert "***" in record.getMessage()


def test_redacting_filter_masks_secret_in_exception_text() -> None:
    """A secret inside an exception's text is masked in the traceback too."""
    try:
        raise RuntimeError("bad token EAABsecrettoken")
    except RuntimeError:
        import sys

        record = logging.LogRecord(
            "bot.test", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    RedactingFilter(["EAABsecrettoken"]).filter(record)
    assert "EAABsecrettoken" not in (record.exc_text or "")


def test_json_formatter_emits_one_object_per_line() -> None:
    """--log-format json writes parseable lines with level, logger and message."""
    line = JsonFormatter().format(_record("relayed %s", "mid-1"))
    entry = json.loads(line)
    assert entry["message"] == "relayed mid-1"
    assert entry["logger"] == "bot.test"
    assert entry["level"] == "INFO"
