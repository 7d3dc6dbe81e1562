"""Legacy message-attachment action buttons (protocols/rocketchat.md §2.2).

A plain bot cannot receive UIKit interactions, but Rocket.Chat's clients render the
``actions`` of a message attachment as buttons: one with ``url`` opens the link, one with
``msg`` and ``msg_in_chat_window`` posts ``msg`` into the room as a message of the user
who clicks. That message reaches the bot on the stream like any typed command, so the
admin check applies unchanged. The text carries no leading ``/``: since Rocket.Chat 6.10
a clicked button's text is posted verbatim and never processed as a slash command, and
in a DM the bot accepts ``instagram …`` without the slash.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from commands.base import ButtonRow


def button_attachments(rows: Sequence[ButtonRow]) -> list[dict[str, Any]]:
    """One attachment per row, each with its buttons (``chat.sendMessage`` attachments)."""
    attachments = []
    for row in rows:
        actions = []
        for button in row.buttons:
            action: dict[str, Any] = {"type": "button", "text": button.text}
            if button.url:
                action.update(url=button.url, is_webview=False)
            else:
                action.update(msg=button.command, msg_in_chat_window=True,
                              msg_processing_type="sendMessage")
            actions.append(action)
        attachment: dict[str, Any] = {"button_alignment": "horizontal", "actions": actions}
        if row.title:
            attachment["title"] = row.title
        attachments.append(attachment)
    return attachments
