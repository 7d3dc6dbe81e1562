"""A TinyDB ``Storage`` whose write cost does not grow with the data: snapshot + journal.

TinyDB's stock ``JSONStorage`` rewrites the whole file, and ``Table._update_table``
rebuilds the whole table dict, on every write: O(history) per acknowledged webhook.
Here a *family* of tables lives in two files:

``<name>.json``
    A snapshot in TinyDB's own JSON format (``{table: {doc_id: document}}``), always
    replaced atomically (temp file, fsync, rename, directory fsync). A table named
    ``_storage`` records the snapshot's *generation*.
``<name>.journal``
    Append-only lines ``<crc32 hex> <json>\\n``. The first line is a header naming the
    generation it continues; each further line holds the new value (or ``null`` for
    deleted) of every document one batch of operations changed.

Writing is split in two, so that the thread owning the tables never waits for the
disk (see :mod:`storage.writer`): :meth:`JournalStorage.prepare`, on that thread,
encodes what changed since its last call into an :class:`Append` (one journal line: the
new value, or ``null``, of every changed document) or, when a snapshot is due, a
:class:`Replace` (the whole snapshot and the new journal's header);
:meth:`JournalStorage.flush`, on the family's sync thread, makes a run of such jobs
durable in the order they were prepared: all queued lines in one write and one
``fdatasync``, so the cost is proportional to what changed and shared by everything
that changed meanwhile. When the journal outgrows ``compact_ratio`` times the snapshot
(and ``compact_min_bytes``), the next job is a Replace of the next generation: the
snapshot is replaced atomically, then the journal (header plus any lines prepared after
the snapshot), atomically too: amortised O(1) per change. A crash between the two
renames leaves a journal of the older generation, which is recognised as already
folded in and ignored.

Crash safety: only one thread appends, strictly in order, and each flush completes
(write, fsync) before the next begins, so only the last journal line can be incomplete
after a crash; it was never acknowledged and is cut off on load with a warning. After
a failed write the journal's tail is unknown, so the family appends nothing more (the
jobs fail) until a Replace has rewritten both files. A bad line anywhere else, an
unparsable snapshot, a journal without its snapshot or ahead of it is corruption:
``load`` raises :class:`StorageError` naming the file, and nothing is reset.

Documents are keyed by string ids chosen by the caller (page id, item id, ...), so
``Table.get(doc_id=...)``, ``update(doc_ids=...)`` and ``remove(doc_ids=...)`` are
O(1); :class:`JournalTable` applies updates to the live dict in place and reports the
touched ids to the storage instead of rebuilding the table.
"""

from __future__ import annotations

import json
import logging
import os
import zlib
from collections.abc import Callable, Iterator, MutableMapping
from dataclasses import dataclass
from typing import Any

from tinydb import TinyDB
from tinydb.storages import Storage
from tinydb.table import Table

from storage.atomic import FILE_MODE, atomic_write, remove_stale_temp, write_all
from storage.base import StorageError

log = logging.getLogger("storage")

JOURNAL_FORMAT = 1
META_TABLE = "_storage"

Tables = dict[str, dict[str, Any]]


def encode_line(record: dict[str, Any]) -> bytes:
    """One journal line: checksum, space, compact JSON, newline."""
    payload = json.dumps(record, separators=(",", ":")).encode()
    return b"%08x %s\n" % (zlib.crc32(payload), payload)


def encode_tables(tables: Tables, chunk: int = 256) -> bytes:
    """``json.dumps(tables)`` (compact), byte for byte, encoded ``chunk`` documents at a time.

    One ``json.dumps`` call of a large snapshot holds the GIL for its whole duration
    (tens of milliseconds for a few MB), stalling the event loop and every other
    thread; between chunks the interpreter can hand the GIL over.
    """
    parts = [b"{"]
    for n, (name, docs) in enumerate(tables.items()):
        parts.append(b"%s%s:{" % (b"," if n else b"", json.dumps(name).encode()))
        items = list(docs.items())
        for start in range(0, len(items), chunk):
            encoded = json.dumps(dict(items[start : start + chunk]), separators=(",", ":"))
            parts.append(b"%s%s" % (b"," if start else b"", encoded[1:-1].encode()))
        parts.append(b"}")
    parts.append(b"}")
    return b"".join(parts)


def decode_line(line: bytes) -> dict[str, Any] | None:
    """The record of a complete line, or None if it is damaged."""
    if len(line) < 10 or line[8:9] != b" ":
        return None
    payload = line[9:]
    try:
        if int(line[:8], 16) != zlib.crc32(payload):
            return None
        record = json.loads(payload)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


class JournalStorage(Storage):
    """Snapshot + append-only journal persistence for one TinyDB database.

    ``read`` returns the live in-memory tables (TinyDB never mutates what it reads);
    ``write`` (used by TinyDB for whole-database operations such as ``drop_tables``)
    replaces them and schedules a full snapshot. Nothing touches the disk until the
    owner hands what :meth:`prepare` returned (once per batch of operations) to
    :meth:`flush`. ``load``, ``prepare`` and the tables belong to the owning thread;
    ``flush`` to the sync thread, which alone uses the journal's file descriptor after
    ``load``; ``close`` only once that thread has stopped.
    """

    def __init__(
        self,
        snapshot_path: str,
        journal_path: str,
        *,
        compact_ratio: float = 2.0,
        compact_min_bytes: int = 4 << 20,
        fsync: Callable[[int], None] = os.fdatasync,
    ) -> None:
        super().__init__()
        self.snapshot_path = snapshot_path
        self.journal_path = journal_path
        self.compact_ratio = compact_ratio
        self.compact_min_bytes = compact_min_bytes
        self._fsync = fsync
        self._tables: Tables = {}
        self._dirty: dict[str, set[str]] = {}
        self._generation = 0
        self._fd: int | None = None
        self._journal_bytes = 0
        self._snapshot_bytes = 0
        self._needs_snapshot = True  # until load() finds a usable pair of files
        self._loaded = False  # nothing is ever written before a successful load
        self._broken: str | None = None  # sync thread: why appending is unsafe now
        self.compactions = 0

    # -- TinyDB Storage API -----------------------------------------------------------
    def read(self) -> Tables:
        return self._tables

    def write(self, data: dict[str, dict[str, Any]]) -> None:
        self._tables = {name: dict(docs) for name, docs in data.items()}
        self._needs_snapshot = True

    def close(self) -> None:
        """Close the journal; the storage writes nothing more until loaded again."""
        self._loaded = False
        self._close_fd()

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    # -- change tracking --------------------------------------------------------------
    def table_dict(self, name: str) -> dict[str, Any]:
        """The live dict of one table, created if missing."""
        return self._tables.setdefault(name, {})

    def mark_dirty(self, table: str, doc_ids: set[str]) -> None:
        if doc_ids:
            self._dirty.setdefault(table, set()).update(doc_ids)

    def request_snapshot(self) -> None:
        """Rewrite everything at the next commit, so older values vanish from disk."""
        self._needs_snapshot = True

    # -- loading ------------------------------------------------------------------------
    def load(self) -> None:
        """Read snapshot and journal into memory; raise StorageError on corruption.

        Until a load succeeds, :meth:`commit` writes nothing: a store that refused to
        start must leave its files exactly as they were.
        """
        self.close()
        self._dirty = {}
        self._journal_bytes = 0
        self._generation = 0
        self._snapshot_bytes = 0
        self._broken = None
        remove_stale_temp(self.snapshot_path)
        remove_stale_temp(self.journal_path)
        have_snapshot = os.path.exists(self.snapshot_path)
        tables: Tables = self._read_snapshot() if have_snapshot else {}
        snap_gen = _generation_of(tables)
        records, journal_gen = self._read_journal()
        if not have_snapshot:
            if records:
                raise StorageError(
                    f"{self.journal_path} has changes but its snapshot {self.snapshot_path} "
                    "is missing; restore the snapshot (the store was not reset)"
                )
            self._tables = {}
            self._needs_snapshot = True
            self._loaded = True
            return
        if journal_gen is None:
            if snap_gen > 1:
                log.warning(
                    "journal %s is missing; starting from snapshot %s (generation %d)",
                    self.journal_path,
                    self.snapshot_path,
                    snap_gen,
                )
            self._needs_snapshot = True
        elif journal_gen > snap_gen:
            raise StorageError(
                f"{self.journal_path} (generation {journal_gen}) is newer than "
                f"{self.snapshot_path} (generation {snap_gen}): the snapshot was replaced "
                "by an older copy; restore both files from the same backup"
            )
        elif journal_gen < snap_gen:
            # A crash between the snapshot rename and the journal rename: the journal's
            # changes are already in the snapshot.
            self._needs_snapshot = True
        else:
            for record in records:
                _apply(tables, record, self.journal_path)
            self._needs_snapshot = False
        self._tables = tables
        self._generation = snap_gen
        if not self._needs_snapshot:
            self._fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND)
            self._journal_bytes = os.fstat(self._fd).st_size
        self._loaded = True

    def _read_snapshot(self) -> Tables:
        path = self.snapshot_path
        try:
            with open(path, "rb") as fh:
                raw = fh.read()
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
        self._snapshot_bytes = len(raw)
        if not raw.strip():
            return {}  # TinyDB's convention: an empty file is an empty database
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise StorageError(
                f"{path} is corrupt (not valid JSON: {exc}); the bot does not start on a "
                "damaged store: restore it from a backup, or move it away to start empty"
            ) from None
        if not isinstance(data, dict) or not all(
            isinstance(docs, dict) and all(isinstance(d, dict) for d in docs.values())
            for docs in data.values()
        ):
            raise StorageError(
                f"{path} is corrupt (not a TinyDB database: expected "
                "{table: {id: document}}); restore it from a backup"
            )
        return data

    def _read_journal(self) -> tuple[list[dict[str, Any]], int | None]:
        """The change records and the header's generation (None if there is no journal)."""
        path = self.journal_path
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except FileNotFoundError:
            return [], None
        except OSError as exc:
            raise StorageError(f"cannot read {path}: {exc.strerror}") from exc
        records: list[dict[str, Any]] = []
        offset = 0
        number = 0
        while offset < len(data):
            number += 1
            newline = data.find(b"\n", offset)
            end = len(data) if newline == -1 else newline + 1
            record = decode_line(data[offset:newline]) if newline != -1 else None
            if record is None:
                if end == len(data):
                    log.warning(
                        "cutting an incomplete last line (%d bytes) from %s: it was never "
                        "acknowledged (crash during a write)",
                        end - offset,
                        path,
                    )
                    with open(path, "r+b") as fh:
                        fh.truncate(offset)
                        os.fsync(fh.fileno())
                    break
                raise StorageError(
                    f"{path} is corrupt at line {number} (checksum mismatch); the bot does "
                    "not start on a damaged store: restore it from a backup"
                )
            records.append(record)
            offset = end
        if not records:
            return [], None
        header = records[0]
        if header.get("journal") != JOURNAL_FORMAT or not isinstance(header.get("generation"), int):
            raise StorageError(f"{path} is not an rc-instagram journal (bad header)")
        return records[1:], header["generation"]

    # -- writing: the TinyDB thread encodes ------------------------------------------
    def prepare(self) -> Append | Replace | None:
        """Encode every change since the last call; None if nothing changed.

        Runs on the thread that owns the tables. The result is handed to :meth:`flush`
        (on the sync thread) in the order of the calls. Once a job is returned its
        changes count as submitted: if the write fails, the owner calls
        :meth:`request_snapshot` and the next job rewrites everything.
        """
        if not self._loaded:
            return None
        if self._needs_snapshot or self._journal_bytes > max(
            self.compact_min_bytes, self.compact_ratio * self._snapshot_bytes
        ):
            return self._prepare_snapshot()
        if not self._dirty:
            return None
        tables = self._tables
        changes = {}
        for name, ids in self._dirty.items():
            docs = tables.get(name, {})
            changes[name] = {doc_id: docs.get(doc_id) for doc_id in ids}
        self._dirty.clear()
        line = encode_line({"c": changes})
        self._journal_bytes += len(line)
        return Append(line)

    def _prepare_snapshot(self) -> Replace:
        """All live data as the next generation's snapshot, plus its journal's header."""
        # A generation is never reused, even if writing this one fails: load() only
        # compares generations, so gaps are harmless and a stale journal stays stale.
        self._generation += 1
        generation = self._generation
        self._tables[META_TABLE] = {"journal": {"generation": generation, "format": JOURNAL_FORMAT}}
        snapshot = encode_tables(self._tables)
        header = encode_line({"journal": JOURNAL_FORMAT, "generation": generation})
        self._snapshot_bytes = len(snapshot)
        self._journal_bytes = len(header)
        self._dirty.clear()
        self._needs_snapshot = False
        self.compactions += 1
        return Replace(snapshot, header)

    # -- writing: the sync thread makes it durable -----------------------------------
    def flush(self, jobs: list[Append | Replace]) -> None:
        """Make ``jobs`` (from :meth:`prepare`, in order) durable: one write, one fsync.

        Appends are joined into one write and one ``fdatasync``. A :class:`Replace`
        supersedes every job before it (its snapshot was encoded after their changes):
        the snapshot is replaced atomically, then the journal, atomically too, with the
        header followed by the appends after it.

        Raises OSError when the disk refuses. The journal's tail is then unknown, so
        nothing more is appended: later appends raise :class:`StorageError` without
        touching the file until a :class:`Replace` rewrites both files.
        """
        last = max((n for n, job in enumerate(jobs) if isinstance(job, Replace)), default=-1)
        if last >= 0:
            replace = jobs[last]
            assert isinstance(replace, Replace)
            tail = b"".join(job.line for job in jobs[last + 1 :])  # type: ignore[union-attr]
            self._replace(replace.snapshot, replace.header + tail)
            return
        if self._broken is not None:
            raise StorageError(self._broken)
        data = b"".join(job.line for job in jobs)  # type: ignore[union-attr]
        assert self._fd is not None
        try:
            write_all(self._fd, data)
            self._fsync(self._fd)
        except OSError as exc:
            self._broken = f"an earlier write of {self.journal_path} failed ({exc.strerror or exc})"
            raise

    def _replace(self, snapshot: bytes, journal: bytes) -> None:
        self._close_fd()
        try:
            atomic_write(self.snapshot_path, snapshot)
            # A crash here leaves the new snapshot with the older journal, which load()
            # recognises (older generation) as already folded in.
            atomic_write(self.journal_path, journal)
            fd = os.open(self.journal_path, os.O_WRONLY | os.O_APPEND)
        except OSError as exc:
            self._broken = (
                f"an earlier write of {self.snapshot_path} failed ({exc.strerror or exc})"
            )
            raise
        os.fchmod(fd, FILE_MODE)
        self._fd = fd
        self._broken = None

    @property
    def journal_bytes(self) -> int:
        return self._journal_bytes


@dataclass(frozen=True, slots=True)
class Append:
    """A journal line to append (one batch's changes)."""

    line: bytes


@dataclass(frozen=True, slots=True)
class Replace:
    """A new snapshot and the header of the journal that continues it."""

    snapshot: bytes
    header: bytes


def _generation_of(tables: Tables) -> int:
    meta = tables.get(META_TABLE, {}).get("journal", {})
    generation = meta.get("generation", 0) if isinstance(meta, dict) else 0
    return generation if isinstance(generation, int) else 0


def _apply(tables: Tables, record: dict[str, Any], path: str) -> None:
    changes = record.get("c")
    if not isinstance(changes, dict):
        raise StorageError(f"{path} is corrupt (a change record without changes)")
    for name, docs in changes.items():
        table = tables.setdefault(name, {})
        for doc_id, doc in docs.items():
            if doc is None:
                table.pop(doc_id, None)
            else:
                table[doc_id] = doc


class _Tracking(MutableMapping):
    """A view of a live table dict that records which document ids were touched.

    TinyDB's updaters read a document before changing it in place (``update``), so
    reading counts as touching; the cost is one set insertion per document.
    """

    __slots__ = ("_docs", "touched")

    def __init__(self, docs: dict[str, Any]) -> None:
        self._docs = docs
        self.touched: set[str] = set()

    def __getitem__(self, doc_id: str) -> Any:
        doc = self._docs[doc_id]
        self.touched.add(doc_id)
        return doc

    def __setitem__(self, doc_id: str, doc: Any) -> None:
        self._docs[doc_id] = doc
        self.touched.add(doc_id)

    def __delitem__(self, doc_id: str) -> None:
        del self._docs[doc_id]
        self.touched.add(doc_id)

    def __contains__(self, doc_id: object) -> bool:
        return doc_id in self._docs

    def __iter__(self) -> Iterator[str]:
        return iter(self._docs)

    def __len__(self) -> int:
        return len(self._docs)

    def keys(self):  # type: ignore[override]
        return self._docs.keys()

    def clear(self) -> None:
        self.touched.update(self._docs)
        self._docs.clear()


class JournalTable(Table):
    """A TinyDB table keyed by string ids whose writes cost O(changed documents)."""

    document_id_class = str  # type: ignore[assignment]

    def _update_table(self, updater: Callable[[dict[str, Any]], None]) -> None:
        storage = self._storage
        assert isinstance(storage, JournalStorage)
        view = _Tracking(storage.table_dict(self.name))
        try:
            updater(view)  # type: ignore[arg-type]
        finally:
            storage.mark_dirty(self.name, view.touched)
            self.clear_cache()


class JournalDB(TinyDB):
    """TinyDB over a :class:`JournalStorage`, with :class:`JournalTable` tables."""

    table_class = JournalTable

    def __init__(self, storage: JournalStorage) -> None:
        super().__init__(storage=lambda: storage)

    def table(self, name: str, **kwargs: Any) -> Table:
        kwargs.setdefault("cache_size", 0)  # lookups are by id; no query cache to churn
        return super().table(name, **kwargs)
