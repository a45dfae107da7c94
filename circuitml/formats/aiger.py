"""AIGER reader and writer, ASCII (``.aag``) and binary (``.aig``).

Format: A. Biere, "The AIGER And-Inverter Graph (AIG) Format, Version 20071012" and the AIGER 1.9 extension
(latch reset values; bad-state and invariant-constraint sections, read here as extra outputs). Latches are cut on
reading: latch outputs become pseudo-PIs after the inputs, latch next-state functions pseudo-POs after the outputs
(see :mod:`circuitml.aig`), and writing puts them back as latches.

The binary AND section is decoded without a Python loop: variable-length deltas are found from their terminator
bytes and summed with ``np.add.reduceat``. Every size in the header is checked against the bytes the file actually
has before anything is allocated, so a header claiming 10^12 nodes is refused at once.

With numba installed, a well-formed file is read header to symbol table in one compiled pass
(:mod:`circuitml.formats.aiger_compiled`); the section readers below read whatever that pass hands back (looser
spellings, and every malformed file: they name the line or byte).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from circuitml import kernels
from circuitml.aig import AIG, longest_path_levels
from circuitml.errors import CircuitFormatError
from circuitml.fileio import PREFIX_BYTES, atomic_write, read_input
from circuitml.formats.aiger_compiled import ASCII, FALLBACK, decode_varints, parse_aiger_bytes

__all__ = ["parse_aiger", "read_aiger", "aiger_bytes", "write_aiger"]

# AIGER literals are 2*M+1 and the reference tools keep them in unsigned 32-bit integers.
MAX_VARIABLES = (1 << 31) - 1
MAX_LITERAL = 2 * MAX_VARIABLES + 1
_MAX_DIGITS = len(str(MAX_LITERAL))  # longer digit strings are refused before int() sees them


class _Text:
    """Line cursor over the text parts of an AIGER file that knows line numbers and byte offsets."""

    def __init__(self, data: bytes, file: str) -> None:
        self.data = data
        self.file = file
        self.pos = 0
        self.line = 0

    def next_line(self, expected: str) -> str:
        if self.pos >= len(self.data):
            raise CircuitFormatError(self.file, expected, line=self.line + 1, got="end of file")
        end = self.data.find(b"\n", self.pos)
        if end < 0:
            end = len(self.data)
        raw = self.data[self.pos : end]
        self.pos = end + 1
        self.line += 1
        try:
            return raw.decode("ascii").rstrip("\r")
        except UnicodeDecodeError:
            raise CircuitFormatError(self.file, expected, line=self.line, got="non-ASCII bytes") from None

    def error(self, expected: str, got: str | None = None) -> CircuitFormatError:
        return CircuitFormatError(self.file, expected, line=self.line, got=got)


def _ints(text: _Text, line: str, count: int | tuple[int, int], what: str) -> list[int]:
    parts = line.split(" ")
    lo, hi = (count, count) if isinstance(count, int) else count
    if not lo <= len(parts) <= hi or not all(p.isdigit() and len(p) <= _MAX_DIGITS for p in parts):
        raise text.error(what if all(len(p) <= _MAX_DIGITS for p in parts) else f"{what} below 2^32", line)
    nums = [int(p) for p in parts]
    if max(nums) > MAX_LITERAL:
        raise text.error(f"{what} with literals below 2^32", line)
    return nums


def _parse_header(text: _Text) -> tuple[bool, list[int]]:
    line = text.next_line("AIGER header 'aag|aig M I L O A'")
    parts = line.split(" ")
    if len(parts) < 6 or parts[0] not in ("aag", "aig") or len(parts) > 10:
        raise text.error("AIGER header 'aag|aig M I L O A [B C J F]'", line)
    if not all(p.isdigit() for p in parts[1:]):
        raise text.error("non-negative integers in the header", line)
    if not all(len(p) <= 20 for p in parts[1:]):  # int() of longer strings is slow, then refused anyway
        raise text.error("header numbers of at most 20 digits", line)
    nums = [int(p) for p in parts[1:]] + [0] * (10 - len(parts))
    return parts[0] == "aig", nums


def _checked_header(text: _Text, size: int | None = None) -> tuple[bool, list[int]]:
    """The header, refused when it asks for properties we do not read or for more than a file of ``size`` bytes
    (default: the text's) can hold."""
    binary, nums = _parse_header(text)
    m, i, l, o, a, b, c, j, f = nums
    if j or f:
        raise text.error("no justice or fairness properties (J = F = 0)", f"J={j} F={f}")
    _check_sizes(text, binary, m, i, l, o, a, b, c, size)
    return binary, nums


def _check_sizes(
    text: _Text, binary: bool, m: int, i: int, l: int, o: int, a: int, b: int, c: int, size: int | None = None
) -> None:
    if m > MAX_VARIABLES:
        raise text.error(f"M at most {MAX_VARIABLES}", str(m))
    if binary and m != i + l + a:
        raise text.error(f"M = I + L + A = {i + l + a} in a binary AIGER header", str(m))
    if m < i + l + a:
        raise text.error(f"M >= I + L + A = {i + l + a}", str(m))
    # Smallest possible encodings: ASCII "2\n" per input, "2 2\n" per latch, "2\n" per output, "2 2 2\n" per AND;
    # binary: nothing per input, two bytes per output/latch line and per AND. A header promising more than the
    # file can hold is refused before any allocation.
    remaining = (len(text.data) if size is None else size) - text.pos
    need = (
        (0 if binary else 2 * i) + (2 if binary else 4) * l + 2 * (o + b + c) + (2 if binary else 6) * a - 1
    )
    if need > remaining:
        raise text.error(
            f"a body large enough for {i} inputs, {l} latches, {o} outputs, {a} ANDs", f"{remaining} bytes"
        )


def _decode_varints(data: bytes, start: int, count: int, file: str) -> tuple[np.ndarray, int]:
    """Decode ``count`` AIGER varints starting at byte ``start``; returns (values, end offset)."""
    if count == 0:
        return np.zeros(0, dtype=np.int64), start
    buf = np.frombuffer(data, dtype=np.uint8, offset=start)
    if kernels.HAVE_NUMBA:
        values, used = decode_varints(buf, count)
        if used >= 0:
            return values, start + used
        # fall through: the numpy decoder names the error
    ends = np.flatnonzero(buf < 128)
    if ends.size < count:
        raise CircuitFormatError(file, f"{count // 2} binary AND gates", byte=len(data), got="end of file")
    ends = ends[:count]
    starts = np.empty(count, dtype=np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    lengths = ends - starts + 1
    if lengths.max() > 9:
        bad = int(np.argmax(lengths > 9))
        raise CircuitFormatError(
            file, "a delta of at most 9 bytes", byte=start + int(starts[bad]), got="longer varint"
        )
    body = buf[: ends[-1] + 1].astype(np.uint64)
    offset_in_group = np.arange(body.size, dtype=np.int64) - np.repeat(starts, lengths)
    contrib = (body & np.uint64(127)) << (np.uint64(7) * offset_in_group.astype(np.uint64))
    values = np.add.reduceat(contrib, starts).astype(np.int64)
    return values, start + int(ends[-1]) + 1


def _encode_varints(values: np.ndarray) -> bytes:
    values = np.asarray(values, dtype=np.uint64)
    if values.size == 0:
        return b""
    lengths = np.ones(values.size, dtype=np.int64)
    for k in range(1, 10):
        lengths += values >= (np.uint64(1) << np.uint64(7 * k))
    total = int(lengths.sum())
    group_start = np.cumsum(lengths) - lengths
    j = np.arange(total, dtype=np.int64) - np.repeat(group_start, lengths)
    rep = np.repeat(values, lengths)
    out = (rep >> (np.uint64(7) * j.astype(np.uint64))) & np.uint64(127)
    more = j < np.repeat(lengths, lengths) - 1
    out |= more.astype(np.uint64) << np.uint64(7)
    return out.astype(np.uint8).tobytes()


_COMMENT_LINE = re.compile(rb"^c\r?$", re.MULTILINE)
_SYMBOL_LINE = re.compile(rf"^([ilobc])(\d{{1,{_MAX_DIGITS}}}) ([^\n]*[^\r\n])\r*$", re.MULTILINE | re.ASCII)
_BLANK_LINE = re.compile(r"^\r*$", re.MULTILINE)


def _parse_symbols(text: _Text, counts: dict[str, int]) -> tuple[dict[str, dict[int, str]], list[str]]:
    """Symbol table and comments. Well-formed tables take two regex scans and one light loop; anything else goes
    through the line-by-line reader, which names the offending line."""
    mark = _COMMENT_LINE.search(text.data, text.pos)
    body = text.data[text.pos : mark.start() if mark else len(text.data)]
    try:
        body_text = body.decode("ascii")
    except UnicodeDecodeError:
        return _parse_symbols_by_line(text, counts)
    # Well-formed when every non-blank line is a symbol line: the regex does the per-line work in C.
    found = _SYMBOL_LINE.findall(body_text)
    blank = len(_BLANK_LINE.findall(body_text))
    symbols: dict[str, dict[int, str]] = {k: {} for k in counts}
    if len(found) == body_text.count("\n") + 1 - blank:
        for kind, head, name in found:
            idx = int(head)
            if idx >= counts[kind]:
                return _parse_symbols_by_line(text, counts)
            symbols[kind][idx] = name
        comments = _comment_lines(text.data, mark.end() + 1) if mark else []
        text.pos = len(text.data)
        return symbols, comments
    return _parse_symbols_by_line(text, counts)


def _parse_symbols_by_line(
    text: _Text, counts: dict[str, int]
) -> tuple[dict[str, dict[int, str]], list[str]]:
    symbols: dict[str, dict[int, str]] = {k: {} for k in counts}
    comments: list[str] = []
    while text.pos < len(text.data):
        line = text.next_line("a symbol line or 'c'")
        if line == "c":
            comments = _comment_lines(text.data, text.pos)
            break
        if line == "":
            # Trailing blank lines are common in the wild; anything after them must still be well-formed.
            continue
        kind = line[0]
        head, sep, name = line[1:].partition(" ")
        if kind not in counts or not sep or not head.isdigit() or len(head) > _MAX_DIGITS or not name:
            raise text.error(
                "symbol 'i<k> name', 'l<k> name', 'o<k> name', 'b<k> name', 'c<k> name' or 'c'", line
            )
        idx = int(head)
        if idx >= counts[kind]:
            raise text.error(f"{kind} symbol index below {counts[kind]}", line)
        symbols[kind][idx] = name
    return symbols, comments


def _int_rows(text: _Text, count: int, width: int, what: str) -> np.ndarray:
    """Read ``count`` lines of ``width`` non-negative integers with one numpy parse; on a bad line, find and
    report it."""
    start_pos, start_line = text.pos, text.line
    if count == 0:
        return np.zeros((0, width), dtype=np.int64)
    # A well-formed line has at most ``width`` 10-digit numbers: look for the count-th newline in that window.
    window = np.frombuffer(text.data, dtype=np.uint8, offset=start_pos)[: count * (12 * width + 2)]
    newlines = np.flatnonzero(window == 10)
    if newlines.size >= count:
        end = start_pos + int(newlines[count - 1]) + 1
    elif newlines.size == count - 1 and start_pos + window.size == len(text.data):
        end = len(text.data)  # the last line may lack its newline
    else:
        end = -1
    if end > 0:
        raw = text.data[start_pos:end]
        arr = None
        if width == 1:
            # Only digits and newlines, no empty line: exactly one number per line (the output section).
            if not raw.translate(None, b"0123456789\n") and b"\n\n" not in raw and raw[:1] != b"\n":
                arr = np.fromstring(raw, dtype=np.int64, sep=" ")
        else:
            chunk = np.frombuffer(raw, dtype=np.uint8)
            # Tokens per line, vectorized: a token starts where a non-blank byte follows a blank (or the start).
            solid = (chunk != 32) & (chunk != 10) & (chunk != 13) & (chunk != 9)
            starts = solid.copy()
            starts[1:] &= ~solid[:-1]
            line_of = np.cumsum(chunk == 10) - (chunk == 10)
            per_line = np.bincount(line_of[starts], minlength=count)
            if per_line.size == count and (per_line == width).all():
                try:
                    arr = np.array(raw.split(), dtype=np.int64)
                except (ValueError, OverflowError):
                    arr = None
        if arr is not None and arr.size == width * count and (arr >= 0).all():
            text.pos = end
            text.line = start_line + count
            return arr.reshape(count, width)
    # slow path, only to name the offending line
    text.pos, text.line = start_pos, start_line
    rows = np.zeros((count, width), dtype=np.int64)
    for k in range(count):
        rows[k] = _ints(text, text.next_line(what), width, what)
    return rows


def _ascii_and_section(text: _Text, a: int) -> np.ndarray:
    """Read A lines of 'lhs rhs0 rhs1'."""
    return _int_rows(text, a, 3, "AND line 'lhs rhs0 rhs1'")


def parse_aiger(data: bytes, file: str | os.PathLike | None = None, name: str | None = None) -> AIG:
    """Parse AIGER bytes (ASCII or binary, chosen by the header) into an :class:`AIG`.

    Raises:
        CircuitFormatError: naming ``file``, the line or byte offset, and what was expected.
    """
    file = str(file) if file is not None else "<bytes>"
    data = bytes(data)
    if kernels.HAVE_NUMBA:
        aig = _parse_compiled(data, file, name)
        if aig is not None:
            return aig
    # The section readers: every spelling the format allows, and the error that names the line or byte.
    text = _Text(data, file)
    binary, (m, i, l, o, a, b, c, j, f) = _checked_header(text)

    inputs = np.zeros(0, dtype=np.int64)  # implicit in binary files: never materialized
    if not binary:
        inputs = _int_rows(text, i, 1, "input literal").reshape(-1)
    latch_lhs = np.zeros(l, dtype=np.int64)
    latch_next = np.zeros(l, dtype=np.int64)
    latch_init = np.zeros(l, dtype=np.int8)
    for k in range(l):
        what = "latch line 'next [init]'" if binary else "latch line 'lhs next [init]'"
        nums = _ints(text, text.next_line(what), (1, 2) if binary else (2, 3), what)
        lhs = 2 * (i + k + 1) if binary else nums.pop(0)
        latch_lhs[k], latch_next[k] = lhs, nums[0]
        if len(nums) == 2:
            init = nums[1]
            if init not in (0, 1, lhs):
                raise text.error(f"latch reset 0, 1 or {lhs}", str(init))
            latch_init[k] = -1 if init == lhs else init
    outputs = np.concatenate(
        [
            _int_rows(text, n, 1, what).reshape(-1)
            for what, n in (("output literal", o), ("bad-state literal", b), ("constraint literal", c))
        ]
    )

    if binary:
        deltas, text.pos = _decode_varints(text.data, text.pos, 2 * a, file)
        lhs = 2 * (i + l + 1 + np.arange(a, dtype=np.int64))
        d0, d1 = deltas[0::2], deltas[1::2]
        rhs0 = lhs - d0
        rhs1 = rhs0 - d1
        bad = (d0 <= 0) | (rhs1 < 0)
        if bad.any():
            k = int(np.argmax(bad))
            raise CircuitFormatError(file, f"AND {k}: deltas with lhs > rhs0 >= rhs1 >= 0", byte=text.pos)
        ands = np.stack([rhs0, rhs1], axis=1)
        # the AND block is binary; later text lines are counted from here
        text.line += 1
    else:
        rows = _ascii_and_section(text, a)
        lhs, ands = rows[:, 0], rows[:, 1:]

    latches = (latch_lhs, latch_next, latch_init)
    return _finish(text, name, binary, m, (i, l, o, b, c), inputs, latches, outputs, lhs, ands)


def _parse_compiled(data: bytes, file: str, name: str | None) -> AIG | None:
    """The AIG of a well-formed file from one compiled pass (:mod:`.aiger_compiled`), or ``None`` when the file
    needs the section readers (a looser spelling, or an error for them to name)."""
    kind, hdr, inputs, latches, outputs, lhs, ands, nsym, names, comment = parse_aiger_bytes(
        np.frombuffer(data, dtype=np.uint8)
    )
    if kind == FALLBACK:
        return None
    m, i, l = int(hdr[0]), int(hdr[1]), int(hdr[2])  # noqa: E741 - AIGER's own letters
    latch_next = latches[:, 1]
    if kind == ASCII:
        ands, outputs, latch_next = _canonicalize_ascii(
            file, m, inputs, latches[:, 0], latch_next, outputs, lhs, ands
        )
    pi_names = po_names = None
    if nsym:
        slots = names.tobytes().decode("ascii").split("\n")  # one slot per I, L, O, B, C, in that order
        pi_names = slots[: i + l]
        po_names = slots[i + l :] + [f"{nm}$next" if nm else "" for nm in slots[i : i + l]]
    return AIG(
        num_pis=i + l,
        ands=ands,
        pos=np.concatenate([outputs, latch_next]) if l else outputs,
        num_latches=l,
        latch_init=latches[:, 2].astype(np.int8),
        pi_names=pi_names,
        po_names=po_names,
        name=name or "",
        comments=[] if comment < 0 else _comment_lines(data, comment),
    )


def _comment_lines(data: bytes, start: int) -> list[str]:
    """The comment section from byte ``start`` (after the ``c`` line), one string per line."""
    lines = data[start:].decode("utf-8", errors="replace").split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def _finish(
    text: _Text,
    name: str | None,
    binary: bool,
    m: int,
    counts: tuple[int, int, int, int, int],
    inputs: np.ndarray,
    latches: tuple[np.ndarray, np.ndarray, np.ndarray],
    outputs: np.ndarray,
    lhs: np.ndarray,
    ands: np.ndarray,
) -> AIG:
    """Literal range check, symbol table, ASCII renumbering and the :class:`AIG`, once the sections are read.

    ``counts``: the header's ``I L O B C``; ``latches``: ``(lhs, next, init)`` per latch."""
    file = text.file
    i, l, o, b, c = counts  # noqa: E741 - AIGER's own letters
    latch_lhs, latch_next, latch_init = latches
    all_lits = np.concatenate([inputs, latch_lhs, latch_next, outputs, lhs, ands.reshape(-1)])
    if all_lits.size and all_lits.max() > 2 * m + 1:
        raise text.error(f"literals at most 2M+1 = {2 * m + 1}", str(int(all_lits.max())))

    symbols, comments = _parse_symbols(text, {"i": i, "l": l, "o": o, "b": b, "c": c})

    if not binary:
        ands, outputs, latch_next = _canonicalize_ascii(
            file, m, inputs, latch_lhs, latch_next, outputs, lhs, ands
        )

    def names(kind: str, n: int) -> list[str]:
        table = symbols[kind]
        if len(table) == n and list(table) == list(range(n)):  # the usual complete table, in order
            return list(table.values())
        return [table.get(k, "") for k in range(n)]

    has_names = any(symbols.values())
    pi_names = names("i", i) + names("l", l) if has_names else None
    po_names = None
    if has_names:
        latch_po = [f"{nm}$next" if nm else "" for nm in names("l", l)]
        po_names = names("o", o) + names("b", b) + names("c", c) + latch_po
    aig = AIG(
        num_pis=i + l,
        ands=ands,
        pos=np.concatenate([outputs, latch_next]),
        num_latches=l,
        latch_init=latch_init,
        pi_names=pi_names,
        po_names=po_names,
        name=name or "",
        comments=comments,
    )
    return aig


def _already_canonical(
    defined: np.ndarray, ands: np.ndarray, outputs: np.ndarray, latch_next: np.ndarray
) -> bool:
    """True when an ASCII file is numbered as a binary one would be: inputs, latches, ANDs defined as
    ``2, 4, 6, ...`` in file order, every AND reading only lower variables, every literal defined. What writers,
    ABC's included, produce; renumbering it is the identity."""
    top = 2 * defined.size + 1  # largest defined literal
    return (
        np.array_equal(defined, np.arange(2, top, 2, dtype=np.int64))
        and bool((ands < defined[defined.size - ands.shape[0] :, None]).all())
        and bool((outputs <= top).all() and (latch_next <= top).all())
    )


def _canonicalize_ascii(
    file: str,
    m: int,
    inputs: np.ndarray,
    latch_lhs: np.ndarray,
    latch_next: np.ndarray,
    outputs: np.ndarray,
    lhs: np.ndarray,
    ands: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Renumber an ASCII AIG (any variable order) into inputs, latches, then ANDs in topological order.

    Works on the defined variables only (sorted + searchsorted), so memory follows the file, not the header's M.
    """
    defined = np.concatenate([inputs, latch_lhs, lhs])
    if _already_canonical(defined, ands, outputs, latch_next):
        # what the renumbering below returns for such a file, without its sorts and searches (tested)
        return np.sort(ands, axis=1)[:, ::-1].copy(), outputs, latch_next
    if defined.size and ((defined & 1).any() or (defined < 2).any()):
        k = int(np.argmax((defined & 1) | (defined < 2)))
        raise CircuitFormatError(
            file, "inputs, latches and AND outputs defined by even literals >= 2", got=str(int(defined[k]))
        )
    i, l, a = inputs.size, latch_lhs.size, lhs.size
    var = np.concatenate([[0], defined >> 1])  # variable 0 is the constant
    sort = np.argsort(var, kind="stable")
    svar = var[sort]
    if (np.diff(svar) == 0).any():
        v = int(svar[1:][np.diff(svar) == 0][0])
        raise CircuitFormatError(file, "each variable defined once", got=f"variable {v} defined twice")

    def slot(lits: np.ndarray) -> np.ndarray:
        """Index into ``var`` (0 = constant, then inputs, latches, ANDs in file order) of each literal's variable."""
        v = lits >> 1
        pos = np.searchsorted(svar, v)
        ok = pos < svar.size
        ok[ok] = svar[pos[ok]] == v[ok]
        if not ok.all():
            bad = int(v[~ok][0])
            raise CircuitFormatError(file, f"a definition for used variable {bad}", got="undefined variable")
        return sort[pos]

    and_slots = slot(ands.reshape(-1)).reshape(-1, 2)
    first_and_slot = 1 + i + l
    fan = and_slots.reshape(-1) - first_and_slot
    keep = fan >= 0
    src = fan[keep]
    dst = np.repeat(np.arange(a), 2)[keep]
    if (src < dst).all():
        order = np.arange(a)  # already topological in file order: keep it, so round trips are exact
    else:
        try:
            lvl = longest_path_levels(a, src, dst)
        except ValueError:
            raise CircuitFormatError(file, "an acyclic AND graph", got="a combinational cycle") from None
        order = np.argsort(lvl, kind="stable")

    # new node id of every slot: constant 0, inputs and latches keep their order, ANDs follow `order`
    new_id = np.arange(1 + i + l + a, dtype=np.int64)
    new_id[first_and_slot + order] = first_and_slot + np.arange(a)

    def remap(lits: np.ndarray, slots: np.ndarray | None = None) -> np.ndarray:
        s = slot(lits) if slots is None else slots
        return 2 * new_id[s] + (lits & 1)

    new_ands = remap(ands[order].reshape(-1), and_slots[order].reshape(-1)).reshape(-1, 2)
    new_ands.sort(axis=1)
    new_ands = new_ands[:, ::-1].copy()  # AIGER convention rhs0 >= rhs1
    return new_ands, remap(outputs), remap(latch_next)


def read_aiger(path: str | os.PathLike) -> AIG:
    """Read an ``.aag`` or ``.aig`` file (format chosen by its header, not its suffix)."""
    file = os.fspath(path)
    # os-level reads and a string stem: pathlib and a buffered reader cost ~7 us, a third of a small file's parse

    def header(prefix: bytes, size: int) -> None:
        # a large file that is not AIGER (random bytes, a netlist with the wrong suffix) fails here, after 64 KiB;
        # a small one is read whole anyway, and the parser gives the same error (5 us saved per small file)
        if size > PREFIX_BYTES:
            _checked_header(_Text(prefix, file), size)

    data = read_input(file, what="AIGER file", check=header)
    base = os.path.basename(file)
    dot = base.rfind(".")
    stem = base[:dot] if 0 < dot < len(base) - 1 else base  # what Path.stem gives
    return parse_aiger(data, file=file, name=stem)


def aiger_bytes(aig: AIG, binary: bool = True, symbols: bool = True) -> bytes:
    """Serialize an :class:`AIG` as AIGER (binary by default). Cut latches are written back as latches."""
    i, l = aig.num_inputs, aig.num_latches
    o = aig.num_outputs
    a = aig.num_ands
    m = aig.num_pis + a
    out: list[bytes] = [f"{'aig' if binary else 'aag'} {m} {i} {l} {o} {a}\n".encode()]
    pos = aig.pos
    nxt = pos[o:]
    if not binary:
        out.append("".join(f"{2 * k}\n" for k in range(1, i + 1)).encode())
    latch_lines = []
    for k in range(l):
        lhs = 2 * (i + k + 1)
        init = int(aig.latch_init[k])
        fields = ([] if binary else [str(lhs)]) + [str(int(nxt[k]))]
        if init == 1:
            fields.append("1")
        elif init == -1:
            fields.append(str(lhs))
        latch_lines.append(" ".join(fields) + "\n")
    out.append("".join(latch_lines).encode())
    out.append("".join(f"{int(x)}\n" for x in pos[:o]).encode())
    if a:
        lhs = 2 * (aig.first_and + np.arange(a, dtype=np.int64))
        r = np.sort(aig.ands, axis=1)[:, ::-1]
        if binary:
            deltas = np.stack([lhs - r[:, 0], r[:, 0] - r[:, 1]], axis=1).reshape(-1)
            out.append(_encode_varints(deltas))
        else:
            rows = np.stack([lhs, r[:, 0], r[:, 1]], axis=1)
            out.append(("\n".join(" ".join(map(str, row)) for row in rows.tolist()) + "\n").encode())
    if symbols:
        sym = []
        if aig.pi_names is not None:
            sym += [f"i{k} {nm}" for k, nm in enumerate(aig.pi_names[:i]) if nm]
            sym += [f"l{k} {nm}" for k, nm in enumerate(aig.pi_names[i:]) if nm]
        if aig.po_names is not None:
            sym += [f"o{k} {nm}" for k, nm in enumerate(aig.po_names[:o]) if nm]
        if sym:
            out.append(("\n".join(sym) + "\n").encode())
    if aig.comments:
        out.append(("c\n" + "\n".join(aig.comments) + "\n").encode())
    return b"".join(out)


def write_aiger(aig: AIG, path: str | os.PathLike, binary: bool | None = None) -> None:
    """Write ``aig`` to ``path`` atomically; binary unless the suffix is ``.aag`` (or ``binary`` says otherwise)."""
    path = Path(path)
    if binary is None:
        binary = path.suffix.lower() != ".aag"
    atomic_write(path, aiger_bytes(aig, binary=binary), fsync=False)
