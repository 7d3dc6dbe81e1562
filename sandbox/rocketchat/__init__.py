"""Sandbox Rocket.Chat: a loopback DDP + REST + Omnichannel stand-in (see server.py)."""

from .server import SandboxRocketChat
from .versions import PROFILES, VersionProfile
from .wire import RCError

__all__ = ["PROFILES", "RCError", "SandboxRocketChat", "VersionProfile"]
