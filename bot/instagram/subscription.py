"""Installing the app on a Page and reading back what Meta really kept.

A ``{"success": true}`` from ``POST /{page}/subscribed_apps`` is not the whole truth the
admin needs, and a refusal says nothing about an earlier installation: after each call
the bridge reads ``GET /{page}/subscribed_apps`` and reports what Meta lists. Used by the
OAuth flow, ``/instagram subscribe`` and the standing watch.
"""

from __future__ import annotations

import logging

from bot.instagram.graph import GraphClient, GraphError, GraphPermanent

log = logging.getLogger("bot.graph")


class NotInstalled(GraphPermanent):
    """Meta accepted the installation but does not list the app on the Page."""


async def install(graph: GraphClient, page_id: str, page_token: str) -> list[str] | None:
    """Subscribe with the client's fields (a Page: :data:`SUBSCRIBED_FIELDS`; an
    Instagram-Login account: its messaging fields); return the fields Meta lists.

    Raises :class:`GraphError` when Meta refuses (for a permission, Meta's message names
    it), :class:`NotInstalled` when Meta accepted but lists no installation. Returns None
    when the read-back itself failed: the installation was accepted, only unconfirmed.
    """
    await graph.subscribe_page(page_id, page_token)
    try:
        fields = await graph.app_subscription(page_id, page_token)
    except GraphError as exc:
        log.warning("page %s: installed, but reading it back failed: %s", page_id, exc)
        return None
    if fields is None:
        raise NotInstalled(
            "Meta accepted the installation but does not list the app on the page",
            call=f"GET /{page_id}/subscribed_apps",
        )
    return fields


async def still_installed(graph: GraphClient, page_id: str, page_token: str) -> bool | None:
    """After a refused installation: does Meta still list an earlier one? None = unknown."""
    try:
        return await graph.app_subscription(page_id, page_token) is not None
    except GraphError as exc:
        log.warning("page %s: cannot read its subscription back: %s", page_id, exc)
        return None
