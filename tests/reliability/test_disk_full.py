"""Drill 5: the data directory stops taking writes (disk full, or read-only).

While the store cannot write, the bot must refuse webhooks with 503 — Meta and
Rocket.Chat then retry — instead of acknowledging what it could not store, report
``storage: false`` in /healthz, and recover by itself when space returns: the retried
webhooks are acknowledged and every message is delivered once, in order.

Why the failure is injected with pytest-mock: the tests run as root here, and root
ignores permission bits (``chmod 0500`` on the data directory stops nothing); a small
loop-mounted or tmpfs filesystem that really fills up needs ``mount``, i.e. root or
CAP_SYS_ADMIN, which CI runners and containers do not grant. So the drill patches the
true edge, the operating system calls: ``os.write`` fails with ENOSPC (or EROFS) for
descriptors of files inside the data directory, and for EROFS ``os.open`` refuses to
open files there for writing. Every other descriptor (sockets, logs, the sandboxes)
goes to the real calls. Nothing of ours is mocked.

There is one variant only (it is quick and the same at any size).
"""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.reliability.drills import deliver_until_ok, tally
from tests.scenarios.harness import Bridge
from tests.scenarios.outbound_helpers import (
    enable_omnichannel_webhooks,
    reply,
    sent_texts,
    visitor_with_room,
    wait_for,
)

_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class BrokenDisk:
    """Makes the filesystem under ``root`` refuse writes with ``code`` (ENOSPC/EROFS)."""

    def __init__(self, root: Path, code: int) -> None:
        self.root = str(root.resolve())
        self.code = code
        self.refused = 0
        self.real_write = os.write
        self.real_open = os.open

    def _inside(self, path: str) -> bool:
        return os.path.abspath(path).startswith(self.root + os.sep)

    def _error(self, path: str) -> OSError:
        self.refused += 1
        return OSError(self.code, os.strerror(self.code), path)

    def write(self, fd: int, data: Any) -> int:
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = ""
        if path and self._inside(path):
            raise self._error(path)
        return self.real_write(fd, data)

    def open(self, path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
        if (self.code == errno.EROFS and flags & _WRITE_FLAGS
                and isinstance(path, str | Path) and self._inside(str(path))):
            raise self._error(str(path))
        return self.real_open(path, flags, *args, **kwargs)


async def healthz(bridge: Bridge) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.get(
        f"http://127.0.0.1:{bridge.bot.port}/healthz"
    ) as resp:
        return resp.status, await resp.json()


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS], ids=["disk_full", "read_only"])
async def test_unwritable_data_dir_refuses_webhooks_with_503_then_recovers(
    bridge: Bridge, mocker, code: int
) -> None:
    """Disk full / read-only: webhooks answered 503 (never 200), /healthz degraded; when
    writes work again the retried webhooks are stored and everything arrives once, in order."""
    rc, meta = bridge.rc, bridge.meta
    rc.webhook_retry_delay = 0.2  # Rocket.Chat keeps retrying through the outage
    rc.webhook_max_attempts = 100
    enable_omnichannel_webhooks(bridge)
    igsid, rid = await visitor_with_room(bridge)
    data_dir = Path(bridge.config.storage.path).parent
    disk = BrokenDisk(data_dir, code)
    mocker.patch.object(os, "write", disk.write)
    mocker.patch.object(os, "open", disk.open)

    # Meta delivers while the disk refuses: each must be refused, none acknowledged.
    inbound = [f"during {k}" for k in range(5)]
    events = [meta.text_event(bridge.ig_id, igsid, text) for text in inbound]
    statuses = [(await bridge.deliver(event))[0] for event in events]
    outbound = [f"agent during {k}" for k in range(3)]
    agent_ids = [reply(bridge, rid, text)["_id"] for text in outbound]
    await wait_for(lambda: all(
        any(w["payload"]["messages"][0]["_id"] == mid for w in rc.webhooks_sent()
            if w["type"] == "Message" and w["status"] is not None) for mid in agent_ids))
    rc_statuses = sorted({w["status"] for w in rc.webhooks_sent()
                          if w["type"] == "Message"
                          and w["payload"]["messages"][0]["_id"] in agent_ids})
    health_during = await healthz(bridge)

    mocker.stopall()  # space returns
    fault_over = time.monotonic()
    retried = [await deliver_until_ok(meta, bridge.webhook_url, event) for event in events]
    await wait_for(lambda: set(inbound) <= set(bridge.texts(igsid))
                   and set(outbound) <= set(sent_texts(bridge, igsid)), timeout=15)
    recovered = time.monotonic() - fault_over
    health_after = await healthz(bridge)
    inbound_result = tally("inbound", {igsid: ["Hello", *inbound]}, {igsid: bridge.texts(igsid)})
    outbound_result = tally("outbound", {igsid: outbound}, {igsid: sent_texts(bridge, igsid)})
    print(f"\n[drill 5 {errno.errorcode[code]}] Instagram webhooks answered {statuses}, "
          f"Omnichannel webhooks answered {rc_statuses}, /healthz {health_during}; "
          f"{disk.refused} writes refused; after recovery: Meta retries answered 200 at "
          f"attempt {retried}, everything delivered {recovered:.1f} s later, "
          f"/healthz {health_after}")
    print(f"[drill 5 {errno.errorcode[code]}] {inbound_result.line()}")
    print(f"[drill 5 {errno.errorcode[code]}] {outbound_result.line()}")
    assert disk.refused > 0
    assert statuses == [503] * len(events)
    assert 200 not in rc_statuses and 503 in rc_statuses
    assert health_during == (503, {"status": "degraded", "realtime": True, "storage": False,
                             "meta": "ok"})
    assert health_after[0] == 200
    for result in (inbound_result, outbound_result):
        assert (result.lost, result.duplicated, result.out_of_order) == (0, 0, 0), result.examples
