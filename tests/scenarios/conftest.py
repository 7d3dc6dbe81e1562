"""Fixtures of the end-to-end scenarios."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.scenarios.browser import CHROMIUM_ARGS, chromium_path


@pytest.fixture
async def browser_page(tmp_path: Path) -> AsyncIterator[Any]:
    """A fresh headless Chromium tab (own user-data-dir, no network beyond loopback)."""
    playwright_api = pytest.importorskip("playwright.async_api")
    executable = chromium_path()
    if executable is None:
        pytest.skip("chromium is not installed (apt-get install chromium)")
    async with playwright_api.async_playwright() as pw:
        context = await pw.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"), executable_path=executable, headless=True,
            args=CHROMIUM_ARGS,
        )
        try:
            page = await context.new_page()
            page.set_default_timeout(15000)
            yield page
        finally:
            await context.close()
