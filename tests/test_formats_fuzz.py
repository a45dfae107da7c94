"""Property tests: mutated and truncated files make every reader raise CircuitFormatError, and nothing else."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from circuitml.aig import AIGBuilder
from circuitml.errors import CircuitFormatError
from circuitml.formats import aiger_bytes, bench_text, parse_aiger, parse_bench


def _sample_circuit(seed: int = 0):
    rng = np.random.default_rng(seed)
    b = AIGBuilder("fuzz")
    lits = [b.add_pi(f"x{i}") for i in range(6)]
    for _ in range(40):
        i, j = rng.integers(0, len(lits), 2)
        op = rng.integers(0, 3)
        a, c = lits[i] ^ int(rng.integers(0, 2)), lits[j] ^ int(rng.integers(0, 2))
        lits.append([b.and_, b.or_, b.xor_][op](a, c))
    for k in range(4):
        b.add_po(lits[-1 - k], f"y{k}")
    aig = b.build(num_latches=1)
    aig.comments = ["fuzz sample"]
    return aig


SAMPLE = _sample_circuit()
SEEDS = {
    "aig": aiger_bytes(SAMPLE, binary=True),
    "aag": aiger_bytes(SAMPLE, binary=False),
    "bench": bench_text(SAMPLE).encode(),
}


@pytest.fixture(autouse=True, scope="module")
def _compiled_reader() -> None:
    """Compile the readers' kernels before the timed property tests (seconds on a cold numba cache)."""
    for kind in ("aig", "aag"):
        parse_aiger(SEEDS[kind], file=f"warm.{kind}")
    parse_bench(SEEDS["bench"].decode(), file="warm.bench")


mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10**6), st.integers(0, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.just(0)),
    st.tuples(st.just("delete"), st.integers(0, 10**6), st.integers(1, 40)),
    st.tuples(st.just("insert"), st.integers(0, 10**6), st.integers(0, 255)),
)


def _mutate(data: bytes, ops) -> bytes:
    buf = bytearray(data)
    for kind, pos, arg in ops:
        if not buf:
            break
        pos %= len(buf)
        if kind == "flip":
            buf[pos] = arg
        elif kind == "truncate":
            del buf[pos:]
        elif kind == "delete":
            del buf[pos : pos + arg]
        else:
            buf.insert(pos, arg)
    return bytes(buf)


def _parse(kind: str, data: bytes):
    if kind == "bench":
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            return None  # read_bench reports undecodable bytes itself; parse_bench takes text
        return parse_bench(text, file="f.bench")
    return parse_aiger(data, file=f"f.{kind}")


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(sorted(SEEDS)), ops=st.lists(mutation, min_size=1, max_size=4))
def test_mutated_files_raise_only_format_errors(kind, ops) -> None:
    data = _mutate(SEEDS[kind], ops)
    try:
        aig = _parse(kind, data)
    except CircuitFormatError as exc:
        assert "\n" not in str(exc) and str(exc).startswith("f.")
        return
    if aig is not None:
        aig.validate()  # whatever parses must be a well-formed AIG


@settings(max_examples=60, deadline=2000)
@given(kind=st.sampled_from(sorted(SEEDS)), cut=st.integers(0, 10**6))
def test_truncated_files_raise_only_format_errors(kind, cut) -> None:
    data = SEEDS[kind]
    data = data[: cut % len(data)]
    try:
        aig = _parse(kind, data)
    except CircuitFormatError:
        return
    if aig is not None:
        aig.validate()


@settings(max_examples=100, deadline=2000)
@given(data=st.binary(max_size=300))
def test_random_bytes_raise_only_format_errors(data) -> None:
    for header in (b"aig 5 2 0 1 3\n", b"aag 5 2 0 1 3\n", b""):
        try:
            parse_aiger(header + data, file="r.aig")
        except CircuitFormatError:
            pass


_symbol_line = st.one_of(
    st.tuples(
        st.sampled_from("ilobcxI "),
        st.text("0129x", min_size=0, max_size=3),
        st.sampled_from([" ", "  ", "", "\t"]),
        st.text("ab \r\t\x7f", max_size=4),
    ).map(lambda t: "".join(t)),
    st.sampled_from(["", "\r", "\r\r"]),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_symbol_line, max_size=8), st.booleans())
def test_fast_symbol_path_agrees_with_the_line_reader(lines, trailing_newline) -> None:
    from circuitml.formats.aiger import _parse_symbols, _parse_symbols_by_line, _Text

    body = ("\n".join(lines) + ("\n" if trailing_newline else "")).encode()
    counts = {"i": 3, "l": 1, "o": 2, "b": 0, "c": 1}

    def run(reader):
        text = _Text(body, "t.aag")
        try:
            return reader(text, counts)
        except CircuitFormatError as exc:
            return ("error", str(exc))

    assert run(_parse_symbols) == run(_parse_symbols_by_line)


def _latch_free_sample(seed: int):
    rng = np.random.default_rng(seed)
    b = AIGBuilder("fast")
    lits = [b.add_pi(f"x{i}") for i in range(4)]
    for _ in range(25):
        i, j = rng.integers(0, len(lits), 2)
        lits.append(b.and_(lits[i] ^ int(rng.integers(0, 2)), lits[j] ^ int(rng.integers(0, 2))))
    for k in range(3):
        b.add_po(lits[-1 - k] ^ (k & 1), f"y{k}")
    b.add_po(0 if seed % 2 else 1, "const")
    return b.build()


LATCH_FREE = [aiger_bytes(_latch_free_sample(s), binary=True, symbols=s % 3 != 0) for s in range(3)]


def _outcome(data: bytes):
    try:
        aig = parse_aiger(data, file="f.aig", name="n")
    except CircuitFormatError as exc:
        return "error", str(exc)
    return "ok", (
        aig.num_pis,
        aig.num_latches,
        aig.ands.tolist(),
        aig.pos.tolist(),
        aig.latch_init.tolist(),
        aig.pi_names,
        aig.po_names,
        aig.comments,
        aig.name,
    )


def _both_readers(data: bytes):
    """(compiled pass, section readers) outcomes of ``parse_aiger`` on ``data``."""
    from circuitml import kernels

    fast = _outcome(data)
    kernels.HAVE_NUMBA = False
    try:
        slow = _outcome(data)
    finally:
        kernels.HAVE_NUMBA = True
    return fast, slow


# Symbol tables the compiled pass must read as the line reader does: gaps, a repeated slot (the last wins), blank
# and \r-ended lines, names with spaces, tabs and \r inside, a comment line "c\r".
_QUIRKY_SYMBOLS = b"o2 c\ni1 x y\n\r\ni1 second\r\r\n\no0 a\tb\rc\nl0 q\nc\r\nfirst comment\n\xff\xfe\n"
_BARE = SAMPLE.copy()
_BARE.comments = []  # symbol lines appended to it are symbol lines, not comments
_BARE.latch_init = np.array([-1], dtype=np.int8)  # an undefined reset: written as the latch's own literal
COMPILED_SEEDS = [
    *LATCH_FREE,
    SEEDS["aig"],
    SEEDS["aag"],
    aiger_bytes(_BARE, binary=True, symbols=False) + _QUIRKY_SYMBOLS,
    aiger_bytes(_BARE, binary=False, symbols=False) + _QUIRKY_SYMBOLS,
]


def test_the_compiled_pass_reads_the_seeds_itself() -> None:
    """The seeds are in the compiled pass's subset (else the agreement test below would compare the section
    readers with themselves)."""
    from circuitml import kernels
    from circuitml.formats.aiger_compiled import FALLBACK, parse_aiger_bytes

    if not kernels.HAVE_NUMBA:
        return
    for data in COMPILED_SEEDS:
        assert parse_aiger_bytes(np.frombuffer(data, dtype=np.uint8))[0] != FALLBACK
    fast, slow = _both_readers(COMPILED_SEEDS[-1])
    assert fast == slow and fast[0] == "ok"
    pi_names, po_names, comments = fast[1][5:8]
    assert pi_names == ["", "second", "", "", "", "q"]
    assert po_names == ["a\tb\rc", "", "c", "q$next"]
    assert comments == ["first comment", "\ufffd\ufffd"]


@settings(max_examples=200, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, len(COMPILED_SEEDS) - 1),
    ops=st.lists(mutation, min_size=0, max_size=3),
)
def test_compiled_reader_agrees_with_the_section_readers(seed, ops) -> None:
    """The one-pass compiled reader (binary and ASCII, latches, symbol table, comments) gives what the section
    readers give: the same AIG, or (it hands every file outside its strict subset back to them) the same error."""
    from circuitml import kernels

    if not kernels.HAVE_NUMBA:
        return
    data = _mutate(COMPILED_SEEDS[seed], ops) if ops else COMPILED_SEEDS[seed]
    fast, slow = _both_readers(data)
    assert fast == slow


@settings(max_examples=200, deadline=None)
@given(st.lists(_symbol_line, max_size=8), st.booleans(), st.booleans())
def test_compiled_symbol_table_agrees_with_the_line_reader(lines, trailing_newline, ascii_file) -> None:
    from circuitml import kernels

    if not kernels.HAVE_NUMBA:
        return
    body = aiger_bytes(_BARE, binary=not ascii_file, symbols=False)
    data = body + ("\n".join(lines) + ("\n" if trailing_newline else "")).encode()
    fast, slow = _both_readers(data)
    assert fast == slow


# Every gate type, many-input gates (balanced trees), constants, trivial ANDs, a flop, gates out of order.
RICH_BENCH = b"""# rich
INPUT(a)
INPUT(b)
INPUT(c)
OUTPUT(y1)
OUTPUT(y2)
OUTPUT(q)
y2 = XNOR(n4, n1, n12)
n1 = NAND(a, b, c)
n2 = OR(n1, a)
n3 = NOR(a, b, c, n1, n2)
n4 = XOR(a, b, c, n3)
n5 = XNOR(n4, n1)
n6 = BUFF(n5)
n7 = NOT(n6)
k0 = gnd
k1 = vdd
n8 = AND(n7, k1, a, a)
n9 = XOR(a, a)
n12 = AND(n9, k0, n8)
q = DFF(n8)
n10 = AND(q, n2, n7)
n11 = CONST1(a)
y1 = OR(n10, n11, n5, n4)
"""
BENCH_SEEDS = [SEEDS["bench"], RICH_BENCH]


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, len(BENCH_SEEDS) - 1), ops=st.lists(mutation, min_size=0, max_size=3))
def test_compiled_bench_builder_agrees_with_the_aig_builder(seed, ops) -> None:
    """The compiled gate-to-AIG pass builds what the AIGBuilder loop builds (same nodes, numbering, names) on
    mutated ``.bench`` files, or the file fails before either runs with the same error."""
    from circuitml import kernels

    if not kernels.HAVE_NUMBA:
        return
    data = _mutate(BENCH_SEEDS[seed], ops) if ops else BENCH_SEEDS[seed]

    def outcome():
        try:
            aig = _parse("bench", data)
        except CircuitFormatError as exc:
            return "error", str(exc)
        if aig is None:
            return None
        return "ok", (aig.num_pis, aig.num_latches, aig.ands.tolist(), aig.pos.tolist(), aig.pi_names,
                      aig.po_names)  # fmt: skip

    fast = outcome()
    kernels.HAVE_NUMBA = False
    try:
        slow = outcome()
    finally:
        kernels.HAVE_NUMBA = True
    assert fast == slow
    if not ops:
        assert fast[0] == "ok" and len(fast[1][2]) > 5  # the seeds themselves build (and hash) AND nodes


_bench_line = st.one_of(
    st.text("INPUTOinputo()=, ab01vdgnCONST\t", max_size=24),
    st.tuples(
        st.sampled_from(["INPUT", "output", "x", "OUTPUT", "Input"]),
        st.sampled_from(["", " ", "\t"]),
        st.sampled_from(["=", "(", " = "]),
        st.sampled_from(["AND", "vdd", "GND", "CONST1", "const0", "Vdd", "INPUT", "("]),
        st.sampled_from(["", "()", "(a)", "(a, b)", "( )", ")"]),
    ).map("".join),
)


@settings(max_examples=400, deadline=None)
@given(_bench_line)
def test_bench_gate_lines_match_no_other_line_form(line) -> None:
    """What lets the reader try the gate regex first: a line it reads as a gate of a non-constant type matches
    neither the INPUT/OUTPUT nor the constant form, so the old order (IO, constant, gate) gives the same reading."""
    from circuitml.formats.bench import _CONST, _CONST_NAMES, _GATE, _IO

    m = _GATE.match(line)
    if m is not None and m.group(2) not in _CONST_NAMES:
        assert _IO.match(line) is None and _CONST.match(line) is None


ASCII_SEEDS = [SEEDS["aag"], COMPILED_SEEDS[-1], aiger_bytes(_latch_free_sample(1), binary=False)]


# Near misses of the shortcut: an output / a latch reading an undefined variable (M > I + L + A), an AND reading a
# later AND, inputs out of order, a row with rhs0 < rhs1.
ASCII_NEAR_MISSES = [
    b"aag 3 1 0 1 1\n2\n7\n4 2 3\n",
    b"aag 3 1 1 1 0\n2\n4 7\n4\n",
    b"aag 3 1 0 1 2\n2\n6\n4 6 3\n6 2 3\n",
    b"aag 3 2 0 1 1\n4\n2\n6\n6 2 5\n",
    b"aag 3 2 0 1 1\n2\n4\n7\n6 2 5\n",
]


@settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, len(ASCII_SEEDS) + len(ASCII_NEAR_MISSES) - 1),
    ops=st.lists(mutation, min_size=0, max_size=3),
)
def test_canonical_ascii_shortcut_equals_the_renumbering(seed, ops) -> None:
    """An ASCII file already numbered like a binary one skips the renumbering: same AIG (or error) as with it."""
    import circuitml.formats.aiger as aiger_mod

    seeds = ASCII_SEEDS + ASCII_NEAR_MISSES
    data = _mutate(seeds[seed], ops) if ops else seeds[seed]
    shortcut = _outcome(data)
    original = aiger_mod._already_canonical
    aiger_mod._already_canonical = lambda *args: False
    try:
        renumbered = _outcome(data)
    finally:
        aiger_mod._already_canonical = original
    assert shortcut == renumbered
    if not ops and seed < len(ASCII_SEEDS):
        assert original(*_ascii_sections(data))  # the seeds take the shortcut


def _ascii_sections(data: bytes):
    """(defined, ands, outputs, latch next) of a well-formed ASCII file, as the compiled pass reads them."""
    from circuitml.formats.aiger_compiled import parse_aiger_bytes

    _, _, inputs, latches, outputs, lhs, ands, *_ = parse_aiger_bytes(np.frombuffer(data, dtype=np.uint8))
    return np.concatenate([inputs, latches[:, 0], lhs]), ands, outputs, latches[:, 1]
