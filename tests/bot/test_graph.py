"""GraphClient against the sandbox Meta over loopback: calls, proofs, errors, retries."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest

from bot.instagram.graph import (
    GraphAuthError,
    GraphClient,
    GraphPermanent,
    GraphRetryable,
    GraphThrottled,
)
from sandbox.meta import DEFAULT_IG_ID, DEFAULT_IG_USERNAME, DEFAULT_PAGE_ID, SandboxMeta
from tests.scenarios.harness import APP_SECRET

REDIRECT = "http://127.0.0.1:9/oauth/callback"


@pytest.fixture
async def graph(meta: SandboxMeta) -> AsyncIterator[GraphClient]:
    """A client with instant retries (backoff 0) so retry tests take no time."""
    client = GraphClient(
        meta.graph_url, meta.api_version, meta.app_id, APP_SECRET, backoff=lambda attempt: 0.0
    )
    try:
        yield client
    finally:
        await client.close()


def _code(meta: SandboxMeta) -> str:
    """Approve a login in the sandbox dialog and return the code it redirects with."""
    query = urlencode(
        {
            "client_id": meta.app_id,
            "redirect_uri": REDIRECT,
            "state": "s",
            "scope": "instagram_basic,instagram_manage_messages,pages_manage_metadata,"
            "pages_show_list,pages_read_engagement",
        }
    )
    location = meta.approve_url(f"{meta.dialog_url}/{meta.api_version}/dialog/oauth?{query}")
    return parse_qs(urlsplit(location).query)["code"][0]


async def _user_token(meta: SandboxMeta, graph: GraphClient) -> str:
    short = await graph.exchange_code(_code(meta), REDIRECT)
    return await graph.long_lived_user_token(short)


def _assert_all_token_calls_proved(meta: SandboxMeta) -> None:
    token_calls = [c for c in meta.calls() if c["token_kind"] in ("user", "page")]
    assert token_calls
    assert all(c["had_proof"] and c["proof_valid"] for c in token_calls), token_calls


async def test_login_pages_subscribe_unsubscribe_revoke_round_trip(
    meta: SandboxMeta, graph: GraphClient
) -> None:
    """The whole connect/disconnect sequence works and every token call carries a valid proof."""
    user_token = await _user_token(meta, graph)
    pages = await graph.pages(user_token)
    assert [p["id"] for p in pages] == [DEFAULT_PAGE_ID]
    page = pages[0]
    assert page["instagram_business_account"] == {
        "id": DEFAULT_IG_ID, "username": DEFAULT_IG_USERNAME,
    }
    page_token = page["access_token"]

    await graph.subscribe_page(DEFAULT_PAGE_ID, page_token)
    assert meta.subscription(DEFAULT_PAGE_ID) == ["feed"]
    apps = await graph.subscribed_apps(DEFAULT_PAGE_ID, page_token)
    assert apps[0]["id"] == meta.app_id
    await graph.unsubscribe_page(DEFAULT_PAGE_ID, page_token)
    assert meta.subscription(DEFAULT_PAGE_ID) is None

    await graph.revoke_login(user_token)
    assert meta.is_revoked(user_token)
    _assert_all_token_calls_proved(meta)


async def test_page_without_instagram_is_listed_without_account(
    meta: SandboxMeta, graph: GraphClient
) -> None:
    """A Page with no linked Instagram account comes back without instagram_business_account."""
    meta.set_login_user("Two Pages", pages=[
        {"id": "201", "name": "Linked",
         "instagram_business_account": {"id": "17841", "username": "a"}},
        {"id": "202", "name": "Unlinked"},
    ])
    pages = await graph.pages(await _user_token(meta, graph))
    by_id = {p["id"]: p for p in pages}
    assert "instagram_business_account" in by_id["201"]
    assert "instagram_business_account" not in by_id["202"]
    assert by_id["202"]["access_token"]


async def test_reused_code_is_permanent_and_not_retried(
    meta: SandboxMeta, graph: GraphClient
) -> None:
    """A code can be exchanged once; the second exchange is a permanent error, sent once."""
    code = _code(meta)
    await graph.exchange_code(code, REDIRECT)
    meta.clear_records()
    with pytest.raises(GraphPermanent) as info:
        await graph.exchange_code(code, REDIRECT)
    assert info.value.code == 100
    assert code not in str(info.value)
    assert len(meta.calls()) == 1


async def test_expired_page_token_raises_auth_error(meta: SandboxMeta, graph: GraphClient) -> None:
    """Code 190 (expired/revoked token) maps to GraphAuthError, without retries."""
    token = meta.issue_page_token(DEFAULT_PAGE_ID)
    meta.expire_token(DEFAULT_PAGE_ID)
    meta.clear_records()
    with pytest.raises(GraphAuthError) as info:
        await graph.subscribe_page(DEFAULT_PAGE_ID, token)
    assert (info.value.code, info.value.subcode) == (190, 463)
    assert token not in str(info.value)
    assert len(meta.calls()) == 1


async def test_throttling_is_retried_until_success(meta: SandboxMeta, graph: GraphClient) -> None:
    """Throttling codes are retried with backoff; the call succeeds once Meta lets it through."""
    token = meta.issue_page_token(DEFAULT_PAGE_ID)
    meta.inject_errors("subscribed_apps", [613, 32])
    await graph.subscribe_page(DEFAULT_PAGE_ID, token)
    statuses = [c["error_code"] for c in meta.calls() if c["path"].endswith("subscribed_apps")]
    assert statuses == [613, 32, None]


async def test_retries_are_bounded(meta: SandboxMeta, graph: GraphClient) -> None:
    """After the configured retries the last throttling error is raised."""
    token = meta.issue_page_token(DEFAULT_PAGE_ID)
    meta.inject_errors("subscribed_apps", [4, 17, 4, 4])
    with pytest.raises(GraphThrottled) as info:
        await graph.subscribed_apps(DEFAULT_PAGE_ID, token)
    assert info.value.code == 4
    assert len(meta.calls()) == 1 + graph.retries


@pytest.mark.parametrize("code", [100, 200, 10])
async def test_permanent_errors_are_not_retried(
    meta: SandboxMeta, graph: GraphClient, code: int
) -> None:
    """Permanent errors surface at once as GraphPermanent."""
    token = meta.issue_page_token(DEFAULT_PAGE_ID)
    meta.inject_errors("subscribed_apps", [code])
    with pytest.raises(GraphPermanent):
        await graph.subscribed_apps(DEFAULT_PAGE_ID, token)
    assert len(meta.calls()) == 1


async def test_send_retries_throttling_but_not_transient_failures(
    meta: SandboxMeta, graph: GraphClient
) -> None:
    """Send API: a refused (throttled) send is retried; a 5xx-style 1200 is left to the caller."""
    token = meta.issue_page_token(DEFAULT_PAGE_ID)
    igsid = meta.new_igsid()
    meta.set_last_inbound(DEFAULT_PAGE_ID, igsid)
    meta.inject_send_errors(igsid, [613])
    mid = await graph.send_message(DEFAULT_PAGE_ID, token, igsid, {"text": "hello"})
    assert meta.sent_messages(recipient=igsid, ok=True)[0]["message_id"] == mid

    meta.inject_send_errors(igsid, [1200])
    with pytest.raises(GraphRetryable) as info:
        await graph.send_message(DEFAULT_PAGE_ID, token, igsid, {"text": "again"})
    assert info.value.code == 1200
    assert len(meta.sent_messages(recipient=igsid)) == 3
    assert all(s["had_proof"] and s["proof_valid"] for s in meta.sent_messages())


async def test_a_retry_is_counted_only_when_made(meta: SandboxMeta) -> None:
    """``on_retry`` (the retries metric) counts a throttled send retried here; one its
    caller no longer wants is handed back uncounted, since the caller counts its own."""
    retried: list[str] = []
    client = GraphClient(meta.graph_url, meta.api_version, meta.app_id, APP_SECRET,
                         backoff=lambda attempt: 0.0,
                         on_retry=lambda call, exc: retried.append(call))
    token = meta.issue_page_token(DEFAULT_PAGE_ID)
    igsid = meta.new_igsid()
    meta.set_last_inbound(DEFAULT_PAGE_ID, igsid)

    async def wanted() -> bool:
        return True

    async def given_up() -> bool:
        return False

    try:
        meta.inject_send_errors(igsid, [613])
        await client.send_message(DEFAULT_PAGE_ID, token, igsid, {"text": "a"},
                                  still_wanted=wanted)
        assert retried == [f"POST /{DEFAULT_PAGE_ID}/messages"]
        meta.inject_send_errors(igsid, [4])
        with pytest.raises(GraphThrottled):
            await client.send_message(DEFAULT_PAGE_ID, token, igsid, {"text": "b"},
                                      still_wanted=given_up)
        assert len(retried) == 1
        assert len(meta.sent_messages(recipient=igsid, ok=False)) == 2
    finally:
        await client.close()


async def test_send_with_human_agent_tag(meta: SandboxMeta, graph: GraphClient) -> None:
    """A MESSAGE_TAG/HUMAN_AGENT send reaches a visitor outside the 24-hour window."""
    token = meta.issue_page_token(DEFAULT_PAGE_ID)
    igsid = meta.new_igsid()
    meta.set_last_inbound(DEFAULT_PAGE_ID, igsid, meta.now() - 3 * 86400)
    with pytest.raises(GraphPermanent) as info:
        await graph.send_message(DEFAULT_PAGE_ID, token, igsid, {"text": "late"})
    assert info.value.code == 10
    await graph.send_message(
        DEFAULT_PAGE_ID, token, igsid, {"text": "late"},
        messaging_type="MESSAGE_TAG", tag="HUMAN_AGENT",
    )
    assert meta.sent_messages(recipient=igsid, ok=True)[0]["body"]["tag"] == "HUMAN_AGENT"


async def test_profile_fields_and_missing_consent(meta: SandboxMeta, graph: GraphClient) -> None:
    """Profile returns name/username; no consent (230) is a permanent error."""
    token = meta.issue_page_token(DEFAULT_PAGE_ID)
    meta.set_profile("111", name="Ana Souza", username="ana.souza")
    profile = await graph.profile("111", token)
    assert (profile["name"], profile["username"]) == ("Ana Souza", "ana.souza")
    with pytest.raises(GraphPermanent) as info:
        await graph.profile("222", token)
    assert info.value.code == 230


async def test_app_token_and_debug_token(meta: SandboxMeta, graph: GraphClient) -> None:
    """debug_token (with a cached app token) reports a page token's validity."""
    token = meta.issue_page_token(DEFAULT_PAGE_ID)
    data = await graph.debug_token(token)
    assert data["is_valid"] is True
    assert data["profile_id"] == DEFAULT_PAGE_ID
    await graph.debug_token(token)
    grants = [c for c in meta.calls() if c["path"].endswith("/oauth/access_token")]
    assert len(grants) == 1


async def test_timeout_is_retryable_and_names_no_token(meta: SandboxMeta) -> None:
    """A slow Meta times out as GraphRetryable whose text holds no token or URL query."""
    token = meta.issue_page_token(DEFAULT_PAGE_ID)
    meta.set_latency(0.5)
    client = GraphClient(
        meta.graph_url, meta.api_version, meta.app_id, APP_SECRET, timeout=0.1, retries=0
    )
    try:
        with pytest.raises(GraphRetryable) as info:
            await client.subscribed_apps(DEFAULT_PAGE_ID, token)
    finally:
        await client.close()
    assert "timed out" in str(info.value)
    assert token not in str(info.value) and "appsecret_proof" not in str(info.value)


async def test_unreachable_meta_is_retryable() -> None:
    """Connection refused is a GraphRetryable network error, after the bounded retries."""
    client = GraphClient("http://127.0.0.1:9", "v21.0", "1", APP_SECRET, retries=1,
                         backoff=lambda attempt: 0.0)
    try:
        with pytest.raises(GraphRetryable) as info:
            await client.subscribed_apps("1", "EAAsecret-page-token")
    finally:
        await client.close()
    assert info.value.code is None
    assert "EAAsecret-page-token" not in str(info.value)


async def test_no_token_or_secret_in_any_log_line(
    meta: SandboxMeta, graph: GraphClient, caplog: pytest.LogCaptureFixture
) -> None:
    """Even at DEBUG (urllib3 included), no token, code or app secret is ever logged."""
    caplog.set_level(logging.DEBUG)
    code = _code(meta)
    short = await graph.exchange_code(code, REDIRECT)
    user_token = await graph.long_lived_user_token(short)
    page_token = (await graph.pages(user_token))[0]["access_token"]
    meta.inject_errors("subscribed_apps", [613])
    await graph.subscribe_page(DEFAULT_PAGE_ID, page_token)
    meta.expire_token(DEFAULT_PAGE_ID)
    with pytest.raises(GraphAuthError):
        await graph.unsubscribe_page(DEFAULT_PAGE_ID, page_token)
    assert "bot.graph" in caplog.text
    for secret in (code, short, user_token, page_token, APP_SECRET):
        assert secret not in caplog.text
