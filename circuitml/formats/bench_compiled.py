"""The ``.bench`` reader's gate-to-AIG step compiled: structural hashing over the levelized gates in one pass.

Format: the ISCAS'85 / ISCAS'89 netlists (Brglez and Fujiwara, 1985; Brglez, Bryan and Kozminski, 1989), read by
:mod:`circuitml.formats.bench`, which parses and levelizes the gates and hands them here.

Each gate becomes AND nodes exactly as :class:`circuitml.aig.AIGBuilder` makes them — the same constant
propagation and trivial-AND rules, the same balanced trees for many-input AND/OR/XOR gates, the same order of
``and_`` calls, so the same node numbering — with the structural hash an open-addressing table of
``(rhs0, rhs1)`` keys instead of a Python dict. On a 125k-AND file the Python builder was a third of the read.
"""

from __future__ import annotations

import numpy as np

from circuitml.kernels import njit

__all__ = ["GATE_CODES", "build_gates"]

#: Gate type → code understood by :func:`build_gates`.
GATE_CODES = {
    "BUFF": 0,
    "BUF": 0,
    "NOT": 1,
    "CONST0": 2,
    "CONST1": 3,
    "AND": 4,
    "NAND": 5,
    "OR": 6,
    "NOR": 7,
    "XOR": 8,
    "XNOR": 9,
}


_GOLDEN = 0x9E3779B97F4A7C15 - (1 << 64)  # 2^64 / golden ratio, as a signed 64-bit integer


@njit(cache=True, nogil=True)
def _and(a: int, b: int, st: tuple) -> int:
    """``AIGBuilder.and_``: ``st`` = (ands, count, keys, vals, first literal of the AND nodes)."""
    ands, count, keys, vals, base = st
    if a > b:
        a, b = b, a
    if a == 0 or a == (b ^ 1):
        return 0
    if a == 1:
        return b
    if a == b:
        return a
    key = (a << 32) | b
    mask = keys.size - 1
    h = (key ^ (key >> 29)) * _GOLDEN  # multiplicative hashing spreads consecutive literals
    h = (h ^ (h >> 32)) & mask
    while keys[h] != -1:
        if keys[h] == key:
            return vals[h]
        h = (h + 1) & mask
    out = base + 2 * count[0]
    ands[count[0], 0] = a
    ands[count[0], 1] = b
    count[0] += 1
    keys[h] = key
    vals[h] = out
    return out


@njit(cache=True, nogil=True)
def _xor(a: int, b: int, st: tuple) -> int:
    """``AIGBuilder.xor_``: or(and(a, ~b), and(~a, b)), in that call order."""
    x = _and(a, b ^ 1, st)
    y = _and(a ^ 1, b, st)
    return _and(x ^ 1, y ^ 1, st) ^ 1


@njit(cache=True, nogil=True)
def _reduce(buf: np.ndarray, n: int, xor: bool, st: tuple) -> int:
    """``AIGBuilder.and_many`` / ``xor_many`` on ``buf[:n]``: pairwise rounds, an odd last literal carried up."""
    if n == 0:
        return 0 if xor else 1
    while n > 1:
        m = 0
        for i in range(0, n - 1, 2):
            buf[m] = _xor(buf[i], buf[i + 1], st) if xor else _and(buf[i], buf[i + 1], st)
            m += 1
        if n % 2:
            buf[m] = buf[n - 1]
            m += 1
        n = m
    return buf[0]


@njit(cache=True, nogil=True)
def build_gates(
    n_sig: int,
    pi_sig: np.ndarray,
    codes: np.ndarray,
    ptr: np.ndarray,
    fanin_sig: np.ndarray,
    gate_sig: np.ndarray,
    order: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """AND rows and the literal of every signal.

    ``pi_sig``: signal ids of the PIs (inputs, then flop outputs), literal ``2 (k + 1)``; gate ``g``: type
    ``codes[g]`` (:data:`GATE_CODES`), fanin signals ``fanin_sig[ptr[g]:ptr[g + 1]]``, output signal
    ``gate_sig[g]``; gates are built in ``order`` (fanins first). Returns ``ands`` ``int64[A, 2]`` (``rhs0 <
    rhs1``, as the builder stores them) and ``lit`` ``int64[n_sig]``.
    """
    lit = np.full(n_sig, -1, dtype=np.int64)
    for k in range(pi_sig.size):
        lit[pi_sig[k]] = 2 * (k + 1)
    cap = 1
    widest = 1
    for g in range(codes.size):
        f = ptr[g + 1] - ptr[g]
        widest = max(widest, f)
        if codes[g] >= 4:
            cap += (3 if codes[g] >= 8 else 1) * max(f - 1, 0)
    size = 1
    while size < 2 * cap:
        size *= 2
    st = (
        np.empty((cap, 2), dtype=np.int64),
        np.zeros(1, dtype=np.int64),
        np.full(size, -1, dtype=np.int64),
        np.empty(size, dtype=np.int64),
        2 * (pi_sig.size + 1),
    )
    buf = np.empty(widest, dtype=np.int64)
    for g in order:
        code = codes[g]
        n = ptr[g + 1] - ptr[g]
        for j in range(n):
            buf[j] = lit[fanin_sig[ptr[g] + j]]
        if code == 0:
            out = buf[0]
        elif code == 1:
            out = buf[0] ^ 1
        elif code == 2:
            out = 0
        elif code == 3:
            out = 1
        elif code <= 5:
            out = _reduce(buf, n, False, st) ^ (1 if code == 5 else 0)
        elif code <= 7:  # OR = NOT(AND of the complements)
            for j in range(n):
                buf[j] ^= 1
            out = _reduce(buf, n, False, st) ^ (0 if code == 7 else 1)
        else:
            out = _reduce(buf, n, True, st) ^ (1 if code == 9 else 0)
        lit[gate_sig[g]] = out
    return st[0][: st[1][0]].copy(), lit
