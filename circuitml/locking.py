"""An exclusive lock on a folder, so that two commands writing one dataset take turns instead of losing records.

``data build`` and ``data qor`` read a manifest, add records and write it back; two of them on one folder at
once would each write back only their own additions. :func:`folder_lock` holds an advisory lock on
``<folder>/.circuitml.lock`` (``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows) for the whole
read-modify-write. The kernel drops the lock when the holder exits, even on ``kill -9``, so a crashed run never
leaves the folder locked; the lock file itself stays and is harmless.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from circuitml.errors import DatasetError

__all__ = ["LOCK_NAME", "folder_lock"]

LOCK_NAME = ".circuitml.lock"

try:
    import fcntl

    def _try_lock(fd: int) -> bool:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            return False

    def _unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

except ImportError:  # Windows
    import msvcrt

    def _try_lock(fd: int) -> bool:
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            return True
        except OSError:
            return False

    def _unlock(fd: int) -> None:
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


@contextmanager
def folder_lock(
    folder: str | os.PathLike,
    *,
    timeout: float | None = None,
    on_wait: Callable[[], None] | None = None,
    poll: float = 0.1,
) -> Iterator[Path]:
    """Hold the exclusive lock of ``folder`` (created if missing) for the ``with`` block.

    Args:
        folder: the folder to lock.
        timeout: seconds to wait for another holder (``None``: wait as long as it takes).
        on_wait: called once when the lock is busy, before waiting (e.g. to print "waiting for …").
        poll: seconds between attempts.

    Raises:
        DatasetError: ``folder`` is a file, or the lock stayed busy for ``timeout`` seconds.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise DatasetError(f"{folder}: expected a folder, got a file")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        start = time.monotonic()
        waited = False
        while not _try_lock(fd):
            if not waited and on_wait is not None:
                on_wait()
            waited = True
            if timeout is not None and time.monotonic() - start > timeout:
                raise DatasetError(f"{folder}: another circuitml command kept it locked for {timeout:g} s")
            time.sleep(poll)
        try:
            yield path
        finally:
            _unlock(fd)
    finally:
        os.close(fd)
