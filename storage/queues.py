"""In-memory index of one work queue: per-conversation order and due heads.

The documents live in TinyDB; this index answers the hot questions without scanning
them: the head of a conversation (its first item by ``(order_ts, seq)``), and which
heads are due now (a heap keyed by ``next_try_at``). Heap entries are validated
lazily: a push happens whenever a conversation's head or its head's ``next_try_at``
changes, and entries that no longer describe the current head are dropped when they
surface. Every operation is O(log n) in the number of pending items, independent of
how many items were ever processed.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable

# (order_ts, seq, item_id): the processing order inside one conversation.
OrderKey = tuple[float, int, str]
# (next_try_at, order_ts, seq, conversation, item_id)
_HeapEntry = tuple[float, float, int, str, str]


class QueueIndex:
    """Pending items of one queue, by conversation, plus a heap of due heads."""

    def __init__(self) -> None:
        self._by_conv: dict[str, list[OrderKey]] = {}
        self._next_try: dict[str, float] = {}  # item_id -> next_try_at
        self._conv_of: dict[str, str] = {}  # item_id -> conversation
        self._heap: list[_HeapEntry] = []

    def __len__(self) -> int:
        return len(self._next_try)

    def __contains__(self, item_id: object) -> bool:
        return item_id in self._next_try

    def has_conversation(self, conversation: str) -> bool:
        return conversation in self._by_conv

    def conversations(self) -> Iterable[str]:
        return self._by_conv.keys()

    def items_of(self, conversation: str) -> list[str]:
        """Item ids of one conversation, in processing order."""
        return [key[2] for key in self._by_conv.get(conversation, ())]

    def head(self, conversation: str) -> str | None:
        keys = self._by_conv.get(conversation)
        return keys[0][2] if keys else None

    # -- changes -------------------------------------------------------------------------
    def add(
        self, conversation: str, order_ts: float, seq: int, item_id: str, next_try_at: float
    ) -> None:
        key = (order_ts, seq, item_id)
        keys = self._by_conv.setdefault(conversation, [])
        if not keys or key > keys[-1]:
            keys.append(key)  # the usual case: items arrive in order
        else:
            bisect.insort(keys, key)
        self._next_try[item_id] = next_try_at
        self._conv_of[item_id] = conversation
        if keys[0] is key:
            self._push_head(conversation)

    def remove(self, item_id: str) -> bool:
        """Forget an item; return False if it was not pending."""
        conversation = self._conv_of.pop(item_id, None)
        if conversation is None:
            return False
        del self._next_try[item_id]
        keys = self._by_conv[conversation]
        was_head = keys[0][2] == item_id
        for index, key in enumerate(keys):
            if key[2] == item_id:
                del keys[index]
                break
        if not keys:
            del self._by_conv[conversation]
        elif was_head:
            self._push_head(conversation)
        self._maybe_rebuild()
        return True

    def reschedule(self, item_id: str, next_try_at: float) -> None:
        """Record a new ``next_try_at`` (after a failed attempt)."""
        if item_id not in self._next_try or self._next_try[item_id] == next_try_at:
            return
        self._next_try[item_id] = next_try_at
        conversation = self._conv_of[item_id]
        if self._by_conv[conversation][0][2] == item_id:
            self._push_head(conversation)

    # -- questions ----------------------------------------------------------------------------
    def due(self, now: float, exclude: set[str] | frozenset[str], limit: int) -> list[str]:
        """Item ids of up to ``limit`` due heads, earliest ``next_try_at`` first."""
        found: list[str] = []
        keep: list[_HeapEntry] = []
        seen: set[str] = set()
        heap = self._heap
        while heap and heap[0][0] <= now and len(found) < limit:
            entry = heapq.heappop(heap)
            conversation = entry[3]
            if conversation in seen or not self._is_current(entry):
                continue  # stale or duplicate: dropping it is the lazy cleanup
            seen.add(conversation)
            keep.append(entry)
            if conversation not in exclude:
                found.append(entry[4])
        for entry in keep:  # heads stay heads until completed
            heapq.heappush(heap, entry)
        return found

    def earliest_due(self) -> float | None:
        heap = self._heap
        while heap and not self._is_current(heap[0]):
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    # -- internals ------------------------------------------------------------------------------
    def _push_head(self, conversation: str) -> None:
        order_ts, seq, item_id = self._by_conv[conversation][0]
        heapq.heappush(self._heap, (self._next_try[item_id], order_ts, seq, conversation, item_id))

    def _is_current(self, entry: _HeapEntry) -> bool:
        next_try_at, _, _, conversation, item_id = entry
        keys = self._by_conv.get(conversation)
        return bool(keys) and keys[0][2] == item_id and self._next_try[item_id] == next_try_at

    def _maybe_rebuild(self) -> None:
        # Stale entries of rescheduled/removed heads are normally dropped by due(); if
        # nobody asks (e.g. a queue only ever completed), bound the heap explicitly.
        if len(self._heap) > 2 * len(self._by_conv) + 1024:
            self._heap = []
            for conversation in self._by_conv:
                self._push_head(conversation)
