"""RTL as Yosys reads it: SystemVerilog in ``.v`` files, meaning-changing warnings, latch errors, assertions."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from circuitml.cli import main
from circuitml.errors import CircuitFormatError, SynthesisError
from circuitml.formats import read_circuit
from circuitml.sim import equivalent
from circuitml.verilog import (
    SynthesisWarning,
    explain_yosys_error,
    synthesis_warnings,
    verilog_to_aig,
    verilog_to_aig_many,
)
from circuitml.verilog.synth import _prepare
from circuitml.yosys import run_yosys
from tests.test_verilog_parse import _write

SV_IN_V = """module rev(input [3:0] a, output logic [3:0] y);
  always_comb begin
    for (int i = 0; i < 4; i++) y[i] = a[3 - i];
  end
endmodule
"""
PLAIN = "module rev(input [3:0] a, output [3:0] y);\n  assign y = {a[0], a[1], a[2], a[3]};\nendmodule\n"
LATCH = """module lt(input [1:0] s, input a, b, output reg y);
  always @* begin
    case (s)
      2'b00: y = a;
      2'b01: y = b;
    endcase
  end
endmodule
"""
UNDRIVEN = "module ud(input a, output z);\n  wire u;\n  assign z = u & a;\nendmodule\n"
MULTI = (
    "module md(input a, b, c, output w);\n  wire t;\n  assign t = a;\n  assign t = b;\n"
    "  assign w = t & c;\nendmodule\n"
)


def test_systemverilog_in_a_v_file_converts(tmp_path: Path) -> None:
    sv = verilog_to_aig(_write(tmp_path, "rev.v", SV_IN_V))
    ref = verilog_to_aig(_write(tmp_path, "ref.v", PLAIN))
    assert equivalent(sv, ref, method="exhaustive").equal
    # the batch path retries the same way, and a real syntax error still names its line
    bad = _write(tmp_path, "bad.v", "module bad(input a, output y);\n  assign y = a &;\nendmodule\n")
    got = verilog_to_aig_many([tmp_path / "rev.v", bad, tmp_path / "ref.v"])
    assert equivalent(got[0], ref, method="exhaustive").equal
    assert isinstance(got[1], SynthesisError) and f"{bad}:2" in str(got[1])
    assert equivalent(got[2], ref, method="exhaustive").equal


def test_warnings_that_change_meaning(tmp_path: Path) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        aig = verilog_to_aig(_write(tmp_path, "lt.v", LATCH))
        ud = verilog_to_aig(_write(tmp_path, "ud.v", UNDRIVEN))
        verilog_to_aig(_write(tmp_path, "ok.v", PLAIN))
    notes = [str(w.message) for w in caught if issubclass(w.category, SynthesisWarning)]
    assert notes == ["lt.v: latch inferred for lt.y", "ud.v: undriven net ud.u set to 0"]
    assert aig.num_latches == 1
    assert ud.num_ands == 0 and ud.pos[0] == 0  # u & a with u tied to 0 is constant 0
    with pytest.raises(SynthesisError, match="latch inferred for lt.y.*refused"):
        verilog_to_aig(tmp_path / "lt.v", latch_error=True)
    with pytest.raises(SynthesisError, match="multiple conflicting drivers"):
        verilog_to_aig(_write(tmp_path, "md.v", MULTI))


def test_warning_parser_on_yosys_lines() -> None:
    log = (
        "Warning: Latch inferred for signal `\\top.\\q' from process `\\top.$proc$x.v:2$1': $dlatch$3\n"
        "Warning: multiple conflicting drivers for top.\\t:\n"
        "Warning: Wire top.\\bus [2] is used but has no driver.\n"
        "Warning: Latch inferred for signal `\\top.\\q' from process `\\top.$proc$x.v:9$2': $dlatch$4\n"
        "Warning: Replacing memory \\m with list of registers.\n"
    )
    assert synthesis_warnings(log) == [
        "latch inferred for top.q",
        "multiple conflicting drivers for top.t",
        "undriven net top.bus[2] set to 0",
    ]


def test_internal_assertion_becomes_one_line_naming_the_stage(tmp_path: Path) -> None:
    """Before undriven nets were tied to 0, write_aiger asserted on them: that real message is the input."""
    src = "module ud(input a, output [1:0] q);\n  assign q[0] = a;\nendmodule\n"  # q[1] undriven
    job = _prepare([_write(tmp_path, "ud.v", src)], None, [], None, "")
    old = job.script().replace("setundef -undriven -zero", "setundef -zero")
    res = run_yosys(old, files=job.files, outputs=["out.aig"], allow_failure=True, aliases=job.aliases)
    assert res.error is not None and "Assert" in res.error
    err = explain_yosys_error(res.error, "ud.v")
    assert str(err).startswith("ud.v: AIGER export failed: the design has tri-state or undriven logic")
    assert "aiger.cc" not in str(err) and "aiger.cc" in err.detail


def test_convert_shows_warnings_and_latch_error(tmp_path: Path, capsys) -> None:
    src = _write(tmp_path, "lt.v", LATCH)
    assert main(["convert", str(src), str(tmp_path / "lt.aag")]) == 0
    assert "warning: lt.v: latch inferred for lt.y" in capsys.readouterr().err
    assert read_circuit(tmp_path / "lt.aag").num_latches == 1
    assert main(["convert", str(src), str(tmp_path / "x.aag"), "--latch-error"]) == 2
    err = capsys.readouterr().err
    assert "latch inferred" in err and err.count("\n") == 1 and not (tmp_path / "x.aag").exists()
    assert main(["convert", str(tmp_path / "lt.aag"), str(tmp_path / "y.aag"), "--latch-error"]) == 2
    assert "applies to Verilog input" in capsys.readouterr().err


def test_a_folder_source_does_not_read_symlinks_leaving_it(tmp_path: Path) -> None:
    secret = _write(tmp_path, "secret.v", "SECRET-LINE\n")
    folder = tmp_path / "design"
    folder.mkdir()
    _write(folder, "ok.v", PLAIN)
    (folder / "link.v").symlink_to(secret)
    with pytest.raises(CircuitFormatError, match="symlink leaving the folder") as err:
        verilog_to_aig(folder)
    assert "SECRET" not in str(err.value)
    (folder / "link.v").unlink()
    (folder / "inner.v").symlink_to(folder / "ok.v")  # a link that stays inside is an ordinary file
    with pytest.raises(SynthesisError, match="rev"):  # read twice: Yosys names the duplicate module
        verilog_to_aig(folder)
