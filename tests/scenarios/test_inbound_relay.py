"""Instagram → Omnichannel through both sandboxes: kinds, once, in order, offline, 429, closed."""

from __future__ import annotations

import asyncio
import random
import time

import pytest

from bot import messages
from bot.instagram.events import rc_message_id
from bot.relay import inbound as inbound_module
from tests.scenarios.harness import (
    ADMIN,
    AGENT,
    BOT_USER,
    Bridge,
    every_rc_version,
    start_bot,
    stop_bot,
)

CDN = "https://lookaside.fbsbx.com/ig_messaging_cdn/?asset_id={n}&signature=sbx"


def visitor(bridge: Bridge, name: str | None = "Ana Souza", username: str | None = None) -> str:
    igsid = bridge.meta.new_igsid()
    profile = {}
    if name is not None:
        profile["name"] = name
    if username is not None:
        profile["username"] = username
    bridge.meta.set_profile(igsid, **profile)
    return igsid


@every_rc_version
async def test_text_message_registers_visitor_and_opens_room(bridge: Bridge, eventually):
    """The first DM registers the visitor (token, profile name, department) and opens a room."""
    igsid = visitor(bridge)
    event = bridge.meta.text_event(bridge.ig_id, igsid, "Is this in stock?")
    mid = event["entry"][0]["messaging"][0]["message"]["mid"]
    assert (await bridge.deliver(event))[0] == 200
    await eventually(lambda: bridge.texts(igsid) == ["Is this in stock?"])
    found = bridge.rc.visitor(bridge.token(igsid))
    assert found is not None
    assert found["name"] == "Ana Souza"
    assert found["department"] == bridge.department_id
    [message] = bridge.visitor_messages(igsid)
    assert message["_id"] == rc_message_id(f"ig:{mid}")
    # The relay saves the room just after the post the sandbox shows: wait for it.
    async def recorded() -> bool:
        conv = await bridge.bot.store.conversation(bridge.page_id, igsid)
        return conv is not None and conv.room_id == bridge.rooms(igsid)[0]["_id"]

    await eventually(recorded)
    conversation = await bridge.bot.store.conversation(bridge.page_id, igsid)
    assert conversation is not None
    assert conversation.visitor_department == bridge.department_id
    assert conversation.last_inbound_at == pytest.approx(
        event["entry"][0]["messaging"][0]["timestamp"] / 1000
    )


@pytest.mark.parametrize(
    ("profile", "name"),
    [({"name": None, "username": "ana.souza"}, "@ana.souza"), ({"name": None}, None)],
)
async def test_visitor_name_falls_back_to_username_then_id(bridge: Bridge, eventually,
                                                           profile, name):
    """No profile name → @username; nothing (or no consent) → "Instagram user <igsid>"."""
    igsid = bridge.meta.new_igsid()
    bridge.meta.set_profile(igsid, **profile)
    await bridge.deliver(bridge.meta.text_event(bridge.ig_id, igsid, "hi"))
    await eventually(lambda: bridge.texts(igsid) == ["hi"])
    expected = name or f"Instagram user {igsid}"
    assert bridge.rc.visitor(bridge.token(igsid))["name"] == expected


async def test_every_event_kind_reads_as_agent_text(bridge: Bridge, eventually):
    """Each event kind becomes the agent-facing text; read receipts are ignored."""
    bridge.bot.inbound.echo_grace = 0.1
    meta, ig, igsid = bridge.meta, bridge.ig_id, visitor(bridge)
    base = int(time.time() * 1000) - 60_000
    first, gone = meta.new_mid(), meta.new_mid()
    ad = meta.text_event(ig, igsid, "Hi from the ad", ts=base + 18)
    ad["entry"][0]["messaging"][0]["message"]["referral"] = {
        "ref": "spring", "ad_id": "1202", "source": "ADS", "type": "OPEN_THREAD",
        "ads_context_data": {"ad_title": "Spring sale"},
    }
    events = [
        meta.text_event(ig, igsid, "Hello", mid=first, ts=base),
        meta.attachment_event(ig, igsid, [("image", CDN.format(n=1))], ts=base + 1),
        meta.attachment_event(ig, igsid, [("video", CDN.format(n=2)),
                                          ("audio", CDN.format(n=3))], ts=base + 2),
        meta.attachment_event(ig, igsid, [("file", CDN.format(n=4))], ts=base + 3),
        meta.attachment_event(ig, igsid, [("share", CDN.format(n=5))], ts=base + 4),
        meta.attachment_event(ig, igsid, [("ig_reel", CDN.format(n=6))], ts=base + 5),
        meta.attachment_event(ig, igsid, [("reel", CDN.format(n=7))], ts=base + 6),
        meta.story_mention_event(ig, igsid, url=CDN.format(n=8), ts=base + 7),
        meta.story_reply_event(ig, igsid, "Love this!", url=CDN.format(n=9), ts=base + 8),
        meta.reply_to_event(ig, igsid, "About that", reply_to_mid=first, ts=base + 9),
        meta.reaction_event(ig, igsid, first, emoji="❤️", ts=base + 10),
        meta.reaction_event(ig, igsid, first, action="unreact", ts=base + 11),
        meta.text_event(ig, igsid, "Oops, wrong chat", mid=gone, ts=base + 12),
        meta.unsend_event(ig, igsid, gone, ts=base + 12),
        meta.unsupported_event(ig, igsid, ts=base + 13),
        meta.postback_event(ig, igsid, "TRACK_ORDER", title="Track my order", ts=base + 14),
        meta.quick_reply_event(ig, igsid, "Sizes", "SIZE_CHART", ts=base + 15),
        meta.referral_event(ig, igsid, "from_website", ts=base + 16),
        meta.read_event(ig, igsid, first, ts=base + 17),
        ad,
    ]
    for event in events:
        assert (await bridge.deliver(event))[0] == 200
    # The unsent text is never shown (queued together, it is skipped, not posted).
    await eventually(lambda: len(bridge.texts(igsid)) == 17, timeout=10)
    rid = bridge.rooms(igsid)[0]["_id"]
    # Built from Site_Url (quotes need it), not from the address the bot reaches.
    site_url = bridge.rc.get_setting("Site_Url")
    assert site_url != bridge.config.rocketchat.url
    link = f"{site_url}/live/{rid}?msg={rc_message_id('ig:' + first)}"
    earlier = f"[an earlier message]({link})"
    assert bridge.texts(igsid) == [
        "Hello",
        f"📎 [Image]({CDN.format(n=1)})",
        f"📎 [Video]({CDN.format(n=2)})\n📎 [Voice message]({CDN.format(n=3)})",
        f"📎 [File]({CDN.format(n=4)})",
        f"📎 [Shared post]({CDN.format(n=5)})",
        f"📎 [Reel]({CDN.format(n=6)})",
        f"📎 [Reel]({CDN.format(n=7)})",
        f"📣 Mentioned you in their [story]({CDN.format(n=8)})",
        f"↩️ Replied to your [story]({CDN.format(n=9)}):\nLove this!",
        f"↩️ In reply to {earlier}:\nAbout that",
        f"Reacted ❤️ to {earlier}",
        f"Removed their reaction from {earlier}",
        messages.IN_UNSUPPORTED,
        "Tapped the button “Track my order”",
        "Sizes\n(quick reply `SIZE_CHART`)",
        "ℹ️ Opened the chat from an ig.me link (ref `from_website`)",
        "ℹ️ Came from the ad “Spring sale” (ad id 1202) (ref `spring`)\nHi from the ad",
    ]

    # A message the business typed in the Instagram app is shown, marked, by the bot.
    app_mid = meta.new_mid()
    await bridge.deliver(meta.echo_event(ig, igsid, "Typed on the phone", app_mid))

    def echoes() -> list[str]:
        return [m["msg"] for m in bridge.rc.room_messages(rid)
                if m.get("u", {}).get("username") == BOT_USER and not m.get("t")]

    await eventually(lambda: echoes() == [messages.IN_ECHO.format(text="Typed on the phone")])


async def test_own_echoes_are_not_shown(bridge: Bridge, eventually):
    """Echoes of our own sends (app_id, or remembered echo:<mid>) never reach the room."""
    bridge.bot.inbound.echo_grace = 0.0
    meta, ig, igsid = bridge.meta, bridge.ig_id, visitor(bridge)
    await bridge.deliver(meta.text_event(ig, igsid, "hi"))
    await eventually(lambda: bridge.texts(igsid) == ["hi"])
    remembered = meta.new_mid()
    await bridge.bot.store.remember(f"echo:{remembered}")
    await bridge.deliver(meta.echo_event(ig, igsid, "ours (remembered)", remembered))
    await bridge.deliver(meta.echo_event(ig, igsid, "ours (app id)", meta.new_mid(),
                                         app_id=meta.app_id))
    await eventually(lambda: bridge.bot.metrics.registry.get_sample_value(
        "rcig_events_dropped_total", {"direction": "inbound", "reason": "own_echo"}) == 2)
    rid = bridge.rooms(igsid)[0]["_id"]
    assert [m["msg"] for m in bridge.rc.room_messages(rid) if not m.get("t")] == ["hi"]


async def test_duplicate_webhook_delivers_once(bridge: Bridge, eventually):
    """The same mid delivered twice (also inside one batch, and after a restart) shows once."""
    meta, ig, igsid = bridge.meta, bridge.ig_id, visitor(bridge)
    event = meta.text_event(ig, igsid, "only once")
    await bridge.deliver(event)
    await bridge.deliver(event)
    await bridge.deliver(meta.batch([event, event], merge=True))
    await eventually(lambda: bridge.texts(igsid) == ["only once"])
    await bridge.bot.inbound.worker.stop()  # let nothing half-done linger

    await stop_bot(bridge.bot, bridge.task)
    bridge.bot, bridge.task = await start_bot(bridge.config)
    assert (await bridge.deliver(event))[0] == 200
    await bridge.deliver(meta.text_event(ig, igsid, "after restart"))
    await eventually(lambda: bridge.texts(igsid) == ["only once", "after restart"])


async def test_shuffled_batch_keeps_per_visitor_order(bridge: Bridge, eventually):
    """3 entries, 20 items for 5 visitors in shuffled order → each visitor's order by time."""
    meta, ig = bridge.meta, bridge.ig_id
    visitors = [visitor(bridge, name=f"Visitor {n}") for n in range(5)]
    base = int(time.time() * 1000) - 10_000
    items = []
    for n in range(20):
        igsid = visitors[n % 5]
        event = meta.text_event(ig, igsid, f"{igsid} #{n // 5}", ts=base + n * 10)
        items.append(event["entry"][0]["messaging"][0])
    random.Random(7).shuffle(items)
    body = {"object": "instagram", "entry": [
        {"id": ig, "time": base + 1000, "messaging": items[i::3]} for i in range(3)
    ]}
    assert (await bridge.deliver(body))[0] == 200
    for igsid in visitors:
        await eventually(lambda igsid=igsid: len(bridge.texts(igsid)) == 4, timeout=10)
        assert bridge.texts(igsid) == [f"{igsid} #{k}" for k in range(4)]


async def test_echo_typed_while_the_first_message_waits_reaches_the_room_it_opens(
    bridge: Bridge, eventually
):
    """A reply typed in the Instagram app before the visitor has a room (their first
    message waits for an agent) waits for that room, then shows in it, once."""
    bot, meta, ig = bridge.bot, bridge.meta, bridge.ig_id
    bot.inbound.gate.base, bot.inbound.gate.cap = 0.1, 0.3
    bot.inbound.echo_grace = 0.0
    bridge.rc.set_agent_status(AGENT, "offline")
    igsid = visitor(bridge)
    await bridge.deliver(meta.text_event(ig, igsid, "anyone there?"))
    await eventually(lambda: bridge.rc.call_counts().get("livechat/room", 0) >= 1)
    await bridge.deliver(meta.echo_event(ig, igsid, "typed in the app", meta.new_mid()))
    await asyncio.sleep(1.5)  # more than one echo retry, the visitor still without a room
    assert bridge.rooms(igsid) == []
    bridge.rc.set_agent_status(AGENT, "online")
    await eventually(lambda: bridge.texts(igsid) == ["anyone there?"], timeout=10)
    rid = bridge.rooms(igsid)[0]["_id"]

    def echoes() -> list[str]:
        return [m["msg"] for m in bridge.rc.room_messages(rid)
                if "typed in the app" in m.get("msg", "")]

    await eventually(lambda: len(echoes()) == 1, timeout=15)
    assert echoes() == [messages.IN_ECHO.format(text="typed in the app")]


async def test_no_agent_online_sends_offline_text_once_then_delivers_in_order(
    bridge: Bridge, eventually
):
    """No agent: one offline text to the visitor, messages wait; an agent appears → all 3."""
    bot, meta, ig = bridge.bot, bridge.meta, bridge.ig_id
    bot.inbound.gate.base, bot.inbound.gate.cap = 0.1, 0.3
    assert bridge.page is not None
    bridge.page.offline_text = "We are offline, we will answer soon."
    bridge.page.welcome_text = "Welcome! An agent will be with you shortly."
    await bot.store.save_page(bridge.page)
    bridge.rc.set_agent_status(AGENT, "offline")
    igsid = visitor(bridge)
    for n in range(3):
        await bridge.deliver(meta.text_event(ig, igsid, f"waiting {n}"))

    def sent_texts() -> list[str]:
        return [s["body"]["message"].get("text") for s in meta.sent_messages(recipient=igsid)
                if s["ok"]]

    await eventually(lambda: sent_texts() == [bridge.page.offline_text])
    conversation = await bot.store.conversation(bridge.page_id, igsid)
    assert conversation is not None and conversation.waiting_for_agent
    await asyncio.sleep(1.0)  # several probe intervals: still one offline text, no room
    assert sent_texts() == [bridge.page.offline_text]
    assert bridge.rooms(igsid) == []
    assert bridge.rc.call_counts().get("livechat/room", 0) <= 12  # one prober, backing off

    bridge.rc.set_agent_status(AGENT, "online")
    await eventually(lambda: bridge.texts(igsid) == [f"waiting {n}" for n in range(3)],
                     timeout=10)
    await eventually(lambda: sent_texts() == [bridge.page.offline_text,
                                              bridge.page.welcome_text])
    conversation = await bot.store.conversation(bridge.page_id, igsid)
    assert conversation is not None and not conversation.waiting_for_agent


async def test_waiting_visitors_are_woken_together_when_an_agent_appears(
    bridge: Bridge, eventually
):
    """Only one conversation probes livechat/room; its success wakes the others at once."""
    bot, meta, ig = bridge.bot, bridge.meta, bridge.ig_id
    # Probes back off from 0.2 s; refused conversations would wait 30-60 s on their own.
    bot.inbound.gate.base, bot.inbound.gate.cap = 0.2, 60.0
    bridge.rc.set_agent_status(AGENT, "offline")
    visitors = [visitor(bridge, name=f"V{n}") for n in range(4)]
    for igsid in visitors:
        await bridge.deliver(meta.text_event(ig, igsid, "hello?"))
    await eventually(lambda: bridge.rc.call_counts().get("livechat/room", 0) >= 3, timeout=5)
    calls = bridge.rc.call_counts()["livechat/room"]
    await asyncio.sleep(0.3)
    # One prober (at most two of its growing probes fit in 0.3 s), not one per visitor.
    assert bridge.rc.call_counts()["livechat/room"] - calls <= 2
    bridge.rc.set_agent_status(AGENT, "online")
    for igsid in visitors:
        await eventually(lambda igsid=igsid: bridge.texts(igsid) == ["hello?"], timeout=8)


async def test_rate_limited_visitor_registration_is_delivered_after_reset(
    bridge: Bridge, eventually
):
    """429 on livechat/visitor: the bot waits for X-RateLimit-Reset and loses nothing."""
    bridge.rc.set_route_rate_limit("livechat/visitor", 1, 1500)
    bridge.rc.set_setting("API_Enable_Rate_Limiter", True)
    bridge.rc.reset_rate_limits()
    visitors = [visitor(bridge, name=f"R{n}") for n in range(3)]
    for igsid in visitors:
        await bridge.deliver(bridge.meta.text_event(bridge.ig_id, igsid, "rate me"))
    for igsid in visitors:
        await eventually(lambda igsid=igsid: bridge.texts(igsid) == ["rate me"], timeout=10)
    assert bridge.rc.call_counts()["livechat/visitor"] > 3  # some calls were refused


async def test_closed_room_opens_a_new_room(bridge: Bridge, eventually):
    """After an agent closes the room, the next message opens a new room and is posted."""
    meta, ig, igsid = bridge.meta, bridge.ig_id, visitor(bridge)
    await bridge.deliver(meta.text_event(ig, igsid, "first"))
    await eventually(lambda: bridge.texts(igsid) == ["first"])
    [room] = bridge.rooms(igsid)
    bridge.rc.close_room(room["_id"], by=AGENT)
    await bridge.deliver(meta.text_event(ig, igsid, "second"))
    await eventually(lambda: bridge.texts(igsid) == ["first", "second"])
    rooms = bridge.rooms(igsid)
    assert len(rooms) == 2 and rooms[1]["open"]


    async def new_room_saved() -> bool:  # the bot saves it just after posting the message
        conversation = await bridge.bot.store.conversation(bridge.page_id, igsid)
        return conversation is not None and conversation.room_id == rooms[1]["_id"]
    await eventually(new_room_saved)


async def test_welcome_text_goes_to_visitor_once_per_new_room(bridge: Bridge, eventually):
    """A new room triggers the page's welcome text once; later messages in it do not."""
    assert bridge.page is not None
    bridge.page.welcome_text = "Hi! How can we help?"
    await bridge.bot.store.save_page(bridge.page)
    meta, ig, igsid = bridge.meta, bridge.ig_id, visitor(bridge)
    await bridge.deliver(meta.text_event(ig, igsid, "one"))
    await bridge.deliver(meta.text_event(ig, igsid, "two"))
    await eventually(lambda: bridge.texts(igsid) == ["one", "two"])
    await eventually(lambda: [s["body"]["message"]["text"]
                              for s in meta.sent_messages(recipient=igsid)]
                     == ["Hi! How can we help?"])
    await asyncio.sleep(0.3)
    assert len(meta.sent_messages(recipient=igsid)) == 1


# --- refusals: no conversation may stall (issue 12.1) ----------------------------------


def admin_dms(bridge: Bridge) -> list[str]:
    return [m["msg"] for m in bridge.rc.dm_messages(BOT_USER, ADMIN)]


def bot_room_texts(bridge: Bridge, igsid: str) -> list[str]:
    """What the bot itself posted into the visitor's rooms (notes, echoes)."""
    return [m["msg"] for room in bridge.rooms(igsid) for m in bridge.rc.room_messages(room["_id"])
            if m.get("u", {}).get("username") == BOT_USER and not m.get("t")]


async def test_visitor_mention_does_not_stall_conversation(bridge: Bridge, eventually):
    """A visitor's @all/@here is delivered readably (fullwidth ＠) and later messages follow."""
    igsid = visitor(bridge)
    for text in ("hi @all, anyone?", "@here too", "mail a@all.example", "after"):
        await bridge.deliver(bridge.meta.text_event(bridge.ig_id, igsid, text))
    await eventually(lambda: bridge.texts(igsid) == [
        "hi ＠all, anyone?", "＠here too", "mail a@all.example", "after"
    ])
    assert await bridge.bot.store.set_aside_items() == []


async def test_echo_with_mention_is_shown_not_refused(bridge: Bridge, eventually):
    """An Instagram-app echo containing @all is shown (the bot lacks mention-all)."""
    bridge.bot.inbound.echo_grace = 0.1
    igsid = visitor(bridge)
    await bridge.deliver(bridge.meta.text_event(bridge.ig_id, igsid, "hello"))
    await eventually(lambda: bridge.texts(igsid) == ["hello"])
    await bridge.deliver(bridge.meta.echo_event(bridge.ig_id, igsid, "Thanks @all",
                                                bridge.meta.new_mid()))
    await eventually(lambda: bot_room_texts(bridge, igsid) == [
        messages.IN_ECHO.format(text="Thanks ＠all")
    ])


async def test_duplicate_message_id_counts_as_delivered(bridge: Bridge, eventually):
    """A lost livechat/message response: the retry's TypeError is read back as stored."""
    igsid = visitor(bridge)
    await bridge.deliver(bridge.meta.text_event(bridge.ig_id, igsid, "warm up"))
    await eventually(lambda: bridge.texts(igsid) == ["warm up"])
    bridge.rc.fail_rest(503, routes=["livechat/message"], until=0.5, after_processing=True)
    await bridge.deliver(bridge.meta.text_event(bridge.ig_id, igsid, "stored, answer lost"))
    await bridge.deliver(bridge.meta.text_event(bridge.ig_id, igsid, "next"))
    await eventually(lambda: bridge.texts(igsid) == ["warm up", "stored, answer lost", "next"],
                     timeout=15)
    assert bridge.bot.metrics.retries.labels("inbound", "rocketchat Unavailable")._value.get() >= 1
    assert await bridge.bot.store.set_aside_items() == []


async def test_removed_department_falls_back_and_tells_admins(bridge: Bridge, eventually):
    """A deleted page department: visitors are routed without one; admins get one DM."""
    bridge.rc.delete_department(bridge.department_id)
    first, second = visitor(bridge, name="V1"), visitor(bridge, name="V2")
    await bridge.deliver(bridge.meta.text_event(bridge.ig_id, first, "anyone there?"))
    await eventually(lambda: bridge.texts(first) == ["anyone there?"])
    await bridge.deliver(bridge.meta.text_event(bridge.ig_id, second, "me too"))
    await eventually(lambda: bridge.texts(second) == ["me too"])
    assert "departmentId" not in bridge.rooms(first)[0]
    await eventually(lambda: len(admin_dms(bridge)) == 1)
    [dm] = admin_dms(bridge)
    assert "no longer exists" in dm and bridge.page_id in dm
    await asyncio.sleep(0.2)
    assert len(admin_dms(bridge)) == 1


async def test_unknown_refusal_is_set_aside_and_conversation_moves_on(
    bridge: Bridge, eventually, monkeypatch
):
    """A refusal with no known answer: a few tries, then kept aside, noted, one DM; next flows."""
    monkeypatch.setattr(inbound_module, "REFUSAL_BASE", 0.02)
    monkeypatch.setattr(inbound_module, "REFUSAL_CAP", 0.05)
    igsid = visitor(bridge)
    await bridge.deliver(bridge.meta.text_event(bridge.ig_id, igsid, "hello"))
    await eventually(lambda: bridge.texts(igsid) == ["hello"])
    # An Apps-Engine app blocks it: the same TypeError as a duplicate, but nothing stored.
    bridge.rc.prevent_visitor_messages(lambda text: "blocked" in text)
    for text in ("a blocked word", "another blocked one", "after"):
        await bridge.deliver(bridge.meta.text_event(bridge.ig_id, igsid, text))
    await eventually(lambda: bridge.texts(igsid) == ["hello", "after"], timeout=15)
    kept = await bridge.bot.store.set_aside_items()
    assert [k.item.payload["event"]["message"]["text"] for k in kept] == [
        "a blocked word", "another blocked one"
    ]
    assert all(k.page_id == bridge.page_id and "not stored" in k.reason for k in kept)
    await eventually(lambda: len(bot_room_texts(bridge, igsid)) == 2)
    assert "What they wrote: a blocked word" in bot_room_texts(bridge, igsid)[0]
    await eventually(lambda: len(admin_dms(bridge)) == 1)
    assert "set aside" in admin_dms(bridge)[0]
    assert bridge.bot.metrics.set_aside.labels("inbound", "NotStored")._value.get() == 2
    await asyncio.sleep(0.2)
    assert len(admin_dms(bridge)) == 1  # one DM per page and cause, not one per message


async def test_over_limit_text_is_split_not_stalled(bridge: Bridge, eventually):
    """Over Livechat_message_character_limit: the text arrives in parts, whole and in order."""
    bridge.rc.set_setting("Livechat_enable_message_character_limit", True)
    bridge.rc.set_setting("Livechat_message_character_limit", 20)
    igsid = visitor(bridge)
    long = "This is a rather long message that needs splitting"
    await bridge.deliver(bridge.meta.text_event(bridge.ig_id, igsid, long))
    await bridge.deliver(bridge.meta.text_event(bridge.ig_id, igsid, "short"))
    await eventually(lambda: bridge.texts(igsid)[-1:] == ["short"])
    parts = bridge.texts(igsid)[:-1]
    assert "".join(parts) == long and len(parts) > 1 and all(len(p) <= 20 for p in parts)


# --- departments reach returning visitors (issue 12.5) --------------------------------


async def test_department_change_reaches_returning_visitor(bridge: Bridge, eventually):
    """After the page's department changes, a visitor's next new room goes to the new one."""
    bridge.rc.create_user("agent.bob", "agent-password-456", roles=["user", "livechat-agent"])
    bridge.rc.set_agent_status("agent.bob", "online")
    sales = bridge.rc.create_department("Sales", agents=["agent.bob"])
    igsid = visitor(bridge)
    await bridge.deliver(bridge.meta.text_event(bridge.ig_id, igsid, "first"))
    await eventually(lambda: bridge.texts(igsid) == ["first"])
    [room] = bridge.rooms(igsid)
    assert room["departmentId"] == bridge.department_id
    bridge.rc.close_room(room["_id"], by=AGENT)
    assert bridge.page is not None
    bridge.page.department_id, bridge.page.department_name = sales, "Sales"
    await bridge.bot.store.save_page(bridge.page)  # what `/instagram edit … department` does
    await bridge.deliver(bridge.meta.text_event(bridge.ig_id, igsid, "second"))
    await eventually(lambda: bridge.texts(igsid) == ["first", "second"])
    new_room = bridge.rooms(igsid)[-1]
    assert new_room["_id"] != room["_id"] and new_room["departmentId"] == sales
    assert new_room["servedBy"]["username"] == "agent.bob"
