"""The protocol oracle itself: its data is Rocket.Chat's, and it reports what a real server refuses.

Every test using the ``rocketchat`` fixture is checked by the oracle at teardown
(tests/conftest.py); these tests show the check can fail, and keep its inputs honest.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import requests

from sandbox.rocketchat import SandboxRocketChat
from sandbox.rocketchat.rest import RecordedRequest
from tests.oracle import oracle

HERE = Path(__file__).parent


def _post(path: str, body: Any) -> RecordedRequest:
    return RecordedRequest("POST", path, (), "application/json", json.dumps(body).encode())


def _get(path: str, **query: str) -> RecordedRequest:
    return RecordedRequest("GET", path, tuple(query.items()), "", b"")


def test_committed_schemas_name_the_pinned_package() -> None:
    """The committed dump says which package and version it came from, and it is the pinned one."""
    source = oracle.published()["source"]
    pinned = json.loads((HERE / "package.json").read_text())["dependencies"]
    lock = json.loads((HERE / "package-lock.json").read_text())
    locked = lock["packages"]["node_modules/@rocket.chat/rest-typings"]["version"]
    assert source["package"] == "@rocket.chat/rest-typings"
    assert source["version"] == pinned["@rocket.chat/rest-typings"] == locked
    assert source["version"].startswith("7.")


@pytest.mark.skipif(
    shutil.which("node") is None or not (HERE / "node_modules").is_dir(),
    reason="needs node and `make oracle` (npm ci in tests/oracle) to regenerate the dump",
)
def test_committed_schemas_match_a_fresh_dump(tmp_path: Path) -> None:
    """Regenerating the dump from the installed package gives the committed bytes."""
    fresh = tmp_path / "schemas.json"
    subprocess.run(
        ["node", "dump_schemas.mjs", str(fresh)], cwd=HERE, check=True, capture_output=True
    )
    assert fresh.read_bytes() == oracle.SCHEMA_FILE.read_bytes()


def test_every_mapped_validator_is_published_and_fully_understood() -> None:
    """Each validator the route table names exists in the dump and uses only emulated keywords."""
    validators = oracle.published()["validators"]
    for spec in oracle.ROUTES:
        if spec.validator is None:
            continue
        assert spec.validator in validators, spec
        assert oracle.unsupported_keywords(validators[spec.validator]["schema"]) == set(), spec


def test_chat_send_message_with_unknown_property_is_reported() -> None:
    """An unknown top-level property on chat.sendMessage (additionalProperties: false) fails."""
    request = _post(
        "v1/chat.sendMessage", {"message": {"_id": "m1", "rid": "r1", "msg": "hi"}, "channel": "x"}
    )
    (problem,) = oracle.violations([request])
    assert "isChatSendMessageProps" in problem
    assert "'channel' was unexpected" in problem


def test_livechat_message_without_token_is_reported() -> None:
    """A livechat/message body missing the visitor token is a violation."""
    (problem,) = oracle.violations([_post("v1/livechat/message", {"rid": "r1", "msg": "hello"})])
    assert "isPOSTLivechatMessageParams" in problem
    assert "'token' is a required property" in problem


def test_object_where_a_string_belongs_is_reported() -> None:
    """ajv cannot coerce an object to a string: ``message.msg`` as an object is refused."""
    request = _post("v1/chat.sendMessage", {"message": {"rid": "r1", "msg": {"text": "hi"}}})
    (problem,) = oracle.violations([request])
    assert "$.message.msg" in problem


def test_scalar_the_server_coerces_is_accepted() -> None:
    """ajv's coerceTypes turns 5 into "5", so a real server accepts it and so does the oracle."""
    assert (
        oracle.violations([_post("v1/chat.sendMessage", {"message": {"rid": "r", "msg": 5}})]) == []
    )
    assert oracle.violations([_get("v1/livechat/department", offset="0", count="100")]) == []


def test_non_numeric_query_count_is_reported() -> None:
    """A query value ajv cannot turn into a number fails ``type: number``."""
    (problem,) = oracle.violations([_get("v1/livechat/department", offset="0", count="all")])
    assert "$.count" in problem


def test_nullable_allows_null_but_enum_still_applies() -> None:
    """``nullable: true`` admits null, yet an enum without null refuses it (as ajv does)."""
    assert oracle.check("isChatSendMessageProps", {"message": {"rid": "r", "tmid": None}}) == []
    assert oracle.check("isChatSyncMessagesProps", {"roomId": "r", "type": None}) != []
    assert oracle.check("isChatSyncMessagesProps", {"roomId": "r", "type": "BOTH"}) != []


# Requests like the bridge's, and ways to break them: the oracle and the real ajv must agree.
DIFFERENTIAL_CORPUS: list[tuple[str, Any]] = [
    ("isChatSendMessageProps", {"message": {"_id": "m", "rid": "r", "msg": "hi"}}),
    ("isChatSendMessageProps", {"message": {"rid": "r", "msg": 5}}),
    ("isChatSendMessageProps", {"message": {"rid": "r", "msg": {"a": 1}}}),
    ("isChatSendMessageProps", {"message": {"rid": "r", "tshow": "true"}}),
    ("isChatSendMessageProps", {"message": {"rid": "r", "tshow": "yes"}}),
    ("isChatSendMessageProps", {"message": {"rid": "r"}, "roomId": "r"}),
    ("isChatSendMessageProps", {"message": {"rid": "r", "tmid": None}}),
    ("isChatSyncMessagesProps", {"roomId": "r", "lastUpdate": "2026-01-01T00:00:00.000Z"}),
    ("isChatSyncMessagesProps", {"roomId": "r", "type": None}),
    ("isChatSyncMessagesProps", {"lastUpdate": "2026-01-01T00:00:00.000Z"}),
    ("isChatGetMessageProps", {"msgId": ""}),
    ("isChatGetMessageProps", {"msgId": "abc"}),
    ("isDmCreateProps", {"username": "ana"}),
    ("isDmCreateProps", {"username": "ana", "usernames": "ana,bob"}),
    ("isSubscriptionsGetProps", {"updatedSince": "2026-01-01T00:00:00.000Z"}),
    ("isSettingsPublicWithPaginationProps", {"_id": "Livechat_enabled"}),
    ("isSettingsPublicWithPaginationProps", {"query": "{}", "fields": "{}"}),
    ("isPOSTLivechatMessageParams", {"token": "t", "rid": "r", "msg": "m", "_id": "i"}),
    ("isPOSTLivechatMessageParams", {"rid": "r", "msg": "m"}),
    ("isPOSTLivechatMessageParams", {"token": "t", "rid": "r", "msg": "m", "visitor": {}}),
    ("isGETLivechatDepartmentProps", {"offset": "0", "count": "100"}),
    ("isGETLivechatDepartmentProps", {"count": "all"}),
    ("isGETLivechatDepartmentProps", {"onlyMyDepartments": "yes"}),
    ("isGETLivechatRoomParams", {"token": "t", "extra": "allowed"}),
    ("isGETLivechatRoomParams", {"rid": "r"}),
    ("isPUTLivechatMessageIdParams", {"token": "t", "rid": "r", "msg": "m"}),
    ("isDELETELivechatMessageIdParams", {"token": "t"}),
]


@pytest.mark.skipif(
    shutil.which("node") is None or not (HERE / "node_modules").is_dir(),
    reason="needs node and `make oracle` (npm ci in tests/oracle) to run the real ajv",
)
def test_oracle_agrees_with_the_real_ajv_validators() -> None:
    """For each corpus request, the Python oracle accepts exactly when Rocket.Chat's ajv does."""
    run = subprocess.run(
        ["node", "ajv_verdicts.mjs"],
        cwd=HERE,
        input=json.dumps(DIFFERENTIAL_CORPUS),
        check=True,
        capture_output=True,
        text=True,
    )
    ajv = json.loads(run.stdout.strip().splitlines()[-1])
    ours = [oracle.check(name, params) == [] for name, params in DIFFERENTIAL_CORPUS]
    disagreements = [
        case for case, a, o in zip(DIFFERENTIAL_CORPUS, ajv, ours, strict=True) if a != o
    ]
    assert disagreements == []
    assert True in ajv and False in ajv


def test_unclassified_route_is_reported() -> None:
    """A request on a route missing from the table is reported, so new calls get classified."""
    (problem,) = oracle.violations([_get("v1/rooms.info", roomId="r1")])
    assert "not classified" in problem


def test_url_parameter_routes_are_matched() -> None:
    """``livechat/message/<id>`` is checked with the validator of ``livechat/message/:_id``."""
    request = RecordedRequest(
        "PUT", "v1/livechat/message/m1", (), "application/json", b'{"token": "t", "rid": "r"}'
    )
    (problem,) = oracle.violations([request])
    assert "isPUTLivechatMessageIdParams" in problem and "'msg'" in problem


def test_sandbox_records_a_refused_request_and_the_oracle_reports_it() -> None:
    """Over real loopback HTTP: the sandbox records what was sent, the check flags the bad one."""
    server = SandboxRocketChat(record_rest=True).start()
    try:
        server.create_user("writer", "writer-pass", roles=["user"])
        login = requests.post(
            f"{server.url}/api/v1/login",
            json={"username": "writer", "password": "writer-pass"},
            timeout=5,
        ).json()["data"]
        headers = {"X-User-Id": login["userId"], "X-Auth-Token": login["authToken"]}
        rid = server.create_channel("general", members=["writer"])
        for body in (
            {"message": {"rid": rid, "msg": "fine"}},
            {"message": {"rid": rid, "msg": "not fine"}, "roomId": rid},
        ):
            requests.post(
                f"{server.url}/api/v1/chat.sendMessage", json=body, headers=headers, timeout=5
            )
        recorded = server.rest_requests()
    finally:
        server.stop()
    assert [r.path for r in recorded] == ["v1/login", "v1/chat.sendMessage", "v1/chat.sendMessage"]
    (problem,) = oracle.violations(recorded)
    assert "'roomId' was unexpected" in problem
