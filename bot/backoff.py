"""Jittered exponential backoff, injectable so tests can use tiny delays.

A backoff is a zero-argument callable returning a fresh iterator of delays (seconds).
The realtime client asks for a new iterator after every healthy connection, which is
how the backoff "resets": the next outage starts again from the initial delay.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from functools import partial

BackoffFactory = Callable[[], Iterator[float]]


def backoff(
    initial: float = 1.0,
    factor: float = 2.0,
    max_delay: float = 60.0,
    jitter: float = 0.5,
    rng: Callable[[], float] = random.random,
) -> Iterator[float]:
    """Yield delays growing by ``factor`` from ``initial`` up to ``max_delay``, forever.

    Each delay is scaled down by a random amount of up to ``jitter`` (0 = none,
    1 = "full jitter"), so many bots restarted together do not reconnect in lockstep.
    ``rng`` returns a float in [0, 1); inject a fixed one for deterministic tests.
    """
    if initial < 0 or max_delay < 0 or factor < 1 or not 0 <= jitter <= 1:
        raise ValueError("backoff needs initial, max_delay >= 0, factor >= 1, 0 <= jitter <= 1")
    delay = min(initial, max_delay)
    while True:
        yield delay * (1.0 - jitter * rng())
        delay = min(delay * factor, max_delay)


def exponential_backoff(
    initial: float = 1.0,
    factor: float = 2.0,
    max_delay: float = 60.0,
    jitter: float = 0.5,
    rng: Callable[[], float] = random.random,
) -> BackoffFactory:
    """A backoff factory with these parameters (what RealtimeClient's ``backoff`` takes)."""
    return partial(backoff, initial, factor, max_delay, jitter, rng)


default_backoff: BackoffFactory = exponential_backoff()
