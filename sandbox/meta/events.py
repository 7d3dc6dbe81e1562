"""Instagram webhook payload builders."""

from __future__ import annotations

import base64
import json
import secrets
from collections.abc import Iterable, Mapping
from typing import Any

from sandbox.meta.wire import (
    _REACTION_NAMES,
    DEFAULT_IG_USERNAME,
    _ms,
    as_standby,
)


class EventsMixin:
    """Builders of Instagram webhook bodies as Meta sends them (instagram.md §2).

    Mixed into :class:`sandbox.meta.server.SandboxMeta`.
    """

    # ------------------------------------------------------------------ payload builders

    @staticmethod
    def new_mid() -> str:
        """An Instagram-looking message id."""
        tail = base64.b64encode(secrets.token_bytes(45)).decode().rstrip("=")
        return "aWdfZAG1faXRlbToxOklHTWVzc2FnZAUlEOj" + tail.replace("+", "A").replace("/", "B")

    def _event(self, ig_id: str, item: dict[str, Any]) -> dict[str, Any]:
        now_ms = int(self.now() * 1000)
        return {
            "object": "instagram",
            "entry": [{"id": ig_id, "time": max(now_ms, item["timestamp"]), "messaging": [item]}],
        }

    def _inbound(self, ig_id: str, igsid: str, ts: float | None, **body: Any) -> dict[str, Any]:
        item = {
            "sender": {"id": igsid},
            "recipient": {"id": ig_id},
            "timestamp": _ms(ts, self.now()),
            **body,
        }
        return self._event(ig_id, item)

    def text_event(
        self, ig_id: str, igsid: str, text: str, mid: str | None = None, ts: float | None = None
    ) -> dict[str, Any]:
        """A person's text DM (§2.2)."""
        return self._inbound(ig_id, igsid, ts, message={"mid": mid or self.new_mid(), "text": text})

    def attachment_event(
        self,
        ig_id: str,
        igsid: str,
        attachments: Iterable[tuple[str, str]],
        mid: str | None = None,
        ts: float | None = None,
    ) -> dict[str, Any]:
        """A DM with attachments ``[(type, url), ...]`` (image, video, audio, file, share,
        ig_reel, reel, story_mention; §2.4)."""
        atts = [{"type": t, "payload": {"url": u}} for t, u in attachments]
        return self._inbound(
            ig_id, igsid, ts, message={"mid": mid or self.new_mid(), "attachments": atts}
        )

    def story_mention_event(
        self,
        ig_id: str,
        igsid: str,
        url: str | None = None,
        mid: str | None = None,
        ts: float | None = None,
    ) -> dict[str, Any]:
        """The person mentioned the business in their story (§2.5)."""
        url = url or "https://lookaside.fbsbx.com/ig_messaging_cdn/?asset_id=1800&signature=sbx"
        return self.attachment_event(ig_id, igsid, [("story_mention", url)], mid, ts)

    def story_reply_event(
        self,
        ig_id: str,
        igsid: str,
        text: str,
        story_id: str | None = None,
        url: str | None = None,
        mid: str | None = None,
        ts: float | None = None,
    ) -> dict[str, Any]:
        """The person replied to the business's story (§2.5)."""
        story = {
            "url": url or "https://lookaside.fbsbx.com/ig_messaging_cdn/?asset_id=1801",
            "id": story_id or "18000000000000000",
        }
        return self._inbound(
            ig_id,
            igsid,
            ts,
            message={"mid": mid or self.new_mid(), "text": text, "reply_to": {"story": story}},
        )

    def reply_to_event(
        self,
        ig_id: str,
        igsid: str,
        text: str,
        reply_to_mid: str,
        mid: str | None = None,
        ts: float | None = None,
    ) -> dict[str, Any]:
        """An inline reply to an earlier message (§2.5)."""
        return self._inbound(
            ig_id,
            igsid,
            ts,
            message={"mid": mid or self.new_mid(), "text": text, "reply_to": {"mid": reply_to_mid}},
        )

    def reaction_event(
        self,
        ig_id: str,
        igsid: str,
        target_mid: str,
        emoji: str = "❤️",
        action: str = "react",
        ts: float | None = None,
    ) -> dict[str, Any]:
        """A reaction or unreaction to a message (§2.8)."""
        reaction: dict[str, Any] = {"mid": target_mid, "action": action}
        if action == "react":
            reaction["reaction"] = _REACTION_NAMES.get(emoji, "other")
            reaction["emoji"] = emoji
        return self._inbound(ig_id, igsid, ts, reaction=reaction)

    def unsend_event(
        self, ig_id: str, igsid: str, mid: str, ts: float | None = None, *,
        as_string: bool = False,
    ) -> dict[str, Any]:
        """The person deleted (unsent) a message (§2.6); ``as_string`` sends
        ``"is_deleted": "true"`` as Meta's own example does (airyhq/airy#2139)."""
        flag: Any = "true" if as_string else True
        return self._inbound(ig_id, igsid, ts, message={"mid": mid, "is_deleted": flag})

    def post_share_event(
        self, ig_id: str, igsid: str, url: str, title: str = "", *, transition: bool = True,
        mid: str | None = None, ts: float | None = None,
    ) -> dict[str, Any]:
        """A shared feed post: ``ig_post`` since Nov 2025, sent together with the legacy
        ``share`` attachment during the transition (until Feb 2026; webhooks/new)."""
        atts: list[dict[str, Any]] = []
        if transition:
            atts.append({"type": "share", "payload": {"url": url}})
        payload = {"url": url, "title": title, "ig_post_media_id": "18000000000000001"}
        atts.append({"type": "ig_post", "payload": payload})
        return self._inbound(
            ig_id, igsid, ts, message={"mid": mid or self.new_mid(), "attachments": atts}
        )

    def policy_enforcement_event(
        self, ig_id: str, action: str = "block", reason: str | None = None,
        ts: float | None = None,
    ) -> dict[str, Any]:
        """Meta blocked/unblocked the app for a policy violation (messaging_policy_enforcement;
        restfb ``messaging-policy-callback-*.json``): no sender, only the recipient."""
        item = {
            "recipient": {"id": ig_id},
            "timestamp": _ms(ts, self.now()),
            "policy-enforcement": {"action": action, "reason": reason or (
                "The bot violated our Platform Policies "
                "(https://developers.facebook.com/policy/#messengerplatform).")},
        }
        return self._event(ig_id, item)

    def product_referral_event(
        self, ig_id: str, igsid: str, product_id: str, ts: float | None = None
    ) -> dict[str, Any]:
        """The person tapped "Message" on a product of the business's Instagram shop."""
        return self._inbound(ig_id, igsid, ts, referral={
            "product": {"id": product_id}, "source": "SHOP", "type": "OPEN_THREAD"})

    def unsupported_event(
        self, ig_id: str, igsid: str, mid: str | None = None, ts: float | None = None
    ) -> dict[str, Any]:
        """Content the API cannot represent (§2.4)."""
        return self._inbound(
            ig_id, igsid, ts, message={"mid": mid or self.new_mid(), "is_unsupported": True}
        )

    def postback_event(
        self,
        ig_id: str,
        igsid: str,
        payload: str,
        title: str = "Get started",
        mid: str | None = None,
        ts: float | None = None,
    ) -> dict[str, Any]:
        """An icebreaker / button tap (§2.9)."""
        return self._inbound(
            ig_id,
            igsid,
            ts,
            postback={"mid": mid or self.new_mid(), "title": title, "payload": payload},
        )

    def quick_reply_event(
        self,
        ig_id: str,
        igsid: str,
        text: str,
        payload: str,
        mid: str | None = None,
        ts: float | None = None,
    ) -> dict[str, Any]:
        """A quick-reply tap (§2.7)."""
        return self._inbound(
            ig_id,
            igsid,
            ts,
            message={
                "mid": mid or self.new_mid(),
                "text": text,
                "quick_reply": {"payload": payload},
            },
        )

    def referral_event(
        self,
        ig_id: str,
        igsid: str,
        ref: str,
        source: str | None = None,
        type: str = "OPEN_THREAD",
        ts: float | None = None,
    ) -> dict[str, Any]:
        """An ig.me link referral in an existing thread (§2.11)."""
        src = source or f"https://ig.me/m/{DEFAULT_IG_USERNAME}?ref={ref}"
        return self._inbound(ig_id, igsid, ts, referral={"ref": ref, "source": src, "type": type})

    def read_event(
        self, ig_id: str, igsid: str, mid: str, ts: float | None = None
    ) -> dict[str, Any]:
        """The person saw messages up to ``mid`` (§2.10)."""
        return self._inbound(ig_id, igsid, ts, read={"mid": mid})

    def echo_event(
        self,
        ig_id: str,
        igsid: str,
        text: str,
        mid: str,
        app_id: str | None = None,
        ts: float | None = None,
    ) -> dict[str, Any]:
        """A business-sent message echoed back (§2.3); no app_id = sent from the IG app."""
        message: dict[str, Any] = {"mid": mid, "text": text, "is_echo": True}
        if app_id is not None:
            message["app_id"] = int(app_id) if str(app_id).isdigit() else app_id
        item = {
            "sender": {"id": ig_id},
            "recipient": {"id": igsid},
            "timestamp": _ms(ts, self.now()),
            "message": message,
        }
        return self._event(ig_id, item)

    def dashboard_test_event(self) -> dict[str, Any]:
        """The App Dashboard "Test" button's ``changes``-shaped payload (§2.13)."""
        now_ms = int(self.now() * 1000)
        return {
            "object": "instagram",
            "entry": [
                {
                    "id": "0",
                    "time": now_ms,
                    "changes": [
                        {
                            "field": "messages",
                            "value": {
                                "sender": {"id": "12334"},
                                "recipient": {"id": "23245"},
                                "timestamp": str(now_ms // 1000),
                                "message": {"mid": "random_mid", "text": "random_text"},
                            },
                        }
                    ],
                }
            ],
        }

    @staticmethod
    def batch(items: Iterable[Mapping[str, Any]], *, merge: bool = False) -> dict[str, Any]:
        """Assemble payloads or entries into one ``{"object":"instagram","entry":[...]}``.

        ``merge`` folds entries of the same account into one entry with several items.
        """
        entries: list[dict[str, Any]] = []
        for item in items:
            found = item.get("entry") if "entry" in item else [item]
            entries.extend(json.loads(json.dumps(e)) for e in found)
        if merge:
            merged: dict[str, dict[str, Any]] = {}
            for entry in entries:
                into = merged.setdefault(str(entry["id"]), {"id": entry["id"], "time": 0})
                into["time"] = max(into["time"], entry.get("time", 0))
                for key in ("messaging", "standby", "changes"):
                    if key in entry:
                        into.setdefault(key, []).extend(entry[key])
            entries = list(merged.values())
        return {"object": "instagram", "entry": entries}

    as_standby = staticmethod(as_standby)
