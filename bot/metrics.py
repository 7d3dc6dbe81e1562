"""Prometheus metrics, one registry per bot (so tests can run several bots).

Names are part of the operator contract (dashboards, alerts): add, do not rename.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    """All of the bot's metrics, registered on a private registry."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.webhooks_received = Counter(
            "rcig_webhooks_received_total", "Webhook requests accepted and stored", ["source"],
            registry=r,
        )
        self.webhooks_rejected = Counter(
            "rcig_webhooks_rejected_total", "Webhook requests refused", ["source", "reason"],
            registry=r,
        )
        self.relayed = Counter(
            "rcig_messages_relayed_total", "Messages relayed", ["direction", "kind"], registry=r
        )
        self.dropped = Counter(
            "rcig_events_dropped_total", "Events deliberately not relayed", ["direction", "reason"],
            registry=r,
        )
        self.retries = Counter(
            "rcig_retries_total", "Work items rescheduled after a failure", ["queue", "reason"],
            registry=r,
        )
        self.queue_depth = Gauge(
            "rcig_queue_depth", "Pending work items", ["queue"], registry=r
        )
        self.inbox_backlog = Gauge(
            "rcig_inbox_backlog", "Acknowledged webhooks not yet taken into the inbound queue",
            registry=r,
        )
        self.conversations = Gauge(
            "rcig_conversations", "Conversations the store holds (one per visitor and page; "
            "each costs memory and a livechat visitor: README \"Security\")",
            registry=r,
        )
        self.waiting_for_agent = Gauge(
            "rcig_conversations_waiting_for_agent", "Conversations waiting for an agent",
            registry=r,
        )
        self.monthly_visitors = Gauge(
            "rcig_monthly_visitors",
            "Instagram visitors who wrote this calendar month (UTC): Rocket.Chat counts each "
            "one answered as a monthly active contact (per page: /instagram pages)",
            registry=r,
        )
        self.set_aside = Counter(
            "rcig_set_aside_total", "Work items set aside after a permanent refusal",
            ["queue", "reason"], registry=r,
        )
        self.set_aside_items = Gauge(
            "rcig_set_aside_items", "Work items set aside (kept, not delivered)", registry=r
        )
        self.graph_latency = Histogram(
            "rcig_graph_call_seconds", "Graph API call latency", ["call"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.rocketchat_latency = Histogram(
            "rcig_rocketchat_call_seconds", "Rocket.Chat REST call latency", ["call"],
            buckets=_LATENCY_BUCKETS, registry=r,
        )
        self.realtime_connected = Gauge(
            "rcig_realtime_connected", "1 while the realtime (DDP) connection is up", registry=r
        )
        self.meta_degraded = Gauge(
            "rcig_meta_degraded", "1 while Meta answers with incidents (codes 1/2, 5xx, "
            "'Unsupported request - method type')", registry=r
        )
        self.realtime_reconnects = Counter(
            "rcig_realtime_reconnects_total", "Realtime reconnections", registry=r
        )
        self.meta_watch_last_round = Gauge(
            "rcig_meta_watch_last_round_timestamp_seconds",
            "When the standing watch last checked every page's token and subscription",
            registry=r,
        )
        self.meta_watch_pages = Gauge(
            "rcig_meta_watch_pages",
            "Pages per outcome of the standing watch's last round (ok, resubscribed, "
            "resubscribe_failed, reauth, unknown)",
            ["outcome"], registry=r,
        )
        self.outbound_settled = Counter(
            "rcig_outbound_settled_total",
            "Outbound parts whose outcome was settled by reading the thread back "
            "(delivered: not sent again; resent: missing, sent once; unknown: the agent "
            "was told)", ["outcome"], registry=r,
        )
        self.backfilled = Counter(
            "rcig_backfilled_total",
            "Messages found in Instagram's threads that no webhook had delivered, relayed",
            ["kind"], registry=r,
        )
        self.backfill_runs = Counter(
            "rcig_backfill_runs_total", "Backfill runs per page and trigger (start, watch, "
            "intake_gap) and outcome", ["trigger", "outcome"], registry=r,
        )
        self.commands = Counter(
            "rcig_commands_total", "Commands handled", ["command"], registry=r
        )

    def render(self) -> bytes:
        """The exposition text for ``GET /metrics``."""
        return generate_latest(self.registry)
