"""When each Graph API version stops working, for ``doctor``'s version check.

Source: Meta's "Graph API versions" table,
https://developers.facebook.com/docs/graph-api/changelog/versions/ (read in the stored
copy of December 2026, which lists v26.0 as the newest version, its end not yet
announced). Meta announces an end date when the version two releases later ships, so
a version missing here is either too new to have one or older than the table: ``doctor``
says which instead of guessing. Refresh the table when a new version ships.
"""

from __future__ import annotations

import datetime as dt
import re

#: version -> last day it is available (Meta: "Available until" / "Expiration Date").
END_DATES: dict[str, dt.date] = {
    "v17.0": dt.date(2025, 9, 12),
    "v18.0": dt.date(2026, 1, 26),
    "v19.0": dt.date(2026, 5, 21),
    "v20.0": dt.date(2026, 9, 24),
    "v21.0": dt.date(2027, 1, 21),
    "v22.0": dt.date(2027, 5, 20),
    "v23.0": dt.date(2027, 10, 8),
    "v24.0": dt.date(2028, 2, 18),
    "v25.0": dt.date(2028, 7, 29),
}
#: The newest version in the table's source without an end date yet.
NEWEST_KNOWN = "v26.0"
#: ``doctor`` warns this many days before a version's end.
WARN_DAYS = 90


def _number(version: str) -> tuple[int, int] | None:
    match = re.fullmatch(r"v(\d+)\.(\d+)", version)
    return (int(match.group(1)), int(match.group(2))) if match else None


def end_date(version: str) -> dt.date | None:
    """The last day ``version`` is available, or None when the table has no date for it."""
    return END_DATES.get(version)


def is_newer_than_table(version: str) -> bool:
    """True for a version at least as new as :data:`NEWEST_KNOWN` (no end announced)."""
    number, newest = _number(version), _number(NEWEST_KNOWN)
    return number is not None and newest is not None and number >= newest
