"""``rc-instagram doctor``: check every prerequisite and print one line per check.

Each check is a small async function returning one :class:`CheckResult` (or a few, for
the per-page checks): ``PASS``, ``WARN`` or ``FAIL`` with a one-line detail and, unless
it passed, the fix. A check that depends on an earlier failure (no login, no store)
says so with a WARN instead of failing twice; the first failure carries the fix.
:func:`diagnose` prints the lines and returns the exit code: 1 when any line FAILs.

The doctor is read-only towards Rocket.Chat and Meta: it logs in, reads settings and
tokens, and never sends a message or changes a setting. The only thing it may start is
a short-lived probe listener on ``server.listen`` when the bot is not running, to tell
"public_url does not reach this host" from "the bot is just not running".
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import os
import secrets
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import requests

from bot import config as config_module
from bot.config import Config
from bot.contacts import INCLUDED_CONTACTS, month_start
from bot.instagram import versions
from bot.instagram.accounts import INSTAGRAM_ROUTE
from bot.instagram.graph import GraphAuthError, GraphClient, GraphError, GraphRetryable
from bot.instagram.instagram_login import InstagramLoginClient
from bot.instagram.oauth import REQUIRED_SCOPES
from bot.rocketchat.rest import (
    AuthenticationFailed,
    NotAllowed,
    RocketChatError,
    RocketChatREST,
    RouteMissing,
    Unavailable,
)

Status = Literal["PASS", "WARN", "FAIL"]
PASS: Status = "PASS"
WARN: Status = "WARN"
FAIL: Status = "FAIL"

#: The Rocket.Chat permissions the bot's roles must grant, and what each is for.
#: ``livechat/department`` accepts ``view-livechat-departments`` or ``view-l-room`` and
#: nothing else (``app/livechat/imports/server/rest/departments.ts``, audit R7/C3).
REQUIRED_PERMISSIONS: dict[str, str] = {
    "create-d": "open DMs to admins for command replies",
    "view-livechat-departments": "list Omnichannel departments (page routing)",
    "view-livechat-rooms": "post notes and echoes into Omnichannel rooms it does not serve",
    "api-bypass-rate-limit": "exempts the bot's own REST calls from the rate limiter",
}
PERMISSION_ALTERNATIVES: dict[str, tuple[str, ...]] = {
    "view-livechat-departments": ("view-l-room",),
}
#: Needed only with instagram.human_agent_tag: users.list tells bot accounts from people.
HUMAN_AGENT_PERMISSION = ("view-d-room", "tell bot agents from people (HUMAN_AGENT tag)")
#: The roles the README tells the admin to give the bot account.
EXPECTED_ROLES = ("bot", "livechat-manager")
#: ``livechat/visitor`` and ``livechat/room`` have their own hard-coded 5 per 60 s since
#: 6.12.0 (``v1/visitor.ts:13-20``, ``v1/room.ts:34-41``, audit L0); before that, and for
#: ``livechat/message`` in every version, the default limiter applies (10 per 60 s).
LIVECHAT_HARD_LIMIT = 5
LIVECHAT_HARD_LIMIT_SINCE = (6, 12)
DEFAULT_LIMIT_CALLS = 10
DEFAULT_LIMIT_MS = 60000
TOKEN_EXPIRY_WARN_DAYS = 7
MIN_SERVER_MAJOR = 6

WEBHOOK_SETTINGS_WHERE = (
    "Administration > Settings > Omnichannel > Webhooks: Webhook URL "
    "<public_url>/webhooks/rocketchat, Secret Token = rocketchat.webhook_secret, "
    "'Send request on agent messages' and 'Send request on chat close' on"
)


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: a status, what was found, and how to fix it."""

    name: str
    status: Status
    detail: str
    fix: str = ""

    def line(self) -> str:
        """The one printed line: ``PASS  name  detail`` (plus ``-> fix:`` unless PASS)."""
        text = f"{self.status}  {self.name:<33} {self.detail}"
        if self.fix and self.status != PASS:
            text += f" -> fix: {self.fix}"
        return text


def _skipped(name: str, because: str) -> CheckResult:
    return CheckResult(name, WARN, f"not checked: {because}")


@dataclass
class Checkup:
    """State shared by the checks of one doctor run (clients, and what earlier checks found)."""

    config: Config
    rest: RocketChatREST
    graph: GraphClient
    timeout: float = 5.0
    expected_rate: float | None = None  # visitor messages per minute the admin expects
    probe_listener: bool = True
    reachable: bool = False
    logged_in: bool = False
    auth: tuple[str, str] | None = None  # (user_id, auth token) for the extra GETs
    app_ok: bool = False
    ig_graph: InstagramLoginClient | None = None  # with instagram.instagram_login
    settings: dict[str, Any] = field(default_factory=dict)
    unreadable: set[str] = field(default_factory=set)
    server_version: tuple[int, int] | None = None  # (major, minor) from /api/info

    # -- helpers -------------------------------------------------------------------
    async def setting(self, setting_id: str) -> Any:
        """A Rocket.Chat setting, cached; raises NotAllowed when the bot cannot read it."""
        if setting_id in self.settings:
            return self.settings[setting_id]
        if setting_id in self.unreadable:
            raise NotAllowed(f"settings: {setting_id} is not readable")
        try:
            value = await self.rest.get_setting(setting_id)
        except NotAllowed:
            self.unreadable.add(setting_id)
            raise
        self.settings[setting_id] = value
        return value

    async def rc_get(self, route: str, **params: str) -> tuple[int, Any]:
        """GET ``/api/v1/<route>`` with the bot's auth; ``(status, json or None)``.

        Used only for the read-only routes the REST wrapper does not cover.
        """
        headers = {}
        if self.auth:
            headers = {"X-User-Id": self.auth[0], "X-Auth-Token": self.auth[1]}
        url = f"{self.config.rocketchat.url}/api/v1/{route}"

        def get() -> tuple[int, Any]:
            try:
                resp = requests.get(url, params=params, headers=headers, timeout=self.timeout)
            except requests.RequestException:
                return 0, None
            try:
                return resp.status_code, resp.json()
            except ValueError:
                return resp.status_code, None

        return await asyncio.to_thread(get)

    async def public_headers(self, route: str) -> dict[str, str] | None:
        """The response headers of an unauthenticated GET ``/api/v1/<route>`` (None: no answer).

        Unauthenticated on purpose: the bot's own calls bypass the limiter
        (``api-bypass-rate-limit``), visitors' never do.
        """
        url = f"{self.config.rocketchat.url}/api/v1/{route}"

        def get() -> dict[str, str] | None:
            try:
                resp = requests.get(url, timeout=self.timeout)
            except requests.RequestException:
                return None
            return dict(resp.headers)

        return await asyncio.to_thread(get)


def _version_tuple(version: str) -> tuple[int, int] | None:
    parts = version.split(".")
    try:
        return int(parts[0]), int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        return None


# -- Rocket.Chat --------------------------------------------------------------------


async def check_rocketchat_reachable(c: Checkup) -> CheckResult:
    """``GET /api/info`` answers, with a supported version."""
    name, url = "rocketchat.reachable", c.config.rocketchat.url
    try:
        info = await c.rest.server_info()
    except RocketChatError as exc:
        return CheckResult(
            name, FAIL, f"{url}: {exc}",
            "check rocketchat.url (scheme, host, port) and that Rocket.Chat is up and "
            "reachable from this host",
        )
    c.reachable = True
    version = str(info.get("version") or (info.get("info") or {}).get("version") or "")
    if not version:
        return CheckResult(name, WARN, f"{url} answers but reports no version",
                           "make sure rocketchat.url points at Rocket.Chat itself")
    c.server_version = _version_tuple(version)
    major = c.server_version[0] if c.server_version else 0
    if major < MIN_SERVER_MAJOR:
        return CheckResult(name, WARN, f"{url}: Rocket.Chat {version} (tested with 6.x and 7.x)",
                           "upgrade Rocket.Chat to 6.x or newer")
    return CheckResult(name, PASS, f"{url}: Rocket.Chat {version}")


async def check_login(c: Checkup) -> CheckResult:
    """The bot's credentials are accepted."""
    name = "rocketchat.login"
    if not c.reachable:
        return _skipped(name, "Rocket.Chat unreachable")
    rc = c.config.rocketchat
    how = "personal access token" if rc.user_id and rc.token else "password"
    try:
        c.auth = await c.rest.login()
    except AuthenticationFailed:
        who = rc.user_id if how == "personal access token" else rc.user
        return CheckResult(
            name, FAIL, f"Rocket.Chat refused the bot's {how} for {who}",
            "check rocketchat.user and rocketchat.password (or rocketchat.user_id and "
            "rocketchat.token); the account must exist, be active and have no 2FA "
            "(or a PAT with 'Ignore Two Factor')",
        )
    except RocketChatError as exc:
        return CheckResult(name, FAIL, f"login failed: {exc}", "check rocketchat.url")
    c.logged_in = True
    return CheckResult(name, PASS, f"logged in as {c.rest.username} ({how})")


async def check_permissions(c: Checkup) -> CheckResult:
    """The bot's roles grant the permissions the bridge uses."""
    name = "rocketchat.permissions"
    if not c.logged_in:
        return _skipped(name, "no login")
    me = await c.rest.me()
    roles = set(me.get("roles") or [])
    missing_roles = [r for r in EXPECTED_ROLES if r not in roles]
    roles_text = ", ".join(sorted(roles)) or "none"
    fix_roles = (
        f"Administration > Users > {c.rest.username} > Roles: add "
        + " and ".join(EXPECTED_ROLES)
    )
    status, body = await c.rc_get("permissions.listAll")
    table: dict[str, set[str]] | None = None
    if status == 200 and isinstance(body, dict):
        table = {
            str(p.get("_id")): set(p.get("roles") or [])
            for p in body.get("update") or []
            if isinstance(p, dict)
        }
    if table is None:
        # Without the permission table, judge by the roles the README prescribes.
        if missing_roles:
            return CheckResult(
                name, FAIL,
                f"bot roles: {roles_text}; missing {', '.join(missing_roles)} "
                "(permission table not readable)",
                fix_roles,
            )
        return CheckResult(name, PASS, f"bot roles: {roles_text} (permission table not readable)")
    missing: list[str] = []
    required = dict(REQUIRED_PERMISSIONS)
    if c.config.instagram.human_agent_tag:
        required[HUMAN_AGENT_PERMISSION[0]] = HUMAN_AGENT_PERMISSION[1]
    for permission, purpose in required.items():
        options = (permission, *PERMISSION_ALTERNATIVES.get(permission, ()))
        if not any(table.get(p, set()) & roles for p in options):
            missing.append(f"{permission} ({purpose})")
    if missing:
        return CheckResult(
            name, FAIL, f"bot roles {roles_text} lack: {'; '.join(missing)}",
            fix_roles + ", or grant the listed permissions to one of its roles "
            "(Administration > Permissions)",
        )
    if "admin" in roles:
        return CheckResult(name, WARN, f"bot roles: {roles_text} (admin is more than it needs)",
                           "remove the admin role from the bot account; bot + "
                           "livechat-manager suffice")
    return CheckResult(name, PASS, f"bot roles: {roles_text}; all needed permissions granted")


async def check_departments(c: Checkup) -> CheckResult:
    """The bot can list Omnichannel departments (needed to route pages)."""
    name = "omnichannel.departments"
    if not c.logged_in:
        return _skipped(name, "no login")
    try:
        departments = await c.rest.departments()
    except NotAllowed:
        return CheckResult(name, FAIL,
                           "the bot may not list Omnichannel departments (needs "
                           "view-livechat-departments or view-l-room)",
                           "give the bot account the livechat-manager role")
    except RocketChatError as exc:
        return CheckResult(name, FAIL, f"livechat/department: {exc}",
                           "check that Omnichannel is enabled")
    names = ", ".join(sorted(str(d.get("name", d.get("_id"))) for d in departments)[:5])
    detail = f"{len(departments)} department(s)" + (f": {names}" if names else "")
    return CheckResult(name, PASS, detail)


async def check_slash_commands(c: Checkup) -> CheckResult:
    """``Message_AllowUnrecognizedSlashCommand`` is on, so ``/instagram`` reaches the bot."""
    name = "rocketchat.slash_commands"
    if not c.reachable:
        return _skipped(name, "Rocket.Chat unreachable")
    fix = ("Administration > Settings > Message > Allow Unrecognized Slash Commands = on "
           "(Message_AllowUnrecognizedSlashCommand)")
    try:
        value = await c.setting("Message_AllowUnrecognizedSlashCommand")
    except NotAllowed:
        return CheckResult(name, WARN, "cannot verify Message_AllowUnrecognizedSlashCommand",
                           f"check {fix}")
    except RocketChatError as exc:
        return CheckResult(name, WARN, f"cannot verify: {exc}", f"check {fix}")
    if value is True:
        return CheckResult(name, PASS, "Message_AllowUnrecognizedSlashCommand is on")
    return CheckResult(
        name, FAIL,
        "Message_AllowUnrecognizedSlashCommand is off: the web client swallows /instagram",
        fix,
    )


async def check_omnichannel_enabled(c: Checkup) -> CheckResult:
    """Omnichannel (``Livechat_enabled``) is on."""
    name = "omnichannel.enabled"
    if not c.reachable:
        return _skipped(name, "Rocket.Chat unreachable")
    fix = "Administration > Settings > Omnichannel > Omnichannel enabled = on"
    try:
        enabled = await c.setting("Livechat_enabled")
    except RocketChatError:
        # Public fallback: livechat/config says {config: {enabled: bool}}.
        status, body = await c.rc_get("livechat/config")
        config = body.get("config") if isinstance(body, dict) else None
        if status != 200 or not isinstance(config, dict):
            return CheckResult(name, WARN, "cannot verify Livechat_enabled", f"check {fix}")
        enabled = config.get("enabled")
    if enabled is True:
        return CheckResult(name, PASS, "Omnichannel is enabled")
    return CheckResult(name, FAIL, "Omnichannel is disabled (Livechat_enabled off)", fix)


async def _webhook_settings(c: Checkup, ids: tuple[str, ...]) -> tuple[dict[str, Any], str] | None:
    """The webhook settings and where they were read; None when the bot may read neither.

    ``livechat/integrations.settings`` returns them to ``view-livechat-manager``, which the
    prescribed livechat-manager role holds (``app/livechat/imports/server/rest/
    integrations.ts``, audit C1); ``settings/<id>`` needs the admin-only
    ``view-privileged-setting``.
    """
    status, body = await c.rc_get("livechat/integrations.settings")
    listed = body.get("settings") if status == 200 and isinstance(body, dict) else None
    if isinstance(listed, list):
        found = {str(s.get("_id")): s.get("value") for s in listed if isinstance(s, dict)}
        if all(sid in found for sid in ids):
            return found, "livechat/integrations.settings"
    values: dict[str, Any] = {}
    for sid in ids:
        try:
            values[sid] = await c.setting(sid)
        except RocketChatError:
            return None
    return values, "settings"


async def check_webhook(c: Checkup) -> CheckResult:
    """The Omnichannel webhook points at us, with our secret and the events we need."""
    name = "omnichannel.webhook"
    if not c.logged_in:
        return _skipped(name, "no login")
    expected_url = c.config.server.public_url.rstrip("/") + "/webhooks/rocketchat"
    ids = ("Livechat_webhookUrl", "Livechat_secret_token", "Livechat_webhook_on_agent_message",
           "Livechat_webhook_on_close")
    read = await _webhook_settings(c, ids)
    if read is None:
        return CheckResult(
            name, WARN,
            "cannot verify: the bot may read neither livechat/integrations.settings "
            "(view-livechat-manager) nor the privileged settings",
            f"give the bot the livechat-manager role, or check by hand in "
            f"{WEBHOOK_SETTINGS_WHERE}",
        )
    values, source = read
    problems: list[str] = []
    fixes: list[str] = []
    url = str(values["Livechat_webhookUrl"] or "").rstrip("/")
    if url != expected_url:
        problems.append(f"Webhook URL is {url or 'empty'!r}, expected {expected_url!r}")
        fixes.append(f"set Webhook URL to {expected_url}")
    secret = str(values["Livechat_secret_token"] or "")
    if not secret or not secrets.compare_digest(
        secret.encode(), c.config.rocketchat.webhook_secret.reveal().encode()
    ):
        problems.append("Secret Token differs from rocketchat.webhook_secret")
        fixes.append("set Secret Token to the value of rocketchat.webhook_secret")
    for sid, label in (("Livechat_webhook_on_agent_message", "Send request on agent messages"),
                       ("Livechat_webhook_on_close", "Send request on chat close")):
        if values[sid] is not True:
            problems.append(f"'{label}' is off")
            fixes.append(f"turn on '{label}'")
    if problems:
        return CheckResult(
            name, FAIL, "; ".join(problems),
            "Administration > Settings > Omnichannel > Webhooks: " + "; ".join(fixes),
        )
    return CheckResult(name, PASS, f"{expected_url}, secret matches, agent-message and close "
                       f"on (read from {source})")


#: What the admin changes so the bot may read a room's files without the link's JWT.
FILE_ACCESS_FIX = (
    "Administration > Settings > File Upload: 'Restrict file access to users who can "
    "access room' on and 'Restrict file access to room members' off (the bot's "
    "livechat-manager role can access livechat rooms); on servers without the first "
    "setting (before 2024) only turning 'room members' off helps, which lets any logged-in "
    "user read files (README \"Outbound attachments\")"
)


async def check_file_access(c: Checkup) -> CheckResult:
    """Whether the bot may read an agent's file without the link's one-hour JWT.

    The bot fetches ``/file-upload/…`` with the link's ``?token=`` and its own
    credentials (``RocketChatREST.download``). After the hour (a reply delayed by a Meta
    outage or a page awaiting re-authorization), or with JWTs off, only its own access
    counts, and by default only room members pass: the file is refused and the agent told
    (``requestCanAccessFiles``; ``sandbox/rocketchat/files.py``). The file-access settings
    are privileged: a bot without ``view-privileged-setting`` gets a WARN, not a guess.
    """
    name = "rocketchat.file_access"
    if not c.logged_in:
        return _skipped(name, "no login")
    try:
        protected = await c.setting("FileUpload_ProtectFiles")
    except RocketChatError:
        protected = True
    if protected is False:
        return CheckResult(name, PASS, "uploaded files are not protected (FileUpload_ProtectFiles "
                           "off): the bot can fetch every file, however late")
    try:
        members_only = await c.setting("FileUpload_Restrict_to_room_members")
        jwt = await c.setting("FileUpload_Enable_json_web_token_for_files")
    except RocketChatError:
        return CheckResult(
            name, WARN,
            "cannot verify: the file-access settings are privileged (view-privileged-setting); "
            "with Rocket.Chat's defaults a file in a reply delayed more than an hour is refused "
            "and the agent told",
            "check by hand: " + FILE_ACCESS_FIX,
        )
    try:
        can_access = await c.setting("FileUpload_Restrict_to_users_who_can_access_room")
    except RocketChatError:
        can_access = None  # a server from before the setting (RocketChat/Rocket.Chat#32329)
    if members_only is not True and can_access is not True:
        return CheckResult(name, PASS, "any logged-in user may read room files: the bot can "
                           "fetch every file, however late")
    if can_access is True and members_only is not True:
        return CheckResult(name, PASS, "users who can access a room may read its files: the "
                           "bot (livechat-manager) can fetch every file, however late")
    rule = ("both file-access restrictions are on, so nobody passes"
            if can_access is True else "only room members may read a room's files")
    if jwt is not True:
        return CheckResult(
            name, FAIL,
            f"{rule} and file links carry no JWT (FileUpload_Enable_json_web_token_for_files "
            "off): every file an agent sends is refused to the bot",
            FILE_ACCESS_FIX + "; or turn 'Enable json web tokens protection to file uploads' on",
        )
    return CheckResult(
        name, WARN,
        f"{rule}: a file in a reply delayed more than the link's hour (a Meta outage, a page "
        "awaiting re-authorization) is refused to the bot and the agent told",
        FILE_ACCESS_FIX,
    )


async def check_admins(c: Checkup) -> CheckResult:
    """Someone holds one of ``rocketchat.admin_roles`` (else no admin command can run)."""
    name = "rocketchat.admins"
    if not c.logged_in:
        return _skipped(name, "no login")
    wanted = c.config.rocketchat.admin_roles
    try:
        names = await c.rest.users_with_roles(wanted)
    except RouteMissing:
        # 6.x and 7.0 lack the REST route; the running bot asks DDP getUserRoles instead.
        return CheckResult(
            name, WARN,
            "not checked here: this Rocket.Chat has no roles.getUsersInPublicRoles "
            "(6.x/7.0); the running bot reads admins over DDP getUserRoles instead",
            f"check by hand that someone holds {', '.join(wanted)} (Administration > Users)",
        )
    if not names:
        return CheckResult(
            name, FAIL, f"nobody holds {', '.join(wanted)}: no one can run admin commands",
            "give an administrator one of those roles, or fix rocketchat.admin_roles (only "
            "roles with a description are listed: not bot, user or app)",
        )
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    return CheckResult(name, PASS, f"admins ({', '.join(wanted)}): {shown}")


async def _limiter_enabled(c: Checkup) -> tuple[bool | None, str]:
    """Whether the API rate limiter is on, and how that was found out.

    ``API_Enable_Rate_Limiter`` is a privileged setting. Without it the limiter shows
    itself: it sets ``X-RateLimit-*`` headers on every limited answer to a caller
    without ``api-bypass-rate-limit`` (``app/api/server/api.ts``, audit L4), so an
    unauthenticated ``livechat/config`` (public, default limit) tells.
    """
    try:
        return bool(await c.setting("API_Enable_Rate_Limiter")), "API_Enable_Rate_Limiter"
    except RocketChatError:
        pass
    headers = await c.public_headers("livechat/config")
    if headers is None:
        return None, "not readable, and livechat/config did not answer"
    if any(k.lower() == "x-ratelimit-limit" for k in headers):
        return True, "X-RateLimit headers on public livechat/config"
    return False, ("no X-RateLimit headers on public livechat/config; a proxy that strips "
                   "them would hide the limiter")


async def _default_limit(c: Checkup) -> tuple[int, float, bool]:
    """``(calls, window seconds, known)`` of the default limiter (privileged settings)."""
    try:
        calls = int(await c.setting("API_Enable_Rate_Limiter_Limit_Calls_Default"))
        window = float(await c.setting("API_Enable_Rate_Limiter_Limit_Time_Default")) / 1000
        return calls, window, True
    except (RocketChatError, TypeError, ValueError):
        return DEFAULT_LIMIT_CALLS, DEFAULT_LIMIT_MS / 1000, False


async def check_rate_limiter(c: Checkup) -> CheckResult:
    """State the ceiling Rocket.Chat's API rate limiter puts on visitor traffic, for this
    server's version, and what the admin can do about it (audit L0, D3)."""
    name = "rocketchat.rate_limiter"
    if not c.reachable:
        return _skipped(name, "Rocket.Chat unreachable")
    enabled, how = await _limiter_enabled(c)
    if enabled is False:
        return CheckResult(name, PASS,
                           f"API rate limiter off ({how}): no ceiling on visitor traffic")
    calls, window, known = await _default_limit(c)
    per_min = calls * 60 / window if window else float(calls)
    default = f"{calls} per {window:g} s" + ("" if known else " (the default)")
    version = c.server_version
    hard = version is None or version >= LIVECHAT_HARD_LIMIT_SINCE
    shown = f"Rocket.Chat {version[0]}.{version[1]}" if version else "this Rocket.Chat"
    if hard:
        since = "" if version else " (5 on 6.12.0 and later, the default before)"
        rooms = min(float(LIVECHAT_HARD_LIMIT), per_min)
        ceiling = (
            f"{shown} allows livechat/visitor and livechat/room {LIVECHAT_HARD_LIMIT} per 60 s"
            f"{since} and livechat/message {default}"
        )
        fix = (
            "only turning the limiter off lifts the hard-coded 5 per 60 s on livechat/visitor "
            "and livechat/room: Administration > Settings > Rate Limiter > API Rate Limiter > "
            "Enable Rate Limiter = off (API_Enable_Rate_Limiter); raising 'Default Number "
            "Calls To The Rate Limiter' (API_Enable_Rate_Limiter_Limit_Calls_Default) lifts "
            "livechat/message only"
        )
    else:
        rooms = per_min
        ceiling = (
            f"{shown} allows livechat/visitor, livechat/room and livechat/message {default} "
            "each (from 6.12.0 visitor and room are fixed at 5 per 60 s)"
        )
        fix = (
            "Administration > Settings > Rate Limiter > API Rate Limiter: raise 'Default "
            "Number Calls To The Rate Limiter' (API_Enable_Rate_Limiter_Limit_Calls_Default) "
            "or turn Enable Rate Limiter off (API_Enable_Rate_Limiter)"
        )
    ceiling += (
        f", per bridge IP and shared by all visitors: at most ~{rooms:g} new conversations "
        f"and ~{per_min:g} visitor messages per minute (the excess waits in the queue)"
    )
    fix += ("; the buckets are per client IP, so a reverse proxy must pass X-Real-IP (or set "
            "HTTP_FORWARDED_COUNT) or every web-widget visitor shares the bridge's")
    state = "on" if enabled else "state unknown, assuming the default (on)"
    if c.expected_rate is not None and c.expected_rate > per_min:
        return CheckResult(
            name, FAIL,
            f"API rate limiter {state}: {ceiling}; below the expected "
            f"{c.expected_rate:g} messages/min",
            fix,
        )
    return CheckResult(name, WARN, f"API rate limiter {state} ({how}): {ceiling}",
                       fix + " if you expect more")


# -- public URL -----------------------------------------------------------------------


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


async def check_public_url_https(c: Checkup) -> CheckResult:
    """Meta only calls https:// URLs (webhooks and the OAuth redirect)."""
    name = "public_url.https"
    url = c.config.server.public_url
    parts = urlsplit(url)
    if parts.scheme == "https":
        return CheckResult(name, PASS, f"{url} is https")
    if _is_loopback(parts.hostname):
        return CheckResult(name, WARN, f"{url} is plain http on loopback: only this machine "
                           "(the sandbox) can reach it",
                           "use an https:// public_url for a real deployment")
    return CheckResult(name, FAIL, f"{url} is plain http: Meta refuses non-https callback URLs",
                       "put the bridge behind an HTTPS reverse proxy and set server.public_url "
                       "to its https:// address")


async def check_public_url(c: Checkup) -> CheckResult:
    """``public_url/healthz`` reaches this bridge (a running bot, or a probe listener)."""
    name = "public_url.reachable"
    url = c.config.server.public_url.rstrip("/") + "/healthz"
    status, body, error = await _fetch_json(url, c.timeout)
    if error is None and isinstance(body, dict) and {"status", "realtime", "storage"} <= set(body):
        if status == 200 and body.get("status") == "ok":
            return CheckResult(name, PASS, f"{url} answers: the bot is up and healthy")
        return CheckResult(
            name, WARN,
            f"{url} answers but the bot is degraded (realtime={body.get('realtime')}, "
            f"storage={body.get('storage')})",
            "see the bot's log: realtime false = no DDP connection to Rocket.Chat, "
            "storage false = the data files cannot be written",
        )
    if error is None:
        return CheckResult(
            name, FAIL, f"{url} answers HTTP {status}, but not with rc-instagram's /healthz",
            f"route {c.config.server.public_url} to server.listen ({c.config.server.listen})",
        )
    if not c.probe_listener:
        return CheckResult(name, FAIL, f"{url}: {error}",
                           "start the bot (rc-instagram run) and route public_url to "
                           f"server.listen ({c.config.server.listen})")
    return await _probe(c, name, url, error)


async def _fetch_json(url: str, timeout: float) -> tuple[int, Any, str | None]:
    def get() -> tuple[int, Any, str | None]:
        try:
            resp = requests.get(url, timeout=timeout, allow_redirects=True)
        except requests.Timeout:
            return 0, None, "timed out"
        except requests.RequestException as exc:
            return 0, None, f"no answer ({type(exc).__name__})"
        try:
            return resp.status_code, resp.json(), None
        except ValueError:
            return resp.status_code, None, None

    return await asyncio.to_thread(get)


async def _probe(c: Checkup, name: str, url: str, error: str) -> CheckResult:
    """Nothing answers: listen on server.listen for a moment and see if public_url gets here."""
    from aiohttp import web

    nonce = secrets.token_hex(16)

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"probe": nonce})

    app = web.Application()
    app.add_routes([web.get("/healthz", healthz)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    server = c.config.server
    try:
        site = web.TCPSite(runner, server.host, server.port)
        try:
            await site.start()
        except OSError as exc:
            return CheckResult(
                name, FAIL,
                f"{url}: {error}, and server.listen {server.listen} is taken "
                f"({exc.strerror}) by something that is not this bot",
                "stop the other process or change server.listen",
            )
        _, body, probe_error = await _fetch_json(url, c.timeout)
    finally:
        await runner.cleanup()
    if isinstance(body, dict) and body.get("probe") == nonce:
        return CheckResult(
            name, WARN,
            f"{url} reaches server.listen ({server.listen}), but the bot is not running",
            "start it: rc-instagram run",
        )
    return CheckResult(
        name, FAIL,
        f"{url} does not reach server.listen {server.listen} "
        f"({probe_error or 'another server answered'})",
        "route public_url to server.listen (reverse proxy, DNS, firewall)",
    )


# -- Meta -------------------------------------------------------------------------------


async def check_meta_app(c: Checkup) -> CheckResult:
    """The Meta app id and secret are accepted (an app access token can be had)."""
    name = "meta.app"
    ig = c.config.instagram
    try:
        await c.graph.app_token()
    except GraphRetryable as exc:
        if exc.code is None and (exc.status is None or exc.status >= 500):
            return CheckResult(name, FAIL, f"cannot reach the Graph API at {ig.graph_url}: {exc}",
                               "check instagram.graph_url and outbound HTTPS from this host")
        # Meta answers a bad client secret with code 1 ("Error validating client secret").
        return CheckResult(
            name, FAIL, f"Meta refused the app credentials of app {ig.app_id}: {exc}",
            "check instagram.app_id and instagram.app_secret (App Dashboard > Settings > Basic)",
        )
    except GraphError as exc:
        return CheckResult(
            name, FAIL, f"Meta refused the app credentials of app {ig.app_id}: {exc}",
            "check instagram.app_id and instagram.app_secret (App Dashboard > Settings > Basic)",
        )
    c.app_ok = True
    return CheckResult(name, PASS, f"app {ig.app_id}: credentials valid (app token issued)")


async def check_instagram_login_app(c: Checkup) -> CheckResult | list[CheckResult]:
    """The Instagram app's id and secret (Instagram Login route), when configured.

    The route has no app token. A code exchange with a code that cannot be valid tells
    the two apart: Meta checks the client secret first (code 101) and only then the code.
    """
    name = "instagram_login.app"
    login = c.config.instagram.instagram_login
    if c.ig_graph is None:
        return []
    try:
        await c.ig_graph.exchange_instagram_code("doctor-check-invalid-code",
                                                 c.config.instagram_redirect_uri)
    except GraphRetryable as exc:
        return CheckResult(name, FAIL, f"cannot reach {login.token_url}: {exc}",
                           "check instagram.instagram_login.token_url and outbound HTTPS")
    except GraphError as exc:
        text = str(exc).lower()
        if "client secret" in text or "platform app" in text:
            return CheckResult(
                name, FAIL, f"Instagram refused the app credentials of app {login.app_id}: {exc}",
                "check instagram.instagram_login.app_id and app_secret (App Dashboard > "
                "Instagram > API setup with Instagram login > Business login settings)")
        return CheckResult(name, PASS, f"Instagram app {login.app_id}: credentials accepted "
                           "(a made-up code was refused as a code)")
    return CheckResult(name, FAIL, "Instagram accepted a made-up code", "report this")


async def check_instagram_account(c: Checkup, page: Any, now: float) -> list[CheckResult]:
    """An Instagram-Login account: token lifetime (it must be refreshed) and subscription."""
    prefix = f"account {page.page_id}"
    label = f"@{page.username or page.page_id} (Instagram Login)"
    reauth = "an admin runs /instagram authorize and picks Log in with Instagram"
    if c.ig_graph is None:
        return [CheckResult(f"{prefix} token", FAIL, f"{label}: instagram.instagram_login is "
                            "not configured, so this account cannot be served",
                            "configure instagram.instagram_login (or unauthorize it)")]
    results: list[CheckResult] = []
    days = (page.token_expires_at - now) / 86400 if page.token_expires_at else 0.0
    if page.needs_reauth or days <= 0:
        results.append(CheckResult(f"{prefix} token", FAIL,
                                   f"{label}: the token has expired or was refused", reauth))
        return results
    try:
        account = await c.ig_graph.account(page.page_token)
    except GraphError as exc:
        results.append(CheckResult(f"{prefix} token", FAIL, f"{label}: GET me: {exc}", reauth))
        return results
    if str(account.get("user_id") or account.get("id")) != page.instagram_id:
        results.append(CheckResult(f"{prefix} token", FAIL,
                                   f"{label}: the token names another account", reauth))
    elif days < 7:
        results.append(CheckResult(
            f"{prefix} token", WARN, f"{label}: token valid for {days:.1f} more days and "
            "not yet refreshed (the bot refreshes it when fewer than 10 remain)",
            "keep the bot running with network access; see its log for refresh errors"))
    else:
        results.append(CheckResult(f"{prefix} token", PASS,
                                   f"{label}: token valid for {days:.0f} more days"))
    name = f"{prefix} subscribed"
    if not page.subscribed:
        results.append(CheckResult(name, WARN, f"{label}: bridging stopped by an admin",
                                   f"/instagram subscribe {page.page_id} to resume"))
        return results
    try:
        apps = await c.ig_graph.subscribed_apps(page.page_id, page.page_token)
    except GraphError as exc:
        results.append(CheckResult(name, FAIL, f"{label}: me/subscribed_apps: {exc}",
                                   f"/instagram subscribe {page.page_id}"))
        return results
    if any("messages" in (a.get("subscribed_fields") or []) for a in apps):
        results.append(CheckResult(name, PASS, f"{label}: webhooks on (messages)"))
    else:
        results.append(CheckResult(name, FAIL, f"{label}: webhooks are off for this account",
                                   f"/instagram subscribe {page.page_id}"))
    return results


def check_graph_version(c: Checkup, now: float) -> CheckResult:
    """The configured Graph API version is not past, or within 90 days of, its end."""
    name = "meta.api_version"
    version = c.config.instagram.api_version
    fix = (f"set instagram.api_version to a newer version (v24.0 is available until "
           f"{versions.END_DATES['v24.0']:%d %B %Y}) and run doctor again")
    end = versions.end_date(version)
    if end is None:
        if versions.is_newer_than_table(version):
            return CheckResult(name, PASS, f"{version}: no end date announced yet")
        return CheckResult(name, WARN, f"{version}: not in the bridge's table of Graph "
                           "versions (too old?)", fix)
    today = dt.datetime.fromtimestamp(now, dt.UTC).date()
    days = (end - today).days
    if days < 0:
        return CheckResult(name, FAIL, f"{version} stopped working on {end:%d %B %Y}", fix)
    if days <= versions.WARN_DAYS:
        return CheckResult(name, WARN, f"{version} stops working on {end:%d %B %Y} "
                           f"(in {days} days)", fix)
    return CheckResult(name, PASS, f"{version}: available until {end:%d %B %Y}")


async def check_page(c: Checkup, page: Any, now: float) -> list[CheckResult]:
    """One connected page: token valid, app subscribed, Instagram account still linked."""
    prefix = f"page {page.page_id}"
    label = f"{page.name or page.page_id}" + (f" (@{page.username})" if page.username else "")
    reauth = "an admin runs /instagram authorize again and picks this page"
    if not c.app_ok:
        return [_skipped(f"{prefix} token", "no app token")]
    results: list[CheckResult] = []
    if page.needs_reauth:
        results.append(CheckResult(f"{prefix} token", FAIL,
                                   f"{label}: marked for re-authorization (Meta said 190)", reauth))
        return results
    try:
        data = await c.graph.debug_token(page.page_token)
    except GraphError as exc:
        results.append(CheckResult(f"{prefix} token", FAIL, f"{label}: debug_token: {exc}", reauth))
        return results
    if not data.get("is_valid"):
        error = data.get("error")
        message = error.get("message") if isinstance(error, dict) else None
        why = f" ({message})" if message else ""
        results.append(CheckResult(f"{prefix} token", FAIL,
                                   f"{label}: the page token is invalid{why}", reauth))
        return results
    app_id = str(data.get("app_id") or "")
    scopes = set(data.get("scopes") or [])
    missing = [s for s in REQUIRED_SCOPES if scopes and s not in scopes]
    expires_at = data.get("expires_at") or 0
    if app_id and app_id != c.config.instagram.app_id:
        results.append(CheckResult(f"{prefix} token", FAIL,
                                   f"{label}: token belongs to app {app_id}, not "
                                   f"{c.config.instagram.app_id}", reauth))
    elif missing:
        results.append(CheckResult(f"{prefix} token", FAIL,
                                   f"{label}: token lacks {', '.join(missing)}",
                                   reauth + ", granting every permission asked"))
    elif expires_at and expires_at - now < TOKEN_EXPIRY_WARN_DAYS * 86400:
        days = max(0.0, (expires_at - now) / 86400)
        results.append(CheckResult(f"{prefix} token", WARN,
                                   f"{label}: token valid but expires in {days:.1f} days", reauth))
    else:
        results.append(CheckResult(f"{prefix} token", PASS, f"{label}: token valid"))

    name = f"{prefix} subscribed"
    if not page.subscribed:
        results.append(CheckResult(name, WARN, f"{label}: bridging stopped by an admin",
                                   f"/instagram subscribe {page.page_id} to resume"))
    else:
        try:
            apps = await c.graph.subscribed_apps(page.page_id, page.page_token)
        except GraphError as exc:
            results.append(CheckResult(name, FAIL, f"{label}: subscribed_apps: {exc}",
                                       f"/instagram subscribe {page.page_id}"))
        else:
            ours = [a for a in apps if str(a.get("id")) == c.config.instagram.app_id]
            if ours:
                results.append(CheckResult(name, PASS, f"{label}: app installed on the page"))
            else:
                results.append(CheckResult(
                    name, FAIL, f"{label}: the app is not subscribed to the page (no webhooks)",
                    f"/instagram subscribe {page.page_id}"))

    name = f"{prefix} instagram"
    if not page.user_token:
        results.append(CheckResult(name, WARN, f"{label}: cannot verify (no user token stored)",
                                   reauth))
        return results
    try:
        pages = await c.graph.pages(page.user_token)
    except GraphAuthError:
        results.append(CheckResult(
            name, FAIL, f"{label}: the admin's login token is no longer valid", reauth))
        return results
    except GraphError as exc:
        results.append(CheckResult(name, FAIL, f"{label}: /me/accounts: {exc}", reauth))
        return results
    match = next((p for p in pages if str(p.get("id")) == page.page_id), None)
    if match is None:
        # Pages granted in the Login for Business asset picker can be missing from
        # /me/accounts yet readable by id (audit row 6).
        with contextlib.suppress(GraphError):
            match = await c.graph.page(page.page_id, page.user_token) or None
    ig = (match or {}).get("instagram_business_account") or {}
    if match is None:
        results.append(CheckResult(name, FAIL,
                                   f"{label}: the login no longer grants this page", reauth))
    elif not ig.get("id"):
        results.append(CheckResult(
            name, FAIL, f"{label}: no Instagram professional account is linked to the page",
            "link it in the Page's settings (Linked accounts > Instagram), then " + reauth))
    elif str(ig["id"]) != page.instagram_id:
        results.append(CheckResult(
            name, FAIL, f"{label}: the page is now linked to Instagram account {ig['id']}, "
            f"not {page.instagram_id}", reauth))
    else:
        results.append(CheckResult(name, PASS,
                                   f"{label}: linked to Instagram account {page.instagram_id}"))
    return results


# -- storage --------------------------------------------------------------------------------


def storage_files(path: str) -> list[Path]:
    """The store's files for ``storage.path`` that exist (data, journals, lock)."""
    from storage import StoreFiles

    return [Path(f) for f in StoreFiles.for_path(path).all() if Path(f).is_file()]


def check_storage_files(c: Checkup) -> CheckResult:
    """The data directory is usable and no data file is readable by others (tokens)."""
    name = "storage.files"
    if c.config.storage.url:
        return CheckResult(name, PASS, "storage.url is set: PostgreSQL, no data files")
    path = Path(c.config.storage.path)
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.exists():
        ancestor = directory
        while not ancestor.exists() and ancestor != ancestor.parent:
            ancestor = ancestor.parent
        if os.access(ancestor, os.W_OK):
            return CheckResult(name, PASS, f"{directory} will be created (mode 0700) on first run")
        return CheckResult(name, FAIL, f"{directory} does not exist and {ancestor} is not writable",
                           f"create {directory} owned by the bot's user, mode 0700")
    if not os.access(directory, os.W_OK | os.X_OK):
        return CheckResult(name, FAIL, f"{directory} is not writable by this user",
                           "chown it to the bot's user, or point storage.path elsewhere")
    files = storage_files(str(path))
    loose = [f for f in files if stat.S_IMODE(f.stat().st_mode) & 0o077]
    if loose:
        names = ", ".join(f"{f.name} ({stat.S_IMODE(f.stat().st_mode):04o})" for f in loose)
        return CheckResult(name, FAIL, f"readable by other users: {names}",
                           "chmod 600 " + " ".join(str(f) for f in loose))
    mode = stat.S_IMODE(directory.stat().st_mode)
    if mode & 0o007:
        return CheckResult(name, WARN, f"{directory} is open to other users ({mode:04o})",
                           f"chmod 700 {directory}")
    if not files:
        return CheckResult(name, PASS, f"{directory} writable; no data yet (created on first run)")
    return CheckResult(name, PASS, f"{len(files)} file(s) in {directory}, owner-only")


def check_storage_key(c: Checkup) -> CheckResult:
    """An encryption key is set and well-formed (tokens encrypted at rest)."""
    name = "storage.encryption_key"
    key = c.config.storage.encryption_key.reveal()
    generate = ("RC_INSTAGRAM_STORAGE_KEY=$(python -c 'from cryptography.fernet import Fernet; "
                "print(Fernet.generate_key().decode())')")
    if not key:
        return CheckResult(name, WARN, "no key: access tokens are stored in plain text",
                           f"set storage.encryption_key, e.g. {generate}")
    from cryptography.fernet import Fernet

    try:
        Fernet(key.encode())
    except (ValueError, TypeError):
        return CheckResult(name, FAIL, "storage.encryption_key is not a valid Fernet key",
                           f"use 32 url-safe base64 bytes: {generate}")
    return CheckResult(name, PASS, "tokens are encrypted at rest")


def check_monthly_contacts(visitors: int) -> CheckResult:
    """This month's Instagram visitors against the contacts a Starter/Pro plan includes."""
    name = "omnichannel.monthly_contacts"
    found = (f"{visitors} Instagram visitor(s) wrote this month; Rocket.Chat counts each one "
             "answered as a monthly active contact")
    if visitors >= INCLUDED_CONTACTS * 0.8:
        return CheckResult(
            name, WARN, f"{found}, near or over the {INCLUDED_CONTACTS} that Starter and Pro "
            "include (across all channels)",
            "check Administration > Workspace > Subscription; going over may interrupt "
            "Omnichannel until the month ends or the plan changes",
        )
    return CheckResult(name, PASS, found)


async def check_store_and_pages(c: Checkup, now: float) -> list[CheckResult]:
    """Open the store (wrong key, corruption, lock) and check every connected page."""
    from storage import open_store
    from storage.base import StorageError, StoreLocked

    name = "storage.open"
    path = c.config.storage.where
    if not c.config.storage.url and not storage_files(path):
        return [
            CheckResult(name, PASS, f"{path}: no data yet"),
            CheckResult("pages", WARN, "no page connected yet",
                        "in Rocket.Chat, as an admin: /instagram authorize"),
        ]
    key = c.config.storage.encryption_key.reveal() or None
    try:
        store = open_store(c.config.storage.location, key)
    except StorageError as exc:
        return [CheckResult(name, FAIL, str(exc), "set a valid storage.encryption_key")]
    try:
        try:
            await store.open()
        except StoreLocked as exc:
            return [
                CheckResult(name, WARN, f"in use: {exc}"),
                CheckResult("pages", WARN, "not checked: the store is held by the running bot",
                            "stop the bot to check the pages, or run /instagram pages"),
            ]
        except StorageError as exc:
            return [CheckResult(name, FAIL, str(exc), "see the message; never delete the data "
                                "files to 'fix' this, they hold the queued messages")]
        results = [CheckResult(name, PASS, f"{path} opens with the configured key")]
        pages = await store.pages()
        if not pages:
            results.append(CheckResult("pages", WARN, "no page connected yet",
                                       "in Rocket.Chat, as an admin: /instagram authorize"))
        for page in pages:
            check = check_instagram_account if page.route == INSTAGRAM_ROUTE else check_page
            results.extend(await check(c, page, now))
        if pages:
            results.append(check_monthly_contacts(sum(
                (await store.visitors_since(month_start(now))).values())))
        return results
    finally:
        with contextlib.suppress(Exception):
            await store.close()


# -- the runner ----------------------------------------------------------------------------


async def run_checks(
    config: Config,
    *,
    expected_rate: float | None = None,
    timeout: float = 5.0,
    probe_listener: bool = True,
    clock: Callable[[], float] = time.time,
    emit: Callable[[CheckResult], None] | None = None,
) -> list[CheckResult]:
    """Every check after the config one, in order; ``emit`` sees each result as it lands."""
    rc, ig = config.rocketchat, config.instagram
    rest = RocketChatREST(
        rc.url,
        user=rc.user or None,
        password=rc.password.reveal() or None,
        user_id=rc.user_id or None,
        token=rc.token.reveal() or None,
        timeout=timeout,
        rate_limit_wait=timeout,
    )
    graph = GraphClient(ig.graph_url, ig.api_version, ig.app_id, ig.app_secret.reveal(),
                        timeout=timeout, retries=0)
    c = Checkup(config, rest, graph, timeout=timeout, expected_rate=expected_rate,
                probe_listener=probe_listener)
    if ig.instagram_login.enabled:
        c.ig_graph = InstagramLoginClient(config, timeout=timeout, retries=0)
    results: list[CheckResult] = []

    def add(found: CheckResult | list[CheckResult]) -> None:
        for result in found if isinstance(found, list) else [found]:
            results.append(result)
            if emit:
                emit(result)

    try:
        for check in (check_rocketchat_reachable, check_login, check_permissions,
                      check_admins, check_departments, check_slash_commands,
                      check_omnichannel_enabled, check_webhook, check_file_access,
                      check_rate_limiter,
                      check_public_url_https, check_public_url, check_meta_app,
                      check_instagram_login_app):
            try:
                add(await check(c))
            except (Unavailable, RocketChatError, GraphError) as exc:
                name = check.__name__.removeprefix("check_").replace("_", ".", 1)
                add(CheckResult(name, FAIL, f"unexpected error: {exc}", "see the detail"))
        add(check_graph_version(c, clock()))
        add(check_storage_files(c))
        add(check_storage_key(c))
        add(await check_store_and_pages(c, clock()))
    finally:
        await rest.close()
        await graph.close()
        if c.ig_graph is not None:
            await c.ig_graph.close()
    return results


def diagnose(
    config_path: str,
    *,
    echo: Callable[[str], None] = print,
    expected_rate: float | None = None,
    timeout: float = 5.0,
    probe_listener: bool = True,
) -> int:
    """Load the config, run every check, print one line each; 1 if any FAILed, else 0."""
    try:
        config = config_module.load(config_path)
    except config_module.ConfigError as exc:
        where = config_path if exc.key == "<file>" else f"{exc.key} in {config_path}"
        echo(CheckResult("config", FAIL, f"{config_path}: {exc}", f"fix {where}").line())
        return 1
    echo(CheckResult("config", PASS, f"{config_path} is valid").line())
    results = asyncio.run(
        run_checks(config, expected_rate=expected_rate, timeout=timeout,
                   probe_listener=probe_listener, emit=lambda r: echo(r.line()))
    )
    failed = [r for r in results if r.status == FAIL]
    warned = [r for r in results if r.status == WARN]
    echo(f"doctor: {len(results) + 1} checks, {len(failed)} failed, {len(warned)} warnings")
    return 1 if failed else 0
