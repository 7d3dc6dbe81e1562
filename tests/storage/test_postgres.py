"""What only the PostgreSQL store has: migrations, secret-safe URLs, several replicas."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Iterator

import psycopg
import pytest

from storage import Conversation, StorageError, WorkItem, mask_url, open_store
from storage.postgres_schema import SCHEMA_VERSION
from tests.storage import postgres_server
from tests.storage.helpers import crash, item


@pytest.fixture
def pg_location(pg_url: str) -> Iterator[str]:
    """A URL with an empty schema of its own (the test is skipped without a server)."""
    with postgres_server.fresh_schema(pg_url) as url:
        yield url


@pytest.fixture
async def replicas(pg_location, clock):
    """Open stores ("replicas") on one database; all closed at teardown."""
    opened = []

    async def make(**options):
        options.setdefault("clock", clock)
        store = open_store(pg_location, **options)
        await store.open()
        opened.append(store)
        return store

    yield make
    for store in opened:
        await store.close()


def sql(url: str, query: str, params=None) -> list[tuple]:
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(query, params)
        return cur.fetchall() if cur.description else []


# -- schema ------------------------------------------------------------------------------
async def test_replicas_starting_together_create_the_schema_once(replicas, pg_location):
    """Two stores opening at once both start; the schema version is recorded once."""
    await asyncio.gather(replicas(), replicas())
    assert sql(pg_location, "SELECT value FROM rcig_meta WHERE key = 'schema'") == [
        (SCHEMA_VERSION,)]


async def test_older_schema_is_migrated_on_start_keeping_the_data(replicas, pg_location):
    """A database left at schema 1 gets the later migrations on start; nothing is lost."""
    store = await replicas()
    await store.enqueue([item("m1")])
    await store.save_conversation(Conversation("p1", "u1", "t1", last_inbound_at=1000.0))
    await store.save_conversation(Conversation("p1", "u2", "t2"))  # never wrote
    await store.close()
    # Back to schema 1 as it was: without what migrations 2 to 5 added.
    sql(pg_location, "DROP TABLE rcig_set_aside; ALTER TABLE rcig_inbox DROP COLUMN "
        "received_at; ALTER TABLE rcig_items DROP COLUMN queued_at; ALTER TABLE rcig_items "
        "DROP COLUMN sending_at; DROP TABLE rcig_marks; ALTER TABLE rcig_conversations "
        "DROP COLUMN page_id, DROP COLUMN last_inbound_at")
    sql(pg_location, "UPDATE rcig_meta SET value = '1'::jsonb WHERE key = 'schema'")
    store = await replicas()
    assert [i.item_id for i in await store.pending_items("inbound", "p1:u1")] == ["m1"]
    # Migration 5 derived the columns this month's visitors are counted by from the rows.
    assert await store.visitors_since(999.0) == {"p1": 1}
    assert await store.visitors_since(1001.0) == {}
    await store.set_aside((await store.pending_items("inbound", "p1:u1"))[0], "refused")
    assert [kept.item.item_id for kept in await store.set_aside_items()] == ["m1"]
    assert sql(pg_location, "SELECT value FROM rcig_meta WHERE key = 'schema'") == [
        (SCHEMA_VERSION,)]


async def test_schema_newer_than_the_code_is_refused(replicas, pg_location):
    """A database migrated by a newer rc-instagram stops the start with a clear message."""
    store = await replicas()
    await store.enqueue([item("m1")])
    await store.close()
    sql(pg_location, "UPDATE rcig_meta SET value = %s::jsonb WHERE key = 'schema'",
        (str(SCHEMA_VERSION + 1),))
    with pytest.raises(StorageError, match="newer than this rc-instagram") as caught:
        await open_store(pg_location).open()
    assert "upgrade the bot" in str(caught.value)
    assert sql(pg_location, "SELECT item_id FROM rcig_items") == [("m1",)]  # untouched


async def test_a_server_default_of_asynchronous_commit_is_overridden(pg_location):
    """Even if the server acknowledges commits before the WAL flush, the store does not."""
    store = open_store(pg_location.replace("-csearch_path", "-csynchronous_commit%3Doff%20"
                                           "-csearch_path"))
    await store.open()
    try:
        assert await store._read("SHOW synchronous_commit") == [("on",)]
    finally:
        await store.close()


async def test_bridges_in_two_schemas_of_one_database_do_not_share_locks(pg_url, clock):
    """Two stores in two schemas (both replica 1 of their own) open and work side by side:
    advisory locks are per database, so their namespaces derive from the schema."""
    with postgres_server.fresh_schema(pg_url) as one, \
            postgres_server.fresh_schema(pg_url) as two:
        first, second = open_store(one, clock=clock), open_store(two, clock=clock)
        await asyncio.wait_for(first.open(), 10)
        try:
            await asyncio.wait_for(second.open(), 10)
            try:
                assert first.replica_id == second.replica_id == 1
                await first.enqueue([item("m1")])
                await second.enqueue([item("m1")])
                for store in (first, second):
                    got = await store.next_items("inbound", clock(), set(), 5)
                    assert [i.item_id for i in got] == ["m1"]
                    assert await store.other_replicas() == 0
            finally:
                await second.close()
        finally:
            await first.close()


# -- losing the database -----------------------------------------------------------------
def kill_sessions(store) -> None:
    """End every session of ``store`` on the server (a restart or network cut would)."""
    sql(store.url, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
        "WHERE application_name = 'rc-instagram' AND pid <> pg_backend_pid()")


async def test_lost_sessions_fail_calls_then_the_store_recovers(replicas, clock):
    """With its sessions cut, a call fails with StorageError (nothing acknowledged); the
    store reconnects by itself, locks included, and loses nothing that was committed."""
    store = await replicas()
    await store.enqueue([item("m1")])
    await store.inbox.append(b"before")
    assert [i.item_id for i in await store.next_items("inbound", clock(), set(), 5)] == ["m1"]
    kill_sessions(store)
    failures = 0
    for call in (lambda: store.enqueue([item("m2")]), lambda: store.inbox.append(b"after"),
                 lambda: store.next_items("inbound", clock(), set(), 5)):
        try:
            await call()
        except StorageError as exc:
            assert "password" not in str(exc)
            failures += 1
    assert failures >= 1
    for _ in range(3):  # each broken pooled session fails one call, then is replaced
        if await store.healthy():
            break
    assert await store.healthy()
    await store.enqueue([item("m3")])
    assert (await store.inbox.append(b"later")).seq > 0
    pending = [i.item_id for i in await store.pending_items("inbound", "p1:u1")]
    assert pending[0] == "m1" and "m3" in pending
    got = await store.next_items("inbound", clock(), set(), 5)
    assert [i.item_id for i in got] == ["m1"]  # the conversation is locked again, by us
    other = await replicas()
    assert await other.next_items("inbound", clock(), set(), 5) == []


# -- secrets -----------------------------------------------------------------------------
def test_url_password_is_masked():
    """mask_url hides the password wherever a URL can carry it, and nothing else."""
    assert mask_url("postgresql://bot:s3cr%40t@db:5432/rcig") == "postgresql://bot:***@db:5432/rcig"
    assert mask_url("postgres://db/rcig?user=bot&password=s3cret&sslmode=require") == (
        "postgres://db/rcig?user=bot&password=***&sslmode=require")
    assert mask_url("postgresql://bot@db/rcig") == "postgresql://bot@db/rcig"


async def test_unreachable_database_error_hides_the_password():
    """A failed connection names the database but never its password."""
    store = open_store("postgresql://bot:s3cret-pw@127.0.0.1:1/rcig")
    with pytest.raises(StorageError) as caught:
        await store.open()
    assert "s3cret-pw" not in str(caught.value)
    assert "postgresql://bot:***@127.0.0.1:1/rcig" in str(caught.value)


# -- several replicas ----------------------------------------------------------------------
async def test_conversation_taken_by_one_replica_is_not_handed_to_another(replicas, clock):
    """While replica A works on a conversation, B gets the others, then it in order."""
    a, b = await replicas(), await replicas()
    await a.enqueue([item("a1", "c:a"), item("a2", "c:a"), item("b1", "c:b")])
    taken = await a.next_items("inbound", clock(), set(), 1)
    assert [i.item_id for i in taken] == ["a1"]
    assert [i.item_id for i in await b.next_items("inbound", clock(), set(), 10)] == ["b1"]
    await a.complete(taken[0])
    assert await b.next_items("inbound", clock(), {"c:b"}, 10) == []  # A still on c:a
    await a.next_items("inbound", clock(), set(), 0)  # A's worker let go of c:a
    assert [i.item_id for i in await b.next_items("inbound", clock(), {"c:b"}, 10)] == ["a2"]


async def test_inbound_waits_for_an_older_webhook_another_replica_has_not_queued(
        replicas, clock):
    """A message queued by B is not relayed while a webhook A acknowledged earlier is
    still unqueued (it may hold an earlier message of the same conversation)."""
    a, b = await replicas(), await replicas()
    earlier = await a.inbox.append(b'{"earlier": "message"}')
    await b.enqueue([item("later", "p1:u1", order_ts=20.0)])
    assert await b.next_items("inbound", clock(), set(), 5) == []
    assert await b.earliest_due("inbound") > clock()  # looked at again shortly, not spun on
    # A worker draining the conversation (head after complete) stops there too.
    assert (await b.head("inbound", "p1:u1")).next_try_at > clock()
    await a.enqueue([item("earlier", "p1:u1", order_ts=10.0)])  # A's intake got to it
    a.inbox.release(earlier.seq)
    assert await a.inbox.probe()
    got = await b.next_items("inbound", clock(), set(), 5)
    assert [i.item_id for i in got] == ["earlier"]
    await b.enqueue([item("out", "p1:u1", queue="outbound")])  # outbound does not wait
    await a.inbox.append(b"another")
    assert [i.item_id for i in await b.next_items("outbound", clock(), set(), 5)] == ["out"]


async def test_killed_replica_leaves_its_conversations_to_the_others(replicas, clock):
    """A replica whose process dies holds nothing: another takes its heads at once."""
    a, b = await replicas(), await replicas()
    await a.enqueue([item("a1", "c:a"), item("b1", "c:b")])
    assert len(await a.next_items("inbound", clock(), set(), 10)) == 2
    assert await b.next_items("inbound", clock(), set(), 10) == []
    assert await b.earliest_due("inbound") is None  # nothing for B to wake up for
    await crash(a)
    got = await b.next_items("inbound", clock(), set(), 10)
    assert sorted(i.item_id for i in got) == ["a1", "b1"]


async def test_once_is_taken_over_when_its_replica_dies_inside(replicas):
    """A command claimed by a replica that dies before answering is answered by another;
    one that finished is not answered again."""
    a, b = await replicas(), await replicas()
    inside = asyncio.Event()

    async def claimer() -> None:
        async with a.once("command:m1", ttl=60) as mine:
            assert mine
            inside.set()
            await asyncio.sleep(30)  # answering... when the process dies

    task = asyncio.create_task(claimer())
    await inside.wait()
    waiter_result: list[bool] = []

    async def waiter() -> None:
        async with b.once("command:m1", ttl=60) as mine:
            waiter_result.append(mine)

    waiting = asyncio.create_task(waiter())
    await asyncio.sleep(0.5)
    assert waiter_result == []  # A is inside: B waits
    await crash(a)
    task.cancel()
    await asyncio.wait_for(waiting, 5)
    assert waiter_result == [True]
    async with b.once("command:m1", ttl=60) as mine:
        assert not mine


async def test_killed_replica_inbox_is_taken_by_a_live_one(replicas):
    """Webhooks a dead replica acknowledged are taken by another within seconds; a live
    replica's are left alone."""
    live = await replicas()
    taker = await replicas(adopt_interval=0.05)
    adopted = asyncio.Event()
    taker.inbox.on_adopted = adopted.set  # the intake's wake-up
    doomed = await replicas()
    await live.inbox.append(b"live's own")
    acked = [await doomed.inbox.append(f"w{n}".encode()) for n in range(3)]
    await asyncio.sleep(0.2)
    assert taker.inbox.pending() == []  # both owners alive
    await crash(doomed)
    deadline = time.monotonic() + 5
    while taker.inbox.backlog < 3 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert [e.raw for e in taker.inbox.pending()] == [e.raw for e in acked]
    assert adopted.is_set()
    assert [e.raw for e in live.inbox.pending()] == [b"live's own"]
    taker.inbox.release(taker.inbox.pending()[-1].seq)
    assert await taker.inbox.probe()
    assert (await taker.stats())["inbox"] == 1  # only the live replica's row is left


async def test_two_replicas_work_every_item_once_in_conversation_order(replicas):
    """Two replicas draining one queue: each item processed once, each conversation in
    order, never by both at the same time."""
    a, b = await replicas(clock=time.time), await replicas(clock=time.time)
    conversations, per = 20, 8
    await a.enqueue([item(f"{c}-{n}", f"c{c}", n=n)
                     for n in range(per) for c in range(conversations)])
    processed: dict[str, list[int]] = {}
    active: set[str] = set()
    total = conversations * per
    rng = random.Random(7)

    async def replica(store) -> None:
        busy: dict[str, asyncio.Task] = {}

        async def drain(head: WorkItem | None) -> None:
            while head is not None:
                assert head.conversation not in active, "two replicas on one conversation"
                active.add(head.conversation)
                await asyncio.sleep(rng.uniform(0, 0.003))  # the effect
                processed.setdefault(head.conversation, []).append(head.payload["n"])
                active.discard(head.conversation)
                await store.complete(head)
                head = await store.head("inbound", head.conversation)

        while sum(map(len, processed.values())) < total:
            for done in [c for c, t in busy.items() if t.done()]:
                busy.pop(done).result()
            for head in await store.next_items("inbound", time.time(), set(busy), 4):
                busy[head.conversation] = asyncio.create_task(drain(head))
            await asyncio.sleep(0.002)
        await asyncio.gather(*busy.values())

    await asyncio.wait_for(asyncio.gather(replica(a), replica(b)), timeout=60)
    assert processed == {
        f"c{c}": list(range(per)) for c in range(conversations)}
    assert await a.queue_depth("inbound") == 0
