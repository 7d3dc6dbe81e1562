"""The single-process guard: an ``flock`` on a lock file next to the data files.

``flock`` locks belong to the open file description, so the kernel releases them
when the process dies, even after ``kill -9``; a stale lock file never blocks a
restart. The file holds the owner's pid only to make the refusal message useful.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os

from storage.atomic import FILE_MODE
from storage.base import StorageError, StoreLocked


class ProcessLock:
    """An exclusive, non-blocking, process-wide lock on ``path``."""

    def __init__(self, path: str, data_path: str) -> None:
        self.path = path
        self._data_path = data_path  # named in the refusal message
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise :class:`StoreLocked` naming the holder's pid."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        except OSError as exc:
            raise StorageError(f"cannot open lock file {self.path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            holder = _read_pid(fd)
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                who = f" (pid {holder})" if holder else ""
                raise StoreLocked(
                    f"another rc-instagram process is using {self._data_path}{who}; "
                    "stop it first, or point storage.path at a different file"
                ) from None
            raise StorageError(f"cannot lock {self.path}: {exc.strerror}") from exc
        os.fchmod(fd, FILE_MODE)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Release the lock (idempotent). The file stays; it is harmless when unlocked."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        # A read-only disk must not turn a clean shutdown into a crash.
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
        return int(text) if text else None
    except (OSError, ValueError):
        return None
