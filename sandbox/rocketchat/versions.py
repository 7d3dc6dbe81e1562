"""Server-version profiles: every behaviour of the sandbox that depends on the Rocket.Chat release.

One :class:`VersionProfile` per ``SandboxRocketChat(version=...)``. The thresholds come
from protocols/rocketchat-audit.md §3 (the server source read at the commits cited there):

- ``roles.getUsersInPublicRoles`` is absent up to 7.0 (not in ``apps/meteor/app`` @50c4441,
  the code released as 7.0) and present in later 7.x (typed ``API.v1.get`` chain in
  ``app/api/server/v1/roles.ts``).
- An unknown ``/api/v1`` GET falls through to Meteor's app page, **HTTP 200 + HTML**, up to
  7.0 (no catch-all in ``app/api/server/api.ts`` / ``meteor-restivus``; the 404 catch-all of
  PR #24053 was reverted by #24118); a 7.8.0 server answered a JSON 404.
- ``livechat/visitor`` and ``livechat/room`` carry ``rateLimiterOptions`` 5/60 s since 6.12.0
  (``v1/visitor.ts:13-20``, ``v1/room.ts:34-41``, hotfix @ac08452). Before, the default
  limiter applies (``API_Enable_Rate_Limiter_Limit_Calls_Default``, 10/60 s).
- Omnichannel webhooks: 6.0–6.1 Meteor ``HTTP.post`` (any status < 400 succeeds, 10 tries
  10 s apart, ``Livechat.js:767-790`` @72f6b2a); 6.2–7.0 fetch, only 200 succeeds, 10 tries
  ``4 × Livechat_http_timeout`` apart (``LivechatTyped.ts:828-872``, @3ff0e64); newer 7.x
  5 tries ``4 × Livechat_http_timeout`` apart, only 200 succeeds, and only a network error,
  429 or >= 500 is retried (``lib/webhooks.ts`` @028b96f, ``isRetryable``).
- ``settings.public?_id=a,b`` filters only in newer 7.x (``parsedQueryId``); up to 7.0 the
  ``_id`` is ignored and the first page (50, sorted by ``_id``) comes back
  (``v1/settings.ts:44-68``).
- Code-level ``API.v1.unauthorized()`` answers 403 up to 7.0 (``api.ts:302-310`` @50c4441)
  and 401 in newer 7.x, where ``forbidden()`` is the 403; ``permissionsRequired`` is 403 in all.
- ``/api/info`` shows everyone but admins ``major.minor`` only (``getServerInfo.ts``,
  ``removePatchInfo``).

The first 7.x release with the "newer" behaviours is not settled (audit §6); the sandbox
places all of them at :data:`NEWER_7X` so that "7.0.0" behaves like 6.x.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

#: Where the sandbox switches to the behaviours seen only in newer 7.x copies of the source.
NEWER_7X = (7, 1)
#: The hotfix that gave livechat/visitor and livechat/room their own 5/60 s limit.
LIVECHAT_LIMIT_HOTFIX = (6, 12)
#: The fetch-based webhook sender (only HTTP 200 counts, timeout setting).
FETCH_WEBHOOKS = (6, 2)

DEFAULT_VERSION = "7.4.0"


def _parts(version: str) -> tuple[int, int, int]:
    match = re.match(r"^(\d+)\.(\d+)(?:\.(\d+))?", version)
    if not match:
        raise ValueError(f"not a Rocket.Chat version: {version!r}")
    major, minor, patch = match.groups()
    return int(major), int(minor), int(patch or 0)


@dataclass(frozen=True)
class WebhookRules:
    """How the Omnichannel webhook sender judges an answer and retries."""

    max_attempts: int
    #: ``None`` = ``4 × Livechat_http_timeout`` (6.2+); otherwise fixed seconds.
    fixed_delay: float | None
    #: "lt400": any status below 400 succeeds; "200": only 200, anything else is retried;
    #: "transient": only 200 succeeds, and only a network error, 429 or >= 500 is retried.
    success: str

    def delivered(self, status: int | None) -> bool:
        """Whether this answer ends the delivery as a success."""
        if status is None:
            return False
        if self.success == "lt400":
            return status < 400
        return status == 200

    def retry(self, status: int | None) -> bool:
        """Whether this (failed) answer is tried again."""
        if self.success == "transient":
            return status is None or status == 429 or status >= 500
        return True


@dataclass(frozen=True)
class VersionProfile:
    """The release the sandbox impersonates, and what follows from it."""

    version: str = DEFAULT_VERSION

    def __post_init__(self) -> None:
        _parts(self.version)  # fail early on a malformed version

    @property
    def parts(self) -> tuple[int, int, int]:
        return _parts(self.version)

    def at_least(self, major: int, minor: int = 0) -> bool:
        """Whether the profile's release is ``major.minor`` or newer."""
        return self.parts[:2] >= (major, minor)

    @property
    def newer_7x(self) -> bool:
        return self.at_least(*NEWER_7X)

    @property
    def public_roles_route(self) -> bool:
        """``GET roles.getUsersInPublicRoles`` exists."""
        return self.newer_7x

    @property
    def unknown_route_html(self) -> bool:
        """An unknown ``/api/v1`` route answers 200 with the web app's HTML page."""
        return not self.newer_7x

    @property
    def settings_public_filters_id(self) -> bool:
        """``settings.public`` honours ``_id=a,b``."""
        return self.newer_7x

    @property
    def unauthorized_status(self) -> int:
        """The status of a route's own ``API.v1.unauthorized()``."""
        return 401 if self.newer_7x else 403

    @property
    def info_version(self) -> str:
        """``/api/info``'s ``version`` for a caller without admin rights (major.minor)."""
        major, minor, _ = self.parts
        return f"{major}.{minor}"

    def route_rate_limits(self) -> dict[str, tuple[int, int]]:
        """Routes with their own ``rateLimiterOptions``: ``route -> (calls, interval ms)``.

        Routes not listed use the default limiter settings. ``livechat/message`` has none
        of its own in any version (``v1/message.ts``): it uses the default, 10/60 s.
        """
        limits = {"livechat/offline.message": (1, 5000)}
        if self.at_least(*LIVECHAT_LIMIT_HOTFIX):
            limits["livechat/visitor"] = (5, 60000)
            limits["livechat/room"] = (5, 60000)
        return limits

    @property
    def webhooks(self) -> WebhookRules:
        if self.newer_7x:
            return WebhookRules(max_attempts=5, fixed_delay=None, success="transient")
        if self.at_least(*FETCH_WEBHOOKS):
            return WebhookRules(max_attempts=10, fixed_delay=None, success="200")
        return WebhookRules(max_attempts=10, fixed_delay=10.0, success="lt400")


#: The profiles the test-suite runs its key scenarios against (see tests/conftest.py).
PROFILES = {
    "7.x": VersionProfile(DEFAULT_VERSION),
    "6.x": VersionProfile("6.13.0"),
}
