"""TTLs and expiry, driven by an injected clock (no sleeping)."""

from __future__ import annotations

from storage import DEFAULT_CONVERSATION_TTL, DEFAULT_DEDUPE_TTL, Conversation, LoginState, Page
from tests.storage.helpers import item

DAY = 24 * 3600.0


async def test_dedupe_key_expires_after_24_hours(store, clock):
    """A remembered key is seen for 24 h by default, then forgotten."""
    assert DEFAULT_DEDUPE_TTL == DAY
    await store.remember("k")
    clock.advance(DAY - 1)
    assert await store.seen("k")
    clock.advance(1)
    assert not await store.seen("k")
    assert await store.remember("k") is True  # usable again


async def test_custom_ttl_is_honoured(store, clock):
    """remember(ttl=...) overrides the default lifetime."""
    await store.remember("short", ttl=60)
    clock.advance(61)
    assert not await store.seen("short")


async def test_redelivery_after_dedupe_expiry_is_accepted(store, clock):
    """Once its key expired, a completed item's id can be enqueued again."""
    (added,) = await store.enqueue([item("m1")])
    await store.complete(added)
    clock.advance(DAY + 1)
    assert [i.item_id for i in await store.enqueue([item("m1")])] == ["m1"]


async def test_expire_deletes_expired_keys_from_disk(make_store, clock):
    """expire() drops expired dedupe keys so the table does not grow with history."""
    store = await make_store(expire_interval=float("inf"))  # only explicit expiry
    for n in range(50):
        await store.remember(f"old-{n}")
    clock.advance(DAY / 2)
    await store.remember("young")
    clock.advance(DAY / 2)
    counts = await store.expire(clock())
    assert counts["dedupe"] == 50
    assert (await store.stats())["dedupe_keys"] == 1
    await store.close()
    store = await make_store()
    assert (await store.stats())["dedupe_keys"] == 1
    assert await store.seen("young")


async def test_remembering_again_after_expiry_keeps_the_new_key(make_store, clock):
    """A key re-remembered after expiry is not dropped by its old expiry entry."""
    store = await make_store(expire_interval=float("inf"))
    await store.remember("k", ttl=10)
    clock.advance(11)
    await store.remember("k", ttl=100)
    assert (await store.expire(clock()))["dedupe"] == 0
    assert await store.seen("k")


async def test_expiry_runs_by_itself(make_store, clock):
    """Without anyone calling expire(), expired keys go within expire_interval."""
    store = await make_store(expire_interval=60)
    await store.remember("k", ttl=10)
    clock.advance(61)
    await store.remember("other")  # any write gives the writer thread a turn
    assert (await store.stats())["dedupe_keys"] == 1


async def test_expired_login_states_are_dropped(make_store, clock):
    """expire() removes login states past their own expires_at and keeps live ones."""
    store = await make_store(expire_interval=float("inf"))
    await store.add_login_state(LoginState("old", "u", "admin", expires_at=clock() + 5))
    await store.add_login_state(LoginState("new", "u", "admin", expires_at=clock() + 500))
    clock.advance(10)
    assert (await store.expire(clock()))["login_states"] == 1
    assert await store.consume_login_state("new", "login", clock()) is not None


async def test_idle_conversation_expires_after_90_days(store, clock):
    """A conversation idle for 90 days is gone; the returning visitor gets a new one."""
    assert DEFAULT_CONVERSATION_TTL == 90 * DAY
    await store.save_conversation(Conversation("p1", "u1", "instagram-p1-u1", room_id="r1"))
    clock.advance(89 * DAY)
    assert await store.conversation("p1", "u1") is not None
    clock.advance(DAY)
    assert await store.conversation("p1", "u1") is None
    assert await store.conversation_by_token("instagram-p1-u1") is None
    await store.expire(clock())  # (the automatic run may have been first)
    assert (await store.stats())["conversations"] == 0
    await store.save_conversation(Conversation("p1", "u1", "instagram-p1-u1"))
    fresh = await store.conversation("p1", "u1")
    assert fresh is not None and fresh.room_id is None


async def test_relay_context_reads_page_seen_key_and_live_conversation(store, clock):
    """relay_context answers as page(), seen() and conversation() would, expiry included."""
    await store.save_page(Page("p1", "Shop", "ig1", page_token="secret-token"))
    await store.save_conversation(Conversation("p1", "u1", "instagram-p1-u1", room_id="r1"))
    await store.remember("unsent:m1")
    page, seen, conv = await store.relay_context("p1", "u1", "unsent:m1")
    assert page.name == "Shop" and page.page_token == "secret-token"
    assert seen and conv.room_id == "r1"
    assert (await store.relay_context("p1", "u1"))[1] is False
    assert await store.relay_context("p2", "u9", "unsent:m2") == (None, False, None)
    clock.advance(DAY + 1)
    assert (await store.relay_context("p1", "u1", "unsent:m1"))[1] is False  # key expired
    clock.advance(90 * DAY)
    assert (await store.relay_context("p1", "u1"))[2] is None  # conversation expired


async def test_saving_keeps_a_conversation_alive(make_store, clock):
    """Each save restarts the idle clock."""
    store = await make_store(expire_interval=float("inf"))
    conv = Conversation("p1", "u1", "instagram-p1-u1")
    await store.save_conversation(conv)
    clock.advance(80 * DAY)
    await store.save_conversation(conv)
    clock.advance(80 * DAY)
    assert (await store.expire(clock()))["conversations"] == 0
    assert await store.conversation("p1", "u1") is not None


async def test_conversation_with_pending_work_does_not_expire(make_store, clock):
    """An idle conversation whose messages still wait in a queue is kept."""
    store = await make_store(expire_interval=float("inf"))
    await store.save_conversation(Conversation("p1", "u1", "instagram-p1-u1"))
    await store.save_conversation(Conversation("p1", "u2", "instagram-p1-u2"))
    await store.enqueue([item("m1", "p1:u1", queue="outbound")])
    clock.advance(91 * DAY)
    assert (await store.expire(clock()))["conversations"] == 1
    assert await store.conversation("p1", "u1") is not None
    assert await store.conversation("p1", "u2") is None


async def test_expired_conversation_stays_gone_after_restart(make_store, clock):
    """Expiry is durable: a restart does not resurrect an expired conversation."""
    store = await make_store()
    await store.save_conversation(Conversation("p1", "u1", "instagram-p1-u1"))
    clock.advance(91 * DAY)
    await store.expire(clock())
    await store.close()
    store = await make_store()
    assert (await store.stats())["conversations"] == 0
