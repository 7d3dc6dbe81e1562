"""Webhook delivery from the sandbox Meta to the bridge."""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Mapping
from typing import Any

import aiohttp
import requests

from sandbox.meta.wire import (
    _seconds,
    encode_webhook,
    sign_webhook,
)

log = logging.getLogger("sandbox.meta")


class WebhookMixin:
    """Signed webhook delivery to the bridge, and echoes of successful sends.

    Mixed into :class:`sandbox.meta.server.SandboxMeta`.
    """

    # ------------------------------------------------------------------ webhooks

    def set_webhook(self, url: str | None, *, echoes: bool = True, echo_delay: float = 0.0) -> None:
        """Where Meta would deliver; with ``echoes`` each successful send posts its echo."""
        with self._lock:
            self._webhook_url = url
            self._echoes = echoes
            self._echo_delay = echo_delay

    def set_echoes(self, enabled: bool) -> None:
        """Turn the automatic echo webhooks for our own sends on or off."""
        with self._lock:
            self._echoes = enabled

    def wait_for_echoes(self, timeout: float = 5.0) -> bool:
        """Block until queued echo deliveries finished; False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def webhook_request(
        self,
        payload: Mapping[str, Any] | None,
        *,
        secret: str | None = None,
        raw: bytes | None = None,
        headers: Mapping[str, str | None] | None = None,
    ) -> tuple[bytes, dict[str, str]]:
        """The exact body and headers Meta would POST (a header set to None is dropped)."""
        body = raw if raw is not None else encode_webhook(payload or {})
        hdrs = {
            "Content-Type": "application/json",
            "User-Agent": "facebookexternalua",
            "Facebook-API-Version": self.api_version,
            **sign_webhook(body, self.app_secret if secret is None else secret),
        }
        for key, value in (headers or {}).items():
            hdrs = {k: v for k, v in hdrs.items() if k.lower() != key.lower()}
            if value is not None:
                hdrs[key] = value
        return body, hdrs

    def deliver(
        self,
        url: str | None,
        payload: Mapping[str, Any] | None,
        *,
        secret: str | None = None,
        raw: bytes | None = None,
        headers: Mapping[str, str | None] | None = None,
        timeout: float = 20.0,
    ) -> tuple[int, str]:
        """POST a webhook like Meta (blocking); returns (status, body).

        ``url`` None means the one given to `set_webhook`. Inbound messages and postbacks
        in it open the messaging window whatever the receiver answers. Do not call this
        from a coroutine whose loop also serves ``url`` (it would deadlock): use `adeliver`.
        """
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            pass
        else:
            raise RuntimeError("SandboxMeta.deliver blocks; in async code use adeliver()")
        target, body, hdrs = self._prepare_delivery(url, payload, secret, raw, headers)
        try:
            resp = requests.post(target, data=body, headers=hdrs, timeout=timeout)
        except requests.RequestException as exc:
            self._record_delivery(target, None, "", False, repr(exc))
            raise
        self._record_delivery(target, resp.status_code, resp.text, False, None)
        return resp.status_code, resp.text

    async def adeliver(
        self,
        url: str | None,
        payload: Mapping[str, Any] | None,
        *,
        secret: str | None = None,
        raw: bytes | None = None,
        headers: Mapping[str, str | None] | None = None,
        timeout: float = 20.0,
    ) -> tuple[int, str]:
        """`deliver` for async callers: the POST runs on the sandbox loop, awaited here."""
        target, body, hdrs = self._prepare_delivery(url, payload, secret, raw, headers)
        if self._loop is None:
            raise RuntimeError("SandboxMeta not started")
        fut = asyncio.run_coroutine_threadsafe(
            self._post(target, body, hdrs, timeout, echo=False), self._loop
        )
        return await asyncio.wrap_future(fut)

    def verify_webhook(
        self, url: str, verify_token: str, challenge: str | None = None
    ) -> tuple[int, str]:
        """Meta's subscription check: GET url?hub.mode=subscribe&hub.challenge&hub.verify_token."""
        params = {
            "hub.mode": "subscribe",
            "hub.challenge": challenge or str(secrets.randbelow(2**31)),
            "hub.verify_token": verify_token,
        }
        resp = requests.get(
            url, params=params, headers={"User-Agent": "facebookplatform/1.0"}, timeout=20
        )
        return resp.status_code, resp.text

    def _prepare_delivery(
        self,
        url: str | None,
        payload: Mapping[str, Any] | None,
        secret: str | None,
        raw: bytes | None,
        headers: Mapping[str, str | None] | None,
    ) -> tuple[str, bytes, dict[str, str]]:
        with self._lock:
            target = url or self._webhook_url
        if not target:
            raise ValueError("no webhook url given and none set with set_webhook()")
        body, hdrs = self.webhook_request(payload, secret=secret, raw=raw, headers=headers)
        parsed: Any = payload
        if raw is not None:
            try:
                parsed = json.loads(raw)
            except ValueError:
                parsed = None
        if isinstance(parsed, Mapping):
            self._note_inbound(parsed)
        return target, body, hdrs

    def _note_inbound(self, payload: Mapping[str, Any]) -> None:
        """Messages and postbacks from a person (re)open the window (M6, M8); every
        message is recorded in its thread (the Conversations API's record)."""
        with self._lock:
            self._note_thread_payload(payload)
            for entry in payload.get("entry") or []:
                if not isinstance(entry, Mapping):
                    continue
                items = list(entry.get("messaging") or []) + list(entry.get("standby") or [])
                for item in items:
                    try:
                        sender = str(item["sender"]["id"])
                        recipient = str(item["recipient"]["id"])
                        ts = _seconds(float(item.get("timestamp") or self._now() * 1000))
                    except (KeyError, TypeError, ValueError):
                        continue
                    msg = item.get("message")
                    inbound = (
                        isinstance(msg, Mapping)
                        and not msg.get("is_echo")
                        and not msg.get("is_deleted")
                    ) or "postback" in item
                    if inbound:
                        key = (recipient, sender)
                        self._last_inbound[key] = max(ts, self._last_inbound.get(key, 0.0))

    def _record_delivery(
        self, url: str, status: int | None, body: str, echo: bool, error: str | None
    ) -> None:
        with self._lock:
            self._deliveries.append(
                {
                    "url": url,
                    "status": status,
                    "body": body,
                    "echo": echo,
                    "error": error,
                    "time": self._now(),
                }
            )
        log.info("webhook delivered url=%s status=%s echo=%s", url, status, echo)

    async def _post(
        self, url: str, body: bytes, headers: dict[str, str], timeout: float, *, echo: bool
    ) -> tuple[int, str]:
        if self._session is None:
            self._session = aiohttp.ClientSession()
        try:
            async with self._session.post(
                url, data=body, headers=headers, timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                text = await resp.text()
        except (aiohttp.ClientError, TimeoutError) as exc:
            self._record_delivery(url, None, "", echo, repr(exc))
            raise
        self._record_delivery(url, resp.status, text, echo, None)
        return resp.status, text

    async def _deliver_echo(self, url: str, payload: dict[str, Any], delay: float) -> None:
        try:
            if delay:
                await asyncio.sleep(delay)
            body, hdrs = self.webhook_request(payload)
            await self._post(url, body, hdrs, 20.0, echo=True)
        except Exception as exc:  # a failed echo is recorded, never fatal to the server
            log.warning("echo delivery to %s failed: %r", url, exc)
        finally:
            with self._idle:
                self._pending -= 1
                self._idle.notify_all()
