"""pyverilog parsing: modules, ports, the instantiation graph, top detection, errors and the Yosys fallback."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from circuitml.errors import CircuitFormatError, SynthesisError
from circuitml.verilog import VerilogFallbackWarning, find_top, parse_verilog
from tests.conftest import OPENABC_TOPS, SHARED_DATA

HIER = """
`define WIDTH 4
module leaf(input [`WIDTH-1:0] x, output y);
  assign y = ^x;
endmodule

module mid(a, b, c);
  input [3:0] a;
  input [0:3] b;
  output c;
  wire t0, t1;
  leaf u0 (.x(a), .y(t0));
  leaf u1 (.x(b), .y(t1));
  assign c = t0 & t1;
endmodule

module chip(input clk, input [3:0] p, input [3:0] q, output reg r);
  wire w;
  mid m (.a(p), .b(q), .c(w));
  always @(posedge clk) r <= w;
endmodule
"""


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_modules_ports_hierarchy_and_top(tmp_path: Path) -> None:
    design = parse_verilog(_write(tmp_path, "hier.v", HIER))
    assert design.backend == "pyverilog"
    assert list(design.modules) == ["leaf", "mid", "chip"]
    assert design.top == "chip"
    assert design.hierarchy() == {"leaf": [], "mid": ["leaf"], "chip": ["mid"]}
    assert design.modules["mid"].instances == [("leaf", "u0"), ("leaf", "u1")]
    leaf = design.modules["leaf"]
    assert [(p.name, p.direction, p.width) for p in leaf.ports] == [("x", "input", 4), ("y", "output", 1)]
    mid = design.modules["mid"]  # non-ANSI ports take direction and width from the declarations
    assert [(p.name, p.direction, p.width, p.msb, p.lsb) for p in mid.ports] == [
        ("a", "input", 4, 3, 0),
        ("b", "input", 4, 0, 3),
        ("c", "output", 1, None, None),
    ]
    chip = design.top_module
    assert [p.name for p in chip.inputs] == ["clk", "p", "q"] and [p.name for p in chip.outputs] == ["r"]


def test_explicit_top_and_missing_top(tmp_path: Path) -> None:
    path = _write(tmp_path, "hier.v", HIER)
    assert parse_verilog(path, top="mid").top == "mid"
    with pytest.raises(CircuitFormatError, match="a module named 'nope'"):
        parse_verilog(path, top="nope")


def test_ambiguous_top_is_an_error(tmp_path: Path) -> None:
    path = _write(
        tmp_path, "two.v", "module a(input x, output y); assign y = x; endmodule\nmodule b; endmodule\n"
    )
    with pytest.raises(CircuitFormatError, match="single top module.*candidates a, b"):
        parse_verilog(path)
    with pytest.raises(CircuitFormatError, match="candidates a, b"):
        find_top({path: path.read_text()})


def test_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "bad.v", "module bad(input a, output y);\n  assign y = a &;\nendmodule\n")
    with pytest.raises(CircuitFormatError) as err:
        parse_verilog(path)
    assert err.value.line == 2 and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_missing_include_names_the_line(tmp_path: Path) -> None:
    path = _write(tmp_path, "inc.v", 'module m;\n`include "nothere.vh"\nendmodule\n')
    with pytest.raises(CircuitFormatError) as err:
        parse_verilog(path, fallback=False)
    assert err.value.line == 2


def test_includes_from_include_dirs(tmp_path: Path) -> None:
    (tmp_path / "hdr").mkdir()
    _write(tmp_path / "hdr", "defs.vh", "`define N 3\n")
    path = _write(
        tmp_path, "m.v", '`include "defs.vh"\nmodule m(input [`N:0] a, output y); assign y = &a; endmodule\n'
    )
    design = parse_verilog(path, include_dirs=[tmp_path / "hdr"])
    assert design.top_module.ports[0].width == 4


def test_systemverilog_falls_back_to_yosys(tmp_path: Path) -> None:
    src = (
        "module sv(input logic clk, input logic [7:0] d, output logic [7:0] q);\n"
        "  always_ff @(posedge clk) q <= d;\nendmodule\n"
    )
    path = _write(tmp_path, "sv.sv", src)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        design = parse_verilog(path)
    assert any(issubclass(w.category, VerilogFallbackWarning) for w in caught)
    assert design.backend == "yosys" and design.top == "sv"
    assert [(p.name, p.direction, p.width) for p in design.top_module.ports] == [
        ("clk", "input", 1),
        ("d", "input", 8),
        ("q", "output", 8),
    ]


@pytest.mark.parametrize("design", sorted(OPENABC_TOPS))
def test_openabc_rtl_top_detection(shared_data: Path, design: str) -> None:
    folder = SHARED_DATA / "NYU-MLDA__OpenABC" / "bench_rtl" / "src" / design
    top = OPENABC_TOPS[design]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerilogFallbackWarning)
        try:
            assert parse_verilog(folder).top == top
        except CircuitFormatError as exc:  # sasc ships an uninstantiated sasc_brg: really two tops
            assert "candidates" in str(exc) and top in str(exc)
        parsed = parse_verilog(folder, top=top)
    assert parsed.top == top
    assert parsed.top_module.inputs and parsed.top_module.outputs


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(st.data())
def test_mutated_verilog_raises_only_format_errors(tmp_path: Path, data: st.DataObject) -> None:
    text = HIER
    for _ in range(data.draw(st.integers(1, 3))):
        pos = data.draw(st.integers(0, len(text)))
        op = data.draw(st.sampled_from(["delete", "insert", "truncate"]))
        if op == "delete":
            text = text[:pos] + text[pos + data.draw(st.integers(1, 10)) :]
        elif op == "insert":
            text = (
                text[:pos]
                + data.draw(st.text(alphabet="();[]{}'`\"=+-&|^~#@\\ab01\n", max_size=5))
                + text[pos:]
            )
        else:
            text = text[:pos]
    path = tmp_path / "mutant.v"
    path.write_text(text)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", VerilogFallbackWarning)
        try:
            parse_verilog(path)
        except (CircuitFormatError, SynthesisError) as exc:
            assert "\n" not in str(exc)
