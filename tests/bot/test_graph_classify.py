"""Meta error envelopes → the project's Graph exception types (no network)."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from bot.instagram.graph import (
    GraphAuthError,
    GraphConfigError,
    GraphIncident,
    GraphPermanent,
    GraphRetryable,
    GraphThrottled,
    GraphWindowClosed,
    MetaHealth,
    appsecret_proof,
    classify,
)


def _envelope(code: int, subcode: int | None = None, message: str = "boom") -> dict:
    err: dict = {"message": message, "type": "OAuthException", "code": code, "fbtrace_id": "T1"}
    if subcode is not None:
        err["error_subcode"] = subcode
    return {"error": err}


@pytest.mark.parametrize(
    ("status", "body", "expected"),
    [
        (400, _envelope(4), GraphThrottled),
        (400, _envelope(17), GraphThrottled),
        (400, _envelope(32), GraphThrottled),
        (400, _envelope(613), GraphThrottled),
        (400, _envelope(80002), GraphThrottled),
        (500, _envelope(1), GraphIncident),
        (500, _envelope(2), GraphIncident),
        (400, _envelope(1200), GraphRetryable),
        (503, None, GraphRetryable),
        (502, _envelope(100), GraphIncident),
        (400, _envelope(100, None, "Unsupported request - method type: post"), GraphIncident),
        (400, _envelope(100, 33, "Unsupported get request. Object with ID '1' does not exist"),
         GraphPermanent),
        (400, _envelope(190, 463), GraphAuthError),
        (500, _envelope(190), GraphAuthError),
        (400, _envelope(10, 2534022), GraphWindowClosed),
        (400, _envelope(10, 2018278), GraphWindowClosed),
        (400, _envelope(10, None, "(#10) This message is sent outside of allowed window."),
         GraphWindowClosed),
        (400, _envelope(10, None, "(#10) Application does not have permission for this action"),
         GraphConfigError),
        (400, _envelope(3, None, "(#3) Application does not have the capability"),
         GraphConfigError),
        (400, _envelope(100, 2018001), GraphPermanent),
        (403, _envelope(200), GraphConfigError),
        (400, _envelope(551, 1545041), GraphPermanent),
        (400, _envelope(36103), GraphPermanent),
        (404, "not json", GraphPermanent),
    ],
)
def test_error_classification(status: int, body: object, expected: type) -> None:
    """Throttling/transient/5xx retry, 190 needs re-auth, everything else is permanent."""
    exc = classify(status, body, call="GET /x")
    assert type(exc) is expected
    assert exc.status == status


def test_code_10_without_window_subcode_is_not_window_closed() -> None:
    """Code 10 is a permission family: without 2534022/2018278 it is a config problem."""
    exc = classify(400, _envelope(10, 2018065, "(#10) Requires pages_messaging permission"))
    assert isinstance(exc, GraphConfigError) and not isinstance(exc, GraphWindowClosed)
    assert exc.kind == "10/2018065"


def test_meta_health_degraded_until_a_call_succeeds() -> None:
    """An incident marks Meta degraded; a success or the window's end clears it."""
    now = [0.0]
    health = MetaHealth(window=60.0, clock=lambda: now[0])
    assert not health.degraded
    health.incident()
    assert health.degraded
    now[0] = 1.0
    health.ok()
    assert not health.degraded
    health.incident()
    now[0] = 62.0
    assert not health.degraded


def test_error_carries_code_subcode_and_call() -> None:
    """The exception exposes Meta's code, subcode and trace id and names the call."""
    exc = classify(400, _envelope(190, 463, "Session has expired"), call="GET /me/accounts")
    assert (exc.code, exc.subcode, exc.fbtrace_id) == (190, 463, "T1")
    assert str(exc) == "GET /me/accounts code 190/463: Session has expired"


def test_token_echoed_by_meta_is_scrubbed_from_message() -> None:
    """A token Meta quotes back in its message never reaches str(exception)."""
    token = "EAABsecretTOKEN123"
    exc = classify(400, _envelope(190, message=f"Malformed access token {token}"),
                   secrets=(token,))
    assert token not in str(exc)
    assert "***" in str(exc)


def test_appsecret_proof_is_hmac_sha256_of_token() -> None:
    """appsecret_proof = hex HMAC-SHA256(key=app secret, msg=token)."""
    expected = hmac.new(b"s3cret", b"tok", hashlib.sha256).hexdigest()
    assert appsecret_proof("tok", "s3cret") == expected


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [(400, 1, GraphPermanent), (400, 100, GraphPermanent), (500, 1, GraphIncident)],
)
def test_refused_token_exchange_is_not_retried(status: int, code: int, expected: type) -> None:
    """A 4xx from oauth/access_token (wrong app secret answers code 1) is permanent."""
    error = classify(
        status,
        _envelope(code, message="Error validating client secret."),
        call="POST /oauth/access_token (code)",
    )
    assert type(error) is expected
