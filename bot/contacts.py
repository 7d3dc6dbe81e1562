"""Monthly active contacts: the figure Rocket.Chat meters Omnichannel by.

Rocket.Chat marks a visitor active for a calendar month (``YYYY-MM``) when a message
that is not the visitor's own is saved in their room that month (the
``markRoomResponded`` hook: ``LivechatVisitors.markVisitorActiveForPeriod``), and its
Starter and Pro plans include 100 such contacts a month across all channels; going over
may interrupt service. The bridge counts the Instagram visitors who wrote to a page
this month (UTC). That is the number to watch: each of them becomes a monthly active
contact as soon as an agent (or a note of the bridge) answers in the month. A visitor
who wrote late last month and is answered this month counts for Rocket.Chat this month
but not here.
"""

from __future__ import annotations

from datetime import UTC, datetime

#: Monthly active contacts included in Rocket.Chat's Starter and Pro plans.
INCLUDED_CONTACTS = 100


def month_start(now: float) -> float:
    """Epoch seconds of the first instant of ``now``'s calendar month (UTC)."""
    moment = datetime.fromtimestamp(now, tz=UTC)
    return moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0).timestamp()
