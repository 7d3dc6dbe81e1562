"""Typed state of the web receiver's aiohttp app (``web.AppKey``), shared by its handlers.

Kept apart from :mod:`bot.web` so the handler modules that the routes table imports can
reach the bot without importing the table back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

if TYPE_CHECKING:
    from bot.app import Bot

#: The running bot: every handler reaches the store and clients through it.
BOT: web.AppKey[Bot] = web.AppKey("bot")

#: Meta caps webhook bodies well below this; larger requests are refused with 413.
MAX_BODY = 1024 * 1024

#: The Omnichannel webhook's own cap. A ``LivechatSession`` close carries every visible
#: message of the room (audit W4): 1 MiB is about 3,000 messages, so a long-lived
#: Instagram thread passes it, and a 413 would lose the finished text (6.x retries a
#: few times, 7.x not at all). 32 MiB is some 100,000 messages; the body is read only
#: after the secret header matched, so only Rocket.Chat can send one this large.
ROCKETCHAT_MAX_BODY = 32 * 1024 * 1024
