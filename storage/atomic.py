"""Small file-system primitives: owner-only creation, atomic replace, directory fsync.

Every file the store creates is owner-only (0600) inside an owner-only directory
(0700) because it holds access tokens. ``atomic_write`` is the only way a whole file
is (re)written: temp file, fsync, rename, fsync of the directory, so a crash at any
instant leaves either the old or the new content under the final name, never a mix.
"""

from __future__ import annotations

import contextlib
import os

FILE_MODE = 0o600
DIR_MODE = 0o700


def ensure_private_dir(path: str) -> None:
    """Create ``path`` (and parents) owner-only if it does not exist yet.

    An existing directory is left as the operator set it up.
    """
    if not path or os.path.isdir(path):
        return
    os.makedirs(path, mode=DIR_MODE, exist_ok=True)
    # makedirs honours the umask; set the mode explicitly on the leaf we created.
    os.chmod(path, DIR_MODE)


def fsync_dir(path: str) -> None:
    """Make a rename or a file creation inside directory ``path`` durable."""
    fd = os.open(path or ".", os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until every byte is written (short writes happen on full disks)."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def atomic_write(path: str, data: bytes, *, sync_dir: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically and durably (mode 0600).

    The temp file has a fixed name next to the target: only one process ever writes
    (the lock file guarantees it), and a leftover from a crash is simply overwritten.
    """
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)
        write_all(fd, data)
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(tmp)
        raise
    os.close(fd)
    os.replace(tmp, path)
    if sync_dir:
        fsync_dir(os.path.dirname(path))


def remove_stale_temp(path: str) -> None:
    """Delete a temp file left behind by a crash during ``atomic_write``."""
    _unlink_quietly(path + ".tmp")


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
