"""Crash test: acknowledged agent messages survive a SIGKILL mid-send, once each, in order."""

from __future__ import annotations

from pathlib import Path

from sandbox.meta import SandboxMeta
from sandbox.rocketchat import SandboxRocketChat
from tests.scenarios.outbound_crash import run_crash_experiment


async def test_kill_mid_send_delivers_every_acknowledged_message_once_in_order(
    rocketchat: SandboxRocketChat, meta: SandboxMeta, tmp_path: Path
) -> None:
    """300 messages / 30 rooms, bot killed mid-send and restarted: nothing lost, order kept,
    nothing repeated: the sends in flight at the kill are settled by reading the threads."""
    result = await run_crash_experiment(rocketchat, meta, tmp_path)
    print(result)  # the figures, for the log of a failing run
    assert result.lost == []
    assert result.out_of_order == []
    assert 0 < result.sent_at_kill < result.expected_parts
    assert result.duplicates == 0
    assert result.delivered_parts == result.expected_parts
    # Texts are distinct and threads short: every send in doubt can be settled.
    assert result.unknown == 0
    assert result.settled >= 1  # the kill did land mid-send
