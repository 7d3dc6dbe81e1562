"""``rc-instagram doctor`` against the sandboxes: all green, then each prerequisite broken."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from aiohttp import web
from cryptography.fernet import Fernet

from bot import config as config_module
from bot.doctor import (
    FAIL,
    PASS,
    WARN,
    CheckResult,
    check_graph_version,
    check_monthly_contacts,
    diagnose,
    run_checks,
)
from bot.instagram.graph import GraphClient
from bot.instagram.oauth import login_url
from sandbox.meta import DEFAULT_IG_ID, DEFAULT_PAGE_ID, DEFAULT_PAGE_NAME, SandboxMeta
from sandbox.rocketchat import SandboxRocketChat
from storage import Page, open_store
from tests.scenarios.harness import every_rc_version, start_bot, stop_bot

BOT_USER, BOT_PASSWORD = "instagram.bot", "bot-password-123"
APP_SECRET = "sandbox-app-secret"
WEBHOOK_SECRET = "rc-webhook-secret-123"
KEY = Fernet.generate_key().decode()


def free_port() -> int:
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Setup:
    """Healthy sandboxes plus the config (as a dict) that matches them."""

    rc: SandboxRocketChat
    meta: SandboxMeta
    raw: dict[str, Any]
    tmp: Path

    @property
    def port(self) -> int:
        return int(self.raw["server"]["listen"].rsplit(":", 1)[1])

    def config(self) -> config_module.Config:
        return config_module.from_dict(self.raw, env={})

    def write(self) -> str:
        path = self.tmp / "config.yaml"
        path.write_text(yaml.safe_dump(self.raw), encoding="utf-8")
        return str(path)

    async def check(self, **options: Any) -> dict[str, CheckResult]:
        options.setdefault("timeout", 2.0)
        results = await run_checks(self.config(), **options)
        return {r.name: r for r in results}


@pytest.fixture
def meta() -> Iterator[SandboxMeta]:
    server = SandboxMeta(app_secret=APP_SECRET).start()
    try:
        yield server
    finally:
        server.stop()


async def connect_page(meta: SandboxMeta, config: config_module.Config) -> Page:
    """Connect the sandbox page the way the bot does: login code, tokens, subscribe."""
    location = meta.approve_url(login_url(config, "doctor-test-state"))
    code = parse_qs(urlsplit(location).query)["code"][0]
    ig = config.instagram
    graph = GraphClient(ig.graph_url, ig.api_version, ig.app_id, ig.app_secret.reveal())
    try:
        short = await graph.exchange_code(code, config.redirect_uri)
        user_token = await graph.long_lived_user_token(short)
        pages = await graph.pages(user_token)
        page_token = next(p["access_token"] for p in pages if p["id"] == DEFAULT_PAGE_ID)
        await graph.subscribe_page(DEFAULT_PAGE_ID, page_token)
    finally:
        await graph.close()
    return Page(page_id=DEFAULT_PAGE_ID, name=DEFAULT_PAGE_NAME, instagram_id=DEFAULT_IG_ID,
                username="sandboxshop", page_token=page_token, user_token=user_token,
                subscribed=True)


@pytest.fixture
async def setup(rocketchat: SandboxRocketChat, meta: SandboxMeta, tmp_path: Path) -> Setup:
    """Every prerequisite met: roles, settings, webhook, a connected page, an encrypted store."""
    rc = rocketchat
    rc.create_user(BOT_USER, BOT_PASSWORD, roles=["bot", "livechat-manager"], name="Instagram")
    rc.create_user("admin.alice", "admin-password-123", roles=["user", "admin"])
    rc.create_user("agent.ana", "agent-password-123", roles=["user", "livechat-agent"])
    rc.create_department("Instagram", agents=["agent.ana"])
    port = free_port()
    public_url = f"http://127.0.0.1:{port}"
    rc.set_setting("Message_AllowUnrecognizedSlashCommand", True)
    rc.set_setting("Livechat_webhookUrl", public_url + "/webhooks/rocketchat")
    rc.set_setting("Livechat_secret_token", WEBHOOK_SECRET)
    rc.set_setting("Livechat_webhook_on_agent_message", True)
    rc.set_setting("Livechat_webhook_on_close", True)
    raw = {
        "rocketchat": {"url": rc.url, "user": BOT_USER, "password": BOT_PASSWORD,
                       "webhook_secret": WEBHOOK_SECRET},
        "instagram": {"app_id": meta.app_id, "app_secret": APP_SECRET, "verify_token": "vt-123",
                      "graph_url": meta.graph_url, "dialog_url": meta.dialog_url,
                      "api_version": meta.api_version},
        "server": {"listen": f"127.0.0.1:{port}", "public_url": public_url},
        "storage": {"path": str(tmp_path / "data" / "store.json"), "encryption_key": KEY},
    }
    s = Setup(rc, meta, raw, tmp_path)
    page = await connect_page(meta, s.config())
    store = open_store(raw["storage"]["path"], KEY)
    await store.open()
    await store.save_page(page)
    await store.close()
    return s


def statuses(results: dict[str, CheckResult]) -> dict[str, str]:
    return {name: r.status for name, r in results.items()}


@every_rc_version
async def test_all_green_sandbox_passes(setup: Setup, rc_version: str) -> None:
    """With every prerequisite met nothing fails; only the expected notes are WARNs. The
    bot holds only bot + livechat-manager: the webhook is verified all the same."""
    results = await setup.check()
    failed = {n: r.detail for n, r in results.items() if r.status == FAIL}
    assert failed == {}
    warned = {n for n, r in results.items() if r.status == WARN}
    # Loopback http is fine for the sandbox; the bot itself is not running here. Up to
    # 7.0 the admins can only be listed over DDP, which the doctor does not open.
    old = rc_version < "7.1"
    # The file-access settings are privileged: the bot can only say it cannot verify them.
    assert warned == {"public_url.https", "public_url.reachable", "rocketchat.file_access"} | (
        {"rocketchat.admins"} if old else set())
    assert "cannot verify" in results["rocketchat.file_access"].detail
    if not old:
        assert results["rocketchat.admins"].detail == "admins (admin): admin.alice"
    assert "livechat/integrations.settings" in results["omnichannel.webhook"].detail
    for name in ("rocketchat.reachable", "rocketchat.login", "rocketchat.permissions",
                 "omnichannel.departments", "rocketchat.slash_commands", "omnichannel.enabled",
                 "omnichannel.webhook", "rocketchat.rate_limiter", "meta.app",
                 "meta.api_version", "storage.files",
                 "storage.encryption_key", "storage.open", f"page {DEFAULT_PAGE_ID} token",
                 f"page {DEFAULT_PAGE_ID} subscribed", f"page {DEFAULT_PAGE_ID} instagram",
                 "omnichannel.monthly_contacts"):
        assert results[name].status == PASS, (name, results[name].detail)
    major_minor = rc_version.rsplit(".", 1)[0]  # /api/info drops the patch (removePatchInfo)
    assert results["rocketchat.reachable"].detail.endswith(f"Rocket.Chat {major_minor}")
    assert "but the bot is not running" in results["public_url.reachable"].detail


async def test_running_bot_passes_public_url_and_holds_the_store(setup: Setup) -> None:
    """With the bot up, /healthz answers through public_url (PASS); its store lock is a WARN."""
    bot, task = await start_bot(setup.config())
    try:
        await bot.realtime.wait_connected(5)
        results = await setup.check()
    finally:
        await stop_bot(bot, task)
    assert results["public_url.reachable"].status == PASS
    assert results["storage.open"].status == WARN
    assert "in use" in results["storage.open"].detail
    assert not [n for n, r in results.items() if r.status == FAIL]


def test_doctor_command_prints_one_line_per_check_and_exits_0(setup: Setup) -> None:
    """The CLI prints a PASS/WARN/FAIL line per check and exits 0 when nothing fails."""
    path = setup.write()
    proc = subprocess.run(
        [sys.executable, "-m", "bot.cli", "doctor", "--config", path, "--timeout", "2"],
        capture_output=True, text=True, timeout=60, env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert all(line.split()[0] in (PASS, WARN, FAIL) for line in lines[:-1])
    assert lines[0].startswith("PASS  config")
    assert lines[-1].startswith("doctor: ") and "0 failed" in lines[-1]
    assert BOT_PASSWORD not in proc.stdout and APP_SECRET not in proc.stdout
    assert WEBHOOK_SECRET not in proc.stdout and KEY not in proc.stdout


def test_invalid_config_fails_naming_the_key(setup: Setup) -> None:
    """A bad config is one FAIL line naming the key, exit 1, and nothing else runs."""
    setup.raw["server"]["listen"] = "nonsense"
    lines: list[str] = []
    assert diagnose(setup.write(), echo=lines.append) == 1
    assert len(lines) == 1
    assert lines[0].startswith("FAIL  config") and "server.listen" in lines[0]
    assert "fix:" in lines[0]


def test_any_fail_makes_the_exit_code_nonzero(setup: Setup) -> None:
    """diagnose() returns 1 as soon as one check fails (here: slash commands off)."""
    setup.rc.set_setting("Message_AllowUnrecognizedSlashCommand", False)
    lines: list[str] = []
    assert diagnose(setup.write(), echo=lines.append, timeout=2.0) == 1
    assert any(line.startswith("FAIL  rocketchat.slash_commands") for line in lines)


def expect_fail(results: dict[str, CheckResult], name: str, *fix_words: str) -> CheckResult:
    result = results[name]
    assert result.status == FAIL, (name, result)
    for word in fix_words:
        assert word in result.fix, (word, result.fix)
    assert "-> fix:" in result.line()
    return result


async def test_unreachable_rocketchat_fails_and_skips_dependent_checks(setup: Setup) -> None:
    """Rocket.Chat down: reachable FAILs with the url fix; login-dependent checks only warn."""
    setup.raw["rocketchat"]["url"] = f"http://127.0.0.1:{free_port()}"
    results = await setup.check()
    expect_fail(results, "rocketchat.reachable", "rocketchat.url")
    assert results["rocketchat.login"].status == WARN
    assert [n for n, r in results.items() if r.status == FAIL] == ["rocketchat.reachable"]


async def test_wrong_password_fails_login(setup: Setup) -> None:
    """Rejected credentials: the login line FAILs and names the keys to fix."""
    setup.raw["rocketchat"]["password"] = "not-the-password"
    results = await setup.check()
    expect_fail(results, "rocketchat.login", "rocketchat.password")


async def test_bot_without_livechat_manager_fails_permissions_and_departments(
    setup: Setup,
) -> None:
    """Missing livechat-manager: no department permission, so both lines FAIL."""
    setup.rc.set_role(BOT_USER, ["bot"])
    results = await setup.check()
    r = expect_fail(results, "rocketchat.permissions", "livechat-manager")
    assert "view-livechat-departments" in r.detail
    expect_fail(results, "omnichannel.departments", "livechat-manager")


async def test_bot_without_rate_limit_bypass_fails_permissions(setup: Setup) -> None:
    """api-bypass-rate-limit taken from the bot role: permissions FAIL names it."""
    setup.rc.set_permission("api-bypass-rate-limit", ["admin"])
    results = await setup.check()
    r = expect_fail(results, "rocketchat.permissions", "Administration > Permissions")
    assert "api-bypass-rate-limit" in r.detail


async def test_bot_without_dm_permission_fails_permissions(setup: Setup) -> None:
    """create-d taken away: the bot could not DM admins; permissions FAIL names it."""
    setup.rc.set_permission("create-d", ["admin", "user"])
    results = await setup.check()
    assert "create-d" in expect_fail(results, "rocketchat.permissions").detail


async def test_unrecognized_slash_commands_off_fails(setup: Setup) -> None:
    """The setting off (the default): FAIL with where to turn it on."""
    setup.rc.set_setting("Message_AllowUnrecognizedSlashCommand", False)
    results = await setup.check()
    expect_fail(results, "rocketchat.slash_commands", "Allow Unrecognized Slash Commands")


async def test_omnichannel_disabled_fails(setup: Setup) -> None:
    """Livechat_enabled off: FAIL with where to enable Omnichannel."""
    setup.rc.set_setting("Livechat_enabled", False)
    results = await setup.check()
    expect_fail(results, "omnichannel.enabled", "Omnichannel enabled")


@pytest.mark.parametrize(
    ("setting", "value", "fix"),
    [
        ("Livechat_webhookUrl", "http://elsewhere.example/hook", "/webhooks/rocketchat"),
        ("Livechat_secret_token", "some-other-secret", "rocketchat.webhook_secret"),
        ("Livechat_webhook_on_agent_message", False, "Send request on agent messages"),
        ("Livechat_webhook_on_close", False, "Send request on chat close"),
    ],
)
async def test_misconfigured_webhook_fails(setup: Setup, setting: str, value: Any,
                                           fix: str) -> None:
    """Each webhook setting wrong in turn: the webhook line FAILs with that fix."""
    setup.rc.set_setting(setting, value)
    results = await setup.check()
    expect_fail(results, "omnichannel.webhook", fix)


async def test_unreadable_webhook_settings_warn_cannot_verify(setup: Setup) -> None:
    """Neither livechat/integrations.settings (view-livechat-manager) nor the privileged
    settings readable: the webhook cannot be checked, WARN with where to look."""
    setup.rc.set_permission("view-livechat-manager", ["admin"])
    results = await setup.check()
    r = results["omnichannel.webhook"]
    assert r.status == WARN and "cannot verify" in r.detail
    assert "Omnichannel > Webhooks" in r.fix


@pytest.mark.parametrize(
    ("settings", "status", "words"),
    [
        ({}, WARN, "only room members may read"),
        ({"FileUpload_Restrict_to_room_members": False,
          "FileUpload_Restrict_to_users_who_can_access_room": True}, PASS, "livechat-manager"),
        ({"FileUpload_Restrict_to_room_members": False}, PASS, "any logged-in user"),
        ({"FileUpload_Restrict_to_users_who_can_access_room": True}, WARN, "nobody passes"),
        ({"FileUpload_Enable_json_web_token_for_files": False}, FAIL, "every file an agent"),
        ({"FileUpload_ProtectFiles": False}, PASS, "not protected"),
    ],
)
async def test_file_access_says_whether_late_files_reach_the_visitor(
    setup: Setup, settings: dict[str, bool], status: str, words: str
) -> None:
    """With the privileged settings readable, the line follows Rocket.Chat's file-access
    rule for a bot that is no room member: Rocket.Chat's defaults refuse it a file whose
    link's hour is over (WARN), and refuse it every file when links carry no JWT (FAIL)."""
    setup.rc.set_permission("view-privileged-setting", ["admin", "bot"])
    for sid, value in settings.items():
        setup.rc.set_setting(sid, value)
    result = (await setup.check())["rocketchat.file_access"]
    assert (result.status, words in result.detail) == (status, True), result
    if status != PASS:
        assert "Restrict file access to users who can access room" in result.fix


async def test_file_access_off_protection_is_read_without_privileges(setup: Setup) -> None:
    """FileUpload_ProtectFiles is a public setting: a bot without view-privileged-setting
    still finds out that files are open."""
    setup.rc.set_setting("FileUpload_ProtectFiles", False)
    result = (await setup.check())["rocketchat.file_access"]
    assert result.status == PASS and "not protected" in result.detail


@pytest.mark.parametrize(
    ("rc_version", "ceiling", "fix"),
    [
        ("7.4.0", "livechat/visitor and livechat/room 5 per 60 s and livechat/message 10 per "
         "60 s (the default)", "lifts livechat/message only"),
        ("6.13.0", "livechat/visitor and livechat/room 5 per 60 s", "hard-coded 5 per 60 s"),
        ("6.11.0", "livechat/visitor, livechat/room and livechat/message 10 per 60 s (the "
         "default) each", "API_Enable_Rate_Limiter_Limit_Calls_Default"),
    ],
    indirect=["rc_version"],
)
async def test_rate_limiter_on_states_the_ceiling_of_this_version(
    setup: Setup, ceiling: str, fix: str
) -> None:
    """Limiter on, found by its X-RateLimit headers (the setting is privileged): WARN with
    the real ceiling of the server's version and what lifts it; FAIL above the expected
    volume."""
    setup.rc.set_setting("API_Enable_Rate_Limiter", True)
    results = await setup.check()
    r = results["rocketchat.rate_limiter"]
    assert r.status == WARN
    assert ceiling in r.detail and "X-RateLimit headers" in r.detail
    assert "per bridge IP and shared by all visitors" in r.detail
    assert fix in r.fix and "X-Real-IP" in r.fix
    results = await setup.check(expected_rate=50)
    expect_fail(results, "rocketchat.rate_limiter", "API_Enable_Rate_Limiter")


async def test_department_permission_is_one_the_route_accepts(setup: Setup) -> None:
    """view-livechat-manager alone does not let the bot list departments: the permissions
    line names view-livechat-departments / view-l-room, as the route does."""
    setup.rc.set_permission("view-livechat-departments", ["admin"])
    setup.rc.set_permission("view-l-room", ["admin"])
    results = await setup.check()
    assert "view-livechat-departments" in expect_fail(results, "rocketchat.permissions").detail
    assert "view-l-room" in expect_fail(results, "omnichannel.departments").detail


async def test_bot_without_livechat_rooms_permission_fails_permissions(setup: Setup) -> None:
    """view-livechat-rooms taken away: notes and echoes could not be posted; FAIL names it."""
    setup.rc.set_permission("view-livechat-rooms", ["admin"])
    results = await setup.check()
    assert "view-livechat-rooms" in expect_fail(results, "rocketchat.permissions").detail


@pytest.mark.parametrize("rc_version", ["6.13.0"], indirect=True)
async def test_slash_command_setting_verified_on_6x_past_the_first_page(setup: Setup) -> None:
    """6.x ignores settings.public?_id=: the doctor still finds the setting (paging), so
    the line is a real PASS/FAIL, not "cannot verify"."""
    for n in range(120):
        setup.rc.set_setting(f"A_Filler_{n:03d}", n, public=True)
    results = await setup.check()
    assert results["rocketchat.slash_commands"].status == PASS
    setup.rc.set_setting("Message_AllowUnrecognizedSlashCommand", False)
    results = await setup.check()
    expect_fail(results, "rocketchat.slash_commands", "Allow Unrecognized Slash Commands")


async def test_nobody_holding_admin_roles_fails(setup: Setup) -> None:
    """No user holds rocketchat.admin_roles: no admin command could ever run; FAIL."""
    setup.raw["rocketchat"]["admin_roles"] = ["instagram-admin"]
    results = await setup.check()
    expect_fail(results, "rocketchat.admins", "rocketchat.admin_roles")


async def test_foreign_server_on_public_url_fails(setup: Setup) -> None:
    """public_url answers, but not with our /healthz: FAIL telling where to route it."""
    app = web.Application()
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", setup.port)
    await site.start()
    try:
        results = await setup.check()
    finally:
        await runner.cleanup()
    r = expect_fail(results, "public_url.reachable", "server.listen")
    assert "HTTP 404" in r.detail


async def test_public_url_not_reaching_listen_fails(setup: Setup) -> None:
    """public_url leads nowhere while server.listen is free: FAIL (proxy/DNS fix)."""
    setup.raw["server"]["public_url"] = f"http://127.0.0.1:{free_port()}"
    results = await setup.check()
    expect_fail(results, "public_url.reachable", "route public_url to server.listen")


async def test_plain_http_public_url_fails_https_check(setup: Setup) -> None:
    """A non-loopback http:// public_url: Meta refuses it, so the https line FAILs."""
    setup.raw["server"]["public_url"] = "http://bot.invalid"
    results = await setup.check(probe_listener=False)
    expect_fail(results, "public_url.https", "HTTPS reverse proxy")


async def test_wrong_app_secret_fails_meta_app(setup: Setup) -> None:
    """Meta refuses the app credentials: FAIL naming app_id/app_secret; pages only warn."""
    setup.raw["instagram"]["app_secret"] = "wrong-secret"
    results = await setup.check()
    expect_fail(results, "meta.app", "instagram.app_secret")
    assert results[f"page {DEFAULT_PAGE_ID} token"].status == WARN


async def test_expired_page_token_fails(setup: Setup) -> None:
    """debug_token says invalid: the page's token line FAILs with the re-authorize fix."""
    setup.meta.expire_token(DEFAULT_PAGE_ID)
    results = await setup.check()
    expect_fail(results, f"page {DEFAULT_PAGE_ID} token", "/instagram authorize")


async def test_unsubscribed_page_fails(setup: Setup) -> None:
    """The app removed from the page (no webhooks): FAIL with /instagram subscribe."""
    store = open_store(setup.raw["storage"]["path"], KEY)
    await store.open()
    page = await store.page(DEFAULT_PAGE_ID)
    await store.close()
    assert page is not None
    ig = setup.config().instagram
    graph = GraphClient(ig.graph_url, ig.api_version, ig.app_id, ig.app_secret.reveal())
    try:
        await graph.unsubscribe_page(DEFAULT_PAGE_ID, page.page_token)
    finally:
        await graph.close()
    results = await setup.check()
    expect_fail(results, f"page {DEFAULT_PAGE_ID} subscribed",
                f"/instagram subscribe {DEFAULT_PAGE_ID}")


async def test_unlinked_instagram_account_fails(setup: Setup) -> None:
    """The Instagram account unlinked from the page: FAIL with where to link it."""
    setup.meta.set_login_user("Sandbox Admin", pages=[{"id": DEFAULT_PAGE_ID,
                                                        "name": DEFAULT_PAGE_NAME}])
    results = await setup.check()
    expect_fail(results, f"page {DEFAULT_PAGE_ID} instagram", "Linked accounts")


async def test_world_readable_store_file_fails(setup: Setup) -> None:
    """A data file readable by others (tokens!): FAIL with the chmod to run."""
    path = setup.raw["storage"]["path"]
    os.chmod(path, 0o644)
    results = await setup.check()
    r = expect_fail(results, "storage.files", "chmod 600")
    assert path in r.fix


async def test_missing_key_warns_and_malformed_key_fails(setup: Setup) -> None:
    """No key: WARN (plain-text tokens); a malformed key: FAIL with how to generate one."""
    setup.raw["storage"]["path"] = str(setup.tmp / "fresh" / "store.json")
    setup.raw["storage"]["encryption_key"] = ""
    results = await setup.check()
    r = results["storage.encryption_key"]
    assert r.status == WARN and "plain text" in r.detail
    setup.raw["storage"]["encryption_key"] = "not-a-fernet-key"
    results = await setup.check()
    expect_fail(results, "storage.encryption_key", "Fernet.generate_key")


async def test_wrong_key_fails_opening_the_store(setup: Setup) -> None:
    """A well-formed but different key: the store refuses to open and the line FAILs."""
    setup.raw["storage"]["encryption_key"] = Fernet.generate_key().decode()
    results = await setup.check()
    r = results["storage.open"]
    assert r.status == FAIL and "not the key" in r.detail


@pytest.mark.parametrize(("visitors", "status"), [(0, PASS), (79, PASS), (80, WARN), (250, WARN)])
def test_monthly_contacts_near_the_plan_limit_warns(visitors: int, status: str) -> None:
    """This month's visitors near or over the 100 contacts of Starter/Pro are a WARN."""
    result = check_monthly_contacts(visitors)
    assert result.status == status
    assert f"{visitors} Instagram visitor(s)" in result.detail
def _version_check(setup: Setup, version: str, day: str) -> CheckResult:
    setup.raw["instagram"]["api_version"] = version
    now = dt.datetime.fromisoformat(day + "T12:00:00+00:00").timestamp()
    return check_graph_version(SimpleNamespace(config=setup.config()), now)  # type: ignore[arg-type]


@pytest.mark.parametrize(("version", "day", "status", "words"), [
    ("v21.0", "2026-12-04", WARN, "stops working on 21 January 2027 (in 48 days)"),
    ("v20.0", "2026-12-04", FAIL, "stopped working on 24 September 2026"),
    ("v24.0", "2026-12-04", PASS, "available until 18 February 2028"),
    ("v24.0", "2027-11-25", WARN, "in 85 days"),
    ("v26.0", "2026-12-04", PASS, "no end date announced"),
    ("v16.0", "2026-12-04", WARN, "not in the bridge's table"),
])
def test_graph_version_near_or_past_its_end_is_flagged(
    setup: Setup, version: str, day: str, status: str, words: str
) -> None:
    """A Graph version within 90 days of its end WARNs, past it FAILs, naming the date."""
    result = _version_check(setup, version, day)
    assert result.status == status and words in result.detail, result.detail
    if status != PASS:
        assert "v24.0" in result.fix


async def test_asset_picker_page_missing_from_accounts_still_passes(setup: Setup) -> None:
    """A page /me/accounts leaves out (Login for Business asset picker) is read by id."""
    setup.meta.set_login_user("Sandbox Admin", unlisted=[DEFAULT_PAGE_ID], pages=[
        {"id": DEFAULT_PAGE_ID, "name": DEFAULT_PAGE_NAME,
         "instagram_business_account": {"id": DEFAULT_IG_ID, "username": "sandboxshop"}}])
    results = await setup.check()
    assert results[f"page {DEFAULT_PAGE_ID} instagram"].status == PASS
