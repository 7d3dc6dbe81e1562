"""Logging setup: text or JSON lines, with known secret values masked as a last guard.

Code never logs secrets on purpose; :class:`RedactingFilter` catches an accident (a
token inside an exception message from a library, say) before it reaches a file.
Outside values end up in log lines too (Meta's ``error_reason``, a forged body's room
id): :class:`ControlCharFilter` escapes CR, LF and other control characters so no value
can forge a line, and :class:`RepeatFilter` lets an identical line through only a few
times a minute, so a flood (unauthenticated junk, ``accept() out of system resource``)
cannot grow the log faster than the attacker sends.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable
from typing import IO

TEXT_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class RedactingFilter(logging.Filter):
    """Replace every occurrence of the given secret values in a record by ``***``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        super().__init__()
        # Short values would mask ordinary words; real secrets are long.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 6}, key=len, reverse=True)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        message = record.getMessage()
        text = message
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        exc_text = record.exc_text or ""
        for secret in self._secrets:
            text = text.replace(secret, "***")
            exc_text = exc_text.replace(secret, "***")
        if text != message:
            record.msg, record.args = text, None
        if record.exc_text:
            record.exc_text = exc_text
        return True


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x85\u2028\u2029]|\n")


def escape_controls(text: str) -> str:
    """``text`` with control characters (CR, LF, ESC, NUL…) as visible escapes."""
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class ControlCharFilter(logging.Filter):
    """Escape control characters in a record's message (tracebacks keep their lines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        escaped = escape_controls(message)
        if escaped != message:
            record.msg, record.args = escaped, None
        return True


class RepeatFilter(logging.Filter):
    """Let through at most ``burst`` records of the same logger, level and message
    template per ``window`` seconds; the next one let through says how many were held."""

    def __init__(self, burst: int = 5, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.burst, self.window, self.clock = burst, window, clock
        # key -> [window start, records let through, records suppressed]
        self._seen: dict[tuple[str, int, str], list[float]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        key = (record.name, record.levelno, str(record.msg))
        now = self.clock()
        entry = self._seen.get(key)
        if entry is None or now - entry[0] >= self.window:
            if len(self._seen) > 10_000:
                self._seen.clear()  # templates are few; never grow without bound
            suppressed = int(entry[2]) if entry else 0
            self._seen[key] = [now, 1, 0]
            if suppressed:
                record.msg = f"{record.getMessage()} ({suppressed} more like this not logged)"
                record.args = None
            return True
        if entry[1] < self.burst:
            entry[1] += 1
            return True
        entry[2] += 1
        return False


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message (+ exception)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info or record.exc_text:
            entry["exception"] = record.exc_text or self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def make_handler(stream: IO[str], fmt: str = "text",
                 secrets: Iterable[str] = ()) -> logging.Handler:
    """The bot's log handler on ``stream``: repeats limited, secrets masked, controls escaped."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter(TEXT_FORMAT))
    handler.addFilter(RepeatFilter())
    handler.addFilter(RedactingFilter(secrets))
    handler.addFilter(ControlCharFilter())
    return handler


def setup(level: str = "INFO", fmt: str = "text", secrets: Iterable[str] = ()) -> None:
    """Configure the root logger once for the process."""
    handler = make_handler(sys.stderr, fmt, secrets)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Library chatter (per-request lines) is not useful at INFO.
    for noisy in ("aiohttp.access", "websockets", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
