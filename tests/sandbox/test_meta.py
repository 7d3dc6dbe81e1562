"""SandboxMeta over real loopback HTTP, driven with `requests` only (never the bot's code)."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
import requests

from sandbox.meta import DEFAULT_IG_ID, DEFAULT_PAGE_ID, SandboxMeta

V = "v24.0"
REDIRECT = "https://bot.example.com/oauth/callback"
SCOPES = "instagram_basic,instagram_manage_messages,pages_manage_metadata,pages_show_list"


@pytest.fixture
def meta() -> Iterator[SandboxMeta]:
    sandbox = SandboxMeta().start()
    yield sandbox
    sandbox.stop()


class _Capture(BaseHTTPRequestHandler):
    """Records raw webhook bodies and headers; answers 200."""

    received: list[tuple[bytes, dict[str, str]]]

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append((raw, dict(self.headers)))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, list[tuple[bytes, dict[str, str]]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Capture)
    server.received = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/webhooks/instagram", server.received  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


def proof(meta: SandboxMeta, token: str) -> str:
    return hmac.new(meta.app_secret.encode(), token.encode(), hashlib.sha256).hexdigest()


def dialog(meta: SandboxMeta, **extra: str) -> str:
    params = {
        "client_id": meta.app_id,
        "redirect_uri": REDIRECT,
        "state": "st4te",
        "scope": SCOPES,
        "response_type": "code",
        **extra,
    }
    return f"{meta.dialog_url}/{V}/dialog/oauth?{urlencode(params)}"


def query(location: str) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


def exchange(
    meta: SandboxMeta, code: str, redirect: str = REDIRECT, secret: str | None = None
) -> requests.Response:
    return requests.get(
        f"{meta.graph_url}/{V}/oauth/access_token",
        params={
            "client_id": meta.app_id,
            "redirect_uri": redirect,
            "client_secret": secret or meta.app_secret,
            "code": code,
        },
        timeout=5,
    )


def login(meta: SandboxMeta) -> str:
    code = query(meta.approve_url(dialog(meta)))["code"]
    return exchange(meta, code).json()["access_token"]


def long_lived(meta: SandboxMeta, short: str) -> requests.Response:
    return requests.get(
        f"{meta.graph_url}/{V}/oauth/access_token",
        params={
            "grant_type": "fb_exchange_token",
            "client_id": meta.app_id,
            "client_secret": meta.app_secret,
            "fb_exchange_token": short,
        },
        timeout=5,
    )


def graph(
    meta: SandboxMeta,
    method: str,
    path: str,
    token: str | None,
    *,
    with_proof: bool = True,
    **kw: Any,
) -> requests.Response:
    params = dict(kw.pop("params", {}))
    if token is not None:
        params["access_token"] = token
        if with_proof:
            params["appsecret_proof"] = proof(meta, token)
    return requests.request(method, f"{meta.graph_url}/{V}/{path}", params=params, timeout=5, **kw)


def page_token(meta: SandboxMeta, user_token: str, page_id: str = DEFAULT_PAGE_ID) -> str:
    data = graph(
        meta, "GET", "me/accounts", user_token, params={"fields": "id,access_token"}
    ).json()["data"]
    return next(p["access_token"] for p in data if p["id"] == page_id)


def send(
    meta: SandboxMeta, token: str, recipient: str, message: dict[str, Any], **body: Any
) -> requests.Response:
    return graph(
        meta,
        "POST",
        f"{DEFAULT_PAGE_ID}/messages",
        token,
        json={
            "recipient": {"id": recipient},
            "messaging_type": "RESPONSE",
            "message": message,
            **body,
        },
    )


def error(resp: requests.Response) -> tuple[int, int | None]:
    err = resp.json()["error"]
    assert err["fbtrace_id"] and err["type"] in ("OAuthException", "GraphMethodException")
    return err["code"], err.get("error_subcode")


# ---------------------------------------------------------------- login dialog


def test_dialog_page_names_app_scopes_and_user(meta: SandboxMeta) -> None:
    """The dialog shows the app, the requested scopes and a Continue-as button."""
    resp = requests.get(dialog(meta), timeout=5)
    assert resp.status_code == 200
    assert "Log in with Facebook (sandbox)" in resp.text
    assert meta.app_name in resp.text and "instagram_manage_messages" in resp.text
    assert "Continue as Sandbox Admin" in resp.text and "Cancel" in resp.text


def test_dialog_continue_redirects_with_code_and_state(meta: SandboxMeta) -> None:
    """Posting the form's Continue button 302s to redirect_uri with code and state."""
    url = dialog(meta)
    form = dict(parse_qs(urlsplit(url).query), action=["continue"])
    resp = requests.post(
        url.split("?")[0], data={k: v[0] for k, v in form.items()}, allow_redirects=False, timeout=5
    )
    assert resp.status_code == 302
    location = resp.headers["Location"]
    assert location.startswith(REDIRECT + "?")
    assert query(location)["state"] == "st4te" and query(location)["code"]


def test_dialog_cancel_redirects_with_user_denied(meta: SandboxMeta) -> None:
    """Cancel redirects with Meta's access_denied parameters and the state."""
    for location in (meta.cancel_url(dialog(meta)),):
        assert query(location) == {
            "error": "access_denied",
            "error_code": "200",
            "error_description": "Permissions error",
            "error_reason": "user_denied",
            "state": "st4te",
        }
        assert "error_description=Permissions+error" in location


def test_dialog_unknown_client_id_shows_error_page(meta: SandboxMeta) -> None:
    """An unknown app id gets an error page and no redirect."""
    resp = requests.get(dialog(meta, client_id="123"), timeout=5, allow_redirects=False)
    assert resp.status_code == 400 and "Invalid App ID" in resp.text
    with pytest.raises(ValueError):
        meta.approve_url(dialog(meta, client_id="123"))


def test_business_app_without_config_id_is_not_available(meta: SandboxMeta) -> None:
    """A Business-type app's dialog needs config_id; with scope alone it is 'not available'."""
    meta.set_app_type("business")
    resp = requests.get(dialog(meta), timeout=5)
    assert resp.status_code == 400 and "isn&#x27;t available" in resp.text
    with pytest.raises(ValueError, match="isn't available"):
        meta.approve_url(dialog(meta))


def test_config_id_login_grants_the_configuration(meta: SandboxMeta) -> None:
    """config_id (with override_default_response_type) grants the configuration's set."""
    meta.set_app_type("business")
    meta.add_login_configuration("777", ["instagram_basic", "pages_show_list"])
    params = {"config_id": "777", "override_default_response_type": "true", "scope": ""}
    with pytest.raises(ValueError, match="override_default_response_type"):
        meta.approve_url(dialog(meta, config_id="777", scope=""))
    with pytest.raises(ValueError, match="config_id"):
        meta.approve_url(dialog(meta, **{**params, "config_id": "778"}))
    meta.set_login_user("Picky", pages=[{"id": "1", "name": "P"}], decline=["instagram_basic"])
    code = query(meta.approve_url(dialog(meta, **params)))["code"]
    token = exchange(meta, code).json()["access_token"]
    granted = [p["permission"] for p in graph(meta, "GET", "me/permissions", token).json()["data"]]
    assert granted == ["public_profile", "instagram_basic", "pages_show_list"]


def test_declined_scope_stays_declined_until_rerequest(meta: SandboxMeta) -> None:
    """A scope declined once is not asked again unless auth_type=rerequest."""
    pages = [{"id": "1", "name": "P"}]
    meta.set_login_user("Decliner", pages=pages, decline=["instagram_manage_messages"])

    def permissions(**extra: str) -> dict[str, str]:
        code = query(meta.approve_url(dialog(meta, **extra)))["code"]
        token = exchange(meta, code).json()["access_token"]
        data = graph(meta, "GET", "me/permissions", token).json()["data"]
        return {p["permission"]: p["status"] for p in data}

    assert permissions()["instagram_manage_messages"] == "declined"
    meta.set_login_user("Decliner", pages=pages)  # now willing to grant it
    assert permissions()["instagram_manage_messages"] == "declined"
    assert permissions(auth_type="rerequest")["instagram_manage_messages"] == "granted"


def test_unlisted_page_is_missing_from_accounts_but_readable_by_id(meta: SandboxMeta) -> None:
    """An asset-picker Page is absent from /me/accounts, named in granular_scopes."""
    meta.set_login_user("Picker", pages=[{"id": "55", "name": "Picked"}], unlisted=["55"])
    token = login(meta)
    assert graph(meta, "GET", "me/accounts", token).json()["data"] == []
    node = graph(meta, "GET", "55", token, params={"fields": "id,name,access_token"}).json()
    assert node["name"] == "Picked" and node["access_token"]
    app = requests.get(f"{meta.graph_url}/{V}/oauth/access_token", timeout=5, params={
        "grant_type": "client_credentials", "client_id": meta.app_id,
        "client_secret": meta.app_secret}).json()["access_token"]
    data = graph(meta, "GET", "debug_token", app, params={"input_token": token}).json()["data"]
    targets = {g["scope"]: g["target_ids"] for g in data["granular_scopes"]}
    assert targets["pages_show_list"] == ["55"]


# ---------------------------------------------------------------- tokens


def test_code_exchange_is_single_use(meta: SandboxMeta) -> None:
    """A code yields one bearer token; replaying it is 100/36009."""
    code = query(meta.approve_url(dialog(meta)))["code"]
    first = exchange(meta, code)
    assert first.status_code == 200
    body = first.json()
    assert body["token_type"] == "bearer" and body["expires_in"] > 0 and body["access_token"]
    again = exchange(meta, code)
    assert again.status_code == 400 and error(again) == (100, 36009)


def test_code_exchange_rejects_other_redirect_uri(meta: SandboxMeta) -> None:
    """redirect_uri must be identical to the dialog's (100/36008)."""
    code = query(meta.approve_url(dialog(meta)))["code"]
    resp = exchange(meta, code, redirect="https://bot.example.com/other")
    assert resp.status_code == 400 and error(resp) == (100, 36008)
    assert exchange(meta, code).status_code == 200  # a refused attempt does not burn it


def test_code_exchange_after_expiry_fails(meta: SandboxMeta) -> None:
    """Codes expire after ten minutes (100/36007)."""
    code = query(meta.approve_url(dialog(meta)))["code"]
    meta.advance(601)
    assert error(exchange(meta, code)) == (100, 36007)


def test_wrong_client_secret_is_rejected(meta: SandboxMeta) -> None:
    """A wrong app secret is Meta's 'Error validating client secret.' (code 1, HTTP 400)."""
    code = query(meta.approve_url(dialog(meta)))["code"]
    resp = exchange(meta, code, secret="wrong")
    assert resp.status_code == 400 and error(resp) == (1, None)
    assert "client secret" in resp.json()["error"]["message"]


def test_long_lived_exchange_returns_sixty_day_token(meta: SandboxMeta) -> None:
    """fb_exchange_token trades a short-lived user token for a ~60-day one."""
    short = login(meta)
    resp = long_lived(meta, short)
    body = resp.json()
    assert resp.status_code == 200 and body["expires_in"] > 50 * 86400
    assert body["access_token"] != short
    short_page = page_token(meta, short)
    long_page = page_token(meta, body["access_token"])
    meta.advance(2 * 3600)  # the short token and its Page token are dead, the long ones not
    assert error(graph(meta, "GET", "me", short)) == (190, 463)
    assert error(graph(meta, "GET", "me", short_page)) == (190, 463)
    assert graph(meta, "GET", "me", body["access_token"]).status_code == 200
    assert graph(meta, "GET", "me", long_page).status_code == 200


def test_app_token_debugs_user_token(meta: SandboxMeta) -> None:
    """client_credentials gives an APP_ID|... token that can call debug_token."""
    app = requests.get(
        f"{meta.graph_url}/{V}/oauth/access_token",
        params={
            "grant_type": "client_credentials",
            "client_id": meta.app_id,
            "client_secret": meta.app_secret,
        },
        timeout=5,
    ).json()["access_token"]
    assert app.startswith(meta.app_id + "|")
    user = login(meta)
    data = graph(meta, "GET", "debug_token", app, params={"input_token": user}).json()["data"]
    assert data["app_id"] == meta.app_id and data["type"] == "USER" and data["is_valid"]
    assert "instagram_manage_messages" in data["scopes"] and data["user_id"]
    meta.expire_token(user)
    data = graph(meta, "GET", "debug_token", app, params={"input_token": user}).json()["data"]
    assert data["is_valid"] is False and data["error"]["code"] == 190


# ---------------------------------------------------------------- pages


def test_accounts_lists_pages_with_and_without_instagram(meta: SandboxMeta) -> None:
    """Pages come with Page tokens; instagram_business_account only when linked."""
    meta.set_login_user(
        "Ana Admin",
        pages=[
            {
                "id": "201",
                "name": "Linked",
                "instagram_business_account": {"id": "17841400000000201", "username": "linked"},
            },
            {"id": "202", "name": "Plain"},
        ],
    )
    token = login(meta)
    resp = graph(
        meta,
        "GET",
        "me/accounts",
        token,
        params={"fields": "id,name,access_token,instagram_business_account{id,username}"},
    )
    pages = {p["id"]: p for p in resp.json()["data"]}
    assert pages["201"]["instagram_business_account"] == {
        "id": "17841400000000201",
        "username": "linked",
    }
    assert "instagram_business_account" not in pages["202"]
    assert pages["201"]["access_token"] != pages["202"]["access_token"]
    assert set(pages["202"]) == {"id", "name", "access_token"}


def test_subscribe_get_and_delete_record_installed_state(meta: SandboxMeta) -> None:
    """subscribed_apps POST/GET/DELETE with a Page token install and remove the app."""
    token = page_token(meta, login(meta))
    edge = f"{DEFAULT_PAGE_ID}/subscribed_apps"
    assert graph(meta, "GET", edge, token).json() == {"data": []}
    resp = graph(meta, "POST", edge, token, params={"subscribed_fields": "feed"})
    assert resp.json() == {"success": True} and meta.subscription(DEFAULT_PAGE_ID) == ["feed"]
    data = graph(meta, "GET", edge, token).json()["data"]
    assert data[0]["id"] == meta.app_id and data[0]["subscribed_fields"] == ["feed"]
    assert graph(meta, "DELETE", edge, token).json() == {"success": True}
    assert meta.subscription(DEFAULT_PAGE_ID) is None


def test_messages_field_without_pages_messaging_refuses_the_whole_call(meta: SandboxMeta) -> None:
    """subscribed_fields=feed,messages without pages_messaging: (#200), nothing installed."""
    token = page_token(meta, login(meta))
    resp = graph(meta, "POST", f"{DEFAULT_PAGE_ID}/subscribed_apps", token,
                 params={"subscribed_fields": "feed,messages"})
    assert resp.status_code == 403 and error(resp) == (200, None)
    assert resp.json()["error"]["message"] == (
        "(#200) To subscribe to the messages field, one of these permissions is needed:"
        " pages_messaging"
    )
    assert meta.subscription(DEFAULT_PAGE_ID) is None


def test_feed_field_needs_pages_manage_metadata(meta: SandboxMeta) -> None:
    """A Page token without pages_manage_metadata cannot install the app with feed."""
    token = meta.issue_page_token(DEFAULT_PAGE_ID, scopes=["pages_show_list"])
    resp = graph(meta, "POST", f"{DEFAULT_PAGE_ID}/subscribed_apps", token,
                 params={"subscribed_fields": "feed"})
    assert error(resp) == (200, None) and "pages_manage_metadata" in resp.text
    assert meta.subscription(DEFAULT_PAGE_ID) is None


def test_dropped_subscription_reads_back_empty(meta: SandboxMeta) -> None:
    """drop_subscription() uninstalls the app as Meta does after failed deliveries."""
    token = page_token(meta, login(meta))
    edge = f"{DEFAULT_PAGE_ID}/subscribed_apps"
    graph(meta, "POST", edge, token, params={"subscribed_fields": "feed"})
    assert meta.drop_subscription(DEFAULT_PAGE_ID)
    assert graph(meta, "GET", edge, token).json() == {"data": []}


def test_subscribe_with_user_token_is_refused(meta: SandboxMeta) -> None:
    """subscribed_apps needs a Page token (210)."""
    resp = graph(
        meta,
        "POST",
        f"{DEFAULT_PAGE_ID}/subscribed_apps",
        login(meta),
        params={"subscribed_fields": "feed"},
    )
    assert resp.status_code == 400 and error(resp)[0] == 210


def test_revoke_invalidates_user_and_page_tokens(meta: SandboxMeta) -> None:
    """DELETE /me/permissions kills the user token and its Page tokens (190)."""
    user = login(meta)
    page = page_token(meta, user)
    assert graph(meta, "DELETE", "me/permissions", user).json() == {"success": True}
    assert meta.is_revoked(user) and meta.token_state(page) == "revoked"
    assert error(graph(meta, "GET", "me/accounts", user))[0] == 190
    resp = graph(meta, "GET", f"{DEFAULT_PAGE_ID}/subscribed_apps", page)
    assert resp.status_code == 400 and error(resp)[0] == 190
    assert graph(meta, "GET", "me", login(meta)).status_code == 200  # a new login works


def test_expire_token_by_page_id_gives_190_463(meta: SandboxMeta) -> None:
    """expire_token(page id) makes that page's tokens fail with 190/463."""
    page = page_token(meta, login(meta))
    assert meta.expire_token(DEFAULT_PAGE_ID) == 1
    resp = graph(meta, "GET", f"{DEFAULT_PAGE_ID}/subscribed_apps", page)
    assert error(resp) == (190, 463) and "invalid_token" in resp.headers["WWW-Authenticate"]


# ---------------------------------------------------------------- profile


def test_profile_returns_configured_fields_with_null_name(meta: SandboxMeta) -> None:
    """A profile may have a null name and no username; only asked fields come back."""
    token = page_token(meta, login(meta))
    meta.set_profile("111", name=None, profile_pic="https://cdn.example/p.jpg")
    body = graph(meta, "GET", "111", token, params={"fields": "name,username"}).json()
    assert body == {"name": None, "id": "111"}
    meta.set_profile("222", name="Ana Souza", username="ana.souza")
    body = graph(meta, "GET", "222", token, params={"fields": "name,username"}).json()
    assert body == {"name": "Ana Souza", "username": "ana.souza", "id": "222"}


def test_profile_without_consent_is_230(meta: SandboxMeta) -> None:
    """Unknown or non-consenting people give 'User consent is required' (230)."""
    token = page_token(meta, login(meta))
    meta.set_profile("333", name="Hidden", consent=False)
    for igsid in ("333", "444"):
        resp = graph(meta, "GET", igsid, token, params={"fields": "name"})
        assert resp.status_code == 400 and error(resp) == (230, None)
        assert "User consent is required" in resp.json()["error"]["message"]


# ---------------------------------------------------------------- Send API


@pytest.fixture
def sender(meta: SandboxMeta) -> tuple[str, str]:
    """A non-expiring Page token (via a long-lived user token) and a person who just wrote."""
    igsid = meta.new_igsid()
    meta.set_last_inbound(DEFAULT_PAGE_ID, igsid)
    return page_token(meta, long_lived(meta, login(meta)).json()["access_token"]), igsid


def test_send_text_returns_ids_and_is_recorded(meta: SandboxMeta, sender: tuple[str, str]) -> None:
    """A text send answers recipient_id/message_id and is recorded for tests."""
    token, igsid = sender
    resp = send(meta, token, igsid, {"text": "Olá! ✓"})
    body = resp.json()
    assert resp.status_code == 200 and body["recipient_id"] == igsid and body["message_id"]
    (rec,) = meta.sent_messages(page_id=DEFAULT_PAGE_ID, recipient=igsid)
    assert rec["ok"] and rec["message_id"] == body["message_id"]
    assert rec["body"]["message"] == {"text": "Olá! ✓"} and "access_token" not in rec["body"]
    resp = graph(
        meta,
        "POST",
        "me/messages",
        token,
        json={
            "recipient": {"id": igsid},
            "message": {"attachment": {"type": "image", "payload": {"url": "https://x/p.png"}}},
        },
    )
    # Meta fetches URL media during the call: a host it cannot reach fails the send.
    assert resp.status_code == 400 and resp.json()["error"]["message"] == (
        "(#100) Failed to fetch the file from the url")


def test_send_over_1000_utf8_bytes_is_100(meta: SandboxMeta, sender: tuple[str, str]) -> None:
    """Text is limited to 1000 UTF-8 bytes, not characters (error 100)."""
    token, igsid = sender
    assert send(meta, token, igsid, {"text": "😀" * 250}).status_code == 200
    resp = send(meta, token, igsid, {"text": "😀" * 250 + "a"})
    assert resp.status_code == 400 and error(resp)[0] == 100
    assert "1000" in resp.json()["error"]["message"]


def test_send_of_1000_ascii_characters_is_100(meta: SandboxMeta, sender: tuple[str, str]) -> None:
    """ "Less than 1000 characters" (send-message Limitations): 999 pass, 1000 are refused."""
    token, igsid = sender
    assert send(meta, token, igsid, {"text": "a" * 999}).status_code == 200
    resp = send(meta, token, igsid, {"text": "a" * 1000})
    assert resp.status_code == 400 and error(resp)[0] == 100


def test_send_to_person_who_never_wrote_is_100(meta: SandboxMeta, sender: tuple[str, str]) -> None:
    """A recipient unknown to the page gives 100/2018001 'No matching user found'."""
    token, _ = sender
    assert error(send(meta, token, "999", {"text": "hi"})) == (100, 2018001)


def test_send_outside_24h_window_is_10(meta: SandboxMeta, sender: tuple[str, str]) -> None:
    """After 24 h only HUMAN_AGENT passes; after 7 days nothing does (10/2534022)."""
    token, igsid = sender
    meta.advance(24 * 3600 + 1)
    resp = send(meta, token, igsid, {"text": "late"})
    assert resp.status_code == 400 and error(resp) == (10, 2534022)
    assert "outside of allowed window" in resp.json()["error"]["message"]
    tagged = {"messaging_type": "MESSAGE_TAG", "tag": "HUMAN_AGENT"}
    assert send(meta, token, igsid, {"text": "agent"}, **tagged).status_code == 200
    meta.advance(6 * 86400)
    assert error(send(meta, token, igsid, {"text": "agent"}, **tagged)) == (10, 2534022)


def test_injected_send_errors_are_consumed_in_order(
    meta: SandboxMeta, sender: tuple[str, str]
) -> None:
    """Injected errors come back once each, in order, with Meta's statuses; then success."""
    token, igsid = sender
    meta.inject_send_errors(igsid, [613, 2, (551, 1545041), 190])
    first = send(meta, token, igsid, {"text": "1"})
    assert first.status_code == 400 and error(first) == (613, None)
    assert "exceeded the rate limit" in first.json()["error"]["message"]
    second = send(meta, token, igsid, {"text": "2"})
    assert second.status_code == 500 and error(second) == (2, None)
    assert error(send(meta, token, igsid, {"text": "3"})) == (551, 1545041)
    assert error(send(meta, token, igsid, {"text": "4"})) == (190, 463)
    assert send(meta, token, igsid, {"text": "5"}).status_code == 200
    outcomes = [r["error_code"] for r in meta.sent_messages(recipient=igsid)]
    assert outcomes == [613, 2, 551, 190, None]


# ---------------------------------------------------------------- appsecret_proof


def test_wrong_appsecret_proof_is_rejected_and_recorded(meta: SandboxMeta) -> None:
    """A wrong proof is 100 'Invalid appsecret_proof'; calls() records proof presence."""
    token = login(meta)
    meta.clear_records()
    assert graph(meta, "GET", "me", token).status_code == 200
    assert graph(meta, "GET", "me", token, with_proof=False).status_code == 200
    bad = graph(
        meta, "GET", "me", None, params={"access_token": token, "appsecret_proof": "0" * 64}
    )
    assert bad.status_code == 400 and error(bad) == (100, None)
    assert bad.json()["error"]["message"] == "Invalid appsecret_proof provided in the API argument"
    seen = [(c["had_proof"], c["proof_valid"], c["status"]) for c in meta.calls()]
    assert seen == [(True, True, 200), (False, None, 200), (True, False, 400)]
    assert all(token not in json.dumps(c) for c in meta.calls())


def test_missing_proof_fails_when_required(meta: SandboxMeta) -> None:
    """With require_proof, a user/page call without appsecret_proof is refused."""
    token = login(meta)
    meta.require_proof = True
    resp = graph(meta, "GET", "me", token, with_proof=False)
    assert resp.status_code == 400 and error(resp)[0] == 100
    assert graph(meta, "GET", "me", token).status_code == 200


def test_other_api_version_is_refused(meta: SandboxMeta) -> None:
    """Only the configured api_version is served on the Graph side."""
    resp = requests.get(f"{meta.graph_url}/v2.0/me", timeout=5)
    assert resp.status_code == 400 and error(resp)[0] == 2500


# ---------------------------------------------------------------- webhooks


def test_webhook_signature_verifies_over_raw_bytes(
    meta: SandboxMeta, receiver: tuple[str, list]
) -> None:
    """Bodies are compact escaped-unicode JSON; both HMACs verify over the raw bytes."""
    url, received = receiver
    payload = meta.text_event(DEFAULT_IG_ID, "6543210987654321", "äöå 👍 a/b")
    status, _ = meta.deliver(url, payload)
    assert status == 200
    raw, headers = received[0]
    assert b"\\u00e4\\u00f6\\u00e5" in raw and b"\\ud83d\\udc4d" in raw and b"a\\/b" in raw
    assert b": " not in raw and raw.isascii()
    key = meta.app_secret.encode()
    assert (
        headers["X-Hub-Signature-256"] == "sha256=" + hmac.new(key, raw, hashlib.sha256).hexdigest()
    )
    assert headers["X-Hub-Signature"] == "sha1=" + hmac.new(key, raw, hashlib.sha1).hexdigest()
    assert headers["User-Agent"] == "facebookexternalua"
    reencoded = json.dumps(json.loads(raw), ensure_ascii=False).encode()
    assert (
        hmac.new(key, reencoded, hashlib.sha256).hexdigest() not in headers["X-Hub-Signature-256"]
    )  # re-serialising breaks the signature
    assert json.loads(raw) == payload


def test_delivered_message_opens_send_window(meta: SandboxMeta, receiver: tuple[str, list]) -> None:
    """Delivering an inbound DM records the time the 24 h window counts from."""
    url, _ = receiver
    token = page_token(meta, login(meta))
    assert error(send(meta, token, "555", {"text": "hi"})) == (100, 2018001)
    meta.deliver(url, meta.text_event(DEFAULT_IG_ID, "555", "hello"))
    assert meta.last_inbound(DEFAULT_PAGE_ID, "555") is not None
    assert send(meta, token, "555", {"text": "hi"}).status_code == 200


def test_send_posts_matching_echo_webhook(
    meta: SandboxMeta, receiver: tuple[str, list], sender: tuple[str, str]
) -> None:
    """With a webhook set, each send is echoed (is_echo, same mid, app_id); off means none."""
    url, received = receiver
    token, igsid = sender
    meta.set_webhook(url)
    mid = send(meta, token, igsid, {"text": "echo me"}).json()["message_id"]
    assert meta.wait_for_echoes(5)
    raw, headers = received[-1]
    assert (
        headers["X-Hub-Signature-256"]
        == "sha256=" + hmac.new(meta.app_secret.encode(), raw, hashlib.sha256).hexdigest()
    )
    item = json.loads(raw)["entry"][0]["messaging"][0]
    assert item["sender"]["id"] == DEFAULT_IG_ID and item["recipient"]["id"] == igsid
    assert item["message"] == {
        "mid": mid,
        "is_echo": True,
        "text": "echo me",
        "app_id": int(meta.app_id),
    }
    meta.set_echoes(False)
    send(meta, token, igsid, {"text": "quiet"})
    assert meta.wait_for_echoes(5) and len(received) == 1


async def test_adeliver_works_from_async_code(
    meta: SandboxMeta, receiver: tuple[str, list]
) -> None:
    """Async callers use adeliver; the blocking deliver refuses to run on a loop."""
    url, received = receiver
    status, _ = await meta.adeliver(url, meta.read_event(DEFAULT_IG_ID, "1", "m1"))
    assert status == 200 and json.loads(received[0][0])["entry"][0]["messaging"][0]["read"]
    with pytest.raises(RuntimeError):
        meta.deliver(url, {})


def test_builders_produce_documented_shapes(meta: SandboxMeta) -> None:
    """Builders match protocols/instagram.md §2 and batch/standby assemble entries."""
    react = meta.reaction_event(DEFAULT_IG_ID, "1", "m0")["entry"][0]["messaging"][0]
    assert react["reaction"] == {"mid": "m0", "action": "react", "reaction": "love", "emoji": "❤️"}
    unreact = meta.reaction_event(DEFAULT_IG_ID, "1", "m0", action="unreact")
    assert unreact["entry"][0]["messaging"][0]["reaction"] == {"mid": "m0", "action": "unreact"}
    echo = meta.echo_event(DEFAULT_IG_ID, "1", "hi", "m9")["entry"][0]["messaging"][0]
    assert echo["sender"]["id"] == DEFAULT_IG_ID and "app_id" not in echo["message"]
    story = meta.story_reply_event(DEFAULT_IG_ID, "1", "nice")["entry"][0]["messaging"][0]
    assert set(story["message"]["reply_to"]["story"]) == {"url", "id"}
    merged = meta.batch(
        [meta.text_event(DEFAULT_IG_ID, "1", "a"), meta.unsend_event(DEFAULT_IG_ID, "1", "m1")],
        merge=True,
    )
    assert merged["object"] == "instagram" and len(merged["entry"]) == 1
    assert len(merged["entry"][0]["messaging"]) == 2
    standby = meta.as_standby(meta.postback_event(DEFAULT_IG_ID, "1", "GO"))
    assert "standby" in standby["entry"][0] and "messaging" not in standby["entry"][0]
