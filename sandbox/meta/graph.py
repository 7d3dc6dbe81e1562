"""Graph API node endpoints of the sandbox Meta."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from sandbox.meta.wire import (
    _JSON,
    _PAGE_TASKS,
    _SUBSCRIBABLE_PAGE_FIELDS,
    _GraphFail,
    _Page,
    _parse_fields,
    _select,
    _Token,
)

log = logging.getLogger("sandbox.meta")


class GraphMixin:
    """Graph routing and the node endpoints: ``me``, accounts, permissions, profiles,
    ``subscribed_apps``. Mixed into :class:`sandbox.meta.server.SandboxMeta`.
    """

    # ------------------------------------------------------------------ graph routing

    async def _graph(self, request: web.Request) -> web.Response:
        params = await self._params(request)
        method = request.method
        if method == "POST" and params.get("method", "").upper() in ("GET", "DELETE"):
            method = params["method"].upper()
        segs = [s for s in request.path.split("/") if s]
        if not segs or segs[0] != self.api_version:
            raise _GraphFail(
                2500, f"Unknown path components: {request.path}", type="OAuthException"
            )
        segs = segs[1:]
        if segs == ["oauth", "access_token"] and method in ("GET", "POST"):
            self._check_injected("oauth")
            return self._ok(self._oauth_token(params))
        tok = self._auth(request, params)
        if segs == ["debug_token"] and method == "GET":
            self._check_injected("debug_token")
            return self._ok(self._debug_token(params, tok))
        if not segs or len(segs) > 2:
            raise _GraphFail(2500, f"Unknown path components: {request.path}")
        node = self._resolve_node(segs[0], tok)
        edge = segs[1] if len(segs) == 2 else None
        if method == "GET" and self.is_conversation_node(node):
            return self._ok(self._conversation_node(node, edge, params, tok))
        if edge == "conversations" and method == "GET":
            self._require(tok, "page", node)
            return self._ok(self._list_conversations(node, params, tok))
        if edge is None and method == "GET":
            return self._ok(self._node(node, params, tok))
        if edge == "accounts" and method == "GET":
            self._require(tok, "user", node)
            self._check_injected("accounts")
            return self._ok(self._accounts(tok, params))
        if edge == "permissions" and method in ("GET", "DELETE"):
            self._require(tok, "user", node)
            self._check_injected("permissions")
            return self._ok(self._permissions(tok, method))
        if edge == "subscribed_apps" and method in ("GET", "POST", "DELETE"):
            self._require(tok, "page", node)
            self._check_injected("subscribed_apps")
            return self._ok(self._subscribed_apps(node, method, params, tok))
        if edge == "messages" and method == "POST":
            try:  # Meta fetches URL media during the call; the send records the failure
                await self._check_send_media(request.get(_JSON) or dict(params))
                media_fail = None
            except _GraphFail as fail:
                media_fail = fail
            return self._ok(self._send(request, params, node, tok, media_fail))
        if edge == "message_attachments" and method == "POST":
            return self._ok(await self._message_attachments(request, params, node, tok))
        if method == "GET":
            raise _GraphFail(
                100, f"(#100) Tried accessing nonexisting field ({edge})", type="OAuthException"
            )
        raise _GraphFail(
            100, self._unsupported(method, node), subcode=33, type="GraphMethodException"
        )

    @staticmethod
    def _unsupported(method: str, node: str) -> str:
        return (
            f"Unsupported {method.lower()} request. Object with ID '{node}' does not exist,"
            " cannot be loaded due to missing permissions, or does not support this"
            " operation. Please read the Graph API documentation at"
            " https://developers.facebook.com/docs/graph-api"
        )

    def _resolve_node(self, node: str, tok: _Token) -> str:
        if node != "me":
            return node
        if tok.kind == "user" and tok.user_id:
            return tok.user_id
        if tok.kind == "page" and tok.page_id:
            return tok.page_id
        raise _GraphFail(
            2500, "An active access token must be used to query information about the current user."
        )

    def _require(self, tok: _Token, kind: str, node: str) -> None:
        if kind == "page" and tok.kind != "page":
            raise _GraphFail(
                210,
                "(#210) A page access token is required to request this resource.",
                type="OAuthException",
            )
        if kind == "user" and tok.kind != "user":
            raise _GraphFail(
                100,
                "(#100) Tried accessing nonexisting field on node type"
                f" ({'Page' if tok.kind == 'page' else 'Application'})",
            )
        owner = tok.page_id if kind == "page" else tok.user_id
        if node != owner:
            raise _GraphFail(
                100, self._unsupported("get", node), subcode=33, type="GraphMethodException"
            )

    def _node(self, node: str, params: Mapping[str, str], tok: _Token) -> dict[str, Any]:
        fields = _parse_fields(params.get("fields"))
        with self._lock:
            user = self._users.get(node)
            if user is not None and tok.kind == "user" and tok.user_id == node:
                self._check_injected("me")
                return _select({"id": user.id, "name": user.name}, fields, ("name",))
            page = self._pages.get(node)
            if page is not None and tok.kind == "page" and tok.page_id == node:
                self._check_injected("me")
                return _select(self._page_obj(page, tok), fields, ("name",))
            owner_user = self._users.get(tok.user_id or "")
            if (
                page is not None
                and tok.kind == "user"
                and owner_user is not None
                and node in owner_user.page_ids
            ):
                # A user who manages the Page may read its token by id (M15), which is how
                # Pages missing from /me/accounts are reached.
                return _select(self._page_obj(page, tok), fields, ("name",))
            if tok.kind == "page":
                owner = self._pages.get(tok.page_id or "")
                if owner is not None and owner.ig_id == node:
                    return _select(
                        {"id": node, "username": owner.ig_username, "name": owner.name},
                        fields,
                        ("id",),
                    )
                self._check_injected("profile")
                return self._profile(node, fields, tok)
        raise _GraphFail(
            100, self._unsupported("get", node), subcode=33, type="GraphMethodException"
        )

    def _profile(self, igsid: str, fields: dict[str, Any] | None, tok: _Token) -> dict:
        profile = self._profiles.get(igsid)
        if (
            profile is None
            or not profile["_consent"]
            or profile["_page"] not in (None, tok.page_id)
        ):
            raise _GraphFail(230)
        public = {k: v for k, v in profile.items() if not k.startswith("_")}
        wanted = (
            fields if fields is not None else {k: None for k in ("name", "username", "profile_pic")}
        )  # the node's defaults
        return {k: public[k] for k in [*wanted, "id"] if k in public}

    def _page_obj(self, page: _Page, user_tok: _Token | None) -> dict[str, Any]:
        obj: dict[str, Any] = {
            "id": page.id,
            "name": page.name,
            "category": page.category,
            "category_list": [{"id": "2201", "name": page.category}],
            "tasks": _PAGE_TASKS,
        }
        if user_tok is not None and user_tok.kind == "user":
            obj["access_token"] = self._page_token_for(user_tok, page.id)
        if page.ig_id:
            obj["instagram_business_account"] = {
                "id": page.ig_id,
                "username": page.ig_username,
                "name": page.name,
            }
            obj["connected_instagram_account"] = {"id": page.ig_id}
        return obj

    def _accounts(self, tok: _Token, params: Mapping[str, str]) -> dict[str, Any]:
        fields = _parse_fields(params.get("fields"))
        with self._lock:
            user = self._users[tok.user_id or ""]
            unlisted = self._unlisted.get(user.id, set())
            data = [
                _select(
                    self._page_obj(self._pages[p], tok),
                    fields,
                    ("access_token", "category", "category_list", "name", "tasks"),
                )
                for p in user.page_ids
                if p not in unlisted
            ]
        out: dict[str, Any] = {"data": data}
        if data:
            out["paging"] = {
                "cursors": {
                    "before": base64.b64encode(data[0]["id"].encode()).decode(),
                    "after": base64.b64encode(data[-1]["id"].encode()).decode(),
                }
            }
        return out

    def _permissions(self, tok: _Token, method: str) -> dict[str, Any]:
        with self._lock:
            user = self._users.get(tok.user_id or "")
            if method == "GET":
                data = [{"permission": s, "status": "granted"} for s in tok.scopes]
                declined = self._declined_before.get(user.id, set()) if user else set()
                data += [
                    {"permission": s, "status": "declined"}
                    for s in sorted(declined)
                    if s not in tok.scopes
                ]
                return {"data": data}
            revoked = 0
            for other in self._tokens.values():
                if other.user_id == tok.user_id and other.kind in ("user", "page"):
                    other.state = "revoked"
                    revoked += 1
            self._revoked_users.add(tok.user_id or "")
        log.info("login revoked user=%s tokens=%d", tok.user_id, revoked)
        return {"success": True}

    # ------------------------------------------------------------------ control: pages

    def drop_subscription(self, page_id: str) -> bool:
        """Uninstall our app from the page as Meta does on its own (returns True if it was).

        Meta disables a webhook after about an hour of failed deliveries and unsubscribes
        the app from the Page ("Webhooks Delivery Retry", messenger-platform/webhooks);
        nothing tells the app but the next ``GET /{page}/subscribed_apps``.
        """
        with self._lock:
            dropped = self._subscriptions.pop(page_id, None) is not None
        log.info("subscription dropped by Meta page=%s (was installed: %s)", page_id, dropped)
        return dropped

    @staticmethod
    def _field_permission_errors(fields: list[str], scopes: list[str]) -> list[str]:
        """Meta's per-field checks on ``POST /{page}/subscribed_apps``.

        Messaging fields need ``pages_messaging`` ("pages_messaging is also required for
        the messages ... fields", pages-api/webhooks-for-pages); the others need
        ``pages_manage_metadata`` (jgorset/facebook-messenger#280 quotes the live text
        for feed, mention and name). One missing permission refuses the whole call.
        """
        problems = []
        for name in fields:
            messaging = name.startswith("messag") or name == "standby"
            needed = "pages_messaging" if messaging else "pages_manage_metadata"
            if needed not in scopes:
                problems.append(
                    f"To subscribe to the {name} field, one of these permissions is needed:"
                    f" {needed}"
                )
        return problems

    def _subscribed_apps(
        self, page_id: str, method: str, params: Mapping[str, str], tok: _Token
    ) -> dict[str, Any]:
        with self._lock:
            if method == "GET":
                fields = self._subscriptions.get(page_id)
                if fields is None:
                    return {"data": []}
                return {
                    "data": [
                        {
                            "category": "Business",
                            "link": "https://sandbox.invalid/",
                            "name": self.app_name,
                            "id": self.app_id,
                            "subscribed_fields": list(fields),
                        }
                    ]
                }
            if method == "DELETE":
                self._subscriptions.pop(page_id, None)
                log.info("page unsubscribed page=%s", page_id)
                return {"success": True}
            raw = params.get("subscribed_fields")
            if not raw:
                raise _GraphFail(100, "(#100) The parameter subscribed_fields is required.")
            try:
                wanted = json.loads(raw) if raw.strip().startswith("[") else raw.split(",")
            except ValueError as exc:
                raise _GraphFail(100, "(#100) Param subscribed_fields must be an array") from exc
            wanted = [str(w).strip() for w in wanted if str(w).strip()]
            for i, name in enumerate(wanted):
                if name not in _SUBSCRIBABLE_PAGE_FIELDS:
                    raise _GraphFail(
                        100,
                        f"(#100) Param subscribed_fields[{i}] must be one of"
                        f" {{{', '.join(sorted(_SUBSCRIBABLE_PAGE_FIELDS))}}}"
                        f' - got "{name}"',
                    )
            problems = self._field_permission_errors(wanted, tok.scopes)
            if problems:
                raise _GraphFail(200, "(#200) " + ".\n".join(problems))
            current = self._subscriptions.setdefault(page_id, [])
            current.extend(w for w in wanted if w not in current)
            log.info("page subscribed page=%s fields=%s", page_id, ",".join(current))
            return {"success": True}
