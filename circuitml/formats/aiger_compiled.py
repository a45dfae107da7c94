"""The AIGER reader's compiled path: a well-formed file, header to symbol table, in one pass over its bytes.

Format: A. Biere, "The AIGER And-Inverter Graph (AIG) Format, Version 20071012" and the AIGER 1.9 extension.
The pass accepts a strict subset of what :func:`circuitml.formats.aiger.parse_aiger`'s section readers accept —
single spaces, ``\\n`` line ends, numbers of at most 10 digits — and gives the same sections they give. At the
first byte outside that subset it returns :data:`FALLBACK` and the section readers parse the file again: they
accept the looser spellings, or name the line or byte that is wrong. So this module never raises and never
words an error; its only job is to make the common file cheap (on a small file the Python around the sections
was most of the time, and the symbol table a quarter of it).

Symbol names come back as one buffer, ``"\\n"``-separated, one slot per input, latch, output, bad-state and
constraint in that order (``""`` where a slot has no name; the last line naming a slot wins): one ``decode`` and
one ``split`` in C turn it into the name lists, with no Python loop over names.

Every kernel this pass calls lives in this file: numba's on-disk cache is keyed by the source file of the
function compiled, so a callee edited in another file would leave a stale inlined copy here.
"""

from __future__ import annotations

import numpy as np

from circuitml.kernels import njit

__all__ = ["FALLBACK", "ASCII", "BINARY", "decode_varints", "parse_aiger_bytes"]

FALLBACK, ASCII, BINARY = -1, 0, 1
_MAX_VARIABLES = (1 << 31) - 1
_MAX_LITERAL = 2 * _MAX_VARIABLES + 1
_NL, _CR, _SP, _C = 10, 13, 32, 99
_KINDS = (105, 108, 111, 98, 99)  # symbol kinds i l o b c, in slot order


@njit(cache=True, nogil=True)
def decode_varints(buf: np.ndarray, count: int) -> tuple[np.ndarray, int]:
    """``count`` AIGER varints from the start of ``buf``; returns the values and the bytes used, or ``-1`` bytes
    when the buffer ends early or a varint is longer than 9 bytes (the numpy decoder in :mod:`.aiger` then names the place)."""
    out = np.empty(count, dtype=np.int64)
    p = 0
    for k in range(count):
        value = 0
        shift = 0
        while True:
            if p >= buf.size or shift > 56:
                return out, -1
            b = buf[p]
            p += 1
            value |= np.int64(b & 127) << shift
            shift += 7
            if b < 128:
                break
        out[k] = value
    return out, p


@njit(cache=True, nogil=True)
def _numbers(buf: np.ndarray, pos: int, out: np.ndarray, lo: int, hi: int) -> tuple[int, int]:
    """``lo .. hi`` numbers of 1–10 digits separated by single spaces, then ``\\n``, into ``out``.

    Returns (how many, offset after the line), or (-1, pos) for anything else."""
    n = buf.size
    count = 0
    while True:
        value = 0
        digits = 0
        while pos < n and 48 <= buf[pos] <= 57:
            value = value * 10 + (buf[pos] - 48)
            digits += 1
            pos += 1
        if digits == 0 or digits > 10 or count == hi:
            return -1, pos
        out[count] = value
        count += 1
        if pos < n and buf[pos] == _SP:
            pos += 1
            continue
        if pos < n and buf[pos] == _NL and count >= lo:
            return count, pos + 1
        return -1, pos


@njit(cache=True, nogil=True)
def _header(buf: np.ndarray, hdr: np.ndarray) -> tuple[int, int]:
    """``aig|aag M I L O A [B C J F]`` into ``hdr`` (missing fields 0); returns (kind, offset after the line)."""
    if buf.size < 4 or buf[0] != 97 or buf[3] != _SP:  # "a.. "
        return FALLBACK, 0
    if buf[1] == 105 and buf[2] == 103:  # "ig"
        kind = BINARY
    elif buf[1] == 97 and buf[2] == 103:  # "ag"
        kind = ASCII
    else:
        return FALLBACK, 0
    count, pos = _numbers(buf, 4, hdr, 5, 9)
    return (kind if count > 0 else FALLBACK), pos


@njit(cache=True, nogil=True)
def _kind(byte: int) -> int:
    """Slot group of a symbol line's first byte: i l o b c → 0 .. 4, else -1."""
    for k in range(5):
        if byte == _KINDS[k]:
            return k
    return -1


@njit(cache=True, nogil=True)
def _scan_symbols(
    buf: np.ndarray, pos: int, counts: np.ndarray, base: np.ndarray, first: np.ndarray, last: np.ndarray
) -> tuple[int, int]:
    """Check the symbol lines from ``pos`` up to the comment line ``c`` as the line reader does; when ``first``
    has slots, record each name's byte range in its slot. Returns (symbol lines, comment start or -1), or -1
    symbol lines at anything the line reader refuses."""
    n = buf.size
    fill = first.size > 0
    nsym = 0
    p = pos
    while p < n:
        e = p
        while e < n and buf[e] != _NL:
            if buf[e] >= 128:  # the line reader decodes each line as ASCII
                return -1, -1
            e += 1
        q = e
        while q > p and buf[q - 1] == _CR:
            q -= 1
        if q == p:  # a blank line
            p = e + 1
            continue
        if q - p == 1 and buf[p] == _C:
            return nsym, e + 1
        kind = _kind(buf[p])
        d = p + 1
        idx = 0
        while d < q and 48 <= buf[d] <= 57:
            idx = idx * 10 + (buf[d] - 48)
            d += 1
        if kind < 0 or d == p + 1 or d - p - 1 > 10 or d + 1 >= q or buf[d] != _SP or idx >= counts[kind]:
            return -1, -1
        nsym += 1
        if fill:  # the last line naming a slot wins, as in the line reader's dict
            first[base[kind] + idx] = d + 1
            last[base[kind] + idx] = q
        p = e + 1
    return nsym, -1


@njit(cache=True, nogil=True)
def _symbols(buf: np.ndarray, pos: int, counts: np.ndarray) -> tuple[int, np.ndarray, int]:
    """The symbol table from ``pos``: (symbol lines, name buffer, comment start or -1); -1 symbol lines when the
    line reader must look at it."""
    none = np.zeros(0, dtype=np.int64)
    base = np.zeros(5, dtype=np.int64)
    for k in range(1, 5):
        base[k] = base[k - 1] + counts[k - 1]
    total = base[4] + counts[4]
    nsym, comment = _scan_symbols(buf, pos, counts, base, none, none)
    if nsym <= 0:
        return nsym, np.zeros(0, dtype=np.uint8), comment
    if total > 16 * buf.size + 4096:  # slots far beyond the file: leave such headers to the line reader
        return -1, np.zeros(0, dtype=np.uint8), comment
    first = np.full(total, -1, dtype=np.int64)
    last = np.full(total, -1, dtype=np.int64)
    _scan_symbols(buf, pos, counts, base, first, last)
    size = total - 1
    for s in range(total):
        if first[s] >= 0:
            size += last[s] - first[s]
    names = np.empty(size, dtype=np.uint8)
    w = 0
    for s in range(total):
        if s:
            names[w] = _NL
            w += 1
        for k in range(first[s], last[s]):
            names[w] = buf[k]
            w += 1
    return nsym, names, comment


@njit(cache=True, nogil=True)
def _above(arr: np.ndarray, top: int) -> bool:
    for k in range(arr.size):
        if arr[k] > top:
            return True
    return False


@njit(cache=True, nogil=True)
def parse_aiger_bytes(buf: np.ndarray) -> tuple:
    """One pass over a whole AIGER file.

    Returns ``(kind, header, inputs, latches, outputs, lhs, ands, symbol lines, names, comment start)``:
    ``kind`` is :data:`BINARY`, :data:`ASCII` or :data:`FALLBACK` (then nothing else is meaningful);
    ``header`` ``int64[9]`` = ``M I L O A B C J F``; ``inputs`` the ASCII input literals (empty when binary);
    ``latches`` ``int64[L, 3]`` = lhs, next, reset (0, 1, or -1 when undefined); ``outputs`` the output, bad-state
    and constraint literals; ``lhs`` / ``ands`` the AND rows (``rhs0 >= rhs1`` for binary files, file order for
    ASCII ones: the caller renumbers those).
    """
    hdr = np.zeros(9, dtype=np.int64)
    kind, pos = _header(buf, hdr)
    m, i, l, o, a, b, c, j, f = hdr[0], hdr[1], hdr[2], hdr[3], hdr[4], hdr[5], hdr[6], hdr[7], hdr[8]
    binary = kind == BINARY
    nout = o + b + c
    empty = np.zeros(0, dtype=np.int64)
    nothing = (FALLBACK, hdr, empty, np.zeros((0, 3), np.int64), empty, empty, np.zeros((0, 2), np.int64), 0,
               np.zeros(0, np.uint8), -1)  # fmt: skip
    if kind == FALLBACK or j or f or m > _MAX_VARIABLES or m < i + l + a or (binary and m != i + l + a):
        return nothing
    # The section readers' size check, before anything is allocated (same formula, see _check_sizes).
    need = (0 if binary else 2 * i) + (2 if binary else 4) * l + 2 * nout + (2 if binary else 6) * a - 1
    if need > buf.size - pos:
        return nothing
    row = np.zeros(3, dtype=np.int64)
    inputs = np.empty(0 if binary else i, dtype=np.int64)
    for k in range(inputs.size):
        got, pos = _numbers(buf, pos, row, 1, 1)
        if got < 0:
            return nothing
        inputs[k] = row[0]
    latches = np.zeros((l, 3), dtype=np.int64)
    for k in range(l):
        got, pos = _numbers(buf, pos, row, 1 if binary else 2, 2 if binary else 3)
        if got < 0:
            return nothing
        lhs_k = 2 * (i + k + 1) if binary else row[0]
        off = 0 if binary else 1
        init = row[off + 1] if got == off + 2 else 0
        if init != 0 and init != 1 and init != lhs_k:
            return nothing
        latches[k, 0], latches[k, 1] = lhs_k, row[off]
        latches[k, 2] = -1 if got == off + 2 and init == lhs_k else init
    outputs = np.empty(nout, dtype=np.int64)
    for k in range(nout):
        got, pos = _numbers(buf, pos, row, 1, 1)
        if got < 0:
            return nothing
        outputs[k] = row[0]
    ands = np.empty((a, 2), dtype=np.int64)
    if binary:
        lhs = empty
        deltas, used = decode_varints(buf[pos:], 2 * a)
        if used < 0:
            return nothing
        pos += used
        for g in range(a):
            rhs0 = 2 * (i + l + 1 + g) - deltas[2 * g]
            rhs1 = rhs0 - deltas[2 * g + 1]
            if deltas[2 * g] <= 0 or rhs1 < 0:
                return nothing
            ands[g, 0], ands[g, 1] = rhs0, rhs1
    else:
        lhs = np.empty(a, dtype=np.int64)
        for g in range(a):
            got, pos = _numbers(buf, pos, row, 3, 3)
            if got < 0:
                return nothing
            lhs[g], ands[g, 0], ands[g, 1] = row[0], row[1], row[2]
    # Every literal at most 2M + 1 (the section readers' range check).
    top = 2 * m + 1
    if (
        _above(inputs, top)
        or _above(outputs, top)
        or _above(lhs, top)
        or _above(latches.reshape(-1), top)
        or _above(ands.reshape(-1), top)
    ):
        return nothing
    counts = np.array([i, l, o, b, c], dtype=np.int64)
    nsym, names, comment = _symbols(buf, pos, counts)
    if nsym < 0:
        return nothing
    return kind, hdr, inputs, latches, outputs, lhs, ands, nsym, names, comment
