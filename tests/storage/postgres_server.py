"""A PostgreSQL server for the tests: ``RCIG_TEST_PG_URL``, or a throwaway cluster.

:func:`start` returns ``(url, stop)`` or raises :class:`Unavailable` with the reason the
PostgreSQL variants are skipped. With ``RCIG_TEST_PG_URL`` set (``.ci/run`` does) that
server is used as it is; otherwise, when ``initdb``/``pg_ctl`` exist (on ``PATH`` or in
Debian's ``/usr/lib/postgresql/<version>/bin``), a cluster is created in a temporary
directory on a free loopback port and removed by ``stop``. PostgreSQL refuses to run as
root, so as root the cluster belongs to the ``postgres`` user (``runuser``).

Every test then gets its own schema (:func:`fresh_schema`): ``search_path`` in the URL
points the store's sessions at it, so tests never see each other's tables.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg

ENV = "RCIG_TEST_PG_URL"


class Unavailable(Exception):
    """No PostgreSQL server for the tests (the message says why)."""


def _binary(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start() -> tuple[str, Callable[[], None]]:
    """``(url, stop)`` of a server the tests may create schemas in."""
    url = os.environ.get(ENV, "").strip()
    if url:
        _check(url)
        return url, lambda: None
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    if not (initdb and pg_ctl):
        raise Unavailable(f"no PostgreSQL: set {ENV} or install postgresql (initdb, pg_ctl)")
    prefix: list[str] = []
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            raise Unavailable("running as root and there is no postgres user for initdb") \
                from None
        prefix = ["runuser", "-u", "postgres", "--"]
    workdir = Path(tempfile.mkdtemp(prefix="rcig-pg-"))
    if prefix:
        shutil.chown(workdir, "postgres")
    data, port = workdir / "data", _free_port()

    def run(*args: str) -> None:
        subprocess.run([*prefix, *args], check=True, capture_output=True, timeout=120)

    def stop() -> None:
        with contextlib.suppress(Exception):
            run(pg_ctl, "-D", str(data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(workdir, ignore_errors=True)

    try:
        run(initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
            "--no-sync")
        run(pg_ctl, "-D", str(data), "-l", str(workdir / "log"), "-w", "-o",
            f"-p {port} -k {workdir} -c listen_addresses=127.0.0.1", "start")
    except (subprocess.SubprocessError, OSError) as exc:
        log = workdir / "log"
        detail = log.read_text()[-500:] if log.exists() else str(exc)
        stop()
        raise Unavailable(f"could not start a throwaway PostgreSQL: {detail}") from exc
    url = f"postgresql://postgres@127.0.0.1:{port}/postgres"
    _check(url)
    return url, stop


def _check(url: str) -> None:
    try:
        with psycopg.connect(url, connect_timeout=10):
            pass
    except psycopg.Error as exc:
        reason = " ".join(str(exc).split())
        raise Unavailable(f"cannot connect to the test PostgreSQL: {reason}") from exc


def with_schema(url: str, schema: str) -> str:
    """``url`` whose sessions use ``schema`` (``options=-csearch_path=…``)."""
    return f"{url}{'&' if '?' in url else '?'}options=-csearch_path%3D{schema}"


@contextlib.contextmanager
def fresh_schema(url: str) -> Iterator[str]:
    """A new empty schema; yields the URL that uses it, drops it afterwards."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    try:
        yield with_schema(url, schema)
    finally:
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
