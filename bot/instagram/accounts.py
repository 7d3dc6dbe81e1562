"""Which Graph client serves an account: its route decides.

An account connected with Facebook Login (through its Page) is served by
graph.facebook.com; one connected with Instagram Login (``Page.route == "instagram"``)
by graph.instagram.com. The calls have the same names and meanings on both
(:class:`~bot.instagram.graph.GraphClient`), so the relays and commands ask
:meth:`GraphRoutes.for_page` and call the same methods either way.
"""

from __future__ import annotations

from bot.instagram.graph import GraphClient, GraphPermanent
from storage.base import Page

INSTAGRAM_ROUTE = "instagram"


class GraphRoutes:
    """The Graph client of each route."""

    def __init__(self, facebook: GraphClient, instagram: GraphClient | None = None) -> None:
        self.facebook = facebook
        self.instagram = instagram

    def for_page(self, page: Page) -> GraphClient:
        """The client for ``page``'s route."""
        if page.route != INSTAGRAM_ROUTE:
            return self.facebook
        if self.instagram is None:
            raise GraphPermanent(
                "this account was connected with Instagram Login, which is not configured "
                "(instagram.instagram_login)", call="route")
        return self.instagram

    async def close(self) -> None:
        await self.facebook.close()
        if self.instagram is not None:
            await self.instagram.close()
