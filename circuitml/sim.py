"""Bit-parallel simulation of AIGs: node values, signal probabilities, truth tables and equivalence checks.

Every node's value over 64 input patterns is one ``uint64`` word (the classic bit-parallel simulation of logic
networks, e.g. Mishchenko et al., "FRAIGs: A Unifying Representation for Logic Synthesis and Verification",
2005). AND nodes are grouped by level with one stable sort; each level is evaluated for all its nodes and all
words at once: one gather of the two fanin rows, an xor with the complement masks, one ``and``
(``v = (v[f0] ^ c0) & (v[f1] ^ c1)``). Nodes are stored level-sorted so each level writes one contiguous block.
Large problems are cut into word chunks that two threads evaluate side by side (numpy releases the GIL in
``take`` and ufuncs), which also bounds memory for million-node AIGs.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from circuitml.aig import AIG

__all__ = [
    "Simulator",
    "simulate_words",
    "simulate_outputs",
    "output_words",
    "random_pi_words",
    "random_simulation",
    "signal_probability",
    "popcount",
    "truth_tables",
    "projection_words",
    "evaluate",
    "pattern_bits",
    "EquivalenceResult",
    "equivalent",
    "MAX_EXHAUSTIVE_INPUTS",
]

MAX_EXHAUSTIVE_INPUTS = 16
_ALL = np.uint64(0xFFFFFFFFFFFFFFFF)
# Budget for one chunk's node-value buffer: keeps a million-node AIG within a few hundred MB and the working
# set of small AIGs cache-friendly.
_CHUNK_BYTES = 128 << 20
_MIN_PARALLEL_WORK = 1 << 20  # node-words below which a second thread costs more than it gains


if hasattr(np, "bitwise_count"):

    def popcount(words: np.ndarray) -> np.ndarray:
        """Number of set bits of each ``uint64`` word (``uint8``, same shape)."""
        return np.bitwise_count(words)

else:  # numpy < 2.0
    _BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)

    def popcount(words: np.ndarray) -> np.ndarray:
        """Number of set bits of each ``uint64`` word (``uint8``, same shape)."""
        as_bytes = np.ascontiguousarray(words).view(np.uint8).reshape(*words.shape, 8)
        return _BYTE_POPCOUNT[as_bytes].sum(axis=-1, dtype=np.uint8)


def _compl_mask(literals: np.ndarray) -> np.ndarray:
    """All-ones word where a literal is complemented, zero elsewhere."""
    return (-(literals & 1)).astype(np.uint64)


class Simulator:
    """A compiled level-by-level simulation plan for one AIG, reusable over many pattern sets.

    Internally nodes live in *slot* order: constant and PIs first (slots ``0 .. num_pis``, as in the AIG), then
    the AND nodes sorted by level, so level ``l`` fills the contiguous slots ``bounds[l] .. bounds[l+1]``.

    Args:
        aig: the circuit (latches cut, so it is combinational).
        threads: worker threads over word chunks (default: up to 2, the cores the project targets).
    """

    def __init__(self, aig: AIG, threads: int | None = None) -> None:
        self.aig = aig
        self.num_nodes = aig.num_nodes
        self.base = aig.first_and
        and_level = aig.levels()[self.base :] if aig.num_ands else np.zeros(0, dtype=np.int64)
        order = np.argsort(and_level, kind="stable")
        slot_of = np.arange(self.num_nodes, dtype=np.int64)
        slot_of[self.base + order] = self.base + np.arange(aig.num_ands, dtype=np.int64)
        self.slot_of = slot_of  # node id -> slot
        self.node_of = np.empty_like(slot_of)  # slot -> node id
        self.node_of[slot_of] = np.arange(self.num_nodes, dtype=np.int64)
        fanins = aig.ands[order]
        self.f0 = slot_of[fanins[:, 0] >> 1]
        self.f1 = slot_of[fanins[:, 1] >> 1]
        self.c0 = _compl_mask(fanins[:, 0])
        self.c1 = _compl_mask(fanins[:, 1])
        counts = np.bincount(and_level[order]) if aig.num_ands else np.zeros(0, dtype=np.int64)
        bounds = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        filled = np.flatnonzero(counts)  # AND levels start at 1, and every level up to the depth is non-empty
        starts, ends = bounds[filled], bounds[filled + 1]
        # Per level: whether any fanin is complemented (skip the xor pass when none is).
        any_c0 = np.logical_or.reduceat(self.c0 != 0, starts) if starts.size else starts
        any_c1 = np.logical_or.reduceat(self.c1 != 0, starts) if starts.size else starts
        self.levels = [
            (int(s), int(e), bool(a0), bool(a1))
            for s, e, a0, a1 in zip(starts, ends, any_c0, any_c1, strict=True)
        ]
        self.max_width = max((e - s for s, e, _, _ in self.levels), default=0)
        self.threads = threads if threads is not None else min(2, os.cpu_count() or 1)

    # ------------------------------------------------------------------ core
    def run_slots(self, pi_words: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
        """Simulate one block of words; returns node values in slot order, ``uint64 [num_nodes, W]``."""
        w = pi_words.shape[1]
        vals = out if out is not None else np.empty((self.num_nodes, w), dtype=np.uint64)
        vals[0] = 0
        vals[1 : self.base] = pi_words
        if not self.levels:
            return vals
        ta = np.empty((self.max_width, w), dtype=np.uint64)
        tb = np.empty((self.max_width, w), dtype=np.uint64)
        base, f0, f1, c0, c1 = self.base, self.f0, self.f1, self.c0, self.c1
        take, xor, band = np.take, np.bitwise_xor, np.bitwise_and
        for s, e, a0, a1 in self.levels:
            n = e - s
            a = ta[:n]
            b = tb[:n]
            take(vals, f0[s:e], axis=0, out=a)
            take(vals, f1[s:e], axis=0, out=b)
            if a0:
                xor(a, c0[s:e, None], out=a)
            if a1:
                xor(b, c1[s:e, None], out=b)
            band(a, b, out=vals[base + s : base + e])
        return vals

    def chunks(self, num_words: int) -> list[tuple[int, int]]:
        """Word ranges processed as one block each (bounded memory per block)."""
        per = max(1, _CHUNK_BYTES // (8 * max(1, self.num_nodes)))
        if self.threads > 1 and num_words * self.num_nodes >= _MIN_PARALLEL_WORK:
            per = min(per, math.ceil(num_words / self.threads))
        return [(i, min(num_words, i + per)) for i in range(0, num_words, per)]

    def map_chunks(self, pi_words: np.ndarray, consume) -> list:
        """Run ``consume(w0, w1, slot_values)`` on every word chunk, chunks spread over the worker threads."""
        pi_words = np.ascontiguousarray(pi_words, dtype=np.uint64)
        spans = self.chunks(pi_words.shape[1])

        def work(span: tuple[int, int]):
            w0, w1 = span
            return consume(w0, w1, self.run_slots(np.ascontiguousarray(pi_words[:, w0:w1])))

        if self.threads > 1 and len(spans) > 1:
            with ThreadPoolExecutor(self.threads) as pool:
                return list(pool.map(work, spans))
        return [work(s) for s in spans]

    # ------------------------------------------------------------------ public views
    def node_words(self, pi_words: np.ndarray) -> np.ndarray:
        """``uint64 [num_nodes, W]`` value of every node (node-id order)."""
        pi_words = self._check(pi_words)
        out = np.empty((self.num_nodes, pi_words.shape[1]), dtype=np.uint64)

        def keep(w0: int, w1: int, vals: np.ndarray) -> None:
            out[:, w0:w1] = vals[self.slot_of]

        self.map_chunks(pi_words, keep)
        return out

    def output_words(self, pi_words: np.ndarray) -> np.ndarray:
        """``uint64 [num_pos, W]`` value of every output literal (complements applied)."""
        pi_words = self._check(pi_words)
        pos = self.aig.pos
        rows = self.slot_of[pos >> 1]
        mask = _compl_mask(pos)[:, None]
        out = np.empty((pos.size, pi_words.shape[1]), dtype=np.uint64)

        def keep(w0: int, w1: int, vals: np.ndarray) -> None:
            out[:, w0:w1] = vals[rows] ^ mask

        self.map_chunks(pi_words, keep)
        return out

    def ones_count(self, pi_words: np.ndarray, num_patterns: int | None = None) -> np.ndarray:
        """``int64 [num_nodes]``: per node, how many of the first ``num_patterns`` patterns set it to 1."""
        pi_words = self._check(pi_words)
        total_bits = pi_words.shape[1] * 64
        num_patterns = total_bits if num_patterns is None else num_patterns
        if not 0 <= num_patterns <= total_bits:
            raise ValueError(f"num_patterns={num_patterns} but only {total_bits} patterns given")
        last_word, tail = divmod(num_patterns, 64)

        def count(w0: int, w1: int, vals: np.ndarray) -> np.ndarray:
            full = min(w1, last_word) - w0
            c = popcount(vals[:, :full]).sum(axis=1, dtype=np.int64) if full > 0 else 0
            if tail and w0 <= last_word < w1:
                c = c + popcount(vals[:, last_word - w0] & np.uint64((1 << tail) - 1)).astype(np.int64)
            return c

        total = sum(self.map_chunks(pi_words, count), np.zeros(self.num_nodes, dtype=np.int64))
        return total[self.slot_of]

    def _check(self, pi_words: np.ndarray) -> np.ndarray:
        pi_words = np.asarray(pi_words)
        if pi_words.ndim != 2 or pi_words.shape[0] != self.aig.num_pis:
            raise ValueError(f"pi_words must be uint64 [num_pis={self.aig.num_pis}, W], got {pi_words.shape}")
        if pi_words.dtype != np.uint64:
            raise ValueError(f"pi_words must have dtype uint64, got {pi_words.dtype}")
        return pi_words


# ---------------------------------------------------------------------- functional API
def simulate_words(aig: AIG, pi_words: np.ndarray) -> np.ndarray:
    """Value of every node over the patterns in ``pi_words``.

    Args:
        aig: the circuit.
        pi_words: ``uint64 [num_pis, W]``; bit ``j`` of word ``w`` of row ``i`` is PI ``i`` in pattern
            ``64 * w + j``.

    Returns:
        ``uint64 [num_nodes, W]`` in node-id order (row 0 is the constant, all zeros).
    """
    return Simulator(aig).node_words(pi_words)


def output_words(aig: AIG, node_words: np.ndarray) -> np.ndarray:
    """``uint64 [num_pos, W]`` output values from node values (complemented outputs inverted)."""
    return node_words[aig.pos >> 1] ^ _compl_mask(aig.pos)[:, None]


def simulate_outputs(aig: AIG, pi_words: np.ndarray) -> np.ndarray:
    """``uint64 [num_pos, W]`` output values over ``pi_words``, without keeping every node's values."""
    return Simulator(aig).output_words(pi_words)


# Bound of the input words drawn at once; node values are simulated in chunks, the inputs are not.
MAX_PI_WORD_BYTES = 1 << 30


def random_pi_words(num_pis: int, num_patterns: int = 4096, seed: int = 0) -> np.ndarray:
    """``uint64 [num_pis, ceil(num_patterns / 64)]`` uniformly random input patterns (reproducible by seed).

    Raises:
        ConfigError: a negative seed, or more patterns than fit in :data:`MAX_PI_WORD_BYTES` of input words.
    """
    from circuitml.errors import ConfigError

    if isinstance(num_patterns, bool) or not isinstance(num_patterns, (int, np.integer)):
        raise ConfigError(f"--patterns: expected an integer number of patterns, got {num_patterns!r}")
    if seed < 0:  # numpy's SeedSequence raises a bare ValueError
        raise ConfigError(f"--seed: expected a non-negative integer, got {seed}")
    most = MAX_PI_WORD_BYTES // (8 * max(num_pis, 1)) * 64
    if not 0 < num_patterns <= most:
        raise ConfigError(
            f"--patterns: expected 1 to {most} patterns for {num_pis} inputs ({MAX_PI_WORD_BYTES >> 30} GiB "
            f"of input words), got {num_patterns}"
        )
    num_words = max(1, math.ceil(num_patterns / 64))
    rng = np.random.default_rng(seed)
    raw = rng.bytes(8 * num_pis * num_words)
    return np.frombuffer(raw, dtype=np.uint64).reshape(num_pis, num_words).copy()


def random_simulation(aig: AIG, num_patterns: int = 4096, seed: int = 0) -> np.ndarray:
    """Node values (``uint64 [num_nodes, ceil(num_patterns / 64)]``) under uniformly random inputs."""
    return simulate_words(aig, random_pi_words(aig.num_pis, num_patterns, seed))


def signal_probability(aig: AIG, num_patterns: int = 4096, seed: int = 0) -> np.ndarray:
    """``float32 [num_nodes]``: fraction of ``num_patterns`` uniformly random input patterns that set each node to 1.

    The probability label of DeepGate (Li et al., DAC 2022) and of MGVGA's probability task, estimated by
    bit-parallel random simulation; exact for a node when all its patterns were enumerated.
    """
    words = random_pi_words(aig.num_pis, num_patterns, seed)
    ones = Simulator(aig).ones_count(words, num_patterns)
    return (ones / num_patterns).astype(np.float32)


def projection_words(num_vars: int) -> np.ndarray:
    """``uint64 [num_vars, ceil(2^num_vars / 64)]``: the truth tables of the projection functions ``x_i``.

    Pattern ``m`` (bit ``m % 64`` of word ``m // 64``) assigns ``x_i = (m >> i) & 1``: within a word the standard
    constants ``0xAAAA…``, ``0xCCCC…``, ``0xF0F0…``, …; for ``i >= 6`` whole words alternate in runs of ``2^(i-6)``.
    """
    num_words = max(1, 1 << max(0, num_vars - 6))
    out = np.zeros((num_vars, num_words), dtype=np.uint64)
    within = [
        0xAAAAAAAAAAAAAAAA,
        0xCCCCCCCCCCCCCCCC,
        0xF0F0F0F0F0F0F0F0,
        0xFF00FF00FF00FF00,
        0xFFFF0000FFFF0000,
        0xFFFFFFFF00000000,
    ]
    word_ids = np.arange(num_words, dtype=np.int64)
    for i in range(num_vars):
        if i < 6:
            out[i] = np.uint64(within[i])
        else:
            out[i] = np.where((word_ids >> (i - 6)) & 1, _ALL, np.uint64(0))
    return out


def truth_tables(aig: AIG) -> np.ndarray:
    """Exhaustive truth table of every output: ``uint64 [num_pos, ceil(2^n / 64)]`` for ``n = num_pis <= 16``.

    Bit ``m`` is the output under the input assignment ``x_i = (m >> i) & 1`` (PI 0 is the least significant
    variable, the kitty / ABC convention); for ``n < 6`` the bits above ``2^n`` are zero.
    """
    n = aig.num_pis
    if n > MAX_EXHAUSTIVE_INPUTS:
        raise ValueError(f"truth tables need at most {MAX_EXHAUSTIVE_INPUTS} inputs, the AIG has {n}")
    tables = simulate_outputs(aig, projection_words(n))
    if n < 6:
        tables &= np.uint64((1 << (1 << n)) - 1)
    return tables


def pattern_bits(words: np.ndarray, pattern: int) -> np.ndarray:
    """``uint8 [rows]``: bit ``pattern`` of each row of a ``uint64 [rows, W]`` word array (one assignment)."""
    w, b = divmod(int(pattern), 64)
    return ((words[:, w] >> np.uint64(b)) & np.uint64(1)).astype(np.uint8)


def evaluate(aig: AIG, assignment: np.ndarray) -> np.ndarray:
    """``uint8 [num_pos]`` outputs under one input assignment (``num_pis`` zeros and ones)."""
    bits = np.asarray(assignment, dtype=np.uint64).reshape(-1)
    if bits.size != aig.num_pis:
        raise ValueError(f"assignment has {bits.size} values for {aig.num_pis} PIs")
    return pattern_bits(simulate_outputs(aig, (bits & np.uint64(1))[:, None]), 0)


# ---------------------------------------------------------------------- equivalence
@dataclass
class EquivalenceResult:
    """Outcome of :func:`equivalent`.

    Attributes:
        equal: ``False`` when a difference was found or the interfaces differ. ``True`` means *proved* for the
            ``exhaustive`` and ``cec`` methods, and only *no difference found* for ``sim`` (see ``proved``).
        method: the method that decided (``sim``, ``exhaustive``, ``cec`` or ``interface``).
        proved: whether ``equal`` is a proof rather than the absence of a counterexample.
        counterexample: ``uint8 [num_pis]`` input assignment on which the circuits differ, when one is known.
        output: index of an output that differs under ``counterexample``.
        reason: a one-line human explanation.
    """

    equal: bool
    method: str
    proved: bool = False
    counterexample: np.ndarray | None = None
    output: int | None = None
    reason: str = ""
    stats: dict = field(default_factory=dict)

    def __bool__(self) -> bool:
        return self.equal


def _first_difference(
    out_a: np.ndarray, out_b: np.ndarray, pi_words: np.ndarray, num_patterns: int
) -> tuple[np.ndarray, int] | None:
    """The first pattern (< num_patterns) on which two output-word arrays differ, as (assignment, output)."""
    diff = out_a ^ out_b
    last_word, tail = divmod(num_patterns, 64)
    if tail:
        diff[:, last_word] &= np.uint64((1 << tail) - 1)
        diff = diff[:, : last_word + 1]
    else:
        diff = diff[:, :last_word]
    words_hit = np.flatnonzero(diff.any(axis=0))
    if words_hit.size == 0:
        return None
    w = int(words_hit[0])
    col = diff[:, w]
    # Lowest set bit over all outputs of that word.
    low = int(np.bitwise_or.reduce(col))
    bit = (low & -low).bit_length() - 1
    pattern = 64 * w + bit
    output = int(np.flatnonzero((col >> np.uint64(bit)) & np.uint64(1))[0])
    return pattern_bits(pi_words, pattern), output


def _interface_mismatch(a: AIG, b: AIG) -> str | None:
    if a.num_pis != b.num_pis:
        return f"different input counts: {a.num_pis} vs {b.num_pis} (latch pseudo-PIs included)"
    if a.num_pos != b.num_pos:
        return f"different output counts: {a.num_pos} vs {b.num_pos} (latch pseudo-POs included)"
    return None


def _by_simulation(a: AIG, b: AIG, pi_words: np.ndarray, num_patterns: int, method: str) -> EquivalenceResult:
    proved = method == "exhaustive"
    hit = _first_difference(
        Simulator(a).output_words(pi_words), Simulator(b).output_words(pi_words), pi_words, num_patterns
    )
    if hit is None:
        what = "all" if proved else "random"
        return EquivalenceResult(
            True, method, proved=proved, reason=f"equal on {what} {num_patterns} patterns"
        )
    cex, output = hit
    return EquivalenceResult(
        False, method, proved=True, counterexample=cex, output=output, reason="outputs differ"
    )


def _to_aigverse(aig: AIG):
    """The AIG as an ``aigverse.networks.Aig`` through mockturtle's index-list encoding (same literal numbering)."""
    from aigverse.networks import AigIndexList

    pairs = np.sort(aig.ands, axis=1)  # an index list reads lit0 > lit1 as XOR, so keep AND pairs ascending
    raw = np.concatenate([[aig.num_pis, aig.num_pos, aig.num_ands], pairs.reshape(-1), aig.pos]).astype(
        np.int64
    )
    return AigIndexList(raw.tolist()).to_aig()


def _by_cec(a: AIG, b: AIG, conflict_limit: int, num_patterns: int, seed: int) -> EquivalenceResult:
    """SAT-based combinational equivalence check (mockturtle's miter + SAT, through aigverse)."""
    try:
        from aigverse.algorithms import equivalence_checking
    except ImportError as exc:
        raise ImportError('method="cec" needs aigverse: pip install "circuitml[aigverse]"') from exc
    verdict = equivalence_checking(_to_aigverse(a), _to_aigverse(b), conflict_limit=conflict_limit)
    if verdict is None:
        return EquivalenceResult(
            False,
            "cec",
            proved=False,
            reason=f"SAT solver gave up after {conflict_limit} conflicts (undecided)",
        )
    if verdict:
        return EquivalenceResult(
            True, "cec", proved=True, reason="proved equivalent by SAT (miter unsatisfiable)"
        )
    # The solver does not hand back its model: look for a witness by simulation so callers get one when it is easy.
    words = random_pi_words(a.num_pis, num_patterns, seed)
    sim = _by_simulation(a, b, words, num_patterns, "sim")
    return EquivalenceResult(
        False,
        "cec",
        proved=True,
        counterexample=sim.counterexample,
        output=sim.output,
        reason="proved different by SAT (miter satisfiable)",
    )


def equivalent(
    a: AIG,
    b: AIG,
    method: str = "auto",
    *,
    num_patterns: int = 4096,
    seed: int = 0,
    conflict_limit: int = 0,
) -> EquivalenceResult:
    """Whether two combinational AIGs compute the same outputs, inputs and outputs matched by position.

    Sequential circuits are compared with their latches cut, so pseudo-PIs/POs are compared like any other port.

    Args:
        a, b: the circuits.
        method: ``"sim"`` random simulation (can only refute); ``"exhaustive"`` all ``2^n`` patterns (a proof,
            ``n <= 16``); ``"cec"`` SAT-based proof (aigverse/mockturtle, needs the ``aigverse`` extra);
            ``"auto"`` exhaustive when ``n <= 16``, else simulation and, when that finds no difference, ``cec``
            if aigverse is installed.
        num_patterns, seed: random patterns for ``sim`` (and for a witness after ``cec`` refutes).
        conflict_limit: SAT conflict limit for ``cec`` (0: none).
    """
    mismatch = _interface_mismatch(a, b)
    if mismatch is not None:
        return EquivalenceResult(False, "interface", proved=True, reason=mismatch)
    n = a.num_pis
    if method == "auto":
        if n <= MAX_EXHAUSTIVE_INPUTS:
            method = "exhaustive"
        else:
            res = _by_simulation(a, b, random_pi_words(n, num_patterns, seed), num_patterns, "sim")
            if not res.equal:
                return res
            try:
                import aigverse.algorithms  # noqa: F401
            except ImportError:
                return res
            return _by_cec(a, b, conflict_limit, num_patterns, seed)
    if method == "sim":
        return _by_simulation(a, b, random_pi_words(n, num_patterns, seed), num_patterns, "sim")
    if method == "exhaustive":
        if n > MAX_EXHAUSTIVE_INPUTS:
            raise ValueError(f"exhaustive equivalence needs at most {MAX_EXHAUSTIVE_INPUTS} inputs, got {n}")
        return _by_simulation(a, b, projection_words(n), 1 << n, "exhaustive")
    if method == "cec":
        return _by_cec(a, b, conflict_limit, num_patterns, seed)
    raise ValueError(f"unknown equivalence method {method!r}: expected auto, sim, exhaustive or cec")
