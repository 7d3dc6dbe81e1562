"""Replies typed while the bridge was down reach the visitor in the order they were typed.

Rocket.Chat redelivers an unacknowledged Omnichannel webhook on its own timer, one timer
per message: after a restart a reply typed later can arrive before one typed earlier,
and the queue (ordered by each message's own ``ts``) cannot order what it has not heard
of yet. So the first time after a start that a room's reply is about to be sent, the
room's messages since shortly before the previous run was last alive are read from
Rocket.Chat (``chat.syncMessages``) and every agent reply among them is queued, with the
same deterministic ids as its webhook (``rc-msg:<_id>``): the store keeps each once, a
reply already sent is remembered and skipped, and the late webhook adds nothing. When
that queued an earlier reply, the relay hands the conversation back to the queue, which
now starts with it.

Only for :data:`CHECK_PERIOD` after a start (Rocket.Chat's retries end within minutes),
never further back than :data:`MAX_LOOKBACK`. A reply carrying a file is left to its
webhook: the file's public URL exists only in the webhook body.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from bot.rocketchat.rest import RocketChatError
from bot.rocketchat.webhook import parse_webhook
from storage.base import Store, WorkItem

log = logging.getLogger("bot.relay")

#: Rooms are checked during this long after a start (seconds).
CHECK_PERIOD = 900.0
#: Read no further back than this before the start (seconds).
MAX_LOOKBACK = 3600.0
#: The read starts this long before the previous run was last known alive.
MARGIN = 60.0


class ReplyOrder:
    """The once-per-room check after a start (see the module docstring)."""

    def __init__(
        self, store: Store, rest: Any, *, clock: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.rest = rest
        self.clock = clock
        self.started_at = clock()
        #: Epoch seconds to read rooms from; None: nothing to catch up (first run).
        self.since: float | None = None
        self._checked: set[str] = set()

    def resume(self, last_alive: float | None) -> None:
        """The previous run was last known alive at ``last_alive`` (None: no previous run)."""
        self.started_at = self.clock()
        self._checked.clear()
        if last_alive is None:
            self.since = None
        else:
            self.since = max(last_alive - MARGIN, self.started_at - MAX_LOOKBACK)

    async def earlier_replies_queued(self, item: WorkItem, room_id: str) -> bool:
        """Queue the room's replies Rocket.Chat has not delivered yet; True when one of
        them comes before ``item`` (the item must wait for it)."""
        if (self.since is None or room_id in self._checked
                or self.clock() - self.started_at > CHECK_PERIOD):
            return False
        self._checked.add(room_id)
        try:
            found = await self.rest.sync_messages(
                room_id, datetime.fromtimestamp(self.since, tz=UTC)
            )
        except RocketChatError as exc:
            # Order is best effort here; the reply itself must not wait on it.
            log.warning("room %s: earlier replies not checked (%s)", room_id, exc)
            return False
        page_id, _, igsid = item.conversation.partition(":")
        replies = [
            {**m, "agentId": (m.get("u") or {}).get("_id")} for m in found
            if isinstance(m, dict) and not m.get("token") and not m.get("t")
            and not m.get("file") and not m.get("files")
        ]
        if not replies:
            return False
        conversation = await self.store.conversation(page_id, igsid)
        if conversation is None:
            return False
        body = {"type": "Message", "_id": room_id,
                "visitor": {"token": conversation.visitor_token}, "messages": replies}
        parsed = parse_webhook(body, conversation=conversation, bot_user_id=self.rest.user_id,
                               now=self.clock())
        added = await self.store.enqueue(parsed.items) if parsed.items else []
        earlier = [a for a in added if (a.order_ts, a.seq) < (item.order_ts, item.seq)]
        if added:
            log.info("room %s: %d reply(ies) not delivered by Rocket.Chat yet queued, "
                     "%d before %s", room_id, len(added), len(earlier), item.item_id)
        return bool(earlier)
