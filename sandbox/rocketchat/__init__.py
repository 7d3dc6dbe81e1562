"""Sandbox Rocket.Chat: a loopback DDP + REST + Omnichannel stand-in (see server.py)."""

from .server import SandboxRocketChat
from .wire import RCError

__all__ = ["RCError", "SandboxRocketChat"]
