"""The sandbox Rocket.Chat's REST API (chat, DM, subscriptions, roles, settings, limiter)."""

from __future__ import annotations

import time

import pytest
import requests

from sandbox.rocketchat import SandboxRocketChat


def _login(rc: SandboxRocketChat, username: str) -> dict[str, str]:
    r = requests.post(f"{rc.url}/api/v1/login", json={"username": username, "password": username})
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    return {"X-User-Id": data["userId"], "X-Auth-Token": data["authToken"]}


@pytest.fixture
def no_limit(rc: SandboxRocketChat) -> SandboxRocketChat:
    """The sandbox with the API rate limiter disabled."""
    rc.set_setting("API_Enable_Rate_Limiter", False)
    return rc


def test_info_reports_version(rc: SandboxRocketChat) -> None:
    """GET /api/info answers the server version."""
    assert requests.get(f"{rc.url}/api/info").json() == {"version": "7.4", "success": True}


def test_login_failure_is_401(rc: SandboxRocketChat, rc_people) -> None:
    """A wrong password gives 401 with status error."""
    r = requests.post(f"{rc.url}/api/v1/login", json={"user": "mybot", "password": "bad"})
    assert r.status_code == 401 and r.json()["status"] == "error"


def test_auth_required_routes_reject_missing_token(rc: SandboxRocketChat, rc_people) -> None:
    """Authenticated routes answer 401 "You must be logged in to do this." without valid headers."""
    r = requests.get(
        f"{rc.url}/api/v1/me", headers={"X-User-Id": rc_people["bot"], "X-Auth-Token": "x"}
    )
    assert r.status_code == 401
    assert r.json() == {"status": "error", "message": "You must be logged in to do this."}


def test_me_with_login_token_and_pat(no_limit: SandboxRocketChat, rc_people) -> None:
    """/me works with a login token and with a PAT, and includes own roles."""
    rc = no_limit
    me = requests.get(f"{rc.url}/api/v1/me", headers=_login(rc, "mybot")).json()
    assert me["username"] == "mybot" and me["roles"] == ["bot", "livechat-manager"]
    pat = rc.create_personal_access_token("mybot")
    headers = {"X-User-Id": rc_people["bot"], "X-Auth-Token": pat}
    assert requests.get(f"{rc.url}/api/v1/me", headers=headers).json()["_id"] == rc_people["bot"]


def test_users_info_hides_roles_of_others(no_limit: SandboxRocketChat, rc_people) -> None:
    """users.info shows roles only to the user itself or to a privileged caller."""
    rc = no_limit
    bot = _login(rc, "mybot")
    other = requests.get(f"{rc.url}/api/v1/users.info?username=boss", headers=bot).json()["user"]
    assert "roles" not in other
    admin = _login(rc, "boss")
    seen = requests.get(f"{rc.url}/api/v1/users.info?username=alice", headers=admin).json()["user"]
    assert seen["roles"] == ["user"]


def test_chat_send_message_duplicate_id_stores_once(no_limit: SandboxRocketChat, rc_people) -> None:
    """chat.sendMessage with an existing _id stores nothing new (the real route then fails)."""
    rc = no_limit
    bot = _login(rc, "mybot")
    room = requests.post(f"{rc.url}/api/v1/dm.create", json={"username": "alice"}, headers=bot)
    rid = room.json()["room"]["rid"]
    body = {"message": {"_id": "det-1", "rid": rid, "msg": "hi"}}
    first = requests.post(f"{rc.url}/api/v1/chat.sendMessage", json=body, headers=bot)
    assert first.status_code == 200 and first.json()["message"]["_id"] == "det-1"
    assert first.json()["message"]["ts"].endswith("Z")
    second = requests.post(f"{rc.url}/api/v1/chat.sendMessage", json=body, headers=bot)
    assert second.status_code == 400 and second.json()["success"] is False
    assert len(rc.dm_messages("mybot", "alice")) == 1
    got = requests.get(f"{rc.url}/api/v1/chat.getMessage?msgId=det-1", headers=bot).json()
    assert got["message"]["msg"] == "hi"


def test_chat_send_message_reports_errors(no_limit: SandboxRocketChat, rc_people) -> None:
    """REST reports what DDP swallows: oversized text is a 400 with errorType."""
    rc = no_limit
    bot = _login(rc, "mybot")
    body = {"message": {"rid": "GENERAL", "msg": "x" * 5001}}
    r = requests.post(f"{rc.url}/api/v1/chat.sendMessage", json=body, headers=bot)
    assert r.status_code == 400
    assert r.json()["errorType"] == "error-message-size-exceeded"
    assert r.json()["error"].endswith("[error-message-size-exceeded]")


def test_catch_up_with_subscriptions_and_sync(no_limit: SandboxRocketChat, rc_people) -> None:
    """subscriptions.get?updatedSince lists rooms with news; chat.syncMessages returns them."""
    rc = no_limit
    bot = _login(rc, "mybot")
    rc.send_dm("alice", "mybot", "before")
    since = time.time()
    time.sleep(0.01)
    sent = rc.send_dm("alice", "mybot", "/instagram help")
    stamp = (
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(since)) + f".{int(since % 1 * 1000):03d}Z"
    )
    subs = requests.get(
        f"{rc.url}/api/v1/subscriptions.get", params={"updatedSince": stamp}, headers=bot
    )
    update = subs.json()["update"]
    assert [s["rid"] for s in update] == [sent["rid"]] and update[0]["unread"] == 2
    sync = requests.get(
        f"{rc.url}/api/v1/chat.syncMessages",
        params={"roomId": sent["rid"], "lastUpdate": stamp},
        headers=bot,
    ).json()
    assert [m["msg"] for m in sync["result"]["updated"]] == ["/instagram help"]


def test_roles_routes(no_limit: SandboxRocketChat, rc_people) -> None:
    """getUsersInPublicRoles works for anyone; getUsersInRole needs access-permissions."""
    rc = no_limit
    bot = _login(rc, "mybot")
    users = requests.get(f"{rc.url}/api/v1/roles.getUsersInPublicRoles", headers=bot).json()[
        "users"
    ]
    assert {"_id": rc_people["admin"], "username": "boss", "roles": ["admin"]} in users
    denied = requests.get(f"{rc.url}/api/v1/roles.getUsersInRole?role=admin", headers=bot)
    assert denied.status_code == 400 and denied.json()["errorType"] == "error-not-allowed"
    admin = _login(rc, "boss")
    ok = requests.get(f"{rc.url}/api/v1/roles.getUsersInRole?role=admin", headers=admin).json()
    assert [u["username"] for u in ok["users"]] == ["boss"]


def test_settings_visibility(no_limit: SandboxRocketChat, rc_people) -> None:
    """settings.public shows public settings; settings/:_id needs view-privileged-setting."""
    rc = no_limit
    public = requests.get(f"{rc.url}/api/v1/settings.public?count=0").json()["settings"]
    ids = {s["_id"]: s["value"] for s in public}
    assert ids["Message_AllowUnrecognizedSlashCommand"] is False
    assert "API_Enable_Rate_Limiter" not in ids
    bot = _login(rc, "mybot")
    r = requests.get(f"{rc.url}/api/v1/settings/API_Enable_Rate_Limiter", headers=bot)
    assert r.status_code == 403
    admin = _login(rc, "boss")
    r = requests.get(
        f"{rc.url}/api/v1/settings/API_Enable_Rate_Limiter_Limit_Calls_Default", headers=admin
    )
    assert r.json() == {
        "_id": "API_Enable_Rate_Limiter_Limit_Calls_Default",
        "value": 10,
        "success": True,
    }


def test_default_limiter_counts_per_route_and_bypasses_bots(
    rc: SandboxRocketChat, rc_people
) -> None:
    """Non-bypass users hit 429 on the 11th call; bots (api-bypass-rate-limit) are exempt."""
    headers = {}
    r = requests.post(f"{rc.url}/api/v1/login", json={"username": "alice", "password": "alice"})
    data = r.json()["data"]
    headers = {"X-User-Id": data["userId"], "X-Auth-Token": data["authToken"]}
    codes = [requests.get(f"{rc.url}/api/v1/me", headers=headers).status_code for _ in range(11)]
    assert codes == [200] * 10 + [429]
    bot = _login(rc, "mybot")
    assert all(
        requests.get(f"{rc.url}/api/v1/me", headers=bot).status_code == 200 for _ in range(12)
    )


def test_fail_rest_injects_status_then_recovers(no_limit: SandboxRocketChat, rc_people) -> None:
    """fail_rest answers the chosen routes with the status until cleared or expired."""
    rc = no_limit
    rc.fail_rest(503, routes={"me"}, until=0.3)
    bot = _login(rc, "mybot")
    assert requests.get(f"{rc.url}/api/v1/me", headers=bot).status_code == 503
    time.sleep(0.35)
    assert requests.get(f"{rc.url}/api/v1/me", headers=bot).status_code == 200
    assert rc.call_counts()["me"] == 2
