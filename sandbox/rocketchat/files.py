"""Uploaded files of the sandbox Rocket.Chat and ``GET /file-upload/<id>/<name>``.

Our reading of the real server (RocketChat/Rocket.Chat, read for issue 12 item 9):

- ``app/file-upload/server/lib/requests.ts``: an unknown id answers 404, a refused
  request 403 with an empty body, otherwise the bytes.
- ``FileUpload.requestCanAccessFiles``: with ``FileUpload_ProtectFiles`` off anything
  goes. Otherwise the request is allowed by a valid ``?token=`` JWT (when
  ``FileUpload_Enable_json_web_token_for_files`` is on), or by a user found from
  ``rc_uid``/``rc_token`` (query, then cookies) or else the ``X-User-Id`` /
  ``X-Auth-Token`` headers. For a file of a room, such a user must then pass
  ``FileUpload_Restrict_to_room_members`` (default on: a subscription to the room) or
  ``FileUpload_Restrict_to_users_who_can_access_room`` (default off: canAccessRoom, which
  admits livechat staff to livechat rooms); with both off any user passes, with both on
  nobody does. (The first setting exists since 5.4.4, RocketChat/Rocket.Chat#28319; the
  second since 2024, #32329. The sandbox has both in every version profile.)
- ``utils/server/lib/JWTHelper.ts``: the JWT is HS256 and lives one hour.
- ``normalizeMessageFileUpload.ts``: the webhook's ``publicFilePath`` is
  ``Site_Url`` + ``/file-upload/<id>/<encodeURI(name)>`` + ``?token=<jwt>`` when JWTs are on.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import quote

from aiohttp import web

if TYPE_CHECKING:
    from .model import State

#: ``JWTHelper.ts``: file tokens expire after one hour.
JWT_LIFETIME = 3600


@dataclass
class StoredFile:
    """One upload: its bytes and the room it belongs to."""

    file_id: str
    name: str
    mime: str
    data: bytes
    rid: str
    user_id: str


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class FileStore:
    """Files by id, JWTs for their links, and the access rule of the real server."""

    def __init__(self, state: State) -> None:
        self.state = state
        self.files: dict[str, StoredFile] = {}
        self.secret = secrets.token_bytes(32)  # FileUpload_json_web_token_secret_for_files
        #: Every GET /file-upload request: file_id, status, how it was authorized.
        self.requests: list[dict[str, object]] = []

    def add(self, stored: StoredFile) -> None:
        """Keep an upload (caller holds the state lock)."""
        self.files[stored.file_id] = stored

    def public_path(self, stored: StoredFile) -> str:
        """``publicFilePath`` as a webhook carries it: Site_Url link, JWT when enabled."""
        site = str(self.state.setting("Site_Url") or "").rstrip("/")
        url = f"{site}/file-upload/{stored.file_id}/{quote(stored.name, safe='/')}"
        if self.state.setting("FileUpload_ProtectFiles") and self.state.setting(
            "FileUpload_Enable_json_web_token_for_files"
        ):
            url += "?token=" + self.jwt(stored)
        return url

    def jwt(self, stored: StoredFile) -> str:
        """An HS256 JWT ``{rid, userId, fileId, iat, exp}`` valid for one hour."""
        now = int(self.state.clock())
        header = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
        claims = {"context": {"rid": stored.rid, "userId": stored.user_id,
                              "fileId": stored.file_id},
                  "iat": now, "exp": now + JWT_LIFETIME}
        payload = _b64(json.dumps(claims).encode())
        signature = hmac.new(self.secret, f"{header}.{payload}".encode(), hashlib.sha256)
        return f"{header}.{payload}.{_b64(signature.digest())}"

    def jwt_valid(self, token: str) -> bool:
        """Signature and expiry, as ``isValidJWT`` checks them (nothing else)."""
        try:
            header, payload, signature = token.split(".")
            expected = hmac.new(self.secret, f"{header}.{payload}".encode(), hashlib.sha256)
            if not hmac.compare_digest(_unb64(signature), expected.digest()):
                return False
            claims = json.loads(_unb64(payload))
        except (ValueError, TypeError):
            return False
        return isinstance(claims, dict) and float(claims.get("exp", 0)) > self.state.clock()

    def allowed(self, request: web.Request, stored: StoredFile) -> str | None:
        """How the request is authorized (``"open"``, ``"jwt"``, ``"user"``), or None."""
        state = self.state
        if not state.setting("FileUpload_ProtectFiles"):
            return "open"
        query = request.query
        token = query.get("token")
        if state.setting("FileUpload_Enable_json_web_token_for_files") and token and (
            self.jwt_valid(token)
        ):
            return "jwt"
        uid = query.get("rc_uid") or request.cookies.get("rc_uid")
        auth = query.get("rc_token") or request.cookies.get("rc_token")
        uid = uid or request.headers.get("X-User-Id")
        auth = auth or request.headers.get("X-Auth-Token")
        user, _ = state.user_for_token(auth)
        if not uid or user is None or user != uid:
            return None
        members_only = bool(state.setting("FileUpload_Restrict_to_room_members"))
        who_can_access = bool(state.setting("FileUpload_Restrict_to_users_who_can_access_room"))
        if not members_only and not who_can_access:
            return "user"
        if members_only and not who_can_access:
            return "user" if state.is_member(user, stored.rid) else None
        if who_can_access and not members_only:
            room = state.rooms.get(stored.rid)
            return "user" if room is not None and state.can_access_room(room, user) else None
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``GET /file-upload/<id>/<name>``: 404 unknown, 403 refused, else the bytes."""
        file_id = request.match_info["file_id"]
        with self.state.lock:
            stored = self.files.get(file_id)
            how = self.allowed(request, stored) if stored is not None else None
            status = 404 if stored is None else (200 if how else 403)
            self.requests.append({"file_id": file_id, "status": status, "auth": how})
        if stored is None or how is None:
            return web.Response(status=status)
        return web.Response(
            body=stored.data,
            headers={
                "Content-Type": stored.mime,
                "Content-Security-Policy": "default-src 'none'",
                "Cache-Control": "max-age=31536000",
            },
        )
