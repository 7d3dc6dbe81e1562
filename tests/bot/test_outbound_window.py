"""Meta's messaging window: 24 h RESPONSE, 7 days HUMAN_AGENT (when enabled), then closed."""

from __future__ import annotations

import pytest

from bot.relay.outbound import window_decision

NOW = 1_800_000_000.0
H = 3600.0


@pytest.mark.parametrize(
    ("age_hours", "human", "tag", "send", "messaging_type", "tag_value", "reason"),
    [
        (1, True, False, True, "RESPONSE", None, ""),
        (24, False, False, True, "RESPONSE", None, ""),
        (30, True, True, True, "MESSAGE_TAG", "HUMAN_AGENT", ""),
        (30, True, False, False, "RESPONSE", None, "tag_disabled"),
        (30, False, True, False, "RESPONSE", None, "human_only"),
        (7 * 24, True, True, True, "MESSAGE_TAG", "HUMAN_AGENT", ""),
        (8 * 24, True, True, False, "RESPONSE", None, "expired"),
        (8 * 24, True, False, False, "RESPONSE", None, "expired"),
    ],
)
def test_window_decision_table(
    age_hours: float, human: bool, tag: bool, send: bool, messaging_type: str,
    tag_value: str | None, reason: str,
) -> None:
    """Each age/sender/setting combination gets the right type, tag or refusal reason."""
    decision = window_decision(NOW - age_hours * H, NOW, human=human, human_agent_tag=tag)
    assert (decision.send, decision.messaging_type, decision.tag, decision.reason) == (
        send, messaging_type, tag_value, reason
    )


def test_unknown_last_inbound_is_left_to_meta() -> None:
    """Without a recorded inbound time we try a RESPONSE and let Meta answer code 10."""
    decision = window_decision(None, NOW, human=False, human_agent_tag=False)
    assert decision.send and decision.messaging_type == "RESPONSE"
