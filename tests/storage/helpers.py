"""Small builders shared by the storage tests."""

from __future__ import annotations

from typing import Any

from storage import WorkItem


def item(
    item_id: str,
    conversation: str = "p1:u1",
    *,
    queue: str = "inbound",
    order_ts: float = 0.0,
    **payload: Any,
) -> WorkItem:
    """A work item with a small payload."""
    return WorkItem(
        item_id=item_id,
        queue=queue,  # type: ignore[arg-type]
        conversation=conversation,
        kind="message",
        payload={"text": f"hello {item_id}", **payload},
        order_ts=order_ts,
    )
