"""mark_needs_reauth: flag the page, tell the admins exactly once, retry a failed notice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.instagram.reauth import mark_needs_reauth
from storage import Page, Store, open_store

PAGE_ID = "100000000000001"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    """A real store holding one connected page."""
    s = open_store(str(tmp_path / "store.json"))
    await s.open()
    await s.save_page(Page(page_id=PAGE_ID, name="Shop", instagram_id="1784",
                           username="shop", page_token="t", user_token="u"))
    try:
        yield s
    finally:
        await s.close()


class Admins:
    """Records admin notices; can be told to fail (Rocket.Chat unreachable)."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self.fail = False

    async def __call__(self, text: str) -> None:
        await asyncio.sleep(0.01)  # a DM takes time: lets concurrent callers interleave
        if self.fail:
            raise ConnectionError("rocket.chat down")
        self.texts.append(text)


async def test_concurrent_190s_notify_admins_once(store: Store) -> None:
    """Many workers hitting 190 at once flag the page and send one notice."""
    admins = Admins()
    results = await asyncio.gather(
        *(mark_needs_reauth(store, admins, PAGE_ID) for _ in range(5))
    )
    assert results.count(True) == 1
    assert len(admins.texts) == 1
    assert "/instagram authorize" in admins.texts[0] and PAGE_ID in admins.texts[0]
    page = await store.page(PAGE_ID)
    assert page is not None and page.needs_reauth and page.reauth_notified


async def test_later_190s_stay_silent(store: Store) -> None:
    """Once the admins were told, further 190s for the page send nothing."""
    admins = Admins()
    assert await mark_needs_reauth(store, admins, PAGE_ID)
    assert not await mark_needs_reauth(store, admins, PAGE_ID)
    assert len(admins.texts) == 1


async def test_failed_notice_is_retried_on_the_next_190(store: Store) -> None:
    """If the DM fails the page stays flagged and the next 190 tries the notice again."""
    admins = Admins()
    admins.fail = True
    assert not await mark_needs_reauth(store, admins, PAGE_ID)
    page = await store.page(PAGE_ID)
    assert page is not None and page.needs_reauth and not page.reauth_notified
    admins.fail = False
    assert await mark_needs_reauth(store, admins, PAGE_ID)
    assert len(admins.texts) == 1


async def test_unknown_page_is_ignored(store: Store) -> None:
    """A 190 for a page that is no longer connected changes and sends nothing."""
    admins = Admins()
    assert not await mark_needs_reauth(store, admins, "999")
    assert admins.texts == []
