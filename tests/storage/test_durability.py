"""Crash safety, corruption handling, disk failures, locking and file permissions.

The kill -9 test runs against both stores; the rest are about the TinyDB files.
"""

from __future__ import annotations

import asyncio
import errno
import os
import random
import select
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

import storage.atomic
import storage.journal
from storage import Page, StorageError, StoreFiles, StoreLocked, open_store
from tests.storage.helpers import item

REPO = Path(__file__).resolve().parents[2]
tinydb_only = pytest.mark.tinydb_only


def spawn_child(path: str, run: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "tests.storage.crash_child", path, run],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_for_line(proc: subprocess.Popen, expected: bytes, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], deadline - time.monotonic())
        if ready:
            line = proc.stdout.readline()
            if line.strip() == expected:
                return
            if not line:
                break
    proc.kill()
    raise AssertionError(f"child did not print {expected!r}: {proc.stderr.read().decode()}")


async def crash_after(store) -> None:
    """Stop a store leaving the files as kill -9 would: journals not folded in."""
    await store.close(compact=False)


async def test_kill_9_at_random_moments_loses_no_acknowledged_item(store_path, backend):
    """Dozens of kill -9s mid-write: every acknowledged item is present once, completions
    stick."""
    rng = random.Random(20240607)
    seen: dict[str, set[str]] = {"ack": set(), "completing": set(), "done": set()}
    # A PostgreSQL commit is a round trip and a WAL flush: fewer, longer runs.
    runs, window, enough = (50, 0.08, (500, 100)) if backend == "tinydb" else (20, 0.3, (200, 40))
    for run in range(runs):
        child = spawn_child(store_path, f"r{run}")
        wait_for_line(child, b"ready")
        await asyncio.sleep(rng.uniform(0.0, window))
        child.kill()
        output, _ = child.communicate()
        lines = output.split(b"\n")[:-1]  # the part after the last newline may be torn
        for line in lines:
            verb, _, item_id = line.decode().partition(" ")
            seen[verb].add(item_id)
        acked, completing, done = seen["ack"], seen["completing"], seen["done"]

        store = open_store(store_path)
        await store.open()  # the file loads, whatever the moment of the kill
        pending: list[str] = []
        for conversation in (f"c{n}" for n in range(5)):
            pending += [i.item_id for i in await store.pending_items("inbound", conversation)]
        assert len(pending) == len(set(pending)), "an item is stored twice"
        pending_set = set(pending)
        assert acked - completing <= pending_set, f"run {run}: acknowledged items lost"
        assert not (done & pending_set), f"run {run}: completed items came back"
        for item_id in rng.sample(sorted(acked), min(20, len(acked))):
            assert await store.seen(item_id)  # completed or not, a redelivery is refused
        await store.close()
    assert len(seen["ack"]) > enough[0] and len(seen["done"]) > enough[1]  # they really worked


@tinydb_only
async def test_torn_last_journal_line_is_cut_on_load(make_store, store_path):
    """A half-written last journal line (crash mid-append) is dropped; the rest loads."""
    store = await make_store()
    await store.enqueue([item("m1")])
    await crash_after(store)
    journal = StoreFiles.for_path(store_path).queues_journal
    with open(journal, "ab") as fh:
        fh.write(b'1234abcd {"c":{"inbound":{"m2"')
    store = await make_store()
    assert [i.item_id for i in await store.pending_items("inbound", "p1:u1")] == ["m1"]


@tinydb_only
async def test_corrupt_journal_line_stops_the_bot(make_store, store_path):
    """A damaged line before the end of the journal is an error naming the file."""
    store = await make_store()
    await store.enqueue([item("m1")])
    await store.enqueue([item("m2")])
    await crash_after(store)
    journal = StoreFiles.for_path(store_path).queues_journal
    data = bytearray(Path(journal).read_bytes())
    second_line = data.index(b"\n") + 1
    data[second_line + 20] ^= 0x01
    Path(journal).write_bytes(bytes(data))
    with pytest.raises(StorageError, match="corrupt at line 2") as caught:
        await open_store(store_path).open()
    assert journal in str(caught.value)
    assert Path(journal).read_bytes() == bytes(data)  # nothing was reset


@tinydb_only
async def test_corrupt_snapshot_stops_the_bot(make_store, store_path):
    """An unparsable data file is an error naming the file; it is never reset."""
    store = await make_store()
    await store.remember("k")
    await store.close()
    Path(store_path).write_bytes(b'{"pages": {"p1": {"name": "x"')
    with pytest.raises(StorageError, match="corrupt") as caught:
        await open_store(store_path).open()
    assert store_path in str(caught.value)
    assert Path(store_path).read_bytes() == b'{"pages": {"p1": {"name": "x"'


@tinydb_only
async def test_snapshot_of_wrong_shape_stops_the_bot(store_path):
    """Valid JSON that is not a TinyDB database is refused."""
    Path(store_path).parent.mkdir(parents=True)
    Path(store_path).write_text('{"pages": [1, 2, 3]}')
    with pytest.raises(StorageError, match="not a TinyDB database"):
        await open_store(store_path).open()


@tinydb_only
async def test_journal_without_snapshot_stops_the_bot(make_store, store_path):
    """Changes whose snapshot was deleted are not silently dropped."""
    store = await make_store()
    await store.remember("k")
    await crash_after(store)
    os.unlink(StoreFiles.for_path(store_path).queues)
    with pytest.raises(StorageError, match="missing"):
        await open_store(store_path).open()


@tinydb_only
async def test_snapshot_restored_from_older_backup_is_detected(make_store, store_path):
    """A journal newer than its snapshot (mismatched restore) is refused."""
    files = StoreFiles.for_path(store_path)
    store = await make_store()
    await store.close()
    old_snapshot = Path(files.queues).read_bytes()
    store = await make_store()
    await store.remember("k")
    await store.close()
    Path(files.queues).write_bytes(old_snapshot)
    with pytest.raises(StorageError, match="newer than"):
        await open_store(store_path).open()


@tinydb_only
async def test_existing_plain_tinydb_file_is_adopted(store_path):
    """A TinyDB JSON file without a journal (e.g. hand-restored) loads as the snapshot."""
    Path(store_path).parent.mkdir(parents=True)
    Path(store_path).write_text(
        '{"pages": {"p1": {"page_id": "p1", "name": "Shop", "instagram_id": "ig1"}}}'
    )
    store = open_store(store_path)
    await store.open()
    try:
        assert (await store.page_by_instagram_id("ig1")).name == "Shop"
    finally:
        await store.close()


class DiskFull:
    """Makes the store's file writes fail with ENOSPC while ``full`` is True."""

    def __init__(self, mocker) -> None:
        self.full = False
        self.partial = False
        self._journal_write = storage.journal.write_all
        self._atomic_write = storage.atomic.write_all
        mocker.patch.object(storage.journal, "write_all", self._wrap(self._journal_write))
        mocker.patch.object(storage.atomic, "write_all", self._wrap(self._atomic_write))

    def _wrap(self, real):
        def write_all(fd: int, data: bytes) -> None:
            if self.full:
                if self.partial:
                    real(fd, data[: len(data) // 2])  # a torn write reaches the file
                raise OSError(errno.ENOSPC, "No space left on device")
            real(fd, data)

        return write_all


@tinydb_only
@pytest.mark.parametrize("partial", [False, True], ids=["nothing-written", "torn-write"])
async def test_disk_full_fails_the_call_and_recovers(make_store, mocker, partial):
    """A failed write raises StorageError, flips healthy(), and recovers without loss."""
    disk = DiskFull(mocker)
    store = await make_store()
    await store.enqueue([item("m1")])
    disk.full, disk.partial = True, partial
    with pytest.raises(StorageError, match="No space left"):
        await store.enqueue([item("m2")])
    assert not await store.healthy()
    with pytest.raises(StorageError):
        await store.remember("k")
    disk.full = False
    assert await store.healthy()
    # Meta retries the webhook: the item is already pending, now durable.
    assert await store.enqueue([item("m2")]) == []
    await crash_after(store)
    store = await make_store()
    assert [i.item_id for i in await store.pending_items("inbound", "p1:u1")] == ["m1", "m2"]
    assert await store.seen("k")


@tinydb_only
async def test_second_process_refuses_to_start(store_path):
    """A second bot on the same file fails with StoreLocked naming the first one's pid."""
    child = spawn_child(store_path, "lock")
    try:
        wait_for_line(child, b"ready")
        with pytest.raises(StoreLocked) as caught:
            await open_store(store_path).open()
        assert f"pid {child.pid}" in str(caught.value)
        assert "another rc-instagram process is using" in str(caught.value)
    finally:
        child.kill()
        child.wait()
    store = open_store(store_path)  # kill -9 released the lock
    await store.open()
    await store.close()


@tinydb_only
async def test_second_store_in_same_process_is_locked_out(make_store, store_path):
    """Even inside one process, a second store on the same path is refused."""
    await make_store()
    with pytest.raises(StoreLocked):
        await open_store(store_path).open()


@tinydb_only
async def test_files_and_directory_are_owner_only(make_store, store_path):
    """The data directory is created 0700 and every data file is 0600."""
    old_umask = os.umask(0o022)
    try:
        store = await make_store()
        await store.save_page(Page("p1", "n", "ig1", page_token="t"))
        await store.close()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(os.path.dirname(store_path)).st_mode) == 0o700
    for path in StoreFiles.for_path(store_path).all():
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


@tinydb_only
async def test_concurrent_writes_share_fsyncs(store):
    """Many writes issued together are made durable by far fewer commits."""
    before = (await store.stats())["commits"]
    await asyncio.gather(*(store.remember(f"k{n}") for n in range(500)))
    commits = (await store.stats())["commits"] - before
    assert 1 <= commits < 100


async def test_concurrent_completions_share_commits(store):
    """Items finished together are deleted by far fewer commits (both stores)."""
    added = await store.enqueue([item(f"m{n}", conversation=f"p1:u{n}") for n in range(200)])
    before = (await store.stats())["commits"]
    await asyncio.gather(*(store.complete(one, remember=[f"done-{one.item_id}"])
                           for one in added))
    commits = (await store.stats())["commits"] - before
    assert 1 <= commits < 100
    assert (await store.stats())["inbound"] == 0
    assert all([await store.seen(f"done-{one.item_id}") for one in added])


@tinydb_only
async def test_journal_is_compacted_so_files_stay_small(make_store, store_path):
    """Processed work does not pile up on disk: compaction keeps the journal bounded."""
    store = await make_store(compact_min_bytes=32 * 1024)
    for n in range(1000):
        (added,) = await store.enqueue([item(f"m{n}", payload="x" * 100)])
        await store.complete(added)
    stats = await store.stats()
    assert stats["compactions"] >= 3 and stats["inbound"] == 0
    files = StoreFiles.for_path(store_path)
    assert os.path.getsize(files.queues_journal) < 3 * 32 * 1024
