"""The sandbox Rocket.Chat's Omnichannel: livechat REST, routing, streams and CRM webhooks."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from sandbox.rocketchat import SandboxRocketChat
from tests.sandbox.rc_client import RawDDP

SECRET = "crm-secret"


class Receiver:
    """A loopback CRM webhook endpoint answering a scripted sequence of statuses."""

    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.requests: list[dict[str, Any]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.requests.append({"headers": dict(self.headers), "body": json.loads(body)})
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                payload = b"" if status == 204 else b"{}"
                self.send_response(status)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/webhooks/rocketchat"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, count: int, timeout: float = 3.0) -> list[dict[str, Any]]:
        """Wait until ``count`` requests arrived."""
        deadline = time.monotonic() + timeout
        while len(self.requests) < count and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(self.requests) >= count, self.requests
        return self.requests


@pytest.fixture
def crm(rc: SandboxRocketChat) -> Iterator[Receiver]:
    """A webhook receiver wired into the sandbox's CRM settings (agent message + close)."""
    receiver = Receiver()
    rc.set_setting("Livechat_webhookUrl", receiver.url)
    rc.set_setting("Livechat_secret_token", SECRET)
    rc.set_setting("Livechat_webhook_on_agent_message", True)
    rc.set_setting("Livechat_webhook_on_close", True)
    yield receiver
    receiver.server.shutdown()


@pytest.fixture
def omni(rc: SandboxRocketChat, rc_people) -> dict[str, str]:
    """Two agents in department "Instagram" (one online), rate limiter off."""
    rc.set_setting("API_Enable_Rate_Limiter", False)
    rc.create_user("agent.smith", "agent.smith", roles=["user", "livechat-agent"], name="Smith")
    rc.create_user("agent.jones", "agent.jones", roles=["user", "livechat-agent"], name="Jones")
    rc.set_agent_status("agent.smith", "online")
    dep = rc.create_department("Instagram", agents=["agent.smith", "agent.jones"])
    return {"department": dep}


def _open_room(rc: SandboxRocketChat, token: str, department: str | None = None) -> dict[str, Any]:
    visitor: dict[str, Any] = {"token": token, "name": "Jane"}
    if department:
        visitor["department"] = department
    r = requests.post(f"{rc.url}/api/v1/livechat/visitor", json={"visitor": visitor})
    assert r.status_code == 200, r.text
    r = requests.get(f"{rc.url}/api/v1/livechat/room", params={"token": token})
    assert r.status_code == 200, r.text
    return r.json()


def _visitor_says(
    rc: SandboxRocketChat, token: str, rid: str, text: str, mid: str
) -> requests.Response:
    body = {"token": token, "rid": rid, "msg": text, "_id": mid}
    return requests.post(f"{rc.url}/api/v1/livechat/message", json=body)


def test_visitor_route_is_limited_to_five_per_minute_by_ip(rc: SandboxRocketChat) -> None:
    """The 6th livechat/visitor call in 60 s is a 429 with X-RateLimit headers and the body."""
    responses = [
        requests.post(f"{rc.url}/api/v1/livechat/visitor", json={"visitor": {"token": f"t{i}"}})
        for i in range(6)
    ]
    assert [r.status_code for r in responses] == [200] * 5 + [429]
    assert [r.headers["X-RateLimit-Remaining"] for r in responses[:5]] == ["4", "3", "2", "1", "0"]
    last = responses[-1]
    assert last.headers["X-RateLimit-Limit"] == "5"
    reset_ms = int(last.headers["X-RateLimit-Reset"])
    assert 0 < reset_ms - time.time() * 1000 <= 60_000
    body = last.json()
    assert body["success"] is False and body["errorType"] == "error-too-many-requests"
    assert body["error"].startswith("Error, too many requests. Please slow down. You must wait ")
    assert body["error"].endswith(
        " seconds before trying this endpoint again. [error-too-many-requests]"
    )
    rc.set_setting("API_Enable_Rate_Limiter", False)
    ok = requests.post(f"{rc.url}/api/v1/livechat/visitor", json={"visitor": {"token": "t9"}})
    assert ok.status_code == 200


def test_no_agent_online_refuses_room(rc: SandboxRocketChat, omni) -> None:
    """With every agent offline, livechat/room is a 400 no-agent-online; accepting queues it."""
    rc.set_agent_status("agent.smith", "offline")
    requests.post(
        f"{rc.url}/api/v1/livechat/visitor", json={"visitor": {"token": "v1", "name": "Jane"}}
    )
    r = requests.get(f"{rc.url}/api/v1/livechat/room", params={"token": "v1"})
    assert r.status_code == 400
    assert r.json() == {
        "success": False,
        "error": "Sorry, no online agents [no-agent-online]",
        "errorType": "no-agent-online",
    }
    rc.set_setting("Livechat_accept_chats_with_no_agents", True)
    r = requests.get(f"{rc.url}/api/v1/livechat/room", params={"token": "v1"})
    assert r.status_code == 200 and r.json()["newRoom"] is True
    assert "servedBy" not in r.json()["room"]


def test_livechat_errors(rc: SandboxRocketChat, omni) -> None:
    """Unknown token → invalid-token; foreign rid → invalid-room; closed room → room-closed."""
    r = requests.get(f"{rc.url}/api/v1/livechat/room", params={"token": "nobody"})
    assert r.status_code == 400 and r.json() == {"success": False, "error": "invalid-token"}
    room = _open_room(rc, "v1")["room"]
    _open_room(rc, "v2")
    r = _visitor_says(rc, "v2", room["_id"], "hijack", "m0")
    assert r.json()["error"] == "invalid-room"
    rc.close_room(room["_id"], by="agent.smith")
    assert _visitor_says(rc, "v1", room["_id"], "late", "m1").json()["error"] == "room-closed"
    r = requests.get(f"{rc.url}/api/v1/livechat/room", params={"token": "v1", "rid": room["_id"]})
    assert r.json()["error"] == "invalid-room"
    again = requests.get(f"{rc.url}/api/v1/livechat/room", params={"token": "v1"}).json()
    assert again["newRoom"] is True and again["room"]["_id"] != room["_id"]


async def test_visitor_message_routes_to_department_agent(rc: SandboxRocketChat, omni) -> None:
    """The room is served by the online department agent, who receives visitor messages on
    __my_messages__ as a participant; the livechat-manager bot sees them as non-participant."""
    agent = await RawDDP.open(rc.url)
    await agent.login_password("agent.smith", "agent.smith")
    await agent.sub("stream-room-messages", "__my_messages__", False)
    bot = await RawDDP.open(rc.url)
    await bot.login_password("mybot", "mybot")
    await bot.sub("stream-room-messages", "__my_messages__", False)

    opened = _open_room(rc, "instagram-1-42", omni["department"])
    room = opened["room"]
    assert opened["newRoom"] is True and room["t"] == "l" and room["open"] is True
    assert room["servedBy"]["username"] == "agent.smith"
    assert room["v"]["token"] == "instagram-1-42" and room["departmentId"] == omni["department"]
    assert _open_room(rc, "instagram-1-42", omni["department"])["newRoom"] is False

    r = _visitor_says(rc, "instagram-1-42", room["_id"], "hello", "ig-m-1")
    assert r.status_code == 200
    message = r.json()["message"]
    assert message["_id"] == "ig-m-1" and message["token"] == "instagram-1-42"
    assert message["alias"] == "Jane"

    msg, meta = (await agent.next_message())["fields"]["args"]
    assert msg["_id"] == "ig-m-1" and meta == {"roomParticipant": True, "roomType": "l"}
    msg, meta = (await bot.next_message())["fields"]["args"]
    assert meta["roomParticipant"] is False
    await agent.close()
    await bot.close()


def test_visitor_message_duplicate_id_is_stored_once(rc: SandboxRocketChat, omni) -> None:
    """Re-posting a livechat/message _id stores nothing and fails with the real TypeError text."""
    room = _open_room(rc, "v1")["room"]
    assert _visitor_says(rc, "v1", room["_id"], "hello", "ig-m-1").status_code == 200
    again = _visitor_says(rc, "v1", room["_id"], "hello", "ig-m-1")
    assert again.status_code == 400
    assert again.json() == {
        "success": False, "error": "Cannot convert undefined or null to object"
    }
    assert [m["_id"] for m in rc.room_messages(room["_id"])] == ["ig-m-1"]


@pytest.mark.parametrize("word", ["all", "here"])
def test_visitor_mention_all_is_refused(rc: SandboxRocketChat, omni, word: str) -> None:
    """A visitor's @all/@here is refused with error-action-not-allowed; nothing is stored."""
    room = _open_room(rc, "v1")["room"]
    r = _visitor_says(rc, "v1", room["_id"], f"hi @{word} anyone?", "ig-m-1")
    assert r.status_code == 400
    assert r.json()["errorType"] == "error-action-not-allowed"
    assert r.json()["error"] == f"Notify {word} in this room not allowed [error-action-not-allowed]"
    assert rc.room_messages(room["_id"]) == []
    assert _visitor_says(rc, "v1", room["_id"], "mail me at a@all.example", "m2").ok


def test_deleted_department_is_dropped_from_visitor_at_next_room(
    rc: SandboxRocketChat, omni
) -> None:
    """A new room is routed by the visitor's stored department; a deleted one is unset first."""
    rc.create_user("agent.bob", "agent.bob", roles=["user", "livechat-agent"], name="Bob")
    rc.set_agent_status("agent.bob", "online")
    sales = rc.create_department("Sales", agents=["agent.bob"])
    room = _open_room(rc, "v1", sales)["room"]
    assert room["departmentId"] == sales
    rc.close_room(room["_id"])
    r = requests.post(f"{rc.url}/api/v1/livechat/visitor", json={"visitor": {"token": "v1"}})
    assert r.json()["visitor"]["department"] == sales  # registering without one keeps it
    rc.delete_department(sales)
    r = requests.get(f"{rc.url}/api/v1/livechat/room", params={"token": "v1"})
    assert r.status_code == 200 and "departmentId" not in r.json()["room"]
    assert "department" not in rc.visitor("v1")


@pytest.mark.parametrize("rc_version", ["6.13.0"], indirect=True)
def test_agent_reply_posts_message_webhook_until_200(
    rc: SandboxRocketChat, omni, crm: Receiver
) -> None:
    """An agent reply POSTs type Message with the secret header; 6.2–7.0 retry non-200."""
    room = _open_room(rc, "v1", omni["department"])["room"]
    _visitor_says(rc, "v1", room["_id"], "hello", "ig-m-1")
    crm.statuses = [500, 204, 200]
    reply = rc.agent_reply("agent.smith", room["_id"], "How can I help?")
    requests_seen = crm.wait(3)
    time.sleep(0.15)
    assert len(crm.requests) == 3, "no retry after a 200"
    assert [a["status"] for a in rc.webhooks_sent()] == [500, 204, 200]
    first = requests_seen[0]
    assert first["headers"]["X-RocketChat-Livechat-Token"] == SECRET
    body = first["body"]
    assert body["type"] == "Message" and body["_id"] == room["_id"]
    assert body["visitor"]["token"] == "v1" and body["agent"]["username"] == "agent.smith"
    [entry] = body["messages"]
    assert entry["_id"] == reply["_id"] and entry["msg"] == "How can I help?"
    assert entry["agentId"] == rc.user_id("agent.smith") and entry["ts"].endswith("Z")


async def test_agent_reply_over_ddp_and_rest_reach_webhook(
    rc: SandboxRocketChat, omni, crm: Receiver
) -> None:
    """Replies sent by the agent through DDP sendMessage and REST chat.sendMessage both fire."""
    room = _open_room(rc, "v1", omni["department"])["room"]
    agent = await RawDDP.open(rc.url)
    await agent.login_password("agent.smith", "agent.smith")
    sent = await agent.call("sendMessage", {"_id": "a-1", "rid": room["_id"], "msg": "via ddp"})
    assert sent["result"]["_id"] == "a-1"
    login = requests.post(
        f"{rc.url}/api/v1/login", json={"username": "agent.smith", "password": "agent.smith"}
    ).json()["data"]
    headers = {"X-User-Id": login["userId"], "X-Auth-Token": login["authToken"]}
    body = {"message": {"_id": "a-2", "rid": room["_id"], "msg": "via rest"}}
    assert requests.post(f"{rc.url}/api/v1/chat.sendMessage", json=body, headers=headers).ok
    got = crm.wait(2)
    assert sorted(r["body"]["messages"][0]["_id"] for r in got) == ["a-1", "a-2"]
    await agent.close()


def test_manager_note_is_allowed_in_livechat_room(
    rc: SandboxRocketChat, omni, crm: Receiver
) -> None:
    """A livechat-manager (the bot) may post into a livechat room it does not serve; like any
    non-visitor message it also goes out as an agent Message webhook (agentId = the bot)."""
    room = _open_room(rc, "v1", omni["department"])["room"]
    login = requests.post(
        f"{rc.url}/api/v1/login", json={"username": "mybot", "password": "mybot"}
    ).json()["data"]
    headers = {"X-User-Id": login["userId"], "X-Auth-Token": login["authToken"]}
    body = {"message": {"_id": "note-1", "rid": room["_id"], "msg": "Note: message not delivered"}}
    r = requests.post(f"{rc.url}/api/v1/chat.sendMessage", json=body, headers=headers)
    assert r.status_code == 200, r.text
    assert rc.room_messages(room["_id"])[-1]["_id"] == "note-1"
    [hook] = crm.wait(1)
    assert hook["body"]["messages"][0]["agentId"] == login["userId"]
    plain = requests.post(
        f"{rc.url}/api/v1/login", json={"username": "alice", "password": "alice"}
    ).json()["data"]
    r = requests.post(
        f"{rc.url}/api/v1/chat.sendMessage",
        json={"message": {"rid": room["_id"], "msg": "nosy"}},
        headers={"X-User-Id": plain["userId"], "X-Auth-Token": plain["authToken"]},
    )
    assert r.status_code == 400 and r.json()["error"] == "error-not-allowed"
    # markRoomResponded does not ask who wrote: the bot's note made it the first responder.
    stored = rc.room(room["_id"])
    assert stored is not None and "waitingResponse" not in stored
    assert stored["responseBy"]["_id"] == login["userId"]
    body = {"message": {"_id": "note-2", "rid": room["_id"], "msg": "Echo: hi @all"}}
    r = requests.post(f"{rc.url}/api/v1/chat.sendMessage", json=body, headers=headers)
    assert r.status_code == 400 and r.json()["errorType"] == "error-action-not-allowed"


def test_file_reply_carries_file_upload(rc: SandboxRocketChat, omni, crm: Receiver) -> None:
    """A file sent by the agent reaches the webhook with file, attachments and fileUpload."""
    rc.set_setting("Site_Url", "https://chat.internal.example")
    room = _open_room(rc, "v1", omni["department"])["room"]
    rc.agent_send_file("agent.smith", room["_id"], "cat.png", "image/png", b"\x89PNG-x",
                       caption="look")
    [hook] = crm.wait(1)
    entry = hook["body"]["messages"][0]
    upload = entry["fileUpload"]
    file_id = entry["file"]["_id"]
    assert upload["publicFilePath"].startswith(
        f"https://chat.internal.example/file-upload/{file_id}/cat.png?token=")
    assert (upload["type"], upload["size"]) == ("image/png", 6)
    assert entry["file"]["name"] == "cat.png"
    assert entry["attachments"][0]["description"] == "look"


def _uploaded(rc: SandboxRocketChat, omni, crm: Receiver) -> tuple[str, str]:
    """An agent's file in a livechat room: (local URL with the JWT, local URL without)."""
    room = _open_room(rc, "v1", omni["department"])["room"]
    rc.agent_send_file("agent.smith", room["_id"], "a b.pdf", "application/pdf", b"%PDF-1")
    [hook] = crm.wait(1)
    public = hook["body"]["messages"][0]["fileUpload"]["publicFilePath"]
    local = rc.url + public[public.index("/file-upload/"):]
    return local, local.split("?", 1)[0]


def test_file_link_serves_bytes_only_with_an_unexpired_token(
    rc: SandboxRocketChat, omni, crm: Receiver
) -> None:
    """The JWT link works for an hour, then 403; no token is 403; an unknown id 404."""
    with_token, bare = _uploaded(rc, omni, crm)
    assert requests.get(with_token).content == b"%PDF-1"
    assert requests.get(bare).status_code == 403
    assert requests.get(rc.url + "/file-upload/nope/x.pdf").status_code == 404
    rc.advance(3601)
    assert requests.get(with_token).status_code == 403


def test_file_link_with_user_headers_follows_room_restriction(
    rc: SandboxRocketChat, omni, crm: Receiver, rc_people
) -> None:
    """X-User-Id/X-Auth-Token: refused to a non-member by default, allowed to livechat
    staff once "restrict to users who can access the room" replaces "members only"."""
    _, bare = _uploaded(rc, omni, crm)
    login = requests.post(f"{rc.url}/api/v1/login",
                          json={"user": "mybot", "password": "mybot"}).json()["data"]
    headers = {"X-User-Id": login["userId"], "X-Auth-Token": login["authToken"]}
    assert requests.get(bare, headers=headers).status_code == 403
    assert requests.get(bare, headers={**headers, "X-Auth-Token": "forged"}).status_code == 403
    rc.set_setting("FileUpload_Restrict_to_room_members", False)
    rc.set_setting("FileUpload_Restrict_to_users_who_can_access_room", True)
    assert requests.get(bare, headers=headers).content == b"%PDF-1"
    assert [r["auth"] for r in rc.file_requests()][-1] == "user"


def test_close_sends_livechat_session_webhook(rc: SandboxRocketChat, omni, crm: Receiver) -> None:
    """Closing the room POSTs LivechatSession with closedAt, closer and every visible message."""
    room = _open_room(rc, "v1", omni["department"])["room"]
    _visitor_says(rc, "v1", room["_id"], "hello", "ig-m-1")
    login = requests.post(
        f"{rc.url}/api/v1/login", json={"username": "agent.smith", "password": "agent.smith"}
    ).json()["data"]
    headers = {"X-User-Id": login["userId"], "X-Auth-Token": login["authToken"]}
    r = requests.post(
        f"{rc.url}/api/v1/livechat/room.closeByUser",
        json={"rid": room["_id"], "comment": "solved"},
        headers=headers,
    )
    assert r.json() == {"success": True}
    [hook] = crm.wait(1)
    body = hook["body"]
    assert body["type"] == "LivechatSession" and body["closer"] == "user"
    assert body["closedAt"].endswith("Z") and body["closedBy"]["username"] == "agent.smith"
    assert body["servedBy"]["username"] == "agent.smith"
    assert [m["msg"] for m in body["messages"]] == ["hello", "solved"]
    assert body["messages"][1]["closingMessage"] is True
    assert "agentId" not in body["messages"][0]
    assert rc.livechat_rooms()[0].get("open") is None


def test_departments_need_livechat_permission(rc: SandboxRocketChat, omni) -> None:
    """livechat/department lists departments for livechat staff and is 403 for plain users."""
    seen = {}
    for username in ("mybot", "alice"):
        data = requests.post(
            f"{rc.url}/api/v1/login", json={"username": username, "password": username}
        ).json()["data"]
        seen[username] = requests.get(
            f"{rc.url}/api/v1/livechat/department",
            headers={"X-User-Id": data["userId"], "X-Auth-Token": data["authToken"]},
        )
    assert [d["name"] for d in seen["mybot"].json()["departments"]] == ["Instagram"]
    assert seen["alice"].status_code == 403


def test_visitor_deletes_and_edits_own_message_only_as_settings_allow(
    rc: SandboxRocketChat, omni
) -> None:
    """DELETE/PUT livechat/message/:_id: own messages only, Message_AllowDeleting/Editing,
    works in a closed room, invalid-message for an unknown _id [LVM]."""
    room = _open_room(rc, "v1")["room"]
    other = _open_room(rc, "v2")["room"]
    for n in range(3):
        assert _visitor_says(rc, "v1", room["_id"], f"m{n}", f"ig-{n}").status_code == 200
    assert _visitor_says(rc, "v2", other["_id"], "theirs", "ig-x").status_code == 200
    url = f"{rc.url}/api/v1/livechat/message/"
    # Another visitor's message: refused by the owner check.
    r = requests.delete(url + "ig-x", json={"token": "v1", "rid": room["_id"]})
    assert r.status_code == 400 and r.json()["errorType"] == "error-action-not-allowed"
    r = requests.delete(url + "nope", json={"token": "v1", "rid": room["_id"]})
    assert r.json() == {"success": False, "error": "invalid-message"}
    rc.set_setting("Message_AllowDeleting", False)
    r = requests.delete(url + "ig-0", json={"token": "v1", "rid": room["_id"]})
    assert r.status_code == 400 and r.json()["errorType"] == "error-action-not-allowed"
    r = requests.put(url + "ig-0", json={"token": "v1", "rid": room["_id"], "msg": "edited"})
    assert r.status_code == 200 and r.json()["message"]["msg"] == "edited"
    rc.set_setting("Message_AllowEditing", False)
    r = requests.put(url + "ig-1", json={"token": "v1", "rid": room["_id"], "msg": "no"})
    assert r.status_code == 400 and r.json()["errorType"] == "error-action-not-allowed"
    rc.set_setting("Message_AllowDeleting", True)
    rc.close_room(room["_id"])
    r = requests.delete(url + "ig-2", json={"token": "v1", "rid": room["_id"]})
    assert r.status_code == 200 and r.json()["message"]["_id"] == "ig-2"
    assert [m["msg"] for m in rc.room_messages(room["_id"]) if not m.get("t")] == ["edited", "m1"]
