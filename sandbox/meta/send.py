"""The sandbox Meta's Send API."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from sandbox.meta.wire import (
    _JSON,
    _REC,
    HUMAN_AGENT_SECONDS,
    MAX_TEXT_BYTES,
    WINDOW_SECONDS,
    _GraphFail,
    _Token,
)

log = logging.getLogger("sandbox.meta")


class SendMixin:
    """The Send API with Instagram's window rules and message validation.

    Mixed into :class:`sandbox.meta.server.SandboxMeta`.
    """

    # ------------------------------------------------------------------ Send API

    def _send(
        self,
        request: web.Request,
        params: Mapping[str, str],
        node: str,
        tok: _Token,
        media_fail: _GraphFail | None = None,
    ) -> dict[str, Any]:
        body = request.get(_JSON)
        if body is None:  # form-encoded variant: recipient/message travel as JSON strings
            body = dict(params)
        if isinstance(body, dict):  # never keep credentials in the record
            body = {k: v for k, v in body.items() if k not in ("access_token", "appsecret_proof")}
        rec: dict[str, Any] = {
            "page_id": node,
            "recipient": None,
            "body": body,
            "status": None,
            "response": None,
            "ok": False,
            "error_code": None,
            "error_subcode": None,
            "message_id": None,
            "had_proof": request[_REC]["had_proof"],
            "proof_valid": request[_REC]["proof_valid"],
            "time": self.now(),
        }
        try:
            result = self._send_checked(node, tok, body, rec, media_fail)
            rec.update(status=200, ok=True, response=result, message_id=result.get("message_id"))
        except _GraphFail as fail:
            rec.update(
                status=fail.status,
                error_code=fail.code,
                error_subcode=fail.subcode,
                response={
                    "error": {
                        "message": fail.message,
                        "code": fail.code,
                        "error_subcode": fail.subcode,
                    }
                },
            )
            log.info(
                "send page=%s recipient=%s failed code=%s/%s",
                node,
                rec["recipient"],
                fail.code,
                fail.subcode,
            )
            raise
        finally:
            with self._lock:
                self._sent.append(rec)
        log.info(
            "send page=%s recipient=%s mid=%s", node, rec["recipient"], result.get("message_id")
        )
        return result

    def _send_checked(
        self,
        node: str,
        tok: _Token,
        body: Any,
        rec: dict[str, Any],
        media_fail: _GraphFail | None = None,
    ) -> dict[str, Any]:
        if tok.kind not in ("page", "ig_user"):  # ig_user: the Instagram Login route
            raise _GraphFail(
                210, "(#210) A page access token is required to request this resource."
            )
        if node != tok.page_id:
            raise _GraphFail(
                100, self._unsupported("post", node), subcode=33, type="GraphMethodException"
            )
        if not isinstance(body, dict):
            raise _GraphFail(100, "(#100) The request body must be a JSON object")
        body = {
            k: (
                json.loads(v)
                if k in ("recipient", "message", "payload")
                and isinstance(v, str)
                and v.startswith("{")
                else v
            )
            for k, v in body.items()
        }
        recipient = body.get("recipient")
        if not isinstance(recipient, dict) or not recipient.get("id"):
            raise _GraphFail(100, "(#100) The parameter recipient is required", subcode=None)
        igsid = str(recipient["id"])
        rec["recipient"] = igsid
        sender_action = body.get("sender_action")
        message = body.get("message")
        if sender_action is None:
            self._validate_message(message)
            for att in message.get("attachments") or [message.get("attachment")]:
                if isinstance(att, dict) and att["payload"].get("attachment_id"):
                    self._uploaded(node, att["type"], att["payload"]["attachment_id"])
        elif sender_action not in ("typing_on", "typing_off", "mark_seen", "react", "unreact"):
            raise _GraphFail(
                100,
                "(#100) Param sender_action must be one of {typing_on,"
                " typing_off, mark_seen, react, unreact}",
            )
        messaging_type = body.get("messaging_type", "RESPONSE")
        tag = body.get("tag")
        if messaging_type not in ("RESPONSE", "UPDATE", "MESSAGE_TAG"):
            raise _GraphFail(
                100, "(#100) Param messaging_type must be one of {RESPONSE, UPDATE, MESSAGE_TAG}"
            )
        if tag is not None and tag != "HUMAN_AGENT":
            raise _GraphFail(100, "(#100) Param tag must be one of {HUMAN_AGENT}")
        if messaging_type == "MESSAGE_TAG" and tag is None:
            raise _GraphFail(100, "(#100) Tag is required for MESSAGE_TAG messaging type")
        injected = self._take_error("messages", igsid)
        if injected is not None:
            raise injected
        if media_fail is not None:
            raise media_fail
        with self._lock:
            page = self._pages.get(node)
            ig_id = (page.ig_id if page else None) or node
            last = self._last_inbound.get((ig_id, igsid))
            if last is None:
                raise _GraphFail(100, "(#100) No matching user found", subcode=2018001)
            age = self._now() - last
            allowed = HUMAN_AGENT_SECONDS if tag == "HUMAN_AGENT" else WINDOW_SECONDS
            if sender_action is None and age > allowed:
                raise _GraphFail(10)
            if sender_action is not None:
                return {"recipient_id": igsid}
            mid = self.new_mid()
            self._record_locked(ig_id, igsid, mid, message.get("text") or "", True, None)
            url, echoes, delay = self._webhook_url, self._echoes, self._echo_delay
            if url and echoes:
                self._pending += 1
        if url and echoes:
            echo_msg: dict[str, Any] = {"mid": mid, "is_echo": True}
            if "text" in message:
                echo_msg["text"] = message["text"]
            else:
                atts = message.get("attachments") or [message["attachment"]]
                echo_msg["attachments"] = [
                    {"type": a["type"], "payload": {"url": a.get("payload", {}).get("url") or (
                        "https://lookaside.fbsbx.com/ig_messaging_cdn/?asset_id="
                        + str(a.get("payload", {}).get("attachment_id")))}}
                    for a in atts
                ]
            echo_msg["app_id"] = int(self.app_id) if self.app_id.isdigit() else self.app_id
            item = {
                "sender": {"id": ig_id},
                "recipient": {"id": igsid},
                "timestamp": int(self.now() * 1000),
                "message": echo_msg,
            }
            asyncio.get_running_loop().create_task(
                self._deliver_echo(url, self._event(ig_id, item), delay)
            )
        return {"recipient_id": igsid, "message_id": mid}

    @staticmethod
    def _validate_message(message: Any) -> None:
        if not isinstance(message, dict) or not message:
            raise _GraphFail(100, "(#100) param message must be non-empty.", subcode=None)
        has_text = "text" in message
        has_att = "attachment" in message or "attachments" in message
        if has_text == has_att:
            raise _GraphFail(
                100, "(#100) Exactly one of message[text] or message[attachment] must be specified"
            )
        if has_text:
            text = message["text"]
            if not isinstance(text, str) or not text:
                raise _GraphFail(
                    100, "(#100) param message[text] must be a non-empty UTF-8 encoded string"
                )
            # The send-message page says both "a 1000 bytes or less" and, under
            # Limitations, "less than 1000 characters": enforce the stricter of the two.
            if len(text.encode("utf-8")) > MAX_TEXT_BYTES or len(text) >= MAX_TEXT_BYTES:
                raise _GraphFail(
                    100,
                    "(#100) Length of param message[text] must be less than"
                    f" or equal to {MAX_TEXT_BYTES}",
                )
            return
        atts = message.get("attachments") or [message.get("attachment")]
        if not isinstance(atts, list) or len(atts) > 10:
            raise _GraphFail(100, "(#100) Too many attachments")
        for att in atts:
            if not isinstance(att, dict) or att.get("type") not in (
                "image",
                "audio",
                "video",
                "file",
            ):
                raise _GraphFail(
                    100,
                    "(#100) Param message[attachment][type] must be one of"
                    " {image, audio, video, file}",
                )
            payload = att.get("payload")
            if not isinstance(payload, dict) or not (
                payload.get("url") or payload.get("attachment_id")
            ):
                raise _GraphFail(100, "(#100) Param message[attachment][payload][url] is required")
