"""Small real circuits for the encoder tests: ripple-carry adders and array multipliers built gate by gate,
plus ISCAS85 c17/c432 from ../shared/data when present. Also checks that these graphs are what we think."""

from __future__ import annotations

from functools import lru_cache

import torch
from torch_geometric.data import Batch

from circuitml.aig import AIG, AIGBuilder
from circuitml.graph import aig_to_data
from tests.conftest import shared_files


def adder(n: int) -> AIG:
    b = AIGBuilder(f"adder{n}")
    a = [b.add_pi(f"a{i}") for i in range(n)]
    c = [b.add_pi(f"b{i}") for i in range(n)]
    carry = 0
    for i in range(n):
        p = b.xor_(a[i], c[i])
        b.add_po(b.xor_(p, carry), f"s{i}")
        carry = b.or_(b.and_(a[i], c[i]), b.and_(carry, p))
    b.add_po(carry, "cout")
    return b.build()


def multiplier(n: int) -> AIG:
    b = AIGBuilder(f"mult{n}")
    a = [b.add_pi(f"a{i}") for i in range(n)]
    c = [b.add_pi(f"b{i}") for i in range(n)]
    acc = [0] * (2 * n)
    for j in range(n):
        carry = 0
        for i in range(n):
            pp = b.and_(a[i], c[j])
            s = acc[i + j]
            t = b.xor_(s, pp)
            acc[i + j] = b.xor_(t, carry)
            carry = b.or_(b.and_(s, pp), b.and_(carry, t))
        acc[j + n] = carry
    for k, lit in enumerate(acc):
        b.add_po(lit, f"p{k}")
    return b.build()


@lru_cache(maxsize=4)
def circuit_aigs() -> tuple[AIG, ...]:
    aigs = [adder(4), adder(8), multiplier(3), multiplier(4)]
    for path in shared_files("ispras__hdl-benchmarks/iscas85/bench/c17.bench") + shared_files(
        "ispras__hdl-benchmarks/iscas85/bench/c432.bench"
    ):
        from circuitml.formats import read_circuit

        aigs.append(read_circuit(path))
    return tuple(aigs)


def circuit_batch(explicit_not: bool = True, with_prob: bool = True) -> Batch:
    return Batch.from_data_list(
        [aig_to_data(a, explicit_not=explicit_not, with_prob=with_prob) for a in circuit_aigs()]
    )


def test_circuits_are_what_they_claim() -> None:
    from circuitml.sim import truth_tables

    # adder(4): output k of a+b, checked on every input pattern through the simulator.
    tt = truth_tables(adder(4))
    for x in range(256):
        a, b = x & 15, x >> 4
        word, bit = divmod(x, 64)
        got = sum(((int(tt[k, word]) >> bit) & 1) << k for k in range(5))
        assert got == a + b
    tt = truth_tables(multiplier(3))
    for x in range(64):
        a, b = x & 7, x >> 3
        got = sum(((int(tt[k, 0]) >> x) & 1) << k for k in range(6))
        assert got == a * b
    batch = circuit_batch()
    assert batch.num_graphs >= 4 and torch.all((batch.prob >= 0) & (batch.prob <= 1))
