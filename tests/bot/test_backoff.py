"""Jittered exponential backoff."""

from __future__ import annotations

import itertools
import random

import pytest

from bot.backoff import backoff, default_backoff, exponential_backoff


def _take(it, n):
    return list(itertools.islice(it, n))


def test_without_jitter_delays_grow_geometrically_to_the_cap():
    """Delays multiply by the factor and stop at max_delay."""
    delays = _take(backoff(initial=1, factor=2, max_delay=10, jitter=0), 7)
    assert delays == [1, 2, 4, 8, 10, 10, 10]


def test_jitter_keeps_delays_within_bounds():
    """Jittered delays stay within [delay*(1-jitter), delay]."""
    rng = random.Random(42).random
    nominal = _take(backoff(initial=0.5, factor=3, max_delay=30, jitter=0), 50)
    jittered = _take(backoff(initial=0.5, factor=3, max_delay=30, jitter=0.5, rng=rng), 50)
    for nom, got in zip(nominal, jittered, strict=True):
        assert nom * 0.5 <= got <= nom


def test_jitter_spreads_simultaneous_clients():
    """Two clients with different randomness do not retry in lockstep."""
    a = _take(backoff(jitter=1.0, rng=random.Random(1).random), 5)
    b = _take(backoff(jitter=1.0, rng=random.Random(2).random), 5)
    assert a != b


def test_injected_rng_makes_delays_deterministic():
    """A fixed rng gives exactly reproducible delays."""
    delays = _take(backoff(initial=2, factor=2, max_delay=100, jitter=0.5, rng=lambda: 1.0), 3)
    assert delays == [1.0, 2.0, 4.0]


def test_new_iterator_starts_again_from_initial_delay():
    """Reset = ask the factory for a fresh iterator; it restarts at the initial delay."""
    factory = exponential_backoff(initial=0.25, factor=2, max_delay=8, jitter=0)
    first = factory()
    assert _take(first, 4) == [0.25, 0.5, 1.0, 2.0]
    assert next(factory()) == 0.25
    assert next(first) == 4.0


def test_default_backoff_is_a_factory_of_positive_delays():
    """The default factory yields positive delays capped at a minute."""
    delays = _take(default_backoff(), 20)
    assert all(0 < d <= 60 for d in delays)


@pytest.mark.parametrize(
    "kwargs",
    [{"initial": -1}, {"factor": 0.5}, {"jitter": 1.5}, {"jitter": -0.1}, {"max_delay": -1}],
)
def test_invalid_parameters_rejected(kwargs):
    """Nonsensical parameters raise ValueError on first use."""
    with pytest.raises(ValueError):
        next(backoff(**kwargs))
