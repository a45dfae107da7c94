"""The Python Verilog preprocessor: directives, macros, includes, line mapping, errors, and iverilog as reference."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from circuitml.errors import CircuitFormatError
from circuitml.verilog import parse_verilog
from circuitml.verilog.preprocess import preprocess_file, preprocess_verilog

ROOT = Path(__file__).resolve().parents[1]

MACROS = """`timescale 1ns/1ps
`default_nettype none
`define W 4
`define ADD(x, y=1) ((x) + (y))
`define LONG(a) \\
   (a) ^ \\
   (a)
`define NAME(p) p``_q
module m(input [`W-1:0] a, output [7:0] y, output z);
  wire `NAME(w); // comment with `W inside
  /* block `UNDEFINED
     comment */
  assign y = `ADD(a) + `ADD(a,
    3);
`ifdef FAST
  assign z = 1'b1;
`elsif SLOW
  assign z = `LONG(a[0]);
`else
  assign z = 1'b0;
`endif
endmodule
"""


def _norm(text: str) -> str:
    text = re.sub(r"//[^\n]*|/\*.*?\*/", " ", text, flags=re.S)
    return " ".join(text.split())


def test_macros_conditionals_and_line_count() -> None:
    pre = preprocess_verilog(MACROS, "m.v", defines={"SLOW": None})
    text = _norm(pre.text)
    assert "module m(input [4-1:0] a" in text
    assert "wire w_q;" in text
    assert "assigny=((a)+(1))+((a)+(3));" in text.replace(" ", "")
    assert "assign z = (a[0]) ^ (a[0]);" in text
    assert "1'b1" not in text and "1'b0" not in text and "timescale" not in text
    # one output line per input line: every line maps to itself
    assert len(pre.origin) == MACROS.count("\n")
    assert all(origin == ("m.v", k + 1) for k, origin in enumerate(pre.origin))
    assert "assign z = 1'b1;" in _norm(preprocess_verilog(MACROS, "m.v", defines={"FAST": "1"}).text)
    assert "assign z = 1'b0;" in _norm(preprocess_verilog(MACROS, "m.v").text)


def test_nested_conditionals_and_undef() -> None:
    src = (
        "`define A\n`ifdef A\n`ifndef B\nx1\n`else\nx2\n`endif\n`undef A\n`ifdef A\nx3\n`endif\n"
        "`else\n`ifdef A\nx4\n`endif\n`endif\n"
    )
    assert _norm(preprocess_verilog(src).text) == "x1"
    assert _norm(preprocess_verilog(src, defines={"B": None}).text) == "x2"


def test_includes_with_search_dirs_and_line_mapping(tmp_path: Path) -> None:
    (tmp_path / "hdr").mkdir()
    (tmp_path / "hdr" / "defs.vh").write_text("`define N 3\n`define BAD assign y = a &;\n")
    (tmp_path / "local.vh").write_text("// local\nwire extra;\n")
    top = tmp_path / "m.v"
    top.write_text(
        '`include "defs.vh"\nmodule m(input [`N:0] a, output y);\n`include "local.vh"\n'
        "  assign y = &a;\nendmodule\n"
    )
    pre = preprocess_file(top, include_dirs=[tmp_path / "hdr"])
    assert "input [3:0] a" in _norm(pre.text) and "wire extra;" in _norm(pre.text)
    line = next(k + 1 for k, ln in enumerate(pre.text.splitlines()) if "wire extra" in ln)
    assert pre.locate(line) == (str(tmp_path / "local.vh"), 2)
    assert pre.locate(line + 1) == (str(top), 3)  # the rest of the include line
    # a syntax error inside an included file is reported against that file and line
    (tmp_path / "inc_err.vh").write_text("\n\n  assign q = ;\n")
    bad = tmp_path / "bad.v"
    bad.write_text('module b(output q);\n`include "inc_err.vh"\nendmodule\n')
    with pytest.raises(CircuitFormatError) as err:
        parse_verilog(bad, fallback=False)
    assert err.value.line == 3 and "inc_err.vh" in str(err.value)


@pytest.mark.parametrize(
    ("src", "line", "what"),
    [
        ("module m;\n  wire `NOPE;\nendmodule\n", 2, "defined macro `NOPE"),
        ("`ifdef A\nmodule m; endmodule\n", 1, "`endif"),
        ("module m;\n`endif\nendmodule\n", 2, "open `ifdef"),
        ("`define F(a, b) a+b\n\nwire x = `F(1);\n", 3, "2 argument"),
        ("`define R `R\nwire x = `R;\n", 2, "nested at most"),
        ('module m;\n\n`include "nothere.vh"\nendmodule\n', 3, "nothere.vh"),
        ("/* open\n comment", 1, "closed /*"),
    ],
)
def test_errors_name_file_and_line(tmp_path: Path, src: str, line: int, what: str) -> None:
    path = tmp_path / "e.v"
    path.write_text(src)
    start = time.process_time()
    with pytest.raises(CircuitFormatError) as err:
        preprocess_file(path)
    assert time.process_time() - start < 5  # a recursive macro is an error, not a hang
    assert err.value.line == line and what in str(err.value) and str(path) in str(err.value)
    assert "\n" not in str(err.value)


def test_self_include_and_absolute_include_outside_are_errors(tmp_path: Path) -> None:
    loop = tmp_path / "loop.vh"
    loop.write_text('`include "loop.vh"\n')
    with pytest.raises(CircuitFormatError, match="nested at most"):
        preprocess_file(loop)
    outside = tmp_path / "outside.vh"
    outside.write_text("wire secret;\n")
    (tmp_path / "sub").mkdir()
    src = tmp_path / "sub" / "m.v"
    src.write_text(f'`include "{outside}"\n')
    with pytest.raises(CircuitFormatError, match="not found"):
        preprocess_file(src)


def test_directory_instead_of_file_says_so(tmp_path: Path) -> None:
    with pytest.raises(CircuitFormatError, match="a directory"):
        preprocess_file(tmp_path)


@settings(max_examples=60, deadline=None)
@given(
    st.recursive(
        st.sampled_from(["x0", "x1", "x2"]),
        lambda inner: st.tuples(
            st.sampled_from(["ifdef", "ifndef"]),
            st.sampled_from(["A", "B", "C"]),
            st.lists(inner, min_size=1, max_size=2),
            st.lists(st.tuples(st.sampled_from(["A", "B", "C"]), st.lists(inner, max_size=2)), max_size=2),
            st.none() | st.lists(inner, max_size=2),
        ),
        max_leaves=12,
    ),
    st.sets(st.sampled_from(["A", "B", "C"])),
)
def test_conditionals_match_a_naive_evaluator(tree, defined: set[str]) -> None:
    """Random ``ifdef``/``elsif``/``else`` trees: the kept words equal a direct recursive evaluation."""

    def render(node) -> list[str]:
        if isinstance(node, str):
            return [node]
        kind, name, body, elsifs, other = node
        lines = [f"`{kind} {name}"] + [ln for n in body for ln in render(n)]
        for ename, ebody in elsifs:
            lines += [f"`elsif {ename}"] + [ln for n in ebody for ln in render(n)]
        if other is not None:
            lines += ["`else"] + [ln for n in other for ln in render(n)]
        return lines + ["`endif"]

    def evaluate(node) -> list[str]:
        if isinstance(node, str):
            return [node]
        kind, name, body, elsifs, other = node
        branches = [((name in defined) == (kind == "ifdef"), body)]
        branches += [(ename in defined, ebody) for ename, ebody in elsifs]
        for hit, nodes in branches:
            if hit:
                return [w for n in nodes for w in evaluate(n)]
        return [w for n in other or [] for w in evaluate(n)]

    src = "\n".join(render(tree)) + "\n"
    got = preprocess_verilog(src, defines={d: None for d in defined}).text.split()
    assert got == evaluate(tree)


@pytest.mark.skipif(shutil.which("iverilog") is None, reason="iverilog not installed (optional reference)")
def test_same_text_as_iverilog(tmp_path: Path) -> None:
    """iverilog -E, where installed, is the reference: same tokens after comments and blanks are dropped."""
    (tmp_path / "inc").mkdir()
    (tmp_path / "inc" / "w.vh").write_text("`define WW 8\n")
    src = tmp_path / "m.v"
    src.write_text('`include "w.vh"\n' + MACROS.replace("`timescale 1ns/1ps\n", ""))
    out = tmp_path / "ref.v"
    subprocess.run(
        ["iverilog", "-E", "-DSLOW", "-I", str(tmp_path / "inc"), "-o", str(out), str(src)], check=True
    )
    ours = preprocess_file(src, include_dirs=[tmp_path / "inc"], defines={"SLOW": None})
    ref = re.sub(r"`default_nettype \w+", " ", out.read_text())
    assert _norm(ours.text).replace(" ", "") == _norm(ref).replace(" ", "")


def _path_without_iverilog(tmp_path: Path) -> str:
    """A PATH holding links to every program on the current PATH except iverilog's."""
    shim = tmp_path / "bin"
    shim.mkdir()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(folder):
            continue
        for entry in os.listdir(folder):
            if entry.startswith(("iverilog", "ivl", "vvp")) or (shim / entry).exists():
                continue
            (shim / entry).symlink_to(Path(folder) / entry)
    return str(shim)


@pytest.mark.slow
def test_verilog_tests_pass_with_iverilog_hidden(tmp_path: Path) -> None:
    """The Verilog tests in a child pytest whose PATH lacks iverilog (what a pip-only machine sees)."""
    env = {**os.environ, "PATH": _path_without_iverilog(tmp_path)}
    probe = subprocess.run(["sh", "-c", "command -v iverilog"], env=env, capture_output=True)
    assert probe.returncode != 0
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-x",
            "-p",
            "no:cacheprovider",
            "-m",
            "not slow",
            "tests/test_verilog_parse.py",
            "tests/test_verilog_preprocess.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_sources_raise_only_format_errors(data: st.DataObject) -> None:
    text = MACROS
    for _ in range(data.draw(st.integers(1, 4))):
        pos = data.draw(st.integers(0, len(text)))
        piece = data.draw(st.text(alphabet='`()"/*\\,=\n ab_ifdefnlsu', max_size=8))
        text = text[:pos] + piece + text[pos + data.draw(st.integers(0, 6)) :]
    try:
        pre = preprocess_verilog(text, "fuzz.v")
    except CircuitFormatError as exc:
        assert "\n" not in str(exc) and exc.line is not None
    else:
        assert len(pre.origin) == pre.text.count("\n")
