"""Atomic file writes: a reader never sees a half-written file, and an interrupted write leaves nothing behind."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

__all__ = ["atomic_write", "check_format"]


def atomic_write(path: str | os.PathLike, data: bytes | str, *, fsync: bool = True) -> None:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` through a temp file in the same folder + ``os.replace``.

    The temp file is created beside ``path`` so the rename stays on one file system (atomic on POSIX); it is
    removed if anything fails, ``KeyboardInterrupt`` included. ``fsync`` flushes it to disk before the rename,
    so a power cut leaves either the old or the new file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def check_format(
    obj: Any, where: object, *, name: str, version: int, error: type[Exception], version_key: str = "version"
) -> dict:
    """``obj`` if it is a JSON object whose ``format`` is ``name`` and whose ``version_key`` is ``version``.

    Every on-disk JSON record of the project (dataset manifest, QoR labels, encoder config, checkpoint state) starts
    with these two keys; a mismatch raises ``error`` naming ``where`` and the key, so an old or foreign file is
    refused in one line rather than half-read.
    """
    if not isinstance(obj, dict):
        raise error(f"{where}: expected a JSON object of format {name!r}, got {type(obj).__name__}")
    if obj.get("format") != name:
        raise error(f"{where}: key 'format': expected {name!r}, got {obj.get('format')!r}")
    if obj.get(version_key) != version:
        raise error(f"{where}: key {version_key!r}: expected {version}, got {obj.get(version_key)!r}")
    return obj
