"""The page-settings form: ``GET /settings/<state>`` and ``POST /settings/<state>``.

``/instagram edit <pageId>`` DMs the admin a single-use link (:func:`issue_link`, 10
minutes, bound to that admin). Opening it consumes the link and shows a form whose own
single-use state is in its ``action``; saving consumes that one, so a used or expired
link or form answers 4xx and changes nothing. Both steps re-check that the user still
holds an admin role. Saving applies the same rules as the ``edit`` command (the same
functions: a department must exist, each text at most 1000 UTF-8 bytes, empty = none)
and DMs the admin a summary. The pages carry no token, forbid framing and any external
resource, and the form's only script (a live byte counter) runs under a per-response
CSP nonce.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from aiohttp import web

from bot import messages
from bot.appkeys import BOT
from bot.config import Config
from bot.instagram.oauth import new_state, state_ref
from bot.instagram.oauth_routes import PAGE_HEADERS, same_origin
from bot.page_settings import (
    MAX_TEXT_BYTES,
    TEXT_SETTINGS,
    SettingError,
    apply_department,
    apply_text,
)
from storage.base import LoginState, Page, Store

if TYPE_CHECKING:
    from bot.app import Bot

log = logging.getLogger("bot.web")

SETTINGS_TTL = 600.0  # seconds a link, and then the form it opens, stays usable
SETTINGS_PATH = "/settings/{state}"
MAX_FORM = 16 * 1024  # three texts of at most 1000 bytes, a department id, encoding


async def issue_link(
    store: Store, config: Config, user_id: str, username: str, page_id: str,
    *, now: float | None = None,
) -> str:
    """Store a single-use settings link for ``page_id`` bound to the admin; its URL."""
    return f"{config.server.public_url.rstrip('/')}" + SETTINGS_PATH.format(
        state=await _new_state(store, "settings", user_id, username, page_id, now)
    )


async def _new_state(
    store: Store, kind: str, user_id: str, username: str, page_id: str, now: float | None
) -> str:
    state = new_state()
    now = time.time() if now is None else now
    await store.add_login_state(LoginState(
        state=state, user_id=user_id, username=username, expires_at=now + SETTINGS_TTL,
        kind=kind, data={"page_id": page_id},  # type: ignore[arg-type]
    ))
    return state


def _page_response(status: int, body: str, nonce: str | None = None) -> web.Response:
    headers = dict(PAGE_HEADERS)
    if nonce:
        headers["Content-Security-Policy"] += f"; script-src 'nonce-{nonce}'"
    return web.Response(status=status, text=body, content_type="text/html", charset="utf-8",
                        headers=headers)


async def _check_access(
    bot: Bot, login: LoginState | None
) -> tuple[Page | None, web.Response | None]:
    """The page the state is for, or the error page to answer instead."""
    if login is None:
        return None, _page_response(410, messages.settings_link_invalid_page())
    try:
        admin = await bot.is_admin(login.user_id)
    except Exception as exc:  # Rocket.Chat down: refuse rather than trust a stale right
        log.warning("settings form: could not check the roles of %s: %s", login.username, exc)
        return None, _page_response(503, messages.settings_unavailable_page())
    if not admin:
        log.warning("settings form refused: %s no longer holds an admin role", login.username)
        return None, _page_response(403, messages.settings_not_admin_page())
    page = await bot.store.page(str(login.data.get("page_id", "")))
    if page is None:
        return None, _page_response(404, messages.settings_page_gone_page())
    return page, None


async def _form(
    bot: Bot, login: LoginState, page: Page, *, status: int = 200,
    values: Mapping[str, str] | None = None, error: str | None = None,
) -> web.Response:
    """A fresh single-use form for ``page`` (values: what the admin typed, on an error)."""
    try:
        departments = await bot.rest.departments()
    except Exception as exc:
        log.warning("settings form: could not list the departments: %s", exc)
        departments = None
    state = await _new_state(bot.store, "settings_form", login.user_id, login.username,
                             page.page_id, bot.clock())
    nonce = secrets.token_urlsafe(16)
    body = messages.settings_form_page(
        action=SETTINGS_PATH.format(state=state), page=page, departments=departments,
        values=values, error=error, nonce=nonce, limit=MAX_TEXT_BYTES,
    )
    return _page_response(status, body, nonce)


async def settings_get(request: web.Request) -> web.Response:
    """Open the form from the DM'd link (consumes the link)."""
    bot: Bot = request.app[BOT]
    state = request.match_info["state"]
    login = await bot.store.consume_login_state(state, "settings", bot.clock())
    page, refusal = await _check_access(bot, login)
    if refusal is not None or page is None or login is None:
        return refusal or _page_response(410, messages.settings_link_invalid_page())
    log.info("settings form for page %s opened by %s (link %s)", page.page_id, login.username,
             state_ref(state))
    return await _form(bot, login, page)


async def settings_post(request: web.Request) -> web.Response:
    """Save the form (consumes its state); on a refused value, a fresh form says why."""
    bot: Bot = request.app[BOT]
    if not same_origin(request, bot.config.server.public_url):
        log.warning("settings form refused: cross-origin POST from %s",
                    request.headers.get("Origin"))
        return _page_response(403, messages.settings_link_invalid_page())
    if request.content_length is not None and request.content_length > MAX_FORM:
        return _page_response(413, messages.settings_link_invalid_page())
    form = await request.post()
    fields = {k: v for k, v in form.items() if isinstance(v, str)}
    state = request.match_info["state"]
    login = await bot.store.consume_login_state(state, "settings_form", bot.clock())
    page, refusal = await _check_access(bot, login)
    if refusal is not None or page is None or login is None:
        return refusal or _page_response(410, messages.settings_link_invalid_page())
    try:
        summary = await _apply(bot, page, fields)
    except SettingError as exc:
        return await _form(bot, login, page, status=400, values=fields, error=str(exc))
    await bot.store.save_page(page)
    log.info("page %s: settings saved from the form by %s", page.page_id, login.username)
    try:
        await bot.rest.send_dm(login.username, summary)
    except Exception as exc:
        log.warning("settings saved, but the summary DM to %s failed: %s", login.username, exc)
    return _page_response(200, messages.settings_saved_page(page.name, summary))


async def _apply(bot: Bot, page: Page, fields: Mapping[str, str]) -> str:
    """Validate every field first, then change ``page``; the summary DM's text."""
    texts = {}
    for setting in TEXT_SETTINGS:
        value = fields.get(setting, "").replace("\r\n", "\n").strip()
        texts[setting] = value or None
    wanted = fields.get("department", "").strip() or None
    candidate = dataclasses.replace(page)
    lines = []
    current = page.department_id or None
    if wanted != current:
        departments = await bot.rest.departments() if wanted else []
        lines.append(apply_department(candidate, departments, wanted))
    for setting, attribute in TEXT_SETTINGS.items():
        if texts[setting] != getattr(page, attribute):
            lines.append(apply_text(candidate, setting, texts[setting]))
    vars(page).update(vars(candidate))
    if not lines:
        return messages.SETTINGS_UNCHANGED.format(name=page.name)
    return "\n".join(lines)


def routes() -> list[web.RouteDef]:
    """The settings-form routes for :func:`bot.web.routes`."""
    return [
        web.get(SETTINGS_PATH, settings_get),
        web.post(SETTINGS_PATH, settings_post),
    ]
