"""Headless Chromium for the browser tests (Debian's ``chromium``, driven by playwright).

Tests mark themselves with :data:`BROWSER` and take the ``browser_page`` fixture
(tests/scenarios/conftest.py). Screenshots go to ``test-artifacts/`` at the top of the
checkout (ignored by git), for a person to look at.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


def chromium_path() -> str | None:
    """The Chromium executable, or None when it is not installed."""
    return CHROMIUM if Path(CHROMIUM).exists() else shutil.which("chromium")


BROWSER = [
    pytest.mark.browser,
    pytest.mark.skipif(chromium_path() is None,
                       reason="chromium is not installed (apt-get install chromium)"),
]
