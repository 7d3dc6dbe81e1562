"""The calendar month that monthly active contacts are counted in."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from bot.contacts import month_start


@pytest.mark.parametrize(("moment", "start"), [
    ("2026-12-04T01:02:03", "2026-12-01T00:00:00"),
    ("2026-12-01T00:00:00", "2026-12-01T00:00:00"),
    ("2027-01-01T00:00:00", "2027-01-01T00:00:00"),
    ("2026-12-31T23:59:59.999", "2026-12-01T00:00:00"),
    ("2028-02-29T12:00:00", "2028-02-01T00:00:00"),
])
def test_month_start_is_the_first_instant_of_the_utc_month(moment: str, start: str):
    """A month starts at 00:00 UTC of its first day, whatever the local time zone."""
    at = datetime.fromisoformat(moment).replace(tzinfo=UTC).timestamp()
    assert month_start(at) == datetime.fromisoformat(start).replace(tzinfo=UTC).timestamp()
