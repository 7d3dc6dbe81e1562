"""Settling a send in doubt from a thread's newest messages, and the per-account pacer."""

from __future__ import annotations

import pytest

from bot.instagram.conversations import (
    ABSENT,
    DELIVERED,
    UNKNOWN,
    ThreadMessage,
    parse_messages,
    settle,
)
from bot.instagram.graph import AccountPacer
from bot.relay.backfill import rebuild_events

ACCOUNT = "17841400000000001"
VISITOR = "6543210000007919"
START = 1_800_000_100.6  # the send's start (our clock); its second is ...100


def msg(mid: str, at: float, text: str, sender: str = ACCOUNT) -> ThreadMessage:
    return ThreadMessage(mid, at, sender, text)


def test_graph_time_format_is_parsed() -> None:
    """``created_time`` in Graph's ``+0000`` form becomes epoch seconds; junk is skipped."""
    [parsed] = parse_messages([
        {"id": "m1", "created_time": "2027-01-15T08:00:00+0000", "from": {"id": VISITOR},
         "message": "hi"},
        {"id": "m2", "created_time": "yesterday", "from": {"id": VISITOR}},
    ])
    assert parsed == ThreadMessage("m1", 1800000000.0, VISITOR, "hi")


@pytest.mark.parametrize(("thread", "state"), [
    # Found once, in the send's second (created_time is floored): delivered.
    ([msg("a", 1_800_000_100, "Hi there")], DELIVERED),
    # Trailing whitespace of a split part is not part of the match.
    ([msg("a", 1_800_000_101, "Hi there")], DELIVERED),
    # Only older messages, and the window reaches back past the start: certainly absent.
    ([msg("v", 1_800_000_050, "question", VISITOR)], ABSENT),
    # The same text long before the send is another message: absent.
    ([msg("old", 1_800_000_000, "Hi there")], ABSENT),
    # The same text twice, one after the start: cannot tell which.
    ([msg("b", 1_800_000_101, "Hi there"), msg("a", 1_800_000_090, "Hi there")], UNKNOWN),
    # A visitor's identical text does not count as ours.
    ([msg("v", 1_800_000_101, "Hi there", VISITOR)], ABSENT),
])
def test_settle_decides_from_sender_text_and_time(thread: list[ThreadMessage], state: str) -> None:
    """Delivered only for exactly one matching message from the account since the send."""
    assert settle(thread, account_id=ACCOUNT, text="Hi there ", started_at=START).state == state


def test_full_window_newer_than_the_send_is_unknown_not_absent() -> None:
    """Twenty messages all from the send's second on may hide it: unknown, never absent."""
    thread = [msg(f"v{n}", 1_800_000_100 + n, f"q{n}", VISITOR) for n in range(20)]
    verdict = settle(thread, account_id=ACCOUNT, text="Hi there", started_at=START)
    assert (verdict.state, verdict.reason) == (UNKNOWN, "thread_moved_on")
    # One message older than the send's second in the window: it reaches back far enough.
    thread[-1] = msg("v19", 1_800_000_099, "q19", VISITOR)
    assert settle(thread, account_id=ACCOUNT, text="Hi there", started_at=START).state == ABSENT


def test_delivered_carries_the_mid_for_the_echo_key() -> None:
    """The found message's id is returned (its echo is then known to be ours)."""
    verdict = settle([msg("mid.1", 1_800_000_100, "x")], account_id=ACCOUNT, text="x",
                     started_at=START)
    assert verdict.mid == "mid.1"


def test_pacer_spaces_calls_of_one_account_and_not_others() -> None:
    """At most 2 calls/s per account; another account is not held up."""
    now = [100.0]
    pacer = AccountPacer(2.0, clock=lambda: now[0])
    delays = [pacer.delay("page-a") for _ in range(3)]
    assert delays[0] == 0 and delays[1] == pytest.approx(0.525) and delays[2] > 1.0
    assert pacer.delay("page-b") == 0


def test_backfill_rebuilds_webhook_events_oldest_first_since_the_mark() -> None:
    """Thread messages since the mark become the messaging events their webhooks carry:
    visitor texts, account messages as echoes (to the visitor), nothing older."""
    raw = [  # newest first, as Meta lists them
        {"id": "m3", "created_time": "2027-01-15T08:00:09+0000", "from": {"id": ACCOUNT},
         "to": {"data": [{"id": VISITOR}]}, "message": "typed in the app"},
        {"id": "m2", "created_time": "2027-01-15T08:00:05+0000", "from": {"id": VISITOR},
         "message": "second"},
        {"id": "m1", "created_time": "2027-01-15T07:00:00+0000", "from": {"id": VISITOR},
         "message": "old"},
    ]
    events, unreadable = rebuild_events(raw, account_id=ACCOUNT, since=1_800_000_000.0)
    assert unreadable == 0
    assert [e["message"]["mid"] for e in events] == ["m2", "m3"]
    assert events[0]["sender"] == {"id": VISITOR} and events[0]["timestamp"] == 1800000005000
    assert events[1]["message"]["is_echo"] is True and events[1]["recipient"] == {"id": VISITOR}
