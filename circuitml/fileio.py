"""Atomic file writes: a reader never sees a half-written file, and an interrupted write leaves nothing behind."""

from __future__ import annotations

import codecs
import errno
import functools
import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from circuitml.errors import CircuitFormatError, OutputError

__all__ = [
    "atomic_write",
    "check_format",
    "check_input",
    "check_text_prefix",
    "file_kind",
    "load_json",
    "read_bytes",
    "read_input",
    "read_input_text",
    "read_json",
    "safetensors_bytes",
    "JSON_MAX_DEPTH",
    "JSON_MAX_INT_DIGITS",
    "MAX_INPUT_BYTES",
    "PREFIX_BYTES",
    "UTF8_BOM",
]

# Bounds of every JSON file the project reads. Our own files nest < 10 deep and hold 64-bit integers (20
# digits); Python's json recurses per level (RecursionError near 1,000) and int() refuses > 4,300 digits, so
# without these a small hostile file ends in an undocumented exception or a long computation.
JSON_MAX_DEPTH = 200
JSON_MAX_INT_DIGITS = 40

# Bound of every circuit file read whole (AIGER, bench, Verilog): the largest public benchmarks (EPFL's
# ten-million-gate AIGs) are ~100 MB binary and a few hundred MB as ASCII or netlist Verilog; a larger input is
# refused from its size before anything is read, since the readers hold a few copies of it in memory.
MAX_INPUT_BYTES = 1 << 30
# What a reader's prefix check (read_input's ``check``) sees before the rest of a file is read: enough for any
# header, and for a binary file given to a text reader to show a NUL byte or invalid UTF-8.
PREFIX_BYTES = 1 << 16
UTF8_BOM = b"\xef\xbb\xbf"  # Windows editors start UTF-8 text with it
_GZIP_MAGIC = b"\x1f\x8b"


def _umask() -> int:
    # os.umask can only be read by setting it; done once, at import, before any thread writes files
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


_UMASK = _umask()


def atomic_write(path: str | os.PathLike, data: bytes | str, *, fsync: bool = True) -> None:
    """Write ``data`` (text is UTF-8 encoded) to ``path`` through a temp file in the same folder + ``os.replace``.

    The temp file is created beside ``path`` so the rename stays on one file system (atomic on POSIX); it is
    removed if anything fails, ``KeyboardInterrupt`` included. ``fsync`` flushes it to disk before the rename,
    so a power cut leaves either the old or the new file. The file gets the mode a plain ``open()`` would give
    (0666 minus the umask, usually 0644): ``mkstemp`` creates it 0600, which would hide shared datasets and
    encoders from colleagues.
    """
    path = Path(path)

    def cannot_write(exc: OSError) -> OutputError:  # names the file asked for, never our temp file
        return OutputError(f"{path}: cannot write ({(exc.strerror or str(exc)).lower()})")

    if not path.name or path.is_dir():  # "" and "." name the working folder
        raise OutputError(f"{path}: cannot write a file here, it is a directory")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"{path}: cannot write, a folder on its path is a file") from None
    except OSError as exc:
        raise cannot_write(exc) from None
    payload = data.encode("utf-8") if isinstance(data, str) else data
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise cannot_write(exc) from None
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a quota, a target that became a folder
        Path(tmp).unlink(missing_ok=True)
        raise cannot_write(exc) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def safetensors_bytes(tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> bytes:
    """``safetensors.torch.save(tensors, metadata)`` with the header's ``__metadata__`` keys in sorted order.

    safetensors keeps the metadata in a Rust ``HashMap`` with per-map random hashing, so with two or more keys the
    same tensors came out as different bytes from call to call (a checkpoint's recorded sha256 changed between
    two identical saves, seen in CI). The data section is unchanged and its offsets are relative to its start, so
    re-serialising only the header keeps the file valid.
    """
    from safetensors.torch import save

    raw = save(tensors, metadata=metadata)
    size = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + size])
    if "__metadata__" in header:
        header["__metadata__"] = dict(sorted(header["__metadata__"].items()))
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * (-len(text) % 8)  # safetensors pads the header to 8-byte alignment with spaces
    return len(text).to_bytes(8, "little") + text + raw[8 + size :]


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


_BRACKET = np.zeros(256, dtype=np.int8)
_BRACKET[[ord("["), ord("{")]] = 1
_BRACKET[[ord("]"), ord("}")]] = -1


def _nesting_depth(data: bytes) -> tuple[int, int]:
    """(deepest nesting, byte offset where it is reached) of JSON text, brackets inside strings ignored."""
    buf = np.frombuffer(data, dtype=np.uint8)
    quotes = np.flatnonzero(buf == ord('"'))
    # a quote is escaped when an odd run of backslashes precedes it (loop over run length, not over bytes)
    run = np.zeros(quotes.size, dtype=np.int64)
    alive = quotes > 0
    k = 1
    while alive.any():
        pos = quotes - k
        alive &= pos >= 0
        alive[alive] = buf[pos[alive]] == ord("\\")
        run += alive
        k += 1
    quotes = quotes[run % 2 == 0]
    brackets = np.flatnonzero(_BRACKET[buf])
    outside = np.searchsorted(quotes, brackets) % 2 == 0
    brackets = brackets[outside]
    if brackets.size == 0:
        return 0, 0
    depth = np.cumsum(_BRACKET[buf[brackets]], dtype=np.int64)
    at = int(np.argmax(depth))
    return int(depth[at]), int(brackets[at])


def load_json(
    data: bytes | str,
    where: object,
    *,
    error: type[Exception],
    max_depth: int = JSON_MAX_DEPTH,
    max_int_digits: int = JSON_MAX_INT_DIGITS,
) -> Any:
    """Parse JSON under the project's bounds; any problem is ``error`` naming ``where`` and the place.

    The one JSON loader of circuitml (manifests, circuit headers, encoder configs, checkpoints, SQuAD, QoR
    labels): it refuses non-UTF-8 bytes, nesting deeper than ``max_depth`` (checked before parsing),
    integers longer than ``max_int_digits`` digits, and the non-standard ``NaN``/``Infinity`` as well as
    floats that overflow to infinity (``1e400``).
    """
    if isinstance(data, str):
        raw = data.encode("utf-8", "surrogatepass")
    else:
        raw = bytes(data)
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise error(
                f"{where} (byte {exc.start}): expected UTF-8 JSON text, got undecodable bytes"
            ) from None
    depth, at = _nesting_depth(raw)
    if depth > max_depth:
        line = raw[:at].count(b"\n") + 1
        raise error(f"{where}:{line}: expected JSON nested at most {max_depth} deep, got {depth} levels")

    def parse_int(text: str) -> int:
        if len(text.lstrip("-")) > max_int_digits:
            raise _Bound(f"integers of at most {max_int_digits} digits, got one of {len(text)}")
        return int(text)

    def parse_float(text: str) -> float:
        value = float(text)
        if value in (float("inf"), float("-inf")):
            raise _Bound(f"a finite number, got {text[:20]}")
        return value

    def parse_constant(text: str) -> float:
        raise _Bound(f"standard JSON, got {text}")

    try:
        text = raw.decode("utf-8", "surrogatepass") if isinstance(data, str) else raw.decode("utf-8")
        return json.loads(text, parse_int=parse_int, parse_float=parse_float, parse_constant=parse_constant)
    except json.JSONDecodeError as exc:
        if exc.pos >= len(exc.doc.rstrip()) or exc.msg.startswith("Unterminated"):
            raise error(
                f"{where}:{exc.lineno}: expected JSON, complete (the text ends early: truncated?)"
            ) from None
        raise error(f"{where}:{exc.lineno}: expected JSON ({exc.msg} at column {exc.colno})") from None
    except _Bound as exc:
        raise error(f"{where}: expected {exc}") from None
    except RecursionError:  # a smaller recursion limit than the depth bound assumes
        raise error(f"{where}: expected JSON nested less deeply") from None


def read_json(
    path: str | os.PathLike, *, error: type[Exception], what: str = "JSON file", **bounds: int
) -> Any:
    """:func:`load_json` of a file; a missing or unreadable file is ``error`` too."""
    return load_json(read_bytes(path, error=error, what=what), Path(path), error=error, **bounds)


def read_bytes(path: str | os.PathLike, *, error: type[Exception], what: str = "file") -> bytes:
    """A file's bytes; missing, a directory or unreadable is ``error`` naming the path (one line)."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise error(f"{path}: expected a {what}, got a directory") from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what} ({exc.strerror or exc})") from None


class _Bound(Exception):
    """A bound of :func:`load_json` crossed inside the parser (re-raised as the caller's error)."""


def file_kind(mode: int) -> str:
    """What a ``st_mode`` that is not a regular file is, in words ("a FIFO (named pipe)", …)."""
    for test, kind in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO (named pipe)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def _refuse(st: os.stat_result, file: str, what: str, limit: int) -> None:
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", file)
    if not stat.S_ISREG(st.st_mode):
        raise CircuitFormatError(file, f"a regular {what}", got=file_kind(st.st_mode))
    if st.st_size > limit:
        raise CircuitFormatError(
            file, f"a {what} of at most {limit >> 20} MiB", got=f"{st.st_size / (1 << 20):.0f} MiB"
        )


def check_input(path: str | os.PathLike, *, what: str = "circuit file", limit: int = MAX_INPUT_BYTES) -> None:
    """Refuse, before reading, an input that is not a regular file (a FIFO would block, a device never ends)
    or is larger than ``limit`` bytes: :class:`~circuitml.errors.CircuitFormatError` naming the file.

    A missing file or dangling symlink raises ``FileNotFoundError``, a directory ``IsADirectoryError`` and a
    symlink loop ``OSError`` (``ELOOP``), each naming the path.
    """
    _refuse(os.stat(path), os.fspath(path), what, limit)


def read_input(
    path: str | os.PathLike,
    *,
    what: str = "circuit file",
    limit: int = MAX_INPUT_BYTES,
    check: Callable[[bytes, int], None] | None = None,
) -> bytes:
    """The bytes of an input file under the bounds of :func:`check_input`, checked on the open file itself.

    The open is non-blocking, so a FIFO is refused instead of waiting for a writer; a file that grows past
    ``limit`` while it is read is refused too, and so is gzip-compressed data (under any name).

    ``check(prefix, size)`` sees the first :data:`PREFIX_BYTES` bytes (all of a smaller file) and the file's
    size before the rest is read, and raises to refuse it: a wrong header or a binary file given to a text
    reader then costs 64 KiB of reading, not up to 1 GiB.
    """
    file = os.fspath(path)
    fd = os.open(file, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    try:
        st = os.fstat(fd)
        _refuse(st, file, what, limit)
        if st.st_size > PREFIX_BYTES:  # smaller files are read whole at once and checked below
            prefix = os.read(fd, PREFIX_BYTES)
            _check_prefix(prefix, st.st_size, file, what, check)
            os.lseek(fd, 0, os.SEEK_SET)
        chunk = max(st.st_size + 1, 1 << 16)
        parts = []
        total = 0
        while part := os.read(fd, chunk):
            parts.append(part)
            total += len(part)
            if total > limit:  # it grew while we read it
                raise CircuitFormatError(file, f"a {what} of at most {limit >> 20} MiB", got="a growing file")
    finally:
        os.close(fd)
    data = parts[0] if len(parts) == 1 else b"".join(parts)
    if st.st_size <= PREFIX_BYTES:  # not checked before the read
        _check_prefix(data[:PREFIX_BYTES], len(data), file, what, check)
    return data


def _check_prefix(
    prefix: bytes, size: int, file: str, what: str, check: Callable[[bytes, int], None] | None
) -> None:
    if prefix.startswith(_GZIP_MAGIC):  # no circuit format starts so; the readers would report garbage bytes
        raise CircuitFormatError(file, f"an uncompressed {what}", byte=0, got="gzip data (gunzip it first)")
    if check is not None:
        check(prefix, size)


def check_text_prefix(prefix: bytes, size: int, file: str, *, utf8: bool = True) -> None:
    """Refuse a binary file given to a text reader from its first bytes (a :func:`read_input` ``check``): a NUL
    byte, or (``utf8``) bytes that are not UTF-8, as :class:`CircuitFormatError` naming the line and byte.

    A leading byte-order mark is allowed and counted in the offsets; a multi-byte character cut by the end of
    the prefix is not an error (the rest of the file is decoded by the reader)."""
    bom = len(UTF8_BOM) if prefix.startswith(UTF8_BOM) else 0
    nul = prefix.find(b"\0", bom)
    end = nul if nul >= 0 else len(prefix)
    if utf8:
        try:
            codecs.getincrementaldecoder("utf-8")().decode(prefix[bom:end], final=nul >= 0 or end == size)
        except UnicodeDecodeError as exc:
            at = bom + exc.start
            raise CircuitFormatError(
                file, "UTF-8 text", line=prefix[:at].count(b"\n") + 1, byte=at, got="undecodable bytes"
            ) from None
    if nul >= 0:
        raise CircuitFormatError(
            file, "text", line=prefix[:nul].count(b"\n") + 1, byte=nul, got="a NUL byte (a binary file?)"
        )


def read_input_text(
    path: str | os.PathLike, *, what: str = "circuit file", limit: int = MAX_INPUT_BYTES
) -> str:
    """:func:`read_input` decoded as UTF-8 (undecodable bytes replaced), without a leading byte-order mark
    (Windows editors write one; Yosys and pyverilog reject it as an invalid token). A NUL byte in the first
    64 KiB refuses the file before the rest is read (:func:`check_text_prefix`): no source text holds one, a
    binary file does."""
    text = functools.partial(check_text_prefix, file=os.fspath(path), utf8=False)
    data = read_input(path, what=what, limit=limit, check=text)
    return data.removeprefix(UTF8_BOM).decode("utf-8", errors="replace")
