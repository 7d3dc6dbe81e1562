"""Failure-drill fixtures and the switch between fast (CI) and long drills.

Every drill has a fast variant, run by default (seconds each), and a long variant
(the full-size figures of issue 8: 10,000 messages and 20 kills, 100 socket drops,
a 60 s Rocket.Chat outage...). Run the long variants with either

    .venv/bin/python -m pytest tests/reliability --run-slow -s
    RCIG_LONG_DRILLS=1 .venv/bin/python -m pytest tests/reliability -s

(``--run-slow`` is only known when tests/reliability is on the command line: pytest
reads ``pytest_addoption`` from the conftest files of the paths it is given; the
environment variable works from anywhere.) ``-s`` shows the figures each drill prints.
The sandboxes and the in-process bridge come from tests/conftest.py.
"""

from __future__ import annotations

import os

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--run-slow", action="store_true", default=False,
        help="run the long variants of the failure drills (tests/reliability)",
    )


@pytest.fixture
def long_drills(request: pytest.FixtureRequest) -> bool:
    """True when the long variants were asked for (--run-slow or RCIG_LONG_DRILLS=1)."""
    flag = False
    try:
        flag = bool(request.config.getoption("--run-slow"))
    except ValueError:  # option not registered: tests/reliability was not an initial path
        flag = False
    return flag or os.environ.get("RCIG_LONG_DRILLS", "") not in ("", "0")
