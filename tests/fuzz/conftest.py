"""Hypothesis profiles for the fuzzers, and a helper to run a property against a live bot.

``ci`` (the default) keeps every fuzz test to a few seconds; ``HYPOTHESIS_PROFILE=long``
runs many more examples locally. The profiles are applied with ``@FUZZ`` rather than
``settings.load_profile`` so the other test packages keep their own settings.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import HealthCheck, settings

from sandbox.meta import SandboxMeta
from sandbox.rocketchat import SandboxRocketChat
from tests.scenarios.harness import Bridge, running_bridge

_SLOW_CHECKS = [HealthCheck.too_slow, HealthCheck.data_too_large,
                HealthCheck.function_scoped_fixture]
settings.register_profile(
    "ci", max_examples=80, deadline=None, suppress_health_check=_SLOW_CHECKS,
    print_blob=True,
)
settings.register_profile(
    "long", max_examples=2000, deadline=None, suppress_health_check=_SLOW_CHECKS,
    print_blob=True,
)
settings.register_profile(
    "dev", max_examples=20, deadline=None, suppress_health_check=_SLOW_CHECKS,
)

#: The chosen profile, as a decorator: ``@FUZZ`` above ``@given``.
FUZZ = settings(settings.get_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci")))


def scaled(examples: int) -> settings:
    """``FUZZ`` with ``examples`` examples in CI (costly properties), the profile's count else."""
    profile = os.environ.get("HYPOTHESIS_PROFILE", "ci")
    if profile != "ci":
        return FUZZ
    return settings(FUZZ, max_examples=examples)


T = TypeVar("T")


class LoopBridge:
    """Runs coroutines on the test's event loop from the Hypothesis thread.

    A property is a plain sync function run in a worker thread (``asyncio.to_thread``)
    while the bot keeps serving on the test's loop: one bot serves every example.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30.0) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)


async def run_property(prop: Callable[[], None]) -> None:
    """Run a Hypothesis-decorated ``prop()`` off the event loop (it uses a LoopBridge)."""
    await asyncio.to_thread(prop)


# --- a running bridge (same as tests/scenarios), tuned so the queues drain quickly ------


@pytest.fixture
async def bridge(
    rocketchat: SandboxRocketChat, meta: SandboxMeta, tmp_path: Path
) -> AsyncIterator[Bridge]:
    """A running Bot against both sandboxes; echoes are not held back for a grace period."""
    async with running_bridge(rocketchat, meta, tmp_path) as running:
        running.bot.inbound.echo_grace = 0.0
        running.meta.set_webhook(None)  # the fuzzer alone talks to the receiver
        yield running


def internal_errors(bridge: Bridge, records: list[logging.LogRecord]) -> list[str]:
    """Everything that says a worker or handler met a bug: retries and ERROR lines."""
    found = []
    for queue in ("inbound", "outbound"):
        value = bridge.bot.metrics.registry.get_sample_value(
            "rcig_retries_total", {"queue": queue, "reason": "internal error"}
        )
        if value:
            found.append(f"{queue}: {value:.0f} internal-error retries")
    found += [f"{r.levelname} {r.name}: {r.getMessage()}" for r in records
              if r.levelno >= logging.ERROR and (r.name.startswith(("bot", "commands", "aiohttp")))]
    return found


async def pending(bridge: Bridge) -> dict[str, list[str]]:
    """Pending items per queue with their last error (diagnostics for a stuck drain)."""
    store = bridge.bot.store
    out: dict[str, list[str]] = {}
    for queue in ("inbound", "outbound"):
        index = store._queues[queue]  # type: ignore[attr-defined]  # diagnostics only
        for conversation in list(index.conversations()):
            for item in await store.pending_items(queue, conversation):  # type: ignore[arg-type]
                out.setdefault(queue, []).append(
                    f"{item.item_id} ({item.kind}) attempts={item.attempts} "
                    f"last_error={item.last_error!r}"
                )
    return out
