"""The sandbox Meta's Conversations API over loopback HTTP (`requests` only, no bot code)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from sandbox.meta import DEFAULT_IG_ID, DEFAULT_PAGE_ID, SandboxMeta

V = "v24.0"
FIELDS = "messages{id,created_time,from,to,message}"


@pytest.fixture
def meta() -> Iterator[SandboxMeta]:
    sandbox = SandboxMeta().start()
    yield sandbox
    sandbox.stop()


def get(meta: SandboxMeta, path: str, token: str, **params: Any) -> requests.Response:
    """One Graph GET; waits out the sandbox's 2 calls/s so tests are not throttled."""
    time.sleep(0.51)
    return requests.get(f"{meta.graph_url}/{V}/{path}", params=params,
                        headers={"Authorization": f"Bearer {token}"}, timeout=5)


def test_list_shows_instagram_threads_newest_first_with_user_filter(meta: SandboxMeta) -> None:
    """``platform=instagram`` lists threads by update time; ``user_id`` keeps one thread;
    without the platform, none (the Page's Messenger threads)."""
    token = meta.issue_page_token(DEFAULT_PAGE_ID)
    old, new = meta.new_igsid(), meta.new_igsid()
    meta.record_visitor_message(DEFAULT_PAGE_ID, old, "first", ts=time.time() - 60)
    meta.record_visitor_message(DEFAULT_PAGE_ID, new, "second")
    body = get(meta, f"{DEFAULT_PAGE_ID}/conversations", token, platform="instagram").json()
    assert [set(t) for t in body["data"]] == [{"id", "updated_time"}] * 2
    assert body["data"][0]["updated_time"].endswith("+0000")
    only = get(meta, f"{DEFAULT_PAGE_ID}/conversations", token, platform="instagram",
               user_id=old).json()["data"]
    assert len(only) == 1 and only[0]["id"] == body["data"][1]["id"]
    assert get(meta, f"{DEFAULT_PAGE_ID}/conversations", token).json() == {"data": []}


def test_thread_shows_only_the_newest_20_messages(meta: SandboxMeta) -> None:
    """A thread answers its newest 20 messages, newest first; an older one is 'deleted'."""
    token = meta.issue_page_token(DEFAULT_PAGE_ID)
    igsid = meta.new_igsid()
    mids = [meta.record_visitor_message(DEFAULT_PAGE_ID, igsid, f"m{n}", ts=time.time() - 30 + n)
            for n in range(25)]
    [thread] = get(meta, f"{DEFAULT_PAGE_ID}/conversations", token, platform="instagram",
                   user_id=igsid).json()["data"]
    node = get(meta, thread["id"], token, fields=FIELDS).json()
    data = node["messages"]["data"]
    assert [m["message"] for m in data] == [f"m{n}" for n in range(24, 4, -1)]
    assert data[0]["from"] == {"username": "", "id": igsid}
    assert data[0]["to"]["data"][0]["id"] == DEFAULT_IG_ID
    assert len(get(meta, f"{thread['id']}/messages", token).json()["data"]) == 20
    assert get(meta, mids[-1], token, fields="id,message").json()["message"] == "m24"
    old = get(meta, mids[0], token, fields="id,message")
    assert old.status_code == 400 and old.json()["error"]["code"] == 100
    assert "deleted" in old.json()["error"]["message"]


def test_sends_and_delivered_webhooks_are_recorded_in_the_thread(meta: SandboxMeta) -> None:
    """What the Send API accepted is in the thread, from the account, with its text."""
    token = meta.issue_page_token(DEFAULT_PAGE_ID)
    igsid = meta.new_igsid()
    meta.set_last_inbound(DEFAULT_PAGE_ID, igsid)
    sent = requests.post(f"{meta.graph_url}/{V}/{DEFAULT_PAGE_ID}/messages", json={
        "recipient": {"id": igsid}, "messaging_type": "RESPONSE", "message": {"text": "Hi!"},
    }, headers={"Authorization": f"Bearer {token}"}, timeout=5).json()
    assert [(m["id"], m["from_id"], m["text"]) for m in meta.thread(DEFAULT_PAGE_ID, igsid)] \
        == [(sent["message_id"], DEFAULT_IG_ID, "Hi!")]


def test_third_call_within_a_second_is_throttled_613(meta: SandboxMeta) -> None:
    """2 calls per second per account: the third answers code 613."""
    token = meta.issue_page_token(DEFAULT_PAGE_ID)
    url = f"{meta.graph_url}/{V}/{DEFAULT_PAGE_ID}/conversations"
    time.sleep(1.0)
    answers = [requests.get(url, params={"platform": "instagram"},
                            headers={"Authorization": f"Bearer {token}"}, timeout=5)
               for _ in range(3)]
    assert [a.status_code for a in answers[:2]] == [200, 200]
    assert answers[2].status_code == 400 and answers[2].json()["error"]["code"] == 613


def test_another_pages_threads_and_injected_errors_are_refused(meta: SandboxMeta) -> None:
    """A Page token lists only its own Page's threads; an injected error is answered once."""
    token = meta.issue_page_token(DEFAULT_PAGE_ID)
    other = get(meta, "999999/conversations", token, platform="instagram")
    assert other.status_code == 400 and other.json()["error"]["code"] == 100
    meta.inject_errors("conversations", [(10, 2018336)])
    refused = get(meta, f"{DEFAULT_PAGE_ID}/conversations", token, platform="instagram")
    assert refused.json()["error"]["code"] == 10
    assert get(meta, f"{DEFAULT_PAGE_ID}/conversations", token,
               platform="instagram").status_code == 200
