"""Child process of the crash test: ``python -m tests.storage.crash_child PATH RUN``.

Enqueues items from several concurrent producers, completes every third one, and
prints ``ack <id>`` after each enqueue has returned (that is: once it is durable),
``completing <id>`` before and ``done <id>`` after each completion, flushing each
line. The parent kills it with SIGKILL at a random moment and checks the store
against what was printed. PATH may be a ``postgresql://`` URL. For TinyDB, small
compaction thresholds make snapshot rewrites happen during the run too.
"""

from __future__ import annotations

import asyncio
import sys

from storage import WorkItem, is_postgres_url, open_store

PRODUCERS = 6
CONVERSATIONS = 5


async def main(path: str, run: str) -> None:
    options = {} if is_postgres_url(path) else {"compact_min_bytes": 16 * 1024,
                                                "compact_ratio": 1.0}
    store = open_store(path, **options)
    await store.open()
    out = sys.stdout
    out.write("ready\n")
    out.flush()
    counter = 0

    async def producer() -> None:
        nonlocal counter
        while True:
            counter += 1
            n = counter
            item_id = f"{run}-{n}"
            added = await store.enqueue(
                [
                    WorkItem(
                        item_id=item_id,
                        queue="inbound",
                        conversation=f"c{n % CONVERSATIONS}",
                        kind="message",
                        payload={"n": n, "text": "x" * 100},
                    )
                ]
            )
            out.write(f"ack {item_id}\n")
            out.flush()
            if n % 3 == 0:
                out.write(f"completing {item_id}\n")  # from here on it may be gone
                out.flush()
                await store.complete(added[0])
                out.write(f"done {item_id}\n")
                out.flush()
            await asyncio.sleep(0)

    await asyncio.gather(*(producer() for _ in range(PRODUCERS)))


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2]))
