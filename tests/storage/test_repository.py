"""The repository API in domain words: pages, login states, conversations, queues."""

from __future__ import annotations

import asyncio

import pytest

from storage import DEFAULT_CONVERSATION_TTL, Conversation, LoginState, Page, StorageError, WorkItem
from tests.storage.helpers import item


def page(page_id: str = "p1", instagram_id: str = "ig1", **fields) -> Page:
    return Page(page_id=page_id, name=f"Page {page_id}", instagram_id=instagram_id, **fields)


# -- pages -------------------------------------------------------------------------------
async def test_page_found_by_id_and_instagram_id(store):
    """A saved page is found by page id and by its Instagram account id."""
    await store.save_page(page(username="shop", page_token="PT", department_id="d1"))
    by_id = await store.page("p1")
    assert by_id is not None and by_id.username == "shop" and by_id.page_token == "PT"
    assert await store.page_by_instagram_id("ig1") == by_id
    assert await store.page_by_instagram_id("nope") is None
    assert await store.page("nope") is None


async def test_resaved_page_with_new_instagram_id_drops_old_lookup(store):
    """Replacing a page re-points the Instagram-id lookup instead of keeping both."""
    await store.save_page(page(instagram_id="ig-old"))
    await store.save_page(page(instagram_id="ig-new", welcome_text="hi"))
    assert await store.page_by_instagram_id("ig-old") is None
    found = await store.page_by_instagram_id("ig-new")
    assert found is not None and found.welcome_text == "hi"
    assert len(await store.pages()) == 1


async def test_deleted_page_is_gone_after_restart(make_store):
    """delete_page removes the page durably, including its Instagram-id lookup."""
    store = await make_store()
    await store.save_page(page("p1", "ig1"))
    await store.save_page(page("p2", "ig2"))
    await store.delete_page("p1")
    await store.delete_page("missing")  # deleting twice is harmless
    await store.close()
    store = await make_store()
    assert [p.page_id for p in await store.pages()] == ["p2"]
    assert await store.page_by_instagram_id("ig1") is None


# -- login states ------------------------------------------------------------------------
async def test_login_state_is_single_use(store, clock):
    """A login state is returned once; the second consumption gets None."""
    state = LoginState("s1", "u1", "admin", expires_at=clock() + 600)
    await store.add_login_state(state)
    assert await store.consume_login_state("s1", "login", clock()) == state
    assert await store.consume_login_state("s1", "login", clock()) is None


async def test_expired_login_state_is_refused_and_removed(store, clock):
    """An expired state is not returned, and it is not usable later either."""
    await store.add_login_state(LoginState("s1", "u1", "admin", expires_at=clock() + 10))
    assert await store.consume_login_state("s1", "login", clock() + 11) is None
    assert await store.consume_login_state("s1", "login", clock()) is None


async def test_login_state_of_other_kind_is_not_consumed(store, clock):
    """A login state presented to the select form is refused but stays usable."""
    await store.add_login_state(LoginState("s1", "u1", "admin", expires_at=clock() + 600))
    assert await store.consume_login_state("s1", "select", clock()) is None
    assert await store.consume_login_state("s1", "login", clock()) is not None


async def test_select_state_keeps_candidate_pages(store, clock):
    """A select state's data (candidate pages with tokens) round-trips intact."""
    data = {"pages": [{"id": "p1", "access_token": "T1"}], "user_token": "U"}
    await store.add_login_state(
        LoginState("s2", "u1", "admin", clock() + 600, kind="select", data=data)
    )
    got = await store.consume_login_state("s2", "select", clock())
    assert got is not None and got.data == data


# -- conversations -----------------------------------------------------------------------
async def test_conversation_found_by_key_and_visitor_token(store, clock):
    """A saved conversation is found by (page, IGSID) and by visitor token; updated_at set."""
    conv = Conversation("p1", "u1", "instagram-p1-u1", visitor_name="Ann", room_id="r1")
    await store.save_conversation(conv)
    got = await store.conversation("p1", "u1")
    assert got is not None and got.room_id == "r1" and got.updated_at == clock()
    assert await store.conversation_by_token("instagram-p1-u1") == got
    assert await store.conversation("p1", "u2") is None
    assert await store.conversation_by_token("instagram-p1-u2") is None


async def test_waiting_conversations_follow_the_flag(store):
    """conversations_waiting lists exactly those inside an offline spell."""
    a = Conversation("p1", "a", "instagram-p1-a", waiting_for_agent=True)
    b = Conversation("p1", "b", "instagram-p1-b", waiting_for_agent=True)
    await store.save_conversation(a)
    await store.save_conversation(b)
    a.waiting_for_agent = False
    await store.save_conversation(a)
    assert [c.igsid for c in await store.conversations_waiting()] == ["b"]


async def test_visitors_since_counts_recent_writers_per_page(store):
    """visitors_since counts, per page, the visitors whose last message is that recent."""
    for page_id, igsid, last in [("p1", "a", 100.0), ("p1", "b", 250.0), ("p2", "c", 300.0),
                                 ("p2", "d", None), ("p3", "e", 50.0)]:
        await store.save_conversation(Conversation(page_id, igsid, f"instagram-{page_id}-{igsid}",
                                                   last_inbound_at=last))
    assert await store.visitors_since(100.0) == {"p1": 2, "p2": 1}
    assert await store.visitors_since(1000.0) == {}


async def test_visitors_since_follows_every_change_after_a_count(make_store, clock):
    """Counted once, the month's visitors stay right through later writes, a visitor's
    earlier time, expiry and a restart (the count is asked for on every /metrics)."""
    store = await make_store()

    def conv(igsid: str, last: float | None, page_id: str = "p1") -> Conversation:
        return Conversation(page_id, igsid, f"instagram-{page_id}-{igsid}",
                            last_inbound_at=last)

    await store.save_conversation(conv("a", 250.0))
    await store.save_conversation(conv("b", 100.0))
    assert await store.visitors_since(200.0) == {"p1": 1}
    await store.save_conversation(conv("b", 300.0))  # b writes again this month
    await store.save_conversation(conv("c", 400.0, "p2"))  # a new visitor
    assert await store.visitors_since(200.0) == {"p1": 2, "p2": 1}
    await store.save_conversation(conv("a", 150.0))  # (a record restored from before)
    assert await store.visitors_since(200.0) == {"p1": 1, "p2": 1}
    assert await store.visitors_since(100.0) == {"p1": 2, "p2": 1}  # asked from elsewhere
    assert await store.visitors_since(200.0) == {"p1": 1, "p2": 1}
    await store.close()
    store = await make_store()
    assert await store.visitors_since(200.0) == {"p1": 1, "p2": 1}
    clock.advance(DEFAULT_CONVERSATION_TTL + 1)
    await store.expire(clock())
    assert await store.visitors_since(200.0) == {}


# -- queues ------------------------------------------------------------------------------
async def test_duplicate_webhook_enqueues_once(store):
    """The same item id stored twice (pending, then after completion) is stored once."""
    first = await store.enqueue([item("m1")])
    assert [i.item_id for i in first] == ["m1"]
    assert await store.enqueue([item("m1")]) == []  # still pending
    await store.complete(first[0])
    assert await store.enqueue([item("m1")]) == []  # remembered after completion
    assert await store.queue_depth("inbound") == 0


async def test_complete_then_head_answers_the_next_item_of_the_conversation(store):
    """Finishing items hands back each conversation's next one, also when many finish at once."""
    added = await store.enqueue([item(f"{c}-{n}", f"p1:u{c}", order_ts=float(n))
                                 for n in range(3) for c in range(20)])
    firsts = [one for one in added if one.item_id.endswith("-0")]
    heads = await asyncio.gather(*(store.complete_then_head(one, remember=[f"k{one.item_id}"])
                                   for one in firsts))
    assert [h.item_id for h in heads] == [f"{c}-1" for c in range(20)]
    assert await store.seen("k0-0")
    assert (await store.complete_then_head(heads[0])).item_id == "0-2"
    last = await store.head("inbound", "p1:u0")
    assert await store.complete_then_head(last) is None
    assert await store.queue_depth("inbound") == 60 - 20 - 2


async def test_duplicate_inside_one_batch_is_stored_once(store):
    """Two copies of an event in one webhook delivery become one item."""
    added = await store.enqueue([item("m1"), item("m1"), item("m2")])
    assert [i.item_id for i in added] == ["m1", "m2"]


async def test_custom_dedupe_key_blocks_other_item_ids(store):
    """An explicit dedupe key dedupes items whose ids differ (e.g. an echo)."""
    await store.enqueue([item("a")], dedupe_keys=["event-1"])
    assert await store.enqueue([item("b")], dedupe_keys=["event-1"]) == []
    assert await store.seen("event-1")
    assert not await store.seen("a")  # the default key was replaced, not added


async def test_items_come_out_in_conversation_order(store, clock):
    """Per conversation, the head is the earliest (order_ts, seq) even if enqueued late."""
    await store.enqueue([item("m2", order_ts=20.0), item("m3", order_ts=20.0)])
    await store.enqueue([item("m1", order_ts=10.0)])
    order = []
    while (head := await store.head("inbound", "p1:u1")) is not None:
        order.append(head.item_id)
        await store.complete(head)
    assert order == ["m1", "m2", "m3"]


async def test_later_enqueue_never_becomes_visible_before_an_earlier_one(store):
    """When an enqueue returns, every enqueue called before it is stored too: a later
    reply must not be relayed while an earlier one is still being written."""
    for n in range(20):
        conversation = f"p1:c{n}"
        first = asyncio.create_task(store.enqueue([item(f"{n}-a", conversation, order_ts=1.0)]))
        await asyncio.sleep(0)  # the first call is under way
        await store.enqueue([item(f"{n}-b", conversation, order_ts=2.0)])
        assert (await store.head("inbound", conversation)).item_id == f"{n}-a"
        await first


async def test_next_items_gives_one_head_per_conversation(store, clock):
    """next_items hands out only heads, skips excluded conversations and honours limit."""
    await store.enqueue([item("a1", "c:a"), item("a2", "c:a"), item("b1", "c:b")])
    await store.enqueue([item("c1", "c:c")])
    got = await store.next_items("inbound", clock(), set(), 10)
    assert sorted(i.item_id for i in got) == ["a1", "b1", "c1"]
    got = await store.next_items("inbound", clock(), {"c:a"}, 10)
    assert sorted(i.item_id for i in got) == ["b1", "c1"]
    assert len(await store.next_items("inbound", clock(), set(), 2)) == 2
    assert await store.next_items("outbound", clock(), set(), 10) == []


async def test_retried_head_blocks_its_conversation_until_due(store, clock):
    """A head scheduled for later holds back its conversation (order), not the others."""
    await store.enqueue([item("a1", "c:a"), item("a2", "c:a"), item("b1", "c:b")])
    head = await store.head("inbound", "c:a")
    head.attempts, head.next_try_at, head.last_error = 1, clock() + 30, "RC down"
    await store.update_item(head)
    due = await store.next_items("inbound", clock(), set(), 10)
    assert [i.item_id for i in due] == ["b1"]
    assert await store.earliest_due("inbound") <= clock()  # b1 is due now
    await store.complete(due[0])
    assert await store.earliest_due("inbound") == clock() + 30
    later = await store.next_items("inbound", clock() + 30, set(), 10)
    assert [(i.item_id, i.attempts, i.last_error) for i in later] == [("a1", 1, "RC down")]


async def test_progress_survives_restart(make_store, clock):
    """attempts, next_try_at, last_error and progress persist across a restart."""
    store = await make_store()
    (added,) = await store.enqueue([item("m1")])
    added.attempts, added.progress, added.next_try_at = 2, 3, clock() + 5
    await store.update_item(added)
    await store.close()
    store = await make_store()
    head = await store.head("inbound", "p1:u1")
    assert (head.attempts, head.progress, head.next_try_at) == (2, 3, clock() + 5)
    assert head.payload == {"text": "hello m1"}


async def test_complete_remembers_extra_keys(store):
    """complete(remember=...) records the effect's ids in the same durable write."""
    (added,) = await store.enqueue([item("m1", queue="outbound")])
    await store.complete(added, remember=["rc-msg-1"])
    assert await store.seen("rc-msg-1")
    assert await store.queue_depth("outbound") == 0
    await store.complete(added)  # completing twice is harmless


async def test_set_aside_item_frees_its_conversation_and_survives_restart(make_store, clock):
    """set_aside moves the head out of its queue (next item is due) and keeps it for good."""
    store = await make_store()
    first, _ = await store.enqueue([item("m1", order_ts=1.0, page_id="p1"),
                                    item("m2", order_ts=2.0)])
    first.attempts, first.last_error = 7, "rocketchat RocketChatError"
    await store.set_aside(first, "livechat/message: error-weird")
    await store.set_aside(first, "again")  # no longer pending: nothing happens
    assert [i.item_id for i in await store.next_items("inbound", clock(), set(), 5)] == ["m2"]
    assert (await store.stats())["set_aside"] == 1
    await store.close()
    store = await make_store()
    [kept] = await store.set_aside_items()
    assert (kept.item.item_id, kept.item.attempts, kept.reason, kept.page_id) == (
        "m1", 7, "livechat/message: error-weird", "p1"
    )
    assert kept.item.payload["text"] == "hello m1" and kept.set_aside_at == clock()
    assert await store.queue_depth("inbound") == 1


async def test_queues_are_independent(store, clock):
    """Inbound and outbound items of one conversation do not block each other."""
    await store.enqueue([item("in1"), item("out1", queue="outbound")])
    assert [i.item_id for i in await store.next_items("inbound", clock(), set(), 5)] == ["in1"]
    assert [i.item_id for i in await store.next_items("outbound", clock(), set(), 5)] == ["out1"]
    assert await store.queue_depth("inbound") == 1 and await store.queue_depth("outbound") == 1


async def test_returned_payload_is_a_copy(store, clock):
    """Mutating an item's payload after enqueue or after reading does not change storage."""
    original = item("m1")
    await store.enqueue([original])
    original.payload["text"] = "changed"
    got = await store.head("inbound", "p1:u1")
    got.payload["text"] = "changed too"
    assert (await store.head("inbound", "p1:u1")).payload["text"] == "hello m1"


async def test_unserialisable_payload_fails_only_its_caller(store):
    """A payload that is not JSON raises for that call; the store keeps working."""
    bad = item("m1")
    bad.payload["when"] = object()
    with pytest.raises(TypeError):
        await store.enqueue([bad])
    assert [i.item_id for i in await store.enqueue([item("m2")])] == ["m2"]
    assert await store.healthy()


async def test_unknown_queue_is_rejected(store):
    """An item for a queue that does not exist is a programming error, not a silent drop."""
    with pytest.raises(ValueError):
        await store.enqueue([item("m1", queue="sideways")])


async def test_remember_reports_first_time_only(store):
    """remember returns True once, then False while the key lives."""
    assert await store.remember("k") is True
    assert await store.remember("k") is False
    assert await store.seen("k")


async def test_once_lets_exactly_one_caller_do_it(store, clock):
    """Of concurrent callers of once(key) one gets True; later ones False until the ttl."""
    results: list[bool] = []

    async def caller() -> None:
        async with store.once("command:m1", ttl=60) as mine:
            results.append(mine)
            await asyncio.sleep(0.01)  # inside: the others must wait, not enter

    await asyncio.gather(*(caller() for _ in range(5)))
    assert sorted(results) == [False] * 4 + [True]
    async with store.once("command:m1", ttl=60) as mine:
        assert not mine
    clock.advance(61)
    async with store.once("command:m1", ttl=60) as mine:
        assert mine


async def test_closed_store_refuses_calls(make_store):
    """Using a store after close raises StorageError instead of hanging."""
    store = await make_store()
    await store.close()
    with pytest.raises(StorageError):
        await store.page("p1")
    assert not await store.healthy()


async def test_stats_count_tables(store):
    """stats reports queue depths and table sizes."""
    await store.enqueue([item("m1"), item("m2", "p1:u2", queue="outbound")])
    stats = await store.stats()
    assert (stats["inbound"], stats["outbound"], stats["dedupe_keys"]) == (1, 1, 2)


# -- the bridge secret -------------------------------------------------------------------
async def test_bridge_secret_is_made_once_and_survives_a_restart(make_store):
    """The secret that keys visitor tokens is 32 random bytes, the same on every call and
    after a restart: a changed secret would give a returning visitor a new token."""
    store = await make_store()
    first = await store.bridge_secret()
    assert len(first) == 32 and await store.bridge_secret() == first
    await store.close()
    store = await make_store()
    assert await store.bridge_secret() == first


async def test_concurrent_first_calls_agree_on_one_bridge_secret(store):
    """Replicas (or relay tasks) asking for the secret at once all get the same bytes."""
    secrets = await asyncio.gather(*(store.bridge_secret() for _ in range(8)))
    assert len(set(secrets)) == 1


async def test_marks_and_sending_at_survive_a_restart(make_store):
    """Marks (set, added, added once) and an item's ``sending_at`` are durable."""
    store = await make_store()
    await store.set_marks({"heard:p1": 123.5})
    assert await store.add_marks({"reconcile:p1:settled": 1, "reconcile:p1:unknown": 2})
    assert await store.add_marks({"reconcile:p1:settled": 1}, once="settled:i1:0")
    assert not await store.add_marks({"reconcile:p1:settled": 1}, once="settled:i1:0")
    [item] = await store.enqueue([WorkItem("rc-msg:a", "outbound", "p1:u1", "agent_message", {})])
    item.sending_at = 1_700_000_001.25
    await store.update_item(item)
    await store.close()
    store = await make_store()
    assert await store.mark("heard:p1") == 123.5
    assert await store.mark("reconcile:p1:settled") == 2
    assert await store.mark("reconcile:p1:unknown") == 2
    assert await store.mark("never-set") is None
    head = await store.head("outbound", "p1:u1")
    assert head is not None and head.sending_at == 1_700_000_001.25
