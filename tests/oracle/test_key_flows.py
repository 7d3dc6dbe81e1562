"""The bridge's key flows, end to end, send only requests Rocket.Chat's published schemas accept.

Every ``rocketchat`` test is checked at teardown (tests/conftest.py); this one runs the
flows the oracle must see in one place, so the coverage does not depend on other modules:
commands with the admin check, inbound first contact and follow-up, outbound, close, catch-up
after a reconnect, and doctor.
"""

from __future__ import annotations

from bot.doctor import run_checks
from tests.oracle import oracle
from tests.scenarios.harness import ADMIN, AGENT, BOT_USER, Bridge
from tests.scenarios.outbound_helpers import (
    enable_omnichannel_webhooks,
    reply,
    sent_texts,
    visitor_with_room,
    wait_for,
)

# The published validators these flows must have exercised.
EXPECTED = {
    "isChatSendMessageProps",
    "isDmCreateProps",
    "isGETLivechatRoomParams",
    "isPOSTLivechatMessageParams",
    "isSubscriptionsGetProps",
    "isChatSyncMessagesProps",
    "isGETLivechatDepartmentProps",
}


def _answers(bridge: Bridge, user: str) -> list[str]:
    return [
        m["msg"] for m in bridge.rc.dm_messages(user, BOT_USER) if m["u"]["username"] == BOT_USER
    ]


async def test_key_flows_send_only_requests_the_published_schemas_accept(bridge: Bridge) -> None:
    """Commands, inbound, outbound, close, catch-up and doctor: every request validates."""
    rc = bridge.rc
    enable_omnichannel_webhooks(bridge)
    await bridge.bot.realtime.wait_connected(10)  # subscribed: a DM now arrives live

    rc.send_dm(ADMIN, BOT_USER, "instagram pages")  # an admin command: roles are checked
    await wait_for(lambda: _answers(bridge, ADMIN))

    igsid, rid = await visitor_with_room(bridge)  # first contact: visitor, room, message
    await bridge.deliver(bridge.meta.text_event(bridge.ig_id, igsid, "Still there?"))
    await wait_for(lambda: bridge.texts(igsid) == ["Hello", "Still there?"])

    reply(bridge, rid, "Yes, how can I help?")  # outbound
    await wait_for(lambda: sent_texts(bridge, igsid) == ["Yes, how can I help?"])
    rc.close_room(rid, by=AGENT)  # close: the finished text

    answered = len(_answers(bridge, ADMIN))
    rc.block_connections(True)  # a command typed while the bot is away is caught up
    rc.drop_all_sockets()
    rc.send_dm(ADMIN, BOT_USER, "instagram pages")
    rc.block_connections(False)
    await wait_for(lambda: len(_answers(bridge, ADMIN)) > answered, timeout=30.0)

    await run_checks(bridge.config, probe_listener=False, timeout=2.0)

    requests = rc.rest_requests()
    assert oracle.violations(requests) == []
    seen = {
        spec.validator
        for spec in (oracle.route_for(r.method, r.path) for r in requests)
        if spec is not None and spec.validator is not None
    }
    assert seen >= EXPECTED, EXPECTED - seen
