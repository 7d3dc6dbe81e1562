"""Loopback stand-in for Meta: Facebook Login dialog, Graph API and Instagram webhooks.

Written from /work/shared/protocols/instagram.md only (never from the bot), so the bot's
tests check the bot against an independent reading of Meta's wire format.

`SandboxMeta` runs a real aiohttp server on 127.0.0.1:0 in its own daemon thread and event
loop. Everything a test or `rc-instagram demo` needs to steer it (login user, pages,
profiles, injected errors, clock, token expiry, webhook delivery, threads: messages
recorded without a webhook, a person writing while the app is unsubscribed) is a
thread-safe method that only touches in-memory state under one lock.

Served (``{v}`` must equal ``api_version`` on the Graph side; the dialog accepts any):

- ``GET|POST /{v}/dialog/oauth``          Facebook Login dialog (HTML form, 302 back):
  ``scope`` for a "consumer" app (declines stick until ``auth_type=rerequest``),
  ``config_id`` of a Login for Business configuration (all or nothing) for a "business"
  app, which refuses a dialog without one (``set_app_type``, ``add_login_configuration``)
- ``GET /{v}/oauth/access_token``         code exchange, fb_exchange_token, client_credentials
- ``GET /{v}/debug_token``                token introspection (app token)
- ``GET /{v}/me``, ``/{v}/me/accounts``   user / page nodes, pages with Page tokens
- ``GET|DELETE /{v}/me/permissions``      granted scopes / revoke the whole login
- ``GET|POST|DELETE /{v}/{page}/subscribed_apps``  per-field permissions of the Page token
  (messaging fields need ``pages_messaging``, others ``pages_manage_metadata``; one
  missing refuses the whole call); ``drop_subscription`` uninstalls as Meta does
- ``GET /{v}/{igsid}``                    Instagram user profile (230 without consent)
- ``POST /{v}/{page}/messages``, ``/{v}/me/messages``   Send API with window enforcement;
  URL media is fetched by "Meta" itself (hosts flagged private fail ``(#100)``)
- ``POST /{v}/{page}/message_attachments``   attachment upload (``filedata`` or URL), with
  Instagram's formats (sniffed from the bytes) and sizes (``sandbox/meta/upload.py``)
- ``GET /{v}/{page}/conversations``, ``/{v}/{conversation}[/messages]``, ``/{v}/{mid}``
  Conversations API (newest 20 messages, 2 calls/s per account; sandbox/meta/conversations.py)

Times: control methods take epoch *seconds*; webhook builders take ``ts`` in epoch
*milliseconds* like the wire (a value below 1e11 is taken as seconds and converted).
"""

from sandbox.meta.server import SandboxMeta
from sandbox.meta.wire import (
    CODE_LIFETIME,
    DATA_ACCESS_LIFETIME,
    DEFAULT_IG_ID,
    DEFAULT_IG_USERNAME,
    DEFAULT_PAGE_ID,
    DEFAULT_PAGE_NAME,
    DEFAULT_USER_NAME,
    HUMAN_AGENT_SECONDS,
    LONG_TOKEN_LIFETIME,
    MAX_TEXT_BYTES,
    SHORT_TOKEN_LIFETIME,
    WINDOW_SECONDS,
    ErrorSpec,
    appsecret_proof,
    as_standby,
    encode_webhook,
    sign_webhook,
)

__all__ = [
    "CODE_LIFETIME",
    "DATA_ACCESS_LIFETIME",
    "DEFAULT_IG_ID",
    "DEFAULT_IG_USERNAME",
    "DEFAULT_PAGE_ID",
    "DEFAULT_PAGE_NAME",
    "DEFAULT_USER_NAME",
    "HUMAN_AGENT_SECONDS",
    "LONG_TOKEN_LIFETIME",
    "MAX_TEXT_BYTES",
    "SHORT_TOKEN_LIFETIME",
    "WINDOW_SECONDS",
    "ErrorSpec",
    "SandboxMeta",
    "appsecret_proof",
    "as_standby",
    "encode_webhook",
    "sign_webhook",
]
