"""Move everything from one store to another, offline (``rc-instagram storage migrate``).

Either side is a TinyDB path or a ``postgresql://`` URL. The source is read through its
own store (so its tokens are decrypted with the key, and re-encrypted by the
destination with the same key), expired records are dropped first, the destination
must be empty, and the copy is verified by counting every kind of record again in the
destination. The source is left as it was: it stays the backup until you delete it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from storage.base import StorageError, Store
from storage.postgres import PostgresStore, mask_url

log = logging.getLogger("storage")


async def migrate(
    source: str,
    destination: str,
    encryption_key: str | None = None,
    *,
    clock: Callable[[], float] = time.time,
    open_store: Callable[..., Store] | None = None,
) -> dict[str, int]:
    """Copy ``source`` into the empty ``destination``; return the verified counts.

    Raises StorageError when a side cannot be opened, a bot is still using one, the
    destination holds data, or the counts differ after the copy.
    """
    if open_store is None:
        from storage import open_store
    if source == destination:
        raise StorageError("--from and --to are the same store")
    src = open_store(source, encryption_key, clock=clock)
    await src.open()  # a TinyDB file in use by a bot is refused here (StoreLocked)
    try:
        await _refuse_running_replicas(src, source)
        await src.expire(clock())
        dump = await src.dump()
        expected = dump.counts()
        dst = open_store(destination, encryption_key, clock=clock)
        await dst.open()
        try:
            await _refuse_running_replicas(dst, destination)
            before = (await dst.dump()).counts()
            if any(before.values()):
                raise StorageError(
                    f"{mask_url(destination)} is not empty ("
                    + ", ".join(f"{n} {k}" for k, n in before.items() if n)
                    + "); migrate into a new, empty store")
            await dst.restore(dump)
            copied = (await dst.dump()).counts()
        finally:
            await dst.close()
    finally:
        await src.close()
    if copied != expected:
        diff = ", ".join(f"{k}: {expected[k]} in the source, {copied.get(k)} copied"
                         for k in expected if copied.get(k) != expected[k])
        raise StorageError(f"the copy is incomplete ({diff}); the source is unchanged")
    log.info("storage migrated from %s to %s: %s", mask_url(source), mask_url(destination),
             expected)
    return expected


async def _refuse_running_replicas(store: Store, location: str) -> None:
    if isinstance(store, PostgresStore) and (others := await store.other_replicas()):
        raise StorageError(
            f"{others} rc-instagram process(es) are using {mask_url(location)}; "
            "stop every replica before migrating")
