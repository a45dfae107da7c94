"""``equiv`` matches ports by name when both circuits name them, by position otherwise or when asked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from circuitml.aig import AIGBuilder
from circuitml.cli import main
from circuitml.errors import ConfigError
from circuitml.portmatch import align_ports
from circuitml.sim import truth_tables
from tests.test_sim import random_aig

VERILOG = (
    "module m(input b, input a, output y, output x);\n  assign y = a & ~b;\n  assign x = a | b;\nendmodule\n"
)
BENCH = "INPUT(a)\nINPUT(b)\nOUTPUT(x)\nOUTPUT(y)\nnb = NOT(b)\ny = AND(a, nb)\nx = OR(a, b)\n"


def _permuted(aig, pi_perm, po_perm):
    """Naive reference: rebuild ``aig`` gate by gate with PI ``j`` = old PI ``pi_perm[j]``, PO ``k`` = old ``po_perm[k]``."""
    builder = AIGBuilder(aig.name)
    lit_of = {0: 0}
    new_pis = [builder.add_pi(aig.pi_names[old]) for old in pi_perm]
    for j, old in enumerate(pi_perm):
        lit_of[1 + int(old)] = new_pis[j]
    for row, (f0, f1) in enumerate(aig.ands.tolist()):
        l0 = lit_of[f0 >> 1] ^ (f0 & 1)
        l1 = lit_of[f1 >> 1] ^ (f1 & 1)
        lit_of[aig.first_and + row] = builder.and_(l0, l1)
    for old in po_perm:
        lit = int(aig.pos[old])
        builder.add_po(lit_of[lit >> 1] ^ (lit & 1), aig.po_names[old])
    return builder.build()


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.integers(1, 7), st.integers(1, 5), st.randoms(use_true_random=False))
def test_align_by_name_undoes_any_port_permutation(seed: int, n_in: int, n_out: int, rnd) -> None:
    aig = random_aig(seed, n_in, 20, n_out)
    aig.pi_names = [f"i{k}" for k in range(n_in)]
    aig.po_names = [f"o{k}" for k in range(n_out)]
    pi_perm, po_perm = list(range(n_in)), list(range(n_out))
    rnd.shuffle(pi_perm)
    rnd.shuffle(po_perm)
    other = _permuted(aig, pi_perm, po_perm)
    match = align_ports(aig, other)
    assert match.how == "by name"
    assert np.array_equal(truth_tables(match.first), truth_tables(match.second))
    assert match.second.pi_names == aig.pi_names and match.second.po_names == aig.po_names


def test_align_refuses_different_names_and_falls_back_without_names() -> None:
    aig = random_aig(1, 3, 10, 2)
    aig.pi_names, aig.po_names = ["a", "b", "c"], ["x", "y"]
    other = random_aig(1, 3, 10, 2)
    other.pi_names, other.po_names = ["a", "b", "z"], ["x", "y"]
    with pytest.raises(ConfigError, match="only in the first: c; only in the second: z"):
        align_ports(aig, other)
    assert align_ports(aig, other, by_position=True).how == "by position"
    other.pi_names = None
    assert align_ports(aig, other).how == "by position"


def test_equiv_command_matches_by_name(tmp_path: Path, capsys) -> None:
    v = tmp_path / "m.v"
    v.write_text(VERILOG)
    bench = tmp_path / "m.bench"
    bench.write_text(BENCH)
    assert main(["equiv", str(v), str(bench)]) == 0
    out = capsys.readouterr().out
    assert "ports matched by name" in out and "equivalent" in out and "NOT" not in out
    assert main(["equiv", str(v), str(bench), "--by-position"]) == 1
    assert "ports matched by position" in capsys.readouterr().out
    renamed = tmp_path / "r.bench"
    renamed.write_text(BENCH.replace("(a)", "(q)").replace("(a,", "(q,"))
    assert main(["equiv", str(v), str(renamed)]) == 2
    err = capsys.readouterr().err
    assert "port names differ" in err and "NOT equivalent" not in err
