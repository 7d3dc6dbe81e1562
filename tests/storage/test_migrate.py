"""``rc-instagram storage migrate``: TinyDB <-> PostgreSQL, offline, verified by counts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from click.testing import CliRunner

from bot.cli import main
from storage import (
    Conversation,
    LoginState,
    Page,
    StorageError,
    StoreLocked,
    TokenCipher,
    open_store,
)
from storage.migrate import migrate
from tests.storage import postgres_server
from tests.storage.helpers import item, stored_bytes

KEY = TokenCipher.generate_key()
DAY = 24 * 3600.0
DIRECTIONS = [("tinydb", "postgres"), ("postgres", "tinydb"), ("tinydb", "tinydb")]


@pytest.fixture
def locations(request, tmp_path) -> Iterator:
    """``place(kind)``: a new empty location of that kind (a path, or a URL's schema)."""
    with contextlib.ExitStack() as stack:
        count = 0

        def place(kind: str) -> str:
            nonlocal count
            count += 1
            if kind == "tinydb":
                return str(tmp_path / f"store{count}" / "rc-instagram.json")
            url = request.getfixturevalue("pg_url")  # skips the test without a server
            return stack.enter_context(postgres_server.fresh_schema(url))

        yield place


async def fill(location: str, clock) -> bytes:
    """A store with one of everything, including work in flight and pending webhooks."""
    store = open_store(location, KEY, clock=clock)
    await store.open()
    await store.save_page(Page("p1", "Shop", "ig1", page_token="EAAG-page-secret",
                               user_token="EAAG-user-secret", department_id="d1"))
    await store.save_conversation(Conversation("p1", "old", "instagram-p1-old", room_id="r0"))
    clock.advance(30 * DAY)
    await store.add_login_state(LoginState("s1", "u1", "admin", clock() + 600, kind="select",
                                           data={"pages": [{"access_token": "EAAG-cand"}]}))
    await store.save_conversation(Conversation("p1", "u1", "instagram-p1-u1", room_id="r1",
                                               waiting_for_agent=True))
    await store.enqueue([item("m2", "p1:u1", order_ts=20.0), item("m1", "p1:u1", order_ts=10.0),
                         item("m3", "p1:u1", order_ts=30.0)])
    (out,) = await store.enqueue([item("o1", "p1:u1", queue="outbound")])
    out.attempts, out.progress, out.next_try_at, out.last_error = 2, 1, clock() + 60, "down"
    await store.update_item(out)
    (refused,) = await store.enqueue([item("bad", "p1:u2", page_id="p1")])
    refused.attempts, refused.last_error = 7, "RocketChatError"
    await store.set_aside(refused, "livechat/message: error-weird")
    await store.remember("rc-msg-9", ttl=DAY)
    await store.inbox.append(b'{"entry": "not queued yet"}')
    await store.inbox.append(b"second")
    secret = await store.bridge_secret()
    await store.close()
    return secret


@pytest.mark.parametrize(("src_kind", "dst_kind"), DIRECTIONS,
                         ids=["tinydb-to-postgres", "postgres-to-tinydb", "tinydb-to-tinydb"])
async def test_migration_copies_every_record_and_keeps_tokens_encrypted(
        locations, clock, src_kind, dst_kind):
    """Everything arrives: pages, states, conversations (times kept), queue order and
    retries, set-aside items, dedupe keys, unqueued webhooks, the bridge secret (so
    visitor tokens of new conversations do not change); tokens stay encrypted."""
    source, destination = locations(src_kind), locations(dst_kind)
    secret = await fill(source, clock)
    counts = await migrate(source, destination, KEY, clock=clock)
    assert counts == {"pages": 1, "login_states": 1, "conversations": 2, "inbound": 3,
                      "outbound": 1, "dedupe_keys": 6, "inbox": 2, "set_aside": 1}
    assert b"EAAG" not in stored_bytes(destination)
    store = open_store(destination, KEY, clock=clock)
    await store.open()
    try:
        page = await store.page_by_instagram_id("ig1")
        assert (page.page_token, page.user_token, page.department_id) == (
            "EAAG-page-secret", "EAAG-user-secret", "d1")
        state = await store.consume_login_state("s1", "select", clock())
        assert state.data == {"pages": [{"access_token": "EAAG-cand"}]}
        old = await store.conversation("p1", "old")
        assert old.room_id == "r0" and old.updated_at == clock() - 30 * DAY
        assert [c.igsid for c in await store.conversations_waiting()] == ["u1"]
        assert [i.item_id for i in await store.pending_items("inbound", "p1:u1")] == [
            "m1", "m2", "m3"]
        (out,) = await store.pending_items("outbound", "p1:u1")
        assert (out.attempts, out.progress, out.next_try_at, out.last_error) == (
            2, 1, clock() + 60, "down")
        assert await store.seen("rc-msg-9") and await store.seen("m1")
        assert await store.enqueue([item("m1", "p1:u1")]) == []  # still deduped
        assert [e.raw for e in store.inbox.pending()] == [b'{"entry": "not queued yet"}',
                                                          b"second"]
        [kept] = await store.set_aside_items()
        assert (kept.item.item_id, kept.item.attempts, kept.reason, kept.page_id) == (
            "bad", 7, "livechat/message: error-weird", "p1")
        assert await store.bridge_secret() == secret
        clock.advance(61 * DAY)  # the old conversation's 90 days are counted from its save
        await store.expire(clock())
        assert await store.conversation("p1", "old") is None
    finally:
        await store.close()


async def test_migration_refuses_a_destination_with_data(locations, clock):
    """Migrating into a store that holds data stops before writing anything."""
    source, destination = locations("tinydb"), locations("tinydb")
    await fill(source, clock)
    target = open_store(destination, clock=clock)
    await target.open()
    await target.remember("already-here")
    await target.close()
    with pytest.raises(StorageError, match="is not empty"):
        await migrate(source, destination, KEY, clock=clock)


async def test_migration_refuses_a_source_in_use(locations, clock):
    """A TinyDB store still open by a bot is refused (the migration is offline)."""
    source = locations("tinydb")
    running = open_store(source, clock=clock)
    await running.open()
    try:
        with pytest.raises(StoreLocked):
            await migrate(source, locations("tinydb"), clock=clock)
    finally:
        await running.close()


async def test_migration_refuses_a_database_a_replica_is_using(locations, clock):
    """A PostgreSQL store with a bot still attached is refused, naming the reason."""
    source = locations("postgres")
    running = open_store(source, clock=clock)
    await running.open()
    try:
        with pytest.raises(StorageError, match="stop every replica"):
            await migrate(source, locations("tinydb"), clock=clock)
    finally:
        await running.close()


def test_migrate_command_reports_counts_and_masks_the_password(locations, tmp_path,
                                                                monkeypatch):
    """The CLI prints the verified counts; a failure is one line with the password masked."""
    monkeypatch.chdir(tmp_path)  # no config.yaml here: the key comes from the environment
    monkeypatch.setenv("RC_INSTAGRAM_STORAGE_KEY", KEY)
    source, destination = locations("tinydb"), locations("tinydb")
    result = CliRunner().invoke(main, ["storage", "migrate", "--from", source,
                                       "--to", destination])
    assert result.exit_code == 0, result.output
    assert "verified" in result.output and "0 pages" in result.output
    result = CliRunner().invoke(main, ["storage", "migrate", "--from", source, "--to",
                                       "postgresql://bot:hunter2-pw@127.0.0.1:1/rcig"])
    assert result.exit_code == 3
    assert "hunter2-pw" not in result.output
    assert "postgresql://bot:***@127.0.0.1:1/rcig" in result.output
