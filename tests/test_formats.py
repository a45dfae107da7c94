"""AIGER and bench readers/writers on small hand-written files: conventions, round trips, one-line errors."""

from __future__ import annotations

import numpy as np
import pytest

from circuitml.aig import AIG, AIGBuilder
from circuitml.errors import CircuitFormatError
from circuitml.formats import (
    aiger_bytes,
    bench_text,
    parse_aiger,
    parse_bench,
    read_aiger,
    read_circuit,
    write_aiger,
    write_circuit,
)

HALF_ADDER_SHUFFLED = b"""aag 7 2 0 2 3
2
4
6
12
6 13 15
12 2 4
14 3 5
i0 x
i1 y
o0 s
o1 c
c
half adder
"""


def _eval(aig: AIG, inputs: list[int]) -> list[int]:
    """Naive evaluator: one node at a time (reference for the tests)."""
    val = [0] * aig.num_nodes
    for k, bit in enumerate(inputs):
        val[1 + k] = bit
    for k, (a, b) in enumerate(aig.ands.tolist()):
        val[aig.first_and + k] = (val[a >> 1] ^ (a & 1)) & (val[b >> 1] ^ (b & 1))
    return [val[p >> 1] ^ (p & 1) for p in aig.pos.tolist()]


def test_ascii_any_variable_order_is_renumbered_topologically() -> None:
    aig = parse_aiger(HALF_ADDER_SHUFFLED)
    aig.validate()
    assert (aig.num_pis, aig.num_ands, aig.num_pos) == (2, 3, 2)
    assert aig.pi_names == ["x", "y"] and aig.po_names == ["s", "c"]
    assert aig.comments == ["half adder"]
    for x in (0, 1):
        for y in (0, 1):
            assert _eval(aig, [x, y]) == [x ^ y, x & y]


def test_latch_is_cut_and_written_back() -> None:
    toggle = b"aag 1 0 1 2 0\n2 3\n2\n3\n"
    aig = parse_aiger(toggle)
    assert (aig.num_pis, aig.num_latches, aig.num_pos) == (1, 1, 3)
    assert aig.pos.tolist() == [2, 3, 3]  # two outputs, then the latch's next state
    assert aiger_bytes(aig, binary=False) == toggle
    assert parse_aiger(aiger_bytes(aig)).same_structure(aig)


def test_latch_reset_values() -> None:
    aig = parse_aiger(b"aag 3 0 3 0 0\n2 2 0\n4 4 1\n6 6 6\n")
    assert aig.latch_init.tolist() == [0, 1, -1]
    again = parse_aiger(aiger_bytes(aig))
    assert again.latch_init.tolist() == [0, 1, -1]


def test_binary_round_trip_of_built_circuit() -> None:
    b = AIGBuilder("mult2")
    a = [b.add_pi(f"a{i}") for i in range(2)]
    c = [b.add_pi(f"b{i}") for i in range(2)]
    p0 = b.and_(a[0], c[0])
    t1, t2 = b.and_(a[1], c[0]), b.and_(a[0], c[1])
    p1 = b.xor_(t1, t2)
    carry = b.and_(t1, t2)
    t3 = b.and_(a[1], c[1])
    for k, lit in enumerate([p0, p1, b.xor_(t3, carry), b.and_(t3, carry)]):
        b.add_po(lit, f"p{k}")
    aig = b.build()
    for binary in (True, False):
        back = parse_aiger(aiger_bytes(aig, binary=binary))
        assert back.same_structure(aig)
        assert back.pi_names == aig.pi_names and back.po_names == aig.po_names
    for x in range(4):
        for y in range(4):
            bits = _eval(aig, [x & 1, x >> 1, y & 1, y >> 1])
            assert sum(bit << k for k, bit in enumerate(bits)) == x * y


def test_large_delta_varints_round_trip() -> None:
    # AND fanins far below their output need multi-byte deltas
    n = 300
    ands = np.array([[2, 2 * n]] + [[2 * (n + 1 + k) - 1, 3] for k in range(1, 50)], dtype=np.int64)
    aig = AIG(num_pis=n, ands=ands, pos=[2 * (n + 50)])
    aig.validate()
    assert parse_aiger(aiger_bytes(aig)).same_structure(aig)


def test_bench_any_gate_order_and_gate_types() -> None:
    text = """# all gate kinds, defined out of order
INPUT(a)
INPUT(b)
INPUT(c)
OUTPUT(y)
OUTPUT(z)
y = XNOR(t, c)
t = NAND(a, b, c)
u = NOR(a, b)
v = OR(u, t)
w = XOR(a, b, c)
z = AND(v, w)
"""
    aig = parse_bench(text)
    for x in range(8):
        a, b_, c = x & 1, (x >> 1) & 1, (x >> 2) & 1
        t = 1 - (a & b_ & c)
        u = 1 - (a | b_)
        y = 1 - (t ^ c)
        z = (u | t) & (a ^ b_ ^ c)
        assert _eval(aig, [a, b_, c]) == [y, z]


def test_bench_dff_cut_into_pseudo_io_and_written_back() -> None:
    text = "INPUT(a)\nOUTPUT(q)\nq = DFF(d)\nd = XOR(a, q)\n"
    aig = parse_bench(text, name="t")
    assert (aig.num_inputs, aig.num_latches, aig.num_outputs) == (1, 1, 1)
    back = parse_bench(bench_text(aig))
    assert back.num_latches == 1 and back.num_ands == aig.num_ands
    for a in (0, 1):
        for q in (0, 1):
            assert _eval(back, [a, q]) == _eval(aig, [a, q])


@pytest.mark.parametrize("suffix", [".aag", ".aig", ".bench"])
def test_write_read_circuit_files(tmp_path, suffix) -> None:
    aig = parse_aiger(HALF_ADDER_SHUFFLED)
    path = tmp_path / f"ha{suffix}"
    write_circuit(aig, path)
    back = read_circuit(path)
    assert (back.num_pis, back.num_pos, back.num_ands) == (2, 2, 3)
    for x in range(4):
        assert _eval(back, [x & 1, x >> 1]) == _eval(aig, [x & 1, x >> 1])
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temp file left behind


@pytest.mark.parametrize(
    ("data", "where", "what"),
    [
        (b"aig 5 1 0 1\n", ":1", "AIGER header"),
        (b"aag 3 2 0 1 1\n2\n4\n6\n6 2 8\n", ":5", "literals at most"),
        (b"aag 3 2 0 1 1\n2\n4\n6\n6 2 4 4\n", ":5", "AND line"),
        (b"aag 3 2 0 1 1\n2\n4\n6\n", ":1", "body large enough"),
        (b"aig 1000000000000 1000000000000 0 0 0\n", ":1", "M at most"),
        (b"aig 10000000 0 0 0 10000000\n", ":1", "body large enough"),
        (b"aig 3 1 0 1 2\n2\n", ":1", "body large enough"),
        (b"aag 2 1 0 1 1\n2\n4\n4 4 2\n", "", "acyclic"),
        (b"aag 2 1 0 1 1\n2\n4\n4 2 6\n", ":4", "literals at most"),
        (b"aag 1 0 1 0 0\n2 3 5\n", ":2", "latch reset"),
        (b"aag 1 1 0 0 0\n2\nx0 foo\n", ":3", "symbol"),
    ],
)
def test_malformed_aiger_names_the_place(data, where, what) -> None:
    with pytest.raises(CircuitFormatError) as err:
        parse_aiger(data, file="bad.aag")
    msg = str(err.value)
    assert msg.startswith("bad.aag" + where), msg
    assert what in msg
    assert "\n" not in msg


def test_binary_truncated_and_section_reports_byte() -> None:
    aig = parse_aiger(HALF_ADDER_SHUFFLED)
    aig.comments = []
    good = aiger_bytes(aig, symbols=False)
    with pytest.raises(CircuitFormatError, match=r"byte \d+"):
        parse_aiger(good[:-2], file="t.aig")


@pytest.mark.parametrize(
    ("text", "line", "what"),
    [
        ("INPUT(a)\nOUTPUT(y)\ny = FOO(a)\n", 3, "a gate among"),
        ("INPUT(a)\nOUTPUT(y)\ny = NOT(a, a)\n", 3, "exactly 1"),
        ("INPUT(a)\nOUTPUT(y)\ny = AND(a, b)\n", 3, "definition of signal 'b'"),
        ("INPUT(a)\nINPUT(a)\n", 2, "defined once"),
        ("INPUT(a)\nOUTPUT(y)\ny = AND(a,\n", 3, "'INPUT(x)'"),
        ("INPUT(a)\nOUTPUT(q)\n", 2, "definition of output 'q'"),
        ("", 1, "got 'an empty file'"),
        (" \n\t\n", 1, "got 'an empty file'"),
    ],
)
def test_malformed_bench_names_the_line(text, line, what) -> None:
    with pytest.raises(CircuitFormatError) as err:
        parse_bench(text, file="bad.bench")
    assert str(err.value).startswith(f"bad.bench:{line}:"), str(err.value)
    assert what in str(err.value)


def test_empty_circuit_bench_round_trips_with_its_header() -> None:
    back = parse_bench(bench_text(AIGBuilder("void").build()))
    assert (back.num_pis, back.num_pos, back.num_ands) == (0, 0, 0)


def test_bench_combinational_cycle_is_refused() -> None:
    with pytest.raises(CircuitFormatError, match="cycle"):
        parse_bench("INPUT(a)\nOUTPUT(y)\ny = AND(a, z)\nz = AND(a, y)\n")


def test_unknown_suffix_and_missing_file(tmp_path) -> None:
    p = tmp_path / "x.blif"
    p.write_text("")
    with pytest.raises(CircuitFormatError, match="ending in one of"):
        read_circuit(p)
    with pytest.raises(FileNotFoundError):
        read_circuit(tmp_path / "missing.aig")


@pytest.mark.parametrize("filename", ["c17.aig", "a.b.aig", ".hidden", "x.", "noext", "sp ace.aag"])
def test_read_aiger_names_the_circuit_by_the_file_stem(tmp_path, filename) -> None:
    """read_aiger reads with os-level calls and takes the stem itself: the name is still what Path.stem gives,
    for a str or a Path, and a missing file is still a FileNotFoundError."""
    from pathlib import Path

    aig = AIGBuilder("x")
    aig.add_po(aig.and_(aig.add_pi("a"), aig.add_pi("b")), "y")
    path = tmp_path / filename
    write_aiger(aig.build(), path, binary=True)
    for arg in (path, str(path)):
        got = read_aiger(arg)
        assert got.name == Path(filename).stem and got.pi_names == ["a", "b"] and got.po_names == ["y"]
    with pytest.raises(FileNotFoundError):
        read_aiger(tmp_path / "missing.aig")


@pytest.mark.parametrize(
    "suffix, expected",
    [
        (".aig", "AIGER header"),
        (".aag", "AIGER header"),
        (".bench", "UTF-8 text"),
        (".v", "expected text"),
        (".lib", "expected text"),
    ],
)
def test_a_large_binary_file_is_refused_from_its_first_64_kib(
    tmp_path, monkeypatch, suffix, expected
) -> None:
    import os

    from circuitml.fileio import PREFIX_BYTES

    path = tmp_path / f"garbage{suffix}"
    with open(path, "wb") as fh:
        fh.write(np.random.default_rng(0).integers(0, 256, 1 << 16, dtype=np.uint8).tobytes())
        fh.truncate(200 << 20)  # 200 MB on paper, a hole on disk
    got = []
    real_read = os.read

    def spy(fd: int, n: int) -> bytes:
        data = real_read(fd, n)
        got.append(len(data))
        return data

    monkeypatch.setattr(os, "read", spy)
    from circuitml.liberty import read_liberty

    with pytest.raises(CircuitFormatError, match=expected) as err:
        (read_liberty if suffix == ".lib" else read_circuit)(path)
    monkeypatch.undo()
    assert sum(got) <= PREFIX_BYTES, got  # not the 200 MB
    assert str(err.value).startswith(f"{path}:") and "byte" in str(err.value) or suffix in (".aig", ".aag")
    assert str(err.value).startswith(f"{path}:1") or suffix in (".bench", ".v", ".lib")  # AIGER: the header
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("suffix", [".aig", ".aag", ".bench"])
def test_files_larger_than_the_checked_prefix_read_as_before(tmp_path, suffix) -> None:
    from circuitml.fileio import PREFIX_BYTES

    rng = np.random.default_rng(1)
    pis, n = 64, 20_000
    node = pis + 1 + np.arange(n)  # AND node ids; each reads two earlier nodes
    fanin = (rng.random((n, 2)) * (node[:, None] - 1)).astype(np.int64) + 1
    ands = -np.sort(-(2 * fanin + rng.integers(0, 2, (n, 2))), axis=1)  # AIGER order: rhs0 >= rhs1
    aig = AIG(num_pis=pis, ands=ands, pos=2 * node[-8:], name="big")
    path = tmp_path / f"big{suffix}"
    write_circuit(aig, path)
    assert path.stat().st_size > PREFIX_BYTES  # read as a checked prefix, then whole
    again = read_circuit(path)
    if suffix == ".bench":  # bench text renames the nodes: compare what a bench round trip in memory gives
        assert again.same_structure(parse_bench(bench_text(aig)))
    else:
        assert again.same_structure(aig)
