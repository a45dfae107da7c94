"""``circuitml verilog info|tokens|synth`` and ``circuitml abc`` through ``cli.main``."""

from __future__ import annotations

import json
from pathlib import Path

from circuitml.cli import main
from circuitml.formats import read_circuit
from circuitml.sim import equivalent
from circuitml.verilog import VOCAB

SRC = """module top(input [3:0] a, input [3:0] b, output [4:0] s, output p);
  sub u (.x(a), .y(p));
  assign s = a + b;
endmodule
module sub(input [3:0] x, output y);
  assign y = ^x;
endmodule
"""


def test_verilog_commands(tmp_path: Path, capsys) -> None:
    src = tmp_path / "top.v"
    src.write_text(SRC)
    assert main(["verilog", "info", str(src)]) == 0
    out = capsys.readouterr().out
    assert "top: top" in out and "sub" in out

    assert main(["verilog", "tokens", str(src), "--ids", "--max-len", "16"]) == 0
    ids = json.loads(capsys.readouterr().out)
    assert len(ids) == 16 and all(0 <= i < len(VOCAB) for i in ids)

    aig_path = tmp_path / "top.aag"
    assert main(["verilog", "synth", str(src), "-o", str(aig_path)]) == 0
    aig = read_circuit(aig_path)
    assert aig.num_pis == 8 and aig.num_pos == 6

    opt_path = tmp_path / "opt.aig"
    assert main(["abc", str(aig_path), "-s", "strash; resyn2", "-o", str(opt_path)]) == 0
    assert "and " in capsys.readouterr().out
    assert equivalent(aig, read_circuit(opt_path), method="exhaustive").equal


def test_errors_exit_2_with_one_line(tmp_path: Path, capsys) -> None:
    bad = tmp_path / "bad.v"
    bad.write_text("module bad(input a, output y);\n  assign y = a &;\nendmodule\n")
    assert main(["verilog", "synth", str(bad), "-o", str(tmp_path / "x.aig")]) == 2
    err = capsys.readouterr().err
    assert f"{bad}:2" in err.replace("\n", "")
    assert not (tmp_path / "x.aig").exists()


def test_a_latch_from_always_comb_gets_a_hint_in_one_line(tmp_path: Path, capsys) -> None:
    """Yosys rejects a latch inferred in ``always_comb`` (6 of 156 VerilogEval designs) without saying what to
    change; the one-line error adds the idiom that fixes it."""
    src = tmp_path / "fsm.sv"
    src.write_text(
        "module fsm(input logic [1:0] s, input logic a, output logic y);\n"
        "  always_comb begin\n    case (s)\n      2'd0: y = a;\n      2'd1: y = ~a;\n    endcase\n  end\n"
        "endmodule\n"
    )
    assert main(["convert", str(src), str(tmp_path / "fsm.aig")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "Latch inferred" in err and "add a default: branch" in err
    assert not (tmp_path / "fsm.aig").exists()


def test_switch_level_verilog_gets_a_hint_naming_the_construct(tmp_path: Path) -> None:
    """ISCAS89's Verilog models flip-flops with ``trireg`` nets and ``nmos`` switches; Yosys answers with a bare
    syntax error at the declaration, so the message names the construct and what to write instead."""
    from circuitml.verilog.synth import explain_yosys_error

    src = tmp_path / "s298.v"
    src.write_text(
        "module dff (CK,Q,D);\ninput CK,D;\noutput Q;\n  wire NM,NCK;\n  trireg NQ,M;\nendmodule\n"
    )
    raw = f"{src}:5: ERROR: syntax error, unexpected ',', expecting '(' or '['"
    assert "'trireg' is switch-level Verilog" in str(explain_yosys_error(raw, "s298.v"))
    other = f"{src}:4: ERROR: syntax error, unexpected ','"  # the line holds no switch-level word: no hint
    assert "hint" not in str(explain_yosys_error(other, "s298.v"))
    assert "hint" not in str(explain_yosys_error(f"{tmp_path / 'gone.v'}:5: ERROR: syntax error", "gone.v"))
