"""The REST wrapper against the sandbox Rocket.Chat: auth, 429, encoding, idempotency, errors."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import pytest

from bot.rocketchat.rest import (
    AuthenticationFailed,
    InvalidVisitor,
    NoAgentOnline,
    NotAllowed,
    NotStored,
    RateLimited,
    RocketChatError,
    RocketChatREST,
    RoomClosed,
    RouteMissing,
    Unavailable,
    classify,
)
from tests.scenarios.harness import every_rc_version

from .conftest import BOT_PASSWORD

# --- pure error mapping -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "error_type", "error", "expected"),
    [
        (429, "error-too-many-requests", None, RateLimited),
        (400, None, "Error, too many requests. [error-too-many-requests]", RateLimited),
        (400, "no-agent-online", "Sorry, no online agents [no-agent-online]", NoAgentOnline),
        (400, None, "Sorry, no online agents [no-agent-online]", NoAgentOnline),
        (400, None, "room-closed", RoomClosed),
        (400, None, "invalid-room", RoomClosed),
        (400, None, "invalid-token", InvalidVisitor),
        (400, "error-invalid-token", "Token cannot be empty", InvalidVisitor),
        (400, "error-not-allowed", "Not allowed", NotAllowed),
        (403, None, None, NotAllowed),
        (401, None, "You must be logged in to do this.", AuthenticationFailed),
        (502, None, None, Unavailable),
        (500, None, "Internal server error", Unavailable),
        (400, "error-invalid-params", "bad", RocketChatError),
    ],
)
def test_error_classification_table(status, error_type, error, expected):
    """Server error codes and statuses map to the project's exception types."""
    exc = classify("some/route", status=status, error_type=error_type, error=error)
    assert type(exc) is expected
    assert exc.status == status
    assert str(exc).startswith("some/route: ")


def test_rate_limited_carries_reset_time():
    """RateLimited exposes reset_at in epoch seconds."""
    exc = classify("r", status=429, error_type="error-too-many-requests", reset_at=1234.5)
    assert isinstance(exc, RateLimited) and exc.reset_at == 1234.5


# --- authentication -----------------------------------------------------------------------


async def test_password_login_returns_user_id_and_token(rocketchat, people, rest):
    """Password login yields the user id and a token that works for authed routes."""
    user_id, token = await rest.login()
    assert user_id == people["bot"] and token
    me = await rest.me()
    assert me["username"] == "instagram.bot"
    assert "livechat-manager" in me["roles"]


async def test_wrong_password_raises_authentication_failed_without_secret(rocketchat, people):
    """A wrong password is AuthenticationFailed; the message has no password in it."""
    async with RocketChatREST(rocketchat.url, user="instagram.bot", password="nope-Secret") as r:
        with pytest.raises(AuthenticationFailed) as caught:
            await r.login()
        assert "nope-Secret" not in str(caught.value)


async def test_personal_access_token_is_verified_via_me(rocketchat, people):
    """user_id + PAT logs in (checked with /me); a bad PAT is AuthenticationFailed."""
    pat = rocketchat.create_personal_access_token("instagram.bot")
    async with RocketChatREST(rocketchat.url, user_id=people["bot"], token=pat) as good:
        assert await good.login() == (people["bot"], pat)
        assert good.username == "instagram.bot"
    async with RocketChatREST(rocketchat.url, user_id=people["bot"], token="forged") as bad:
        with pytest.raises(AuthenticationFailed) as caught:
            await bad.login()
        assert "forged" not in str(caught.value)


async def test_calls_log_in_lazily(rocketchat, people, rest):
    """An authed call without an explicit login() logs in first."""
    assert (await rest.me())["_id"] == people["bot"]


# --- rate limiting --------------------------------------------------------------------------


def _limit(rocketchat, calls: int, window_ms: int) -> None:
    rocketchat.set_setting("API_Enable_Rate_Limiter", True)
    rocketchat.set_setting("API_Enable_Rate_Limiter_Limit_Calls_Default", calls)
    rocketchat.set_setting("API_Enable_Rate_Limiter_Limit_Time_Default", window_ms)


async def test_429_waits_for_reset_then_succeeds(rocketchat, rest):
    """Past the limit the call waits until X-RateLimit-Reset and then succeeds."""
    _limit(rocketchat, calls=2, window_ms=800)
    started = time.monotonic()
    results = [await rest.server_info() for _ in range(3)]
    elapsed = time.monotonic() - started
    assert all(r["success"] for r in results)
    assert 0.5 < elapsed < 3.0
    assert rocketchat.call_counts()["info"] == 4  # one 429, then the retry


async def test_429_beyond_rate_limit_wait_raises_rate_limited(rocketchat, people):
    """A reset further away than rate_limit_wait raises RateLimited with reset_at."""
    _limit(rocketchat, calls=1, window_ms=30_000)
    async with RocketChatREST(rocketchat.url, rate_limit_wait=0.5) as r:
        await r.server_info()
        started = time.time()
        with pytest.raises(RateLimited) as caught:
            await r.server_info()
    assert time.time() - started < 0.5
    assert started + 25 < caught.value.reset_at < started + 31
    assert caught.value.status == 429


async def test_bot_role_bypasses_the_limiter(rocketchat, rest):
    """Authed calls by a user with api-bypass-rate-limit (role bot) are never limited."""
    _limit(rocketchat, calls=1, window_ms=30_000)
    for _ in range(5):
        await rest.me()


# --- encoding ---------------------------------------------------------------------------------


async def test_query_values_with_plus_ampersand_and_space_are_encoded(rocketchat, rest):
    """A visitor token with '+', '&', '=', '#' and spaces survives the livechat/room query."""
    rocketchat.set_setting("Livechat_accept_chats_with_no_agents", True)
    token = "instagram-1+2&token=x y#z"
    await rest.register_visitor(token, "Jane")
    room, new = await rest.open_room(token)
    assert new is True
    assert room["v"]["token"] == token
    again, new_again = await rest.open_room(token)
    assert (again["_id"], new_again) == (room["_id"], False)


async def test_dates_in_queries_are_encoded(rocketchat, channel, rest):
    """subscriptions_since / sync_messages send ISO dates the server parses."""
    before = datetime.now(UTC) - timedelta(seconds=1)
    msg = rocketchat.post_message("alice", channel, "hello")
    subs = await rest.subscriptions_since(before)
    assert channel in {s["rid"] for s in subs}
    synced = await rest.sync_messages(channel, before)
    assert [m["_id"] for m in synced] == [msg["_id"]]
    assert await rest.sync_messages(channel, datetime.now(UTC) + timedelta(seconds=5)) == []


# --- messages ---------------------------------------------------------------------------------


async def test_send_dm_is_idempotent_with_same_msg_id(rocketchat, people, rest):
    """Sending the same msg_id twice stores one message and returns it both times."""
    first = await rest.send_dm("boss", "Your link: https://example.org/?a=1&b=2", msg_id="fixed-1")
    second = await rest.send_dm("boss", "Your link: https://example.org/?a=1&b=2", msg_id="fixed-1")
    assert first["_id"] == second["_id"] == "fixed-1"
    messages = rocketchat.dm_messages("instagram.bot", "boss")
    assert [m["_id"] for m in messages] == ["fixed-1"]
    assert messages[0]["msg"] == "Your link: https://example.org/?a=1&b=2"


async def test_send_dm_without_msg_id_generates_one(rocketchat, people, rest):
    """Without msg_id every call is a new message with a fresh client id."""
    a = await rest.send_dm("boss", "one")
    b = await rest.send_dm("boss", "two")
    assert a["_id"] != b["_id"]
    assert [m["msg"] for m in rocketchat.dm_messages("instagram.bot", "boss")] == ["one", "two"]


async def test_send_dm_reuses_the_dm_room(rocketchat, people, rest):
    """dm.create is called once per username."""
    await rest.send_dm("boss", "one")
    await rest.send_dm("boss", "two")
    assert rocketchat.call_counts()["dm.create"] == 1


async def test_lost_response_retry_does_not_duplicate(rocketchat, people, rest):
    """A 5xx after the server stored the message, then a retry: still one message."""
    await rest.dm_room("boss")
    rocketchat.fail_rest(502, routes=["chat.sendMessage"], until=0.3, after_processing=True)
    sent = await rest.send_message(await rest.dm_room("boss"), "exactly once", msg_id="lost-1")
    assert sent["_id"] == "lost-1"
    assert [m["_id"] for m in rocketchat.dm_messages("instagram.bot", "boss")] == ["lost-1"]


async def test_server_down_is_unavailable(rocketchat, people, rest):
    """Persistent 503s surface as Unavailable."""
    await rest.login()
    rocketchat.fail_rest(503)
    with pytest.raises(Unavailable):
        await rest.me()


async def test_connection_refused_is_unavailable():
    """Nothing listening: Unavailable, with no URL query in the message."""
    async with RocketChatREST("http://127.0.0.1:9", user="u", password="secret-pw") as r:
        with pytest.raises(Unavailable) as caught:
            await r.server_info()
    assert "secret-pw" not in str(caught.value)


# --- roles and settings -----------------------------------------------------------------------


async def test_user_roles_from_public_roles_and_cached(rocketchat, people):
    """Roles come from getUsersInPublicRoles, cached ~30 s (injectable clock)."""
    now = [1000.0]
    async with RocketChatREST(
        rocketchat.url, user="instagram.bot", password=BOT_PASSWORD, clock=lambda: now[0]
    ) as r:
        assert "admin" in await r.user_roles(people["admin"])
        assert await r.user_roles(people["alice"]) == set()
        rocketchat.set_role("alice", ["user", "admin"])
        assert await r.user_roles(people["alice"]) == set()  # cached
        now[0] += 31
        assert "admin" in await r.user_roles(people["alice"])
        assert await r.users_with_roles(["admin"]) == ["alice", "boss"]
    assert rocketchat.call_counts()["roles.getUsersInPublicRoles"] == 2


async def test_public_setting_readable_without_admin_rights(rocketchat, people, rest):
    """A public setting is read through settings.public when settings/<id> is forbidden."""
    assert await rest.get_setting("Message_AllowUnrecognizedSlashCommand") is False
    rocketchat.set_setting("Message_AllowUnrecognizedSlashCommand", True)
    assert await rest.get_setting("Message_AllowUnrecognizedSlashCommand") is True


@every_rc_version
async def test_public_setting_found_past_the_first_page(rocketchat, people, rest, rc_version):
    """settings.public ignores _id up to 7.0 (first page, sorted by _id): the wrapper pages
    on until the setting shows up; newer 7.x filters, so one call does."""
    for n in range(150):
        rocketchat.set_setting(f"A_Filler_{n:03d}", n, public=True)
    rocketchat.set_setting("Message_AllowUnrecognizedSlashCommand", True)
    assert await rest.get_setting("Message_AllowUnrecognizedSlashCommand") is True
    calls = rocketchat.call_counts()["settings.public"]
    assert calls >= 2 if rc_version < "7.1" else calls == 1


@pytest.mark.parametrize("rc_version", ["6.13.0"], indirect=True)
async def test_html_200_is_route_missing(rocketchat, people, rest):
    """A 6.x server answers a route it lacks with its HTML app page and 200: that is
    RouteMissing (naming the route), not an AttributeError deep in a caller."""
    with pytest.raises(RouteMissing) as caught:
        await rest.user_roles(people["admin"])
    assert caught.value.status == 200
    assert "roles.getUsersInPublicRoles" in str(caught.value)


async def test_bot_accounts_come_from_users_list_paged_and_cached(rocketchat, people):
    """bot_accounts pages users.list (roles in its default projection), cached ~5 min."""
    for n in range(120):
        rocketchat.create_user(f"filler{n:03d}", "pw", roles=["user"], join_default=False)
    helper = rocketchat.create_user("zz.helper", "pw", roles=["bot"], join_default=False)
    now = [1000.0]
    async with RocketChatREST(
        rocketchat.url, user="instagram.bot", password=BOT_PASSWORD, clock=lambda: now[0]
    ) as r:
        assert await r.bot_accounts() == {people["bot"], helper}
        rocketchat.set_role("zz.helper", ["user"])
        assert helper in await r.bot_accounts()  # cached
        now[0] += 301
        assert await r.bot_accounts() == {people["bot"]}
    assert rocketchat.call_counts()["users.list"] == 4  # two pages, twice


@every_rc_version
async def test_bot_accounts_without_view_d_room_is_an_error_not_a_guess(rocketchat, people, rest):
    """users.list refused (``unauthorized``: 403 up to 7.0, 401 in newer 7.x) raises
    NotAllowed in both, instead of answering "no bots" or forcing a fresh login."""
    rocketchat.set_permission("view-d-room", ["admin"])
    with pytest.raises(NotAllowed):
        await rest.bot_accounts()
    assert rocketchat.call_counts().get("login", 0) == 1


async def test_private_setting_is_not_allowed(rocketchat, people, rest):
    """A private setting the bot cannot read raises NotAllowed."""
    with pytest.raises(NotAllowed):
        await rest.get_setting("Livechat_secret_token")


async def test_departments_listed(rocketchat, people, rest):
    """livechat/department lists what exists."""
    dep = rocketchat.create_department("Sales")
    assert [d["_id"] for d in await rest.departments()] == [dep]


# --- livechat ---------------------------------------------------------------------------------


@pytest.fixture
def agent(rocketchat, people):
    """An online livechat agent."""
    rocketchat.create_user("agent.smith", "agent-pw", roles=["user", "livechat-agent"])
    rocketchat.set_agent_status("agent.smith", "online")
    return "agent.smith"


async def test_visitor_message_is_idempotent_by_msg_id(rocketchat, agent, rest):
    """Posting the same visitor msg_id twice stores one message; both calls succeed."""
    await rest.register_visitor("instagram-p-1", "Jane")
    room, _ = await rest.open_room("instagram-p-1")
    a = await rest.post_visitor_message("instagram-p-1", room["_id"], "Hi", "ig-mid-1")
    b = await rest.post_visitor_message("instagram-p-1", room["_id"], "Hi", "ig-mid-1")
    assert a["_id"] == b["_id"] == "ig-mid-1"
    assert [m["_id"] for m in rocketchat.room_messages(room["_id"]) if not m.get("t")] == [
        "ig-mid-1"
    ]


async def test_visitor_message_blocked_by_an_app_is_not_taken_for_a_duplicate(
    rocketchat, agent, rest
):
    """The TypeError a duplicate gets is read back: a message an app blocked is NotStored."""
    await rest.register_visitor("instagram-p-9", "Jane")
    room, _ = await rest.open_room("instagram-p-9")
    rocketchat.prevent_visitor_messages(lambda text: "spam" in text)
    with pytest.raises(NotStored):
        await rest.post_visitor_message("instagram-p-9", room["_id"], "buy spam", "ig-mid-9")
    assert rocketchat.room_messages(room["_id"]) == []


async def test_no_agent_online(rocketchat, people, rest):
    """Without agents (and without accept-with-no-agents) open_room raises NoAgentOnline."""
    await rest.register_visitor("instagram-p-2", "Joe")
    with pytest.raises(NoAgentOnline):
        await rest.open_room("instagram-p-2")


async def test_closed_room_and_unknown_visitor(rocketchat, agent, rest):
    """Posting to a closed room is RoomClosed; an unknown token is InvalidVisitor."""
    await rest.register_visitor("instagram-p-3", "Ann")
    room, _ = await rest.open_room("instagram-p-3")
    rocketchat.close_room(room["_id"], by=agent)
    with pytest.raises(RoomClosed):
        await rest.post_visitor_message("instagram-p-3", room["_id"], "hello?", "m-2")
    with pytest.raises(InvalidVisitor):
        await rest.open_room("instagram-never-registered")
    new_room, new = await rest.open_room("instagram-p-3")
    assert new and new_room["_id"] != room["_id"]


async def test_visitor_with_department(rocketchat, agent, rest):
    """register_visitor passes the department through."""
    dep = rocketchat.create_department("Support", agents=[agent])
    visitor = await rest.register_visitor("instagram-p-4", "Dee", department=dep)
    assert visitor["department"] == dep


async def test_calls_run_concurrently_in_the_pool(rocketchat, people, rest):
    """Blocking calls run in worker threads: slow responses overlap instead of queueing."""
    await rest.login()
    rocketchat.rest_latency = 0.3
    started = time.monotonic()
    await asyncio.gather(*(rest.server_info() for _ in range(4)))
    assert time.monotonic() - started < 1.0
