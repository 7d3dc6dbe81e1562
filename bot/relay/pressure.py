"""How busy the webhook receiver is: the work behind it yields while Meta is waiting.

Acknowledging, taking events into the queues and relaying them share one interpreter.
Meta needs its 200 promptly (a slow endpoint gets its deliveries retried and, in the
end, its subscription disabled), while a visitor does not notice a message reaching
the room a second later. So during a webhook storm (the classic one: Meta redelivering
everything after an outage) the receiver gets the CPU, and the intake and the relay
catch up once it subsides, from the inbox, which holds every acknowledged body durably.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import AsyncIterator, Callable

#: The receiver counts as busy at this many webhooks per second or more...
BUSY_RATE = 200.0
#: ...measured over windows of this many seconds (the current one and the last)...
WINDOW = 0.1
#: ...and stays busy this many seconds after the rate falls. Storms come in waves (Meta
#: delivers in batches and retries with backoff); a relay let loose between two waves
#: has its calls in flight when the next arrives, and those stall the receiver for
#: 100-200 ms (bench_inbound (a), --quick: p99 154 ms without the linger).
LINGER = 1.0


class ReceiverLoad:
    """Counts arriving webhooks in fixed windows; :meth:`busy` while the rate is high."""

    def __init__(
        self,
        *,
        busy_rate: float = BUSY_RATE,
        window: float = WINDOW,
        linger: float = LINGER,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.linger = linger
        self._threshold = max(1, round(busy_rate * window))
        self._clock = clock
        self._bucket = 0
        self._count = 0
        self._previous = 0
        self._busy_until = float("-inf")

    def note(self) -> None:
        """One webhook request arrived."""
        self._roll()
        self._count += 1
        if self._count >= self._threshold:
            self._busy_until = self._clock() + self.linger

    def busy(self, *, lingering: bool = True) -> bool:
        """Whether webhooks arrive at ``busy_rate`` or more (this window or the last), or
        did less than ``linger`` seconds ago (unless ``lingering`` is False)."""
        self._roll()
        return (self._count >= self._threshold or self._previous >= self._threshold
                or (lingering and self._clock() < self._busy_until))

    def _roll(self) -> None:
        bucket = int(self._clock() / self.window)
        if bucket != self._bucket:
            self._previous = self._count if bucket == self._bucket + 1 else 0
            self._bucket = bucket
            self._count = 0


class Pacer:
    """Slows a worker's network calls to a trickle while the receiver is busy.

    While :meth:`ReceiverLoad.busy`, calls start at most ``busy_rate`` per second, one at
    a time; otherwise they are not held at all. Lowering the relay's conversation limit
    alone leaves the conversations already in flight calling at full speed when a storm
    begins, and one call after another still costs the receiver a quarter of the
    interpreter (bench_inbound (a)). Work that has already waited ``patience`` seconds
    is never held, so a long storm cannot starve the relay: it delays it by that much.
    """

    def __init__(
        self,
        load: ReceiverLoad,
        *,
        busy_rate: float,
        patience: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.load = load
        self.interval = 1.0 / busy_rate
        self.patience = patience
        self._clock = clock
        self._active = 0
        self._next_start = float("-inf")
        # Held calls wait in line; one releaser task lets them go. (Each held call
        # polling on its own cost the receiver more than the trickle itself.)
        self._line: deque[asyncio.Future[None]] = deque()
        self._releaser: asyncio.Task[None] | None = None

    @contextlib.asynccontextmanager
    async def call(self, waited: float = 0.0) -> AsyncIterator[None]:
        """``async with pacer.call(waited): await <one network call>``.

        ``waited``: how long the work behind this call has been waiting (seconds).
        """
        left = self.patience - waited
        if left > 0 and self.load.busy() and not self._may_start():
            turn = asyncio.get_running_loop().create_future()
            self._line.append(turn)
            if self._releaser is None:
                self._releaser = asyncio.create_task(self._release(), name="pacer")
            try:
                # Real seconds: in a storm the loop lags, and a count of sleeps would not.
                await asyncio.wait_for(asyncio.shield(turn), left)
            except TimeoutError:
                pass
            finally:
                turn.cancel()  # no-op when it was our turn; otherwise leave the line
        self._active += 1
        try:
            yield
        finally:
            self._active -= 1

    def _may_start(self) -> bool:
        """Claim the next start if nobody is calling and the interval has passed."""
        now = self._clock()
        if self._active == 0 and not self._line and now >= self._next_start:
            self._next_start = now + self.interval
            return True
        return False

    async def _release(self) -> None:
        try:
            while self._line:
                if not self.load.busy():
                    while self._line:  # the storm is over: everyone goes
                        turn = self._line.popleft()
                        if not turn.done():
                            turn.set_result(None)
                    break
                now = self._clock()
                if self._active == 0 and now >= self._next_start:
                    while self._line:
                        turn = self._line.popleft()
                        if not turn.done():  # skip those whose patience ran out
                            turn.set_result(None)
                            self._next_start = now + self.interval
                            break
                pause = max(self._next_start - now, 0.0) or self.interval
                await asyncio.sleep(min(pause, self.load.window))
        finally:
            self._releaser = None
