"""ReceiverLoad counts webhooks per window; Pacer trickles calls while busy, never starves them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest

from bot.relay.pressure import BUSY_RATE, WINDOW, Pacer, ReceiverLoad


class FakeClock:
    """A clock that only moves when the test sets ``now``."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _notes(load: ReceiverLoad, count: int) -> None:
    for _ in range(count):
        load.note()


# --- ReceiverLoad ---------------------------------------------------------------------
# Window 1.0 s and rate 5/s: the threshold is 5 notes; times sit mid-window (x.5) so that
# no float rounding at a window edge decides anything.


def _load_at(now: float = 0.5) -> tuple[ReceiverLoad, FakeClock]:
    clock = FakeClock(now)
    return ReceiverLoad(busy_rate=5.0, window=1.0, linger=0.0, clock=clock), clock


def test_fresh_load_is_not_busy() -> None:
    """Without a single webhook the receiver is not busy, on the fake clock or the real one."""
    load, _ = _load_at()
    assert not load.busy()
    assert not ReceiverLoad().busy()


def test_fewer_notes_than_rate_times_window_do_not_count_as_busy() -> None:
    """Four webhooks in one window at a threshold of five leave the receiver not busy."""
    load, _ = _load_at()
    _notes(load, 4)
    assert not load.busy()


def test_rate_times_window_notes_in_one_window_count_as_busy() -> None:
    """The fifth webhook in a window reaches the threshold (at, not only above it)."""
    load, _ = _load_at()
    _notes(load, 4)
    assert not load.busy()
    load.note()
    assert load.busy()
    load.note()
    assert load.busy()


def test_default_threshold_is_busy_rate_times_window() -> None:
    """With the defaults (200/s over 0.1 s) 19 webhooks in a window are calm, 20 are busy."""
    clock = FakeClock(WINDOW / 2)
    load = ReceiverLoad(linger=0.0, clock=clock)
    _notes(load, round(BUSY_RATE * WINDOW) - 1)
    assert not load.busy()
    load.note()
    assert load.busy()


def test_notes_split_over_two_windows_are_not_added_up() -> None:
    """Three webhooks in one window and three in the next stay below a per-window five."""
    load, clock = _load_at(0.5)
    _notes(load, 3)
    clock.now = 1.5
    _notes(load, 3)
    assert not load.busy()


def test_busy_window_keeps_counting_through_the_next_and_ends_after_it() -> None:
    """A busy window keeps the receiver busy for all of the next one; two windows on it is calm."""
    load, clock = _load_at(0.5)
    _notes(load, 5)
    clock.now = 0.99
    assert load.busy()
    clock.now = 1.01
    assert load.busy()
    clock.now = 1.99
    assert load.busy()
    clock.now = 2.01
    assert not load.busy()
    clock.now = 2.5
    assert not load.busy()


def test_busy_ends_two_windows_later_even_if_nobody_asked_in_between() -> None:
    """Jumping straight from the busy window to the one after next finds the receiver calm."""
    load, clock = _load_at(0.5)
    _notes(load, 5)
    clock.now = 2.5
    assert not load.busy()


def test_gap_of_several_windows_forgets_the_stale_count() -> None:
    """After a gap of windows the old busy count is not carried into the window before now."""
    load, clock = _load_at(0.5)
    _notes(load, 5)
    assert load.busy()
    clock.now = 5.5  # buckets 1..4 were quiet: the busy bucket 0 must not become "previous"
    assert not load.busy()
    load.note()
    clock.now = 6.5
    assert not load.busy()  # previous is bucket 5 with one note, not bucket 0's five


def test_gap_then_busy_window_counts_only_new_notes() -> None:
    """A window after a long gap starts from zero: four new notes are not busy, five are."""
    load, clock = _load_at(0.5)
    _notes(load, 4)
    clock.now = 7.5
    _notes(load, 4)
    assert not load.busy()
    load.note()
    assert load.busy()
    clock.now = 8.5
    assert load.busy()


def test_storm_lingers_after_the_rate_falls() -> None:
    """Busy lasts ``linger`` seconds after the last note at storm rate, then ends."""
    clock = FakeClock(0.5)
    load = ReceiverLoad(busy_rate=5.0, window=1.0, linger=3.0, clock=clock)
    _notes(load, 5)  # the threshold is reached at fake time 0.5
    clock.now = 3.4  # two quiet windows later: the windows alone would say calm
    assert load.busy()
    clock.now = 3.6
    assert not load.busy()


def test_linger_can_be_ignored() -> None:
    """``busy(lingering=False)`` answers from the windows alone."""
    clock = FakeClock(0.5)
    load = ReceiverLoad(busy_rate=5.0, window=1.0, linger=3.0, clock=clock)
    _notes(load, 5)
    assert load.busy(lingering=False)
    clock.now = 2.5
    assert load.busy()
    assert not load.busy(lingering=False)


def test_linger_starts_again_with_each_wave() -> None:
    """A second wave inside the linger extends it from that wave's storm-rate notes."""
    clock = FakeClock(0.5)
    load = ReceiverLoad(busy_rate=5.0, window=1.0, linger=3.0, clock=clock)
    _notes(load, 5)
    clock.now = 2.5
    _notes(load, 5)  # a second wave at 2.5
    clock.now = 5.4
    assert load.busy()
    clock.now = 5.6
    assert not load.busy()


def test_slow_trickle_never_starts_a_linger() -> None:
    """Notes below the storm rate never make the receiver busy, however long they last."""
    clock = FakeClock(0.5)
    load = ReceiverLoad(busy_rate=5.0, window=1.0, linger=3.0, clock=clock)
    for second in range(20):
        clock.now = second + 0.5
        _notes(load, 4)
        assert not load.busy()


def test_tiny_rate_still_needs_at_least_one_webhook() -> None:
    """A threshold that would round to zero is one: no webhook is calm, a single one is busy."""
    load, _ = _load_at()
    tiny = ReceiverLoad(busy_rate=0.01, window=1.0, linger=0.0, clock=FakeClock(0.5))
    assert not tiny.busy()
    tiny.note()
    assert tiny.busy()
    assert not load.busy()


# --- Pacer ----------------------------------------------------------------------------
# The load runs on a fake clock with a threshold of one note per 0.01 s window: one note at
# fake time 0 keeps it busy until the test moves the fake clock far on. The pacer itself
# sleeps and measures in real time (load.window = 0.01 s is its polling step).

RATE = 50.0  # pacer calls per second while busy: one start per 0.02 s
INTERVAL = 1.0 / RATE


def _controlled_load(busy: bool) -> tuple[ReceiverLoad, FakeClock]:
    clock = FakeClock(0.0)
    load = ReceiverLoad(busy_rate=100.0, window=0.01, linger=0.0, clock=clock)
    if busy:
        load.note()
        assert load.busy()
    else:
        assert not load.busy()
    return load, clock


def _calm(clock: FakeClock) -> None:
    clock.now = 1000.0


class Probe:
    """Counts calls inside the pacer: how many at once, the peak, and when each started."""

    def __init__(self) -> None:
        self.active = 0
        self.peak = 0
        self.starts: list[float] = []

    def enter(self) -> None:
        self.active += 1
        self.peak = max(self.peak, self.active)
        self.starts.append(time.monotonic())

    def leave(self) -> None:
        self.active -= 1


async def _wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        await asyncio.sleep(0.002)
    return condition()


async def _pass(pacer: Pacer, waited: float = 0.0, timeout: float = 1.0) -> None:
    """One empty call through the pacer; fails instead of hanging if it is held for good."""

    async def call() -> None:
        async with pacer.call(waited=waited):
            pass

    await asyncio.wait_for(call(), timeout)


async def _finish(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class InFlight:
    """``async with InFlight(pacer) as flight``: one call inside the pacer until released."""

    def __init__(self, pacer: Pacer) -> None:
        self.pacer = pacer
        self._inside = asyncio.Event()
        self._release = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _hold(self) -> None:
        async with self.pacer.call():
            self._inside.set()
            await self._release.wait()

    async def __aenter__(self) -> InFlight:
        self._task = asyncio.create_task(self._hold())
        await asyncio.wait_for(self._inside.wait(), 1.0)
        return self

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    async def release(self) -> None:
        """Let the call finish, and wait until it has."""
        self._release.set()
        assert self._task is not None
        await asyncio.wait_for(self._task, 1.0)

    async def __aexit__(self, *exc: object) -> None:
        self._release.set()
        if self._task is not None:
            await _finish([self._task])


async def test_calm_load_lets_concurrent_calls_all_run_at_once() -> None:
    """While the receiver is calm twenty concurrent calls are all inside the pacer together."""
    load, _ = _controlled_load(busy=False)
    pacer = Pacer(load, busy_rate=RATE, patience=60.0)
    probe = Probe()
    release = asyncio.Event()

    async def one() -> None:
        async with pacer.call():
            probe.enter()
            await release.wait()
            probe.leave()

    started = time.monotonic()
    tasks = [asyncio.create_task(one()) for _ in range(20)]
    try:
        assert await _wait_until(lambda: probe.active == 20, timeout=1.0)
        assert time.monotonic() - started < 1.0
        assert probe.peak == 20
        release.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 1.0)
        assert probe.active == 0
    finally:
        await _finish(tasks)


async def test_calm_load_does_not_pace_back_to_back_calls() -> None:
    """Back-to-back calls on a calm receiver are not spaced: 100 take far under 100 intervals."""
    load, _ = _controlled_load(busy=False)
    pacer = Pacer(load, busy_rate=RATE, patience=60.0)
    started = time.monotonic()
    for _ in range(100):
        await _pass(pacer)
    assert time.monotonic() - started < 0.5  # paced, this would take 100 * 0.02 s = 2 s


async def test_busy_load_serializes_calls_and_caps_their_rate() -> None:
    """While busy, concurrent calls never overlap and start no faster than busy_rate per second."""
    load, clock = _controlled_load(busy=True)
    pacer = Pacer(load, busy_rate=RATE, patience=60.0)
    probe = Probe()

    async def one() -> None:
        async with pacer.call():
            probe.enter()
            await asyncio.sleep(0.003)
            probe.leave()

    began = time.monotonic()
    tasks = [asyncio.create_task(one()) for _ in range(40)]
    try:
        await asyncio.sleep(0.3)
        assert load.busy()
        in_window = [t for t in probe.starts if t - began <= 0.3]
        assert len(in_window) <= 0.3 * RATE + 3  # unpaced, all 40 would have started
        assert len(probe.starts) >= 2  # it trickles, it does not stop
        assert probe.peak == 1
        gaps = [b - a for a, b in zip(probe.starts, probe.starts[1:], strict=False)]
        assert all(gap >= INTERVAL * 0.9 for gap in gaps), gaps
        assert len(probe.starts) < 40
    finally:
        _calm(clock)
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 2.0)
        await _finish(tasks)
    assert len(probe.starts) == 40


async def test_busy_load_holds_the_next_call_while_one_is_in_flight() -> None:
    """While busy a second call waits for the first to finish, however many intervals pass."""
    load, clock = _controlled_load(busy=True)
    pacer = Pacer(load, busy_rate=RATE, patience=60.0)
    probe = Probe()
    release_first = asyncio.Event()

    async def first() -> None:
        async with pacer.call():
            probe.enter()
            await release_first.wait()
            probe.leave()

    async def second() -> None:
        async with pacer.call():
            probe.enter()
            probe.leave()

    tasks = [asyncio.create_task(first())]
    try:
        assert await _wait_until(lambda: probe.active == 1, timeout=1.0)
        tasks.append(asyncio.create_task(second()))
        await asyncio.sleep(0.15)  # more than seven intervals
        assert len(probe.starts) == 1
        release_first.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 1.0)
        assert len(probe.starts) == 2 and probe.peak == 1
    finally:
        _calm(clock)
        await _finish(tasks)


async def test_busy_pacing_follows_the_injected_clock() -> None:
    """While busy the next call starts only once the pacer's own clock has moved one interval on."""
    load, load_clock = _controlled_load(busy=True)
    clock = FakeClock(100.0)
    pacer = Pacer(load, busy_rate=RATE, patience=60.0, clock=clock)
    await _pass(pacer)
    entered = asyncio.Event()

    async def second() -> None:
        async with pacer.call():
            entered.set()

    task = asyncio.create_task(second())
    try:
        await asyncio.sleep(0.1)  # real time passes, the pacer's clock does not
        assert not entered.is_set()
        clock.now = 100.0 + INTERVAL * 0.5
        await asyncio.sleep(0.05)
        assert not entered.is_set()
        clock.now = 100.0 + INTERVAL * 1.01
        await asyncio.wait_for(entered.wait(), 1.0)
    finally:
        _calm(load_clock)
        await _finish([task])


async def test_call_that_waited_patience_passes_at_once_while_busy() -> None:
    """waited >= patience skips the hold even while busy and another call is in flight."""
    # Slow polling (5 s windows, 1 call per 10 s): a call held for even one step takes seconds.
    clock = FakeClock(0.5)
    load = ReceiverLoad(busy_rate=1.0, window=5.0, linger=0.0, clock=clock)
    _notes(load, 5)
    assert load.busy()
    pacer = Pacer(load, busy_rate=0.1, patience=0.5)
    try:
        async with InFlight(pacer) as first:
            for waited in (0.5, 3.0):
                started = time.monotonic()
                await _pass(pacer, waited=waited)
                assert time.monotonic() - started < 0.5  # not held for a single polling step
                assert load.busy() and not first.done
    finally:
        _calm(clock)


async def test_zero_patience_never_holds() -> None:
    """With patience 0 nothing is ever held, busy or not: calls overlap freely."""
    load, clock = _controlled_load(busy=True)
    pacer = Pacer(load, busy_rate=RATE, patience=0.0)
    probe = Probe()
    release = asyncio.Event()

    async def one() -> None:
        async with pacer.call():
            probe.enter()
            await release.wait()
            probe.leave()

    tasks = [asyncio.create_task(one()) for _ in range(5)]
    try:
        assert await _wait_until(lambda: probe.active == 5, timeout=0.5)
        assert load.busy()
    finally:
        release.set()
        _calm(clock)
        await _finish(tasks)


async def test_held_call_gives_up_waiting_once_its_patience_runs_out() -> None:
    """A call held behind a long one is let through after about patience, though still busy."""
    load, clock = _controlled_load(busy=True)
    pacer = Pacer(load, busy_rate=RATE, patience=0.5)
    second_in = asyncio.Event()

    async def second() -> None:
        async with pacer.call(waited=0.3):  # 0.2 s of patience left
            second_in.set()

    tasks: list[asyncio.Task[None]] = []
    try:
        async with InFlight(pacer) as first:
            started = time.monotonic()
            tasks.append(asyncio.create_task(second()))
            await asyncio.sleep(0.05)
            assert not second_in.is_set()  # still within its patience: held
            await asyncio.wait_for(second_in.wait(), 2.0)
            assert time.monotonic() - started >= 0.15
            assert load.busy() and not first.done
    finally:
        _calm(clock)
        await _finish(tasks)


async def test_patience_is_real_time_even_when_the_event_loop_lags() -> None:
    """A lagging loop (a storm) stretches every sleep; patience still counts real seconds."""
    load, clock = _controlled_load(busy=True)
    pacer = Pacer(load, busy_rate=RATE, patience=0.2)
    second_in = asyncio.Event()
    lagging = True

    async def second() -> None:
        async with pacer.call():
            second_in.set()

    async def lag() -> None:
        while lagging:
            time.sleep(0.03)  # blocks the loop: every 0.01 s sleep of the pacer lasts ~0.03 s
            await asyncio.sleep(0)

    tasks: list[asyncio.Task[None]] = []
    try:
        async with InFlight(pacer):
            tasks.append(asyncio.create_task(lag()))
            started = time.monotonic()
            tasks.append(asyncio.create_task(second()))
            await asyncio.wait_for(second_in.wait(), 3.0)
            assert time.monotonic() - started < 0.6  # summing the sleeps made it ~9× patience
    finally:
        lagging = False
        _calm(clock)
        await _finish(tasks)


async def test_held_calls_are_released_promptly_when_the_load_calms_down() -> None:
    """Calls held during a storm all go through within moments once the receiver is calm."""
    load, clock = _controlled_load(busy=True)
    # One call a second: held calls must look again every load.window (0.01 s), not sleep
    # out the interval.
    pacer = Pacer(load, busy_rate=1.0, patience=60.0)
    probe = Probe()
    release = asyncio.Event()

    async def one() -> None:
        async with pacer.call():
            probe.enter()
            await release.wait()
            probe.leave()

    tasks = [asyncio.create_task(one()) for _ in range(6)]
    try:
        assert await _wait_until(lambda: probe.active == 1, timeout=1.0)
        await asyncio.sleep(0.05)
        assert probe.active == 1  # the rest are held behind the one in flight
        calmed = time.monotonic()
        _calm(clock)
        assert not load.busy()
        assert await _wait_until(lambda: probe.active == 6, timeout=1.0)
        assert time.monotonic() - calmed < 0.3
        release.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 1.0)
    finally:
        release.set()
        _calm(clock)
        await _finish(tasks)


async def test_failing_call_frees_its_slot() -> None:
    """An exception inside the pacer does not leave it blocked: the next call still gets through."""
    load, clock = _controlled_load(busy=True)
    pacer = Pacer(load, busy_rate=RATE, patience=60.0)

    async def failing() -> None:
        async with pacer.call():
            raise RuntimeError("network down")

    try:
        with pytest.raises(RuntimeError, match="network down"):
            await asyncio.wait_for(failing(), 1.0)
        await _pass(pacer)
    finally:
        _calm(clock)


async def test_cancelled_held_call_does_not_block_later_ones() -> None:
    """Cancelling a call while it is held leaves no phantom call in flight behind it."""
    load, clock = _controlled_load(busy=True)
    pacer = Pacer(load, busy_rate=RATE, patience=60.0)

    async def held() -> None:
        async with pacer.call():
            raise AssertionError("a held call ran although it was cancelled")

    try:
        async with InFlight(pacer) as first:
            victim = asyncio.create_task(held())
            await asyncio.sleep(0.03)
            victim.cancel()
            with pytest.raises(asyncio.CancelledError):
                await victim
            await first.release()

            await _pass(pacer)
    finally:
        _calm(clock)
