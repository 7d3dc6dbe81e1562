"""The sandbox's version profiles reproduce what differs between Rocket.Chat releases (audit §3)."""

from __future__ import annotations

import time

import pytest
import requests

from sandbox.rocketchat import SandboxRocketChat
from tests.sandbox.test_rocketchat_livechat import Receiver, _open_room, _visitor_says
from tests.scenarios.harness import every_rc_version

versions = pytest.mark.parametrize("rc_version", ["6.0.0", "6.11.0", "6.13.0", "7.0.0", "7.4.0"],
                                   indirect=True)


def _login(rc: SandboxRocketChat, username: str, password: str) -> dict[str, str]:
    data = requests.post(f"{rc.url}/api/v1/login",
                         json={"user": username, "password": password}).json()["data"]
    return {"X-User-Id": data["userId"], "X-Auth-Token": data["authToken"]}


@versions
def test_unknown_route_is_html_200_until_7_0_then_json_404(
    rc: SandboxRocketChat, rc_people, rc_version: str
) -> None:
    """An unknown /api/v1 GET: Meteor's HTML app page with 200 up to 7.0, a JSON 404 after."""
    headers = _login(rc, "mybot", "mybot")
    r = requests.get(f"{rc.url}/api/v1/no.such.route", headers=headers)
    if rc_version < "7.1":
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
        assert "<!DOCTYPE html>" in r.text
    else:
        assert r.status_code == 404 and r.json()["success"] is False


@versions
def test_public_roles_route_exists_only_in_newer_7x(
    rc: SandboxRocketChat, rc_people, rc_version: str
) -> None:
    """roles.getUsersInPublicRoles is missing (HTML 200) up to 7.0; never lists the bot role."""
    headers = _login(rc, "mybot", "mybot")
    r = requests.get(f"{rc.url}/api/v1/roles.getUsersInPublicRoles", headers=headers)
    if rc_version < "7.1":
        assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
        return
    roles = {u["username"]: u["roles"] for u in r.json()["users"]}
    assert roles["boss"] == ["admin"]  # "user" has no description: not public
    assert roles["mybot"] == ["livechat-manager"]  # "bot" neither



@pytest.mark.parametrize(
    ("rc_version", "room_limit"), [("6.11.0", 10), ("6.12.0", 5), ("7.4.0", 5)],
    indirect=["rc_version"],
)
def test_livechat_room_limit_is_five_since_6_12_and_default_before(
    rc: SandboxRocketChat, room_limit: int
) -> None:
    """livechat/room (and visitor) allow 5 calls/60 s from 6.12.0, the default 10 before."""
    statuses = [
        requests.get(f"{rc.url}/api/v1/livechat/room", params={"token": "nobody"}).status_code
        for _ in range(room_limit + 1)
    ]
    assert statuses[-1] == 429 and 429 not in statuses[:-1]
    visitor = [
        requests.post(f"{rc.url}/api/v1/livechat/visitor",
                      json={"visitor": {"token": f"t{i}"}}).status_code
        for i in range(room_limit + 1)
    ]
    assert visitor[-1] == 429 and 429 not in visitor[:-1]


@every_rc_version
def test_livechat_message_is_ten_per_minute_in_every_release(rc: SandboxRocketChat) -> None:
    """livechat/message has no limit of its own: the default 10/60 s per IP applies."""
    statuses = [
        requests.post(f"{rc.url}/api/v1/livechat/message",
                      json={"token": "x", "rid": "y", "msg": "z"}).status_code
        for _ in range(11)
    ]
    assert statuses[-1] == 429 and 429 not in statuses[:-1]


@every_rc_version
def test_settings_public_id_filter_is_ignored_on_6x(
    rc: SandboxRocketChat, rc_version: str
) -> None:
    """settings.public?_id=X: only X on newer 7.x; the first page sorted by _id on 6.x."""
    r = requests.get(f"{rc.url}/api/v1/settings.public",
                     params={"_id": "Message_AllowUnrecognizedSlashCommand"}).json()
    ids = [s["_id"] for s in r["settings"]]
    if rc_version < "7.1":
        assert ids == sorted(ids) and len(ids) > 1
    else:
        assert ids == ["Message_AllowUnrecognizedSlashCommand"]


@every_rc_version
def test_info_reports_major_minor_to_everyone_but_admins(
    rc: SandboxRocketChat, rc_people, rc_version: str
) -> None:
    """/api/info: "6.13" anonymously (removePatchInfo), the full Info for an admin."""
    assert requests.get(f"{rc.url}/api/info").json()["version"] == rc_version.rsplit(".", 1)[0]
    admin = _login(rc, "boss", "boss")
    assert requests.get(f"{rc.url}/api/info", headers=admin).json()["info"]["version"] == rc_version


@every_rc_version
def test_route_level_unauthorized_is_403_then_401_in_newer_7x(
    rc: SandboxRocketChat, rc_people, rc_version: str
) -> None:
    """users.list without view-d-room: API.v1.unauthorized(), 403 up to 7.0, 401 later."""
    rc.set_permission("view-d-room", ["admin"])
    r = requests.get(f"{rc.url}/api/v1/users.list", headers=_login(rc, "mybot", "mybot"))
    assert r.status_code == (403 if rc_version < "7.1" else 401)


def test_users_list_shows_roles_including_bot(rc: SandboxRocketChat, rc_people) -> None:
    """users.list's default projection carries roles, so a bot-role account is visible."""
    r = requests.get(f"{rc.url}/api/v1/users.list", params={"count": 100},
                     headers=_login(rc, "mybot", "mybot")).json()
    roles = {u["username"]: u["roles"] for u in r["users"]}
    assert "bot" in roles["mybot"] and r["total"] == len(r["users"])


def test_integration_settings_need_view_livechat_manager(rc: SandboxRocketChat, rc_people) -> None:
    """livechat/integrations.settings returns the webhook settings to a livechat-manager."""
    rc.set_setting("Livechat_webhookUrl", "https://bridge.example/webhooks/rocketchat")
    rc.create_user("mgr", "mgr-pw", roles=["user", "livechat-manager"])
    r = requests.get(f"{rc.url}/api/v1/livechat/integrations.settings",
                     headers=_login(rc, "mgr", "mgr-pw"))
    values = {s["_id"]: s["value"] for s in r.json()["settings"]}
    assert values["Livechat_webhookUrl"] == "https://bridge.example/webhooks/rocketchat"
    assert {"Livechat_secret_token", "Livechat_webhook_on_agent_message",
            "Livechat_webhook_on_close"} <= set(values)
    plain = requests.get(f"{rc.url}/api/v1/livechat/integrations.settings",
                         headers=_login(rc, "alice", "alice"))
    assert plain.status_code == 403


@pytest.mark.parametrize(
    ("rc_version", "statuses", "expected"),
    [
        ("6.0.0", [500, 204], [500, 204]),  # HTTP.post: anything below 400 is delivered
        ("6.13.0", [500, 204, 200], [500, 204, 200]),  # fetch: only 200 is delivered
        ("7.4.0", [500, 204], [500, 204]),  # newer 7.x: a 204 is not retried (isRetryable)
        ("7.4.0", [500, 400], [500, 400]),  # ... and a 4xx (not 429) is dropped, not retried
        ("6.13.0", [400, 200], [400, 200]),  # 6.x retries a 4xx
    ],
    indirect=["rc_version"],
)
def test_webhook_retry_rules_follow_the_release(
    rc: SandboxRocketChat, rc_people, statuses: list[int], expected: list[int]
) -> None:
    """Which webhook answers are retried depends on the release (audit W2)."""
    rc.set_setting("API_Enable_Rate_Limiter", False)
    rc.create_user("agent.smith", "agent.smith", roles=["user", "livechat-agent"])
    rc.set_agent_status("agent.smith", "online")
    rc.create_department("Instagram", agents=["agent.smith"])
    crm = Receiver()
    try:
        rc.set_setting("Livechat_webhookUrl", crm.url)
        rc.set_setting("Livechat_webhook_on_agent_message", True)
        room = _open_room(rc, "v1")["room"]
        _visitor_says(rc, "v1", room["_id"], "hi", "m-1")
        crm.statuses = list(statuses)
        rc.agent_reply("agent.smith", room["_id"], "hello")
        crm.wait(len(expected))
        time.sleep(0.2)
        assert [a["status"] for a in rc.webhooks_sent()] == expected
    finally:
        crm.server.shutdown()
