"""The in-memory queue index: heads, due order, lazy heap cleanup."""

from __future__ import annotations

from storage.queues import QueueIndex


def test_out_of_order_arrival_still_yields_earliest_head():
    """An item with an earlier timestamp that arrives late becomes the head."""
    index = QueueIndex()
    index.add("c", 20.0, 1, "late-ts", 0.0)
    index.add("c", 10.0, 2, "early-ts", 0.0)
    assert index.head("c") == "early-ts"
    assert index.due(100.0, set(), 10) == ["early-ts"]
    assert index.items_of("c") == ["early-ts", "late-ts"]


def test_rescheduled_head_is_due_only_at_its_new_time():
    """After a retry is scheduled, the old heap entry no longer makes the head due."""
    index = QueueIndex()
    index.add("c", 1.0, 1, "a", 0.0)
    index.reschedule("a", 50.0)
    assert index.due(10.0, set(), 10) == []
    assert index.earliest_due() == 50.0
    assert index.due(50.0, set(), 10) == ["a"]


def test_heads_are_returned_until_removed_and_once_per_call():
    """due() does not consume heads, and never returns one conversation twice."""
    index = QueueIndex()
    index.add("c", 1.0, 1, "a", 0.0)
    index.reschedule("a", 5.0)
    index.reschedule("a", 0.0)  # back to the original time: two identical entries
    assert index.due(10.0, set(), 10) == ["a"]
    assert index.due(10.0, set(), 10) == ["a"]
    assert index.remove("a") and not index.remove("a")
    assert index.due(10.0, set(), 10) == [] and index.earliest_due() is None


def test_removing_the_head_promotes_the_next_item():
    """Completing a head makes the conversation's next item due."""
    index = QueueIndex()
    for seq, item_id in enumerate(["a", "b", "c"]):
        index.add("conv", 1.0, seq, item_id, 0.0)
    index.remove("b")  # a middle item (e.g. cancelled) keeps the head
    assert index.due(1.0, set(), 5) == ["a"]
    index.remove("a")
    assert index.due(1.0, set(), 5) == ["c"]
    assert len(index) == 1 and index.has_conversation("conv")


def test_heap_stays_bounded_without_readers():
    """Stale heap entries are bounded even if nobody ever asks what is due."""
    index = QueueIndex()
    for n in range(10_000):
        index.add(f"c{n % 10}", float(n), n, f"i{n}", 0.0)
        if n >= 10:
            index.remove(f"i{n - 10}")
    assert len(index._heap) <= 2 * 10 + 1024
