"""Bit-parallel simulation, probabilities, truth tables and equivalence against a naive per-pattern evaluator."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import circuitml.sim as sim
from circuitml.aig import AIG, AIGBuilder
from circuitml.sim import (
    Simulator,
    equivalent,
    evaluate,
    output_words,
    pattern_bits,
    projection_words,
    random_pi_words,
    random_simulation,
    signal_probability,
    simulate_outputs,
    simulate_words,
    truth_tables,
)
from tests.conftest import shared_files

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------------- helpers
def random_aig(seed: int, num_pis: int, num_ands: int, num_pos: int, num_latches: int = 0) -> AIG:
    """A raw (not strashed) random AIG: constants, repeated and complemented fanins all allowed."""
    rng = np.random.default_rng(seed)
    first_and = num_pis + 1
    ands = np.zeros((num_ands, 2), dtype=np.int64)
    for i in range(num_ands):
        ands[i] = rng.integers(0, 2 * (first_and + i), size=2)
    top = 2 * (first_and + num_ands)
    pos = rng.integers(0, top, size=num_pos)
    aig = AIG(num_pis=num_pis, ands=ands, pos=pos, num_latches=num_latches, name=f"rand{seed}")
    aig.validate()
    return aig


def naive_eval(aig: AIG, bits: np.ndarray) -> tuple[list[int], list[int]]:
    """One pattern, node by node in Python: (node values, output values)."""
    v = [0] * aig.num_nodes
    for i in range(aig.num_pis):
        v[1 + i] = int(bits[i])
    for i, (x, y) in enumerate(aig.ands.tolist()):
        v[aig.first_and + i] = (v[x >> 1] ^ (x & 1)) & (v[y >> 1] ^ (y & 1))
    return v, [v[p >> 1] ^ (p & 1) for p in aig.pos.tolist()]


aig_params = st.tuples(st.integers(0, 10_000), st.integers(0, 9), st.integers(0, 60), st.integers(0, 6))


# ---------------------------------------------------------------------- simulation
@SETTINGS
@given(aig_params, st.integers(1, 150), st.integers(0, 99))
def test_simulate_words_matches_naive(params, num_patterns, pseed):
    aig = random_aig(*params)
    words = random_pi_words(aig.num_pis, num_patterns, pseed)
    nodes = simulate_words(aig, words)
    outs = output_words(aig, nodes)
    assert nodes.shape == (aig.num_nodes, words.shape[1]) and nodes.dtype == np.uint64
    np.testing.assert_array_equal(simulate_outputs(aig, words), outs)
    for p in range(0, num_patterns, max(1, num_patterns // 9)):
        v, o = naive_eval(aig, pattern_bits(words, p))
        assert pattern_bits(nodes, p).tolist() == v
        assert pattern_bits(outs, p).tolist() == o


def test_word_chunks_and_threads_give_the_same_values(monkeypatch):
    aig = random_aig(7, 12, 400, 5)
    words = random_pi_words(aig.num_pis, 64 * 37, 1)
    ref = Simulator(aig, threads=1).node_words(words)
    monkeypatch.setattr(sim, "_CHUNK_BYTES", 8 * aig.num_nodes * 5)  # 5 words per chunk -> 8 chunks
    monkeypatch.setattr(sim, "_MIN_PARALLEL_WORK", 0)
    s = Simulator(aig, threads=2)
    assert len(s.chunks(words.shape[1])) == 8
    np.testing.assert_array_equal(s.node_words(words), ref)
    np.testing.assert_array_equal(s.ones_count(words), Simulator(aig, threads=1).ones_count(words))


def test_bad_pattern_arrays_are_refused():
    aig = random_aig(0, 3, 5, 1)
    with pytest.raises(ValueError, match="num_pis=3"):
        simulate_words(aig, np.zeros((2, 1), dtype=np.uint64))
    with pytest.raises(ValueError, match="uint64"):
        simulate_words(aig, np.zeros((3, 1), dtype=np.int64))


@SETTINGS
@given(aig_params, st.integers(1, 200))
def test_signal_probability_matches_naive_counts(params, num_patterns):
    aig = random_aig(*params)
    prob = signal_probability(aig, num_patterns=num_patterns, seed=5)
    words = random_pi_words(aig.num_pis, num_patterns, 5)
    ones = np.zeros(aig.num_nodes)
    for p in range(
        num_patterns
    ):  # only the first num_patterns bits count, the padding bits of the last word not
        ones += naive_eval(aig, pattern_bits(words, p))[0]
    assert prob.dtype == np.float32 and prob.shape == (aig.num_nodes,)
    np.testing.assert_allclose(prob, ones / num_patterns, rtol=0, atol=1e-6)


def test_random_simulation_is_reproducible_by_seed():
    aig = random_aig(3, 8, 50, 3)
    a = random_simulation(aig, num_patterns=256, seed=11)
    np.testing.assert_array_equal(a, random_simulation(aig, num_patterns=256, seed=11))
    assert not np.array_equal(a, random_simulation(aig, num_patterns=256, seed=12))


def test_popcount_matches_a_byte_table():
    words = random_pi_words(5, 640, 2)
    lut = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)
    by_bytes = lut[words.view(np.uint8).reshape(*words.shape, 8)].sum(axis=-1)
    np.testing.assert_array_equal(sim.popcount(words), by_bytes)


# ---------------------------------------------------------------------- truth tables
def test_projection_words_are_the_standard_constants():
    p = projection_words(8)
    assert p.shape == (8, 4)
    assert int(p[0, 0]) == 0xAAAAAAAAAAAAAAAA and int(p[5, 3]) == 0xFFFFFFFF00000000
    assert p[6].tolist() == [0, 2**64 - 1, 0, 2**64 - 1] and p[7].tolist() == [0, 0, 2**64 - 1, 2**64 - 1]


@SETTINGS
@given(st.integers(0, 10_000), st.integers(0, 9), st.integers(0, 40), st.integers(1, 4))
def test_truth_tables_match_naive_enumeration(seed, n, num_ands, num_pos):
    aig = random_aig(seed, n, num_ands, num_pos)
    tt = truth_tables(aig)
    assert tt.shape == (num_pos, max(1, 2**n // 64))
    for m in range(2**n):
        bits = [(m >> i) & 1 for i in range(n)]
        assert pattern_bits(tt, m).tolist() == naive_eval(aig, np.array(bits))[1]
    if n < 6:  # bits past 2^n stay zero
        assert (tt >> np.uint64(2**n) == 0).all()


def test_truth_tables_of_known_functions():
    b = AIGBuilder()
    x = [b.add_pi() for _ in range(7)]
    b.add_po(b.xor_(x[0], x[1]))
    b.add_po(b.and_many(x))
    b.add_po(x[6] ^ 1)
    tt = truth_tables(b.build())
    assert int(tt[0, 0]) == 0x6666666666666666
    assert tt[1].tolist() == [0, 1 << 63]
    assert tt[2].tolist() == [2**64 - 1, 0]


def test_truth_tables_refuse_more_than_16_inputs():
    with pytest.raises(ValueError, match="at most 16"):
        truth_tables(random_aig(0, 17, 3, 1))


# ---------------------------------------------------------------------- equivalence
def two_xors(n: int) -> tuple[AIG, AIG]:
    """Parity of n inputs built as a chain and as a balanced tree with a different XOR decomposition."""
    a = AIGBuilder("chain")
    xs = [a.add_pi() for _ in range(n)]
    acc = xs[0]
    for x in xs[1:]:
        acc = a.xor_(acc, x)
    a.add_po(acc)
    b = AIGBuilder("tree")
    ys = [b.add_pi() for _ in range(n)]
    while len(ys) > 1:  # xnor(x, ~y) == xor(x, y): another structure, same function
        ys = [b.and_(b.or_(p, q), b.and_(p, q) ^ 1) for p, q in zip(ys[::2], ys[1::2], strict=False)] + (
            [ys[-1]] if len(ys) % 2 else []
        )
    b.add_po(ys[0])
    return a.build(), b.build()


def assert_real_counterexample(a: AIG, b: AIG, res) -> None:
    assert not res.equal and res.counterexample is not None
    assert res.counterexample.shape == (a.num_pis,)
    oa, ob = evaluate(a, res.counterexample), evaluate(b, res.counterexample)
    assert oa[res.output] != ob[res.output]


@pytest.mark.parametrize("method", ["auto", "exhaustive", "sim", "cec"])
def test_equal_pairs_are_equal(method):
    if method == "cec":
        pytest.importorskip("aigverse")
    a, b = two_xors(9)
    assert not a.same_structure(b)
    res = equivalent(a, b, method)
    assert res.equal and bool(res)
    assert res.proved == (method != "sim")


@pytest.mark.parametrize("method", ["auto", "exhaustive", "sim", "cec"])
def test_unequal_pair_gives_a_counterexample_that_distinguishes(method):
    if method == "cec":
        pytest.importorskip("aigverse")
    a, b = two_xors(9)
    bad = b.copy()
    bad.ands[3, 0] ^= 1  # one complemented fanin
    res = equivalent(a, bad, method)
    assert_real_counterexample(a, bad, res)


def test_wide_circuits_use_simulation_then_sat():
    pytest.importorskip("aigverse")
    a, b = two_xors(40)
    res = equivalent(a, b)  # 40 inputs: too many for exhaustive
    assert res.equal and res.proved and res.method == "cec"
    bad = b.copy()
    bad.pos[0] ^= 1
    res = equivalent(a, bad)
    assert res.method == "sim"
    assert_real_counterexample(a, bad, res)


def test_sim_can_miss_a_rare_difference_but_cec_cannot():
    pytest.importorskip("aigverse")
    b = AIGBuilder()
    xs = [b.add_pi() for _ in range(30)]
    b.add_po(xs[0])
    a = b.build()
    c = AIGBuilder()
    ys = [c.add_pi() for _ in range(30)]
    c.add_po(c.xor_(ys[0], c.and_many(ys)))  # differs only on the all-ones pattern (1 in 2^30)
    rare = c.build()
    assert equivalent(a, rare, "sim", num_patterns=1024).equal
    res = equivalent(a, rare, "cec")
    assert not res.equal and res.proved


def test_interface_mismatch_is_not_equal_with_reason():
    a, _ = two_xors(5)
    b, _ = two_xors(6)
    res = equivalent(a, b)
    assert not res.equal and res.method == "interface" and "input counts" in res.reason
    c = a.copy()
    c.pos = np.concatenate([c.pos, c.pos])
    assert "output counts" in equivalent(a, c).reason


def test_latch_pseudo_outputs_are_compared():
    base = random_aig(4, 6, 40, 4, num_latches=2)
    other = base.copy()
    other.pos[-1] ^= 1  # only a latch next-state function differs
    res = equivalent(base, other)
    assert_real_counterexample(base, other, res)
    assert res.output == base.num_pos - 1


def test_unknown_method_and_too_wide_exhaustive_raise():
    a, b = two_xors(17)
    with pytest.raises(ValueError, match="unknown equivalence method"):
        equivalent(a, b, "bdd")
    with pytest.raises(ValueError, match="at most 16"):
        equivalent(a, b, "exhaustive")


# ---------------------------------------------------------------------- real circuits
EPFL_SMALL = [
    p
    for p in shared_files("lsils__benchmarks/random_control/*.aig")
    if p.stem in {"router", "ctrl", "int2float"}
]


@pytest.mark.parametrize("path", EPFL_SMALL, ids=lambda p: p.stem)
def test_epfl_probabilities_and_values_match_naive(path):
    from circuitml.formats import read_aiger

    aig = read_aiger(path)
    prob = signal_probability(aig, num_patterns=96, seed=3)
    words = random_pi_words(aig.num_pis, 96, 3)
    ones = np.zeros(aig.num_nodes)
    for p in range(96):
        ones += naive_eval(aig, pattern_bits(words, p))[0]
    np.testing.assert_allclose(prob, ones / 96, atol=1e-6)


@pytest.mark.parametrize("path", EPFL_SMALL[:1], ids=lambda p: p.stem)
def test_epfl_mutation_is_caught_with_a_real_counterexample(path):
    from circuitml.formats import read_aiger

    aig = read_aiger(path)
    # Flip a fanin of an AND that drives an output directly, so the change is observable.
    row = int(np.flatnonzero(np.isin(aig.first_and + np.arange(aig.num_ands), aig.pos >> 1))[0])
    bad = aig.copy()
    bad.ands[row, 0] ^= 1
    res = equivalent(aig, bad, "sim")
    assert_real_counterexample(aig, bad, res)
    pytest.importorskip("aigverse")
    assert equivalent(aig, aig.copy(), "cec").equal
    assert not equivalent(aig, bad, "cec").equal
