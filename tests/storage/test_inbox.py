"""The inbox: durability of acknowledged webhook bodies, release, recovery, disk failures.

Real files throughout; the only injected failures are the inbox's ``fsync`` callable and
``os.write``. A "crash" is simulated by abandoning an inbox without ``close()`` and opening
a new one on the same files.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import stat
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from storage import StorageError
from storage.inbox import EVENT, RELEASED, Inbox, decode_records, encode_record


@pytest.fixture
def prefix(tmp_path: Path) -> str:
    return str(tmp_path / "store.inbox.")


@pytest.fixture
async def make_inbox(prefix: str) -> AsyncIterator[Callable[..., Inbox]]:
    """Open inboxes on ``prefix``; every one (crashed ones too) is closed at teardown."""
    opened: list[Inbox] = []

    def make(**options: Any) -> Inbox:
        inbox = Inbox(prefix, **options)
        inbox.open(asyncio.get_running_loop())
        opened.append(inbox)
        return inbox

    yield make
    for inbox in reversed(opened):
        inbox.close()


class Disk:
    """An injectable ``fsync``: counts calls, fails with ENOSPC while ``full`` is True."""

    def __init__(self) -> None:
        self.full = False
        self.calls = 0

    def __call__(self, fd: int) -> None:
        self.calls += 1
        if self.full:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        os.fdatasync(fd)


async def eventually(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    """Poll until ``predicate()`` holds (segment deletion runs on the sync thread)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


def contents(inbox: Inbox) -> list[tuple[int, bytes]]:
    return [(event.seq, event.raw) for event in inbox.pending()]


def records_on_disk(inbox: Inbox) -> list[tuple[bytes, int, bytes]]:
    records: list[tuple[bytes, int, bytes]] = []
    for path in inbox.segments():
        records += decode_records(Path(path).read_bytes())[0]
    return records


# -- surviving restarts -------------------------------------------------------------------


async def test_unreleased_events_survive_close_and_reopen(make_inbox, caplog):
    """Unreleased events come back after a clean restart, in order, raw bytes intact."""
    caplog.set_level(logging.INFO, logger="storage")
    inbox = make_inbox()
    raws = [b'{"entry": 1}', b"\x00\xffbinary\n", b"", b"x" * 5000]
    acked = [await inbox.append(raw, body={"n": n}) for n, raw in enumerate(raws)]
    assert [e.body for e in acked] == [{"n": n} for n in range(4)]
    assert inbox.backlog == 4
    inbox.close()
    assert not inbox.healthy
    assert inbox.segments(), "pending events must keep their segment"

    reopened = make_inbox()
    assert contents(reopened) == [(e.seq, e.raw) for e in acked]
    assert all(e.body is None for e in reopened.pending())
    assert reopened.backlog == 4 and reopened.healthy
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "4 acknowledged webhook(s)" in caplog.text
    later = await reopened.append(b"later")
    assert later.seq > acked[-1].seq, "a seq was reused after the restart"


async def test_events_survive_a_crash_without_close(make_inbox):
    """An acknowledged event is on disk when append returns: no close needed."""
    inbox = make_inbox()
    acked = [await inbox.append(f"event {n}".encode()) for n in range(3)]
    # crash: the old inbox is simply abandoned
    assert contents(make_inbox()) == [(e.seq, e.raw) for e in acked]


async def test_pending_limit_returns_the_oldest_first(make_inbox):
    """pending(limit) is the oldest ``limit`` events; release drops a prefix only."""
    inbox = make_inbox()
    acked = [await inbox.append(bytes([n])) for n in range(5)]
    assert [e.seq for e in inbox.pending(2)] == [acked[0].seq, acked[1].seq]
    assert [e.seq for e in inbox.pending(99)] == [e.seq for e in acked]
    inbox.release(acked[2].seq)
    assert [e.seq for e in inbox.pending()] == [acked[3].seq, acked[4].seq]
    assert inbox.backlog == 2


@pytest.mark.parametrize("clean", [False, True], ids=["crash", "close"])
async def test_released_events_do_not_come_back_after_restart(make_inbox, clean):
    """Released events stay released across a restart, crashed or clean."""
    inbox = make_inbox()
    acked = [await inbox.append(f"e{n}".encode()) for n in range(5)]
    inbox.release(acked[2].seq)
    assert await inbox.probe()  # a synced write: the release marker is on disk
    if clean:
        inbox.close()
    reopened = make_inbox()
    assert contents(reopened) == [(e.seq, e.raw) for e in acked[3:]]


async def test_everything_released_then_crash_recovers_nothing(make_inbox):
    """With every event released before the crash, nothing is taken again."""
    inbox = make_inbox()
    acked = [await inbox.append(f"e{n}".encode()) for n in range(3)]
    inbox.release(acked[-1].seq)
    assert await inbox.probe()
    reopened = make_inbox()
    assert reopened.pending() == [] and reopened.backlog == 0


async def test_clean_close_with_everything_released_leaves_no_files(make_inbox):
    """A clean close after releasing everything deletes every segment file."""
    inbox = make_inbox(segment_bytes=200)
    acked = [await inbox.append(b"y" * 60) for _ in range(8)]
    assert len(inbox.segments()) > 1
    inbox.release(acked[-1].seq)
    inbox.close()
    assert inbox.segments() == []
    assert make_inbox().pending() == []


async def test_clean_close_with_pending_events_keeps_the_files(make_inbox):
    """A clean close with an unreleased event keeps the files that hold it."""
    inbox = make_inbox()
    first = await inbox.append(b"first")
    second = await inbox.append(b"second")
    inbox.release(first.seq)
    inbox.close()
    assert inbox.segments()
    assert contents(make_inbox()) == [(second.seq, b"second")]


# -- torn writes ----------------------------------------------------------------------------

TORN_TAILS = {
    "half-header": encode_record(EVENT, 99, b"never acknowledged")[:9],
    "short-body": encode_record(EVENT, 99, b"never acknowledged")[:-3],
    "bad-checksum": encode_record(EVENT, 99, b"never acknowledged")[:-1] + b"?",
    "garbage": b"\x07" * 40,
}


@pytest.mark.parametrize("tail", TORN_TAILS.values(), ids=TORN_TAILS.keys())
async def test_torn_tail_is_truncated_on_open_keeping_acknowledged_events(make_inbox, caplog, tail):
    """A half-written last record is cut off with a warning; acknowledged ones stay."""
    caplog.set_level(logging.WARNING, logger="storage")
    inbox = make_inbox()
    acked = [await inbox.append(f"event {n}".encode()) for n in range(3)]
    inbox.close()
    (segment,) = inbox.segments()
    good_size = os.path.getsize(segment)
    with open(segment, "ab") as fh:
        fh.write(tail)

    reopened = make_inbox()
    assert contents(reopened) == [(e.seq, e.raw) for e in acked]
    assert os.path.getsize(segment) == good_size
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "torn write" in warnings[0].getMessage()
    assert segment in warnings[0].getMessage()

    after = await reopened.append(b"after the tear")
    reopened.close()
    final = make_inbox()
    assert contents(final) == [(e.seq, e.raw) for e in acked] + [(after.seq, b"after the tear")]


# -- segments -------------------------------------------------------------------------------


async def test_small_segments_rotate_and_released_ones_are_deleted(make_inbox):
    """Past segment_bytes a new file starts; files whose events are released go away."""
    inbox = make_inbox(segment_bytes=200)
    acked = [await inbox.append(f"{n:02d}".encode() * 25) for n in range(10)]
    segments = inbox.segments()
    assert len(segments) >= 3
    for path in segments:
        assert os.path.getsize(path) < 200 + 100  # sealed soon after crossing the limit
    on_disk = [(seq, body) for kind, seq, body in records_on_disk(inbox) if kind == EVENT]
    assert on_disk == [(e.seq, e.raw) for e in acked]  # file order is seq order

    def events_in(path: str) -> list[int]:
        records = decode_records(Path(path).read_bytes())[0]
        return [seq for kind, seq, _ in records if kind == EVENT]

    through = acked[4].seq
    fully_released = [p for p in segments if events_in(p) and max(events_in(p)) <= through]
    still_needed = [p for p in segments if events_in(p) and max(events_in(p)) > through]
    assert fully_released and still_needed
    inbox.release(through)
    assert await inbox.probe()
    await eventually(lambda: not any(os.path.exists(p) for p in fully_released))
    assert all(os.path.exists(p) for p in still_needed)

    # crash, then recover only what was not released
    reopened = make_inbox(segment_bytes=200)
    assert contents(reopened) == [(e.seq, e.raw) for e in acked[5:]]


# -- group commit ---------------------------------------------------------------------------


async def test_concurrent_appends_are_durable_and_share_fsyncs(make_inbox):
    """1000 appends at once: all durable, unique increasing seqs, far fewer fsyncs."""
    disk = Disk()
    inbox = make_inbox(fsync=disk)
    raws = [f'{{"webhook": {n}}}'.encode() for n in range(1000)]
    acked = await asyncio.gather(*(inbox.append(raw) for raw in raws))

    assert [e.raw for e in acked] == raws
    seqs = [e.seq for e in acked]
    assert len(set(seqs)) == 1000
    pending = inbox.pending()
    assert len(pending) == 1000
    assert [e.seq for e in pending] == sorted(seqs)  # unique and increasing
    assert 1 <= disk.calls <= 100, f"{disk.calls} fsyncs for 1000 appends: no group commit"

    # crash: every acknowledged body is on disk
    recovered = make_inbox()
    assert contents(recovered) == sorted((e.seq, e.raw) for e in acked)


# -- disk failures --------------------------------------------------------------------------


class FailingWrites:
    """Patches ``os.write`` so that, while ``full``, half the data lands and ENOSPC follows."""

    def __init__(self, mocker) -> None:
        self.full = False
        real = os.write

        def write(fd: int, data) -> int:
            if self.full:
                real(fd, bytes(data[: len(data) // 2]))  # a torn write reaches the file
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return real(fd, data)

        mocker.patch.object(os, "write", write)


@pytest.mark.parametrize("before", [0, 2], ids=["first-write-fails", "after-two-events"])
@pytest.mark.parametrize("failure", ["fsync", "torn-write"])
async def test_disk_full_fails_the_append_and_recovers_without_loss(
    make_inbox, mocker, caplog, failure, before
):
    """A failed write raises, flips healthy, loses nothing acknowledged before or after."""
    caplog.set_level(logging.WARNING, logger="storage")
    disk = Disk()
    writes = FailingWrites(mocker) if failure == "torn-write" else None
    inbox = make_inbox(fsync=disk)
    acked = [await inbox.append(f"before {n}".encode()) for n in range(before)]
    assert inbox.healthy and inbox.last_error is None

    if writes:
        writes.full = True
    else:
        disk.full = True
    with pytest.raises(StorageError, match="No space left"):
        await inbox.append(b"never acknowledged")
    assert not inbox.healthy
    assert "No space left" in (inbox.last_error or "")
    assert contents(inbox) == [(e.seq, e.raw) for e in acked]
    assert not await inbox.probe(), "the disk is still full"
    assert not inbox.healthy

    if writes:
        writes.full = False
    else:
        disk.full = False
    assert await inbox.probe()
    assert inbox.healthy and inbox.last_error is None
    acked += [await inbox.append(f"after {n}".encode()) for n in range(3)]
    assert contents(inbox) == [(e.seq, e.raw) for e in acked]

    # crash: everything acknowledged is recovered, including what followed the failure
    caplog.clear()
    recovered = contents(make_inbox())
    if failure == "torn-write":  # half a record can never be valid
        assert b"never acknowledged" not in [raw for _, raw in recovered]
    assert [item for item in recovered if item[1] != b"never acknowledged"] == [
        (e.seq, e.raw) for e in acked
    ]
    seqs = [seq for seq, _ in recovered]
    assert seqs == sorted(set(seqs))


async def test_failed_release_marker_only_means_taking_events_again(make_inbox):
    """A release marker that cannot be written loses no unreleased event."""
    disk = Disk()
    inbox = make_inbox(fsync=disk)
    acked = [await inbox.append(f"e{n}".encode()) for n in range(4)]
    disk.full = True
    inbox.release(acked[1].seq)
    assert not await inbox.probe()
    assert not inbox.healthy
    assert contents(inbox) == [(e.seq, e.raw) for e in acked[2:]]
    disk.full = False
    assert await inbox.probe() and inbox.healthy

    recovered = contents(make_inbox())  # crash
    assert recovered[-2:] == [(e.seq, e.raw) for e in acked[2:]]
    assert set(recovered) <= {(e.seq, e.raw) for e in acked}


async def test_closed_or_unopened_inbox_refuses_appends(make_inbox, prefix):
    """append on an inbox that is not open raises StorageError; so does a second open."""
    with pytest.raises(StorageError, match="not open"):
        await Inbox(prefix).append(b"x")
    inbox = make_inbox()
    with pytest.raises(StorageError, match="already open"):
        inbox.open(asyncio.get_running_loop())
    inbox.close()
    assert not inbox.healthy
    with pytest.raises(StorageError, match="not open"):
        await inbox.append(b"x")
    assert not await inbox.probe()


# -- permissions ----------------------------------------------------------------------------


async def test_segment_files_are_owner_only(make_inbox):
    """Every segment file is created 0600, whatever the umask."""
    old_umask = os.umask(0)
    try:
        inbox = make_inbox(segment_bytes=100)
        for n in range(6):
            await inbox.append(b"secret token %d" % n * 10)
        segments = inbox.segments()
    finally:
        os.umask(old_umask)
    assert len(segments) > 1
    for path in segments:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path


# -- the record format ------------------------------------------------------------------------


def test_records_round_trip():
    """encode_record/decode_records return every record and where valid data ends."""
    records = [
        (EVENT, 1, b'{"a": 1}'),
        (EVENT, 2, b""),
        (RELEASED, 2, b""),
        (EVENT, 2**40, bytes(range(256))),
    ]
    data = b"".join(encode_record(kind, seq, body) for kind, seq, body in records)
    assert decode_records(data) == (records, len(data))
    assert decode_records(b"") == ([], 0)


def test_flipped_byte_ends_the_valid_records():
    """Any damaged byte of a record (header or body) fails it and everything after."""
    first = encode_record(EVENT, 1, b"kept")
    second = encode_record(EVENT, 2, b"damaged body")
    third = encode_record(RELEASED, 2)
    for index in range(len(second)):
        damaged = bytearray(second)
        damaged[index] ^= 0x5A
        data = first + bytes(damaged) + third
        assert decode_records(data) == ([(EVENT, 1, b"kept")], len(first)), index


def test_incomplete_or_unknown_records_are_rejected():
    """Every proper prefix of a record, and a record of unknown kind, decode to nothing."""
    record = encode_record(EVENT, 7, b"body")
    for cut in range(len(record)):
        assert decode_records(record[:cut]) == ([], 0), cut
    assert decode_records(encode_record(b"X", 7, b"body")) == ([], 0)


# -- a new segment never reuses the name of one still in use (regressions) ----------------

async def test_events_after_restart_and_release_survive_the_next_restart(make_inbox):
    """Restart, release the backlog, take a new webhook: it survives the next restart."""
    inbox = make_inbox()
    old = await inbox.append(b"before the restart")
    inbox.close()
    reopened = make_inbox()
    reopened.release(old.seq)  # the backlog reached the queues
    assert await reopened.probe()
    new = await reopened.append(b"after the restart")
    reopened.close()  # clean close, the new event still pending
    assert contents(make_inbox()) == [(new.seq, b"after the restart")]


async def test_segment_filled_by_one_batch_is_kept_while_pending(make_inbox):
    """An event bigger than segment_bytes stays on disk until it is released."""
    inbox = make_inbox(segment_bytes=200)
    big = await inbox.append(b"x" * 300)
    assert await inbox.probe()
    await asyncio.sleep(0.05)  # let the sync thread finish its deletions
    assert contents(make_inbox(segment_bytes=200)) == [(big.seq, big.raw)]  # crash


async def test_a_cancelled_append_does_not_fail_the_rest_of_its_batch(make_inbox):
    """Appends share one fsync; cancelling one caller leaves the others' answers intact."""

    def slow_fsync(fd: int) -> None:
        time.sleep(0.05)
        os.fdatasync(fd)

    inbox = make_inbox(fsync=slow_fsync)
    first = asyncio.create_task(inbox.append(b"first"))
    await asyncio.sleep(0.02)  # the thread is inside the first batch's 50 ms fsync...
    # ...so these all join the next batch.
    tasks = [asyncio.create_task(inbox.append(f"body {n}".encode())) for n in range(5)]
    probe = asyncio.create_task(inbox.probe())
    await asyncio.sleep(0)
    tasks[2].cancel()
    probe.cancel()
    done = await asyncio.gather(*tasks, return_exceptions=True)
    await first
    assert isinstance(done[2], asyncio.CancelledError)
    assert [e.raw for e in done if not isinstance(e, BaseException)] == [
        b"body 0", b"body 1", b"body 3", b"body 4"]
    assert [raw for _seq, raw in contents(make_inbox())][-5:] == [
        b"body 0", b"body 1", b"body 2", b"body 3", b"body 4"]  # written all the same
