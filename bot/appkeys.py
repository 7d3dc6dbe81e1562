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
