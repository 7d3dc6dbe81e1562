"""Protocol oracle: the bridge's REST requests checked against Rocket.Chat's own validators.

Rocket.Chat's server validates REST input with ajv validators it publishes as the npm package
``@rocket.chat/rest-typings``: ``API.v1.addRoute('chat.sendMessage', {validateParams:
isChatSendMessageProps}, ...)``, and the router applies the validator to the query of a GET and
to the body of any other method (``ApiClass.ts``: ``validatorFunc(requestMethod === 'GET' ?
this.queryParams : this.bodyParams)``, failing with 400 ``invalid-params``). nobody here wrote
those schemas; ``dump_schemas.mjs`` copies them into ``rest-typings-schemas.json`` and this
module checks requests against them with the ``jsonschema`` package.

:data:`ROUTES` classifies every route the bridge may call: which published validator the
server applies to it (with the server source that says so), or that none exists. A request
on a route missing from the table is itself reported, so a new call cannot slip past.

ajv is not plain JSON Schema; the differences that matter are emulated:

- ``nullable: true`` (ajv's OpenAPI keyword) adds ``"null"`` to ``type``; ``enum`` still
  applies, as in ajv.
- ``coerceTypes: true`` (set on almost every validator): ajv converts scalars before checking,
  so ``{"msg": 5}`` passes ``type: string``, and every query value (always a string) passes
  ``type: number`` when numeric. The type checker accepts exactly the values ajv can coerce
  (string <-> number/integer/boolean, null) in the ``type`` keyword. Objects and arrays are
  never coerced. Keywords that ajv would apply to the coerced value (``minimum`` on ``"5"``)
  are then skipped by ``jsonschema``: lenient, never a false alarm.
- the custom keyword ``isNotEmpty`` (a string with non-blank content) is implemented;
  ``discriminator`` only speeds up ajv's ``oneOf`` and is left to ``oneOf``.
- formats: ``jsonschema``'s checker covers the standard ones; Rocket.Chat's own formats
  (``basic_email``...) are not checked. :func:`unsupported_keywords` proves no mapped schema
  uses anything else.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl

from jsonschema import Draft7Validator, Draft201909Validator, ValidationError, validators
from jsonschema.protocols import Validator

from sandbox.rocketchat.rest import RecordedRequest

SCHEMA_FILE = Path(__file__).with_name("rest-typings-schemas.json")


@dataclass(frozen=True)
class RouteSpec:
    """A Rocket.Chat REST route and the published validator its server applies."""

    method: str
    path: str  # after /api/, ``:name`` for a URL parameter: ``v1/livechat/message/:_id``
    validator: str | None  # exported name in rest-typings, None when the route has none
    evidence: str  # where Rocket.Chat decides it (file @ commit, see the README)


_API = "apps/meteor/app/api/server"
_LIVECHAT = "apps/meteor/app/livechat"

ROUTES: tuple[RouteSpec, ...] = (
    # --- published schema, applied by the server's router (validateParams)
    RouteSpec("POST", "v1/chat.sendMessage", "isChatSendMessageProps", f"{_API}/v1/chat.ts"),
    RouteSpec("GET", "v1/chat.getMessage", "isChatGetMessageProps", f"{_API}/v1/chat.ts"),
    RouteSpec("GET", "v1/chat.syncMessages", "isChatSyncMessagesProps", f"{_API}/v1/chat.ts"),
    RouteSpec("POST", "v1/dm.create", "isDmCreateProps", f"{_API}/v1/im.ts"),
    RouteSpec("POST", "v1/im.create", "isDmCreateProps", f"{_API}/v1/im.ts"),
    RouteSpec(
        "GET", "v1/subscriptions.get", "isSubscriptionsGetProps", f"{_API}/v1/subscriptions.ts"
    ),
    RouteSpec(
        "GET", "v1/settings.public", "isSettingsPublicWithPaginationProps", f"{_API}/v1/settings.ts"
    ),
    RouteSpec(
        "POST",
        "v1/livechat/message",
        "isPOSTLivechatMessageParams",
        f"{_LIVECHAT}/server/api/v1/message.ts",
    ),
    RouteSpec(
        "GET",
        "v1/livechat/message/:_id",
        "isGETLivechatMessageIdParams",
        f"{_LIVECHAT}/server/api/v1/message.ts",
    ),
    RouteSpec(
        "PUT",
        "v1/livechat/message/:_id",
        "isPUTLivechatMessageIdParams",
        f"{_LIVECHAT}/server/api/v1/message.ts",
    ),
    RouteSpec(
        "DELETE",
        "v1/livechat/message/:_id",
        "isDELETELivechatMessageIdParams",
        f"{_LIVECHAT}/server/api/v1/message.ts",
    ),
    RouteSpec(
        "GET",
        "v1/livechat/department",
        "isGETLivechatDepartmentProps",
        f"{_LIVECHAT}/imports/server/rest/departments.ts",
    ),
    RouteSpec(
        "GET",
        "v1/livechat/config",
        "isGETLivechatConfigParams",
        f"{_LIVECHAT}/server/api/v1/config.ts",
    ),
    RouteSpec(
        "POST",
        "v1/livechat/room.close",
        "isPOSTLivechatRoomCloseParams",
        f"{_LIVECHAT}/server/api/v1/room.ts",
    ),
    RouteSpec(
        "POST",
        "v1/livechat/room.closeByUser",
        "isPOSTLivechatRoomCloseByUserParams",
        f"{_LIVECHAT}/server/api/v1/room.ts",
    ),
    # --- published schema, but the server checks the same shape with Meteor's check()
    # ("validateParams doesnt support what's being done here": extra params are allowed)
    RouteSpec(
        "GET", "v1/livechat/room", "isGETLivechatRoomParams", f"{_LIVECHAT}/server/api/v1/room.ts"
    ),
    # --- no published schema (Meteor check(), hand-written code, or no input at all)
    RouteSpec("GET", "info", None, f"{_API}/default/info.ts"),
    RouteSpec("POST", "v1/login", None, f"{_API}/api.ts (_initAuth; isLoginProps is not applied)"),
    RouteSpec("POST", "v1/logout", None, f"{_API}/api.ts"),
    RouteSpec("GET", "v1/me", None, f"{_API}/v1/misc.ts"),
    RouteSpec("GET", "v1/users.info", "isUsersInfoParamsGetProps", f"{_API}/v1/users.ts"),
    # users.list validates nothing of its own: pagination and ``query`` go through
    # getPaginationItems / parseJsonQuery (isUsersListStatusProps is users.listByStatus's).
    RouteSpec("GET", "v1/users.list", None, f"{_API}/v1/users.ts"),
    RouteSpec("GET", "v1/rooms.get", None, f"{_API}/v1/rooms.ts"),
    RouteSpec("GET", "v1/settings/:_id", None, f"{_API}/v1/settings.ts (permissions only)"),
    RouteSpec("GET", "v1/permissions.listAll", None, f"{_API}/v1/permissions.ts (inline schema)"),
    RouteSpec("GET", "v1/roles.getUsersInPublicRoles", None, f"{_API}/v1/roles.ts"),
    RouteSpec(
        "GET",
        "v1/livechat/integrations.settings",
        None,
        f"{_LIVECHAT}/imports/server/rest/integrations.ts",
    ),
    RouteSpec("POST", "v1/livechat/visitor", None, f"{_LIVECHAT}/server/api/v1/visitor.ts (check)"),
    RouteSpec(
        "GET", "v1/livechat/visitor/:token", None, f"{_LIVECHAT}/server/api/v1/visitor.ts (check)"
    ),
)


@cache
def published() -> dict[str, Any]:
    """The committed dump: ``{"source": {...}, "validators": {name: {"schema": ...}}}``."""
    return json.loads(SCHEMA_FILE.read_text(encoding="utf-8"))


def route_for(method: str, path: str) -> RouteSpec | None:
    """The :data:`ROUTES` entry matching ``method`` and ``path`` (after ``/api/``)."""
    segments = path.strip("/").split("/")
    for spec in ROUTES:
        if spec.method != method:
            continue
        pattern = spec.path.split("/")
        if len(pattern) == len(segments) and all(
            p.startswith(":") or p == s for p, s in zip(pattern, segments, strict=True)
        ):
            return spec
    return None


def params_of(request: RecordedRequest) -> Any:
    """What the server validates: the query of a GET, the parsed body otherwise.

    A repeated query key becomes a list, as the server's query parser makes it.
    """
    if request.method == "GET":
        query: dict[str, Any] = {}
        for key, value in request.query:
            if key in query:
                previous = query[key]
                query[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
            else:
                query[key] = value
        return query
    if not request.body:
        return {}
    if request.content_type == "application/x-www-form-urlencoded":
        return dict(parse_qsl(request.body.decode(), keep_blank_values=True))
    try:
        return json.loads(request.body)
    except ValueError:
        return request.body.decode(errors="replace")


def violations(requests: Iterable[RecordedRequest]) -> list[str]:
    """One line per request that the real server's validator would refuse (or cannot classify)."""
    problems = []
    for request in requests:
        where = f"{request.method} /api/{request.path}"
        spec = route_for(request.method, request.path)
        if spec is None:
            problems.append(
                f"{where}: route not classified in tests/oracle/oracle.py ROUTES "
                "(add it with its published validator, or None)"
            )
            continue
        if spec.validator is None:
            continue
        problems.extend(
            f"{where} violates {spec.validator}: {message}"
            for message in check(spec.validator, params_of(request))
        )
    return problems


def check(validator_name: str, params: Any) -> list[str]:
    """Messages for every way ``params`` fails the published validator ``validator_name``."""
    validator = _validator(validator_name)
    return [
        f"{error.message} (at {error.json_path})"
        for error in sorted(validator.iter_errors(params), key=lambda e: e.json_path)
    ]


# Keywords the oracle evaluates as ajv does (see the module docstring).
SUPPORTED_KEYWORDS = frozenset(
    {
        "type", "properties", "required", "additionalProperties", "items", "enum", "const",
        "oneOf", "anyOf", "allOf", "not", "minLength", "maxLength", "minimum", "maximum",
        "minItems", "maxItems", "uniqueItems", "pattern", "patternProperties", "nullable",
        "isNotEmpty", "discriminator", "description", "$schema", "title", "default",
    }
)  # fmt: skip
_SCHEMA_VALUED = frozenset({"items", "not", "additionalProperties"})
_SCHEMA_LISTS = frozenset({"oneOf", "anyOf", "allOf"})
_SCHEMA_MAPS = frozenset({"properties", "patternProperties"})


def unsupported_keywords(schema: Any) -> set[str]:
    """Keywords used anywhere in ``schema`` that this oracle does not evaluate like ajv."""
    found: set[str] = set()
    if not isinstance(schema, dict):
        return found
    for key, value in schema.items():
        if key not in SUPPORTED_KEYWORDS:
            found.add(key)
        if key in _SCHEMA_VALUED:
            found |= unsupported_keywords(value)
        elif key in _SCHEMA_LISTS:
            for item in value:
                found |= unsupported_keywords(item)
        elif key in _SCHEMA_MAPS:
            for item in value.values():
                found |= unsupported_keywords(item)
    return found


# ------------------------------------------------------------------ ajv emulation
def _with_nullable(schema: Any) -> Any:
    """Copy of ``schema`` where ``nullable: true`` became ``"null"`` in ``type`` (ajv semantics)."""
    if isinstance(schema, list):
        return [_with_nullable(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: _with_nullable(value) for key, value in schema.items()}
    if out.get("nullable") is True and "type" in out:
        types = out["type"] if isinstance(out["type"], list) else [out["type"]]
        if "null" not in types:
            out["type"] = [*types, "null"]
    return out


# A string ajv turns into a number: JavaScript's ``x == +x`` for a non-empty decimal literal.
_NUMERIC = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")


def _plain_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _to_number(value: Any) -> bool:
    if isinstance(value, str):
        return bool(value.strip()) and _NUMERIC.fullmatch(value) is not None
    return _plain_number(value) or isinstance(value, bool) or value is None


def _to_integer(value: Any) -> bool:
    if isinstance(value, str) and _to_number(value):
        return float(value) % 1 == 0
    if _plain_number(value):
        return float(value) % 1 == 0
    return isinstance(value, bool) or value is None


def _to_string(value: Any) -> bool:
    return isinstance(value, str | bool) or _plain_number(value) or value is None


def _to_boolean(value: Any) -> bool:
    return (
        isinstance(value, bool)
        or value in ("true", "false")
        or value is None
        or (_plain_number(value) and value in (0, 1))
    )


def _to_null(value: Any) -> bool:
    return value is None or value == "" or value is False or (_plain_number(value) and value == 0)


_COERCIBLE_TO = {
    "number": _to_number,
    "integer": _to_integer,
    "string": _to_string,
    "boolean": _to_boolean,
    "null": _to_null,
    "object": lambda value: isinstance(value, dict),
    "array": lambda value: isinstance(value, list),
}


def _coercing_type(_validator: Any, types: Any, instance: Any, _schema: Any) -> Any:
    """ajv's ``type`` under ``coerceTypes: true``: a value it can convert counts as the type.

    Only ``type`` coerces; other keywords keep jsonschema's strict type test, so they skip a
    value ajv would have converted first (``minimum`` on ``"5"``) instead of misjudging it.
    """
    wanted = types if isinstance(types, list) else [types]
    if not any(_COERCIBLE_TO[t](instance) for t in wanted):
        yield ValidationError(f"{instance!r} is not of type {', '.join(map(repr, wanted))}")


def _is_not_empty(_validator: Any, wanted: Any, instance: Any, _schema: Any) -> Any:
    if wanted and isinstance(instance, str) and not instance.strip():
        yield ValidationError(f"{instance!r} must not be empty")


@cache
def _validator(name: str) -> Validator:
    entry = published()["validators"].get(name)
    if entry is None:
        raise KeyError(f"{name} is not in {SCHEMA_FILE.name}; run `make oracle` to refresh it")
    base: Any = Draft201909Validator if entry["draft"] == "Ajv2019" else Draft7Validator
    keywords: dict[str, Any] = {"isNotEmpty": _is_not_empty}
    if entry["coerceTypes"]:
        keywords["type"] = _coercing_type
    extended = validators.extend(base, validators=keywords)
    schema = _with_nullable(copy.deepcopy(entry["schema"]))
    return extended(schema, format_checker=base.FORMAT_CHECKER)
