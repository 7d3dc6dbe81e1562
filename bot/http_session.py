"""The ``requests.Session`` our blocking REST clients share across their worker threads.

Two per-call costs of a default session matter once a relay makes hundreds of calls a
second from a thread pool (they hold the GIL the event loop needs):

- the connection pool keeps 10 connections per host, so with more worker threads the
  rest were opened and discarded per call ("Connection pool is full");
- with ``trust_env`` every request scans the whole process environment for proxy
  settings and stats ``~/.netrc``. The environment is read once here instead: the
  proxy for the one server a client talks to and a CA bundle from
  ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` are still honoured (as of start-up);
  ``.netrc`` credentials are not used (both servers authenticate by token).
"""

from __future__ import annotations

import os

import requests
from requests.adapters import HTTPAdapter
from requests.utils import get_environ_proxies


def pooled_session(base_url: str, max_workers: int) -> requests.Session:
    """A session for calls to ``base_url`` from up to ``max_workers`` threads."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=max(10, max_workers))
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.proxies.update(get_environ_proxies(base_url))
    bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
    if bundle:
        session.verify = bundle
    session.trust_env = False
    return session
