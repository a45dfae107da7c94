"""``data build`` on real-world folders: duplicates, testbenches, excludes, symlinks, strictness, warnings,
concurrent builds into one folder and ids that survive an interrupt."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
from pathlib import Path

import circuitml.datasets.build as build_module
import pytest
from circuitml.datasets import CircuitDataset, build_dataset

from circuitml.aig import AIGBuilder
from circuitml.cli import main
from circuitml.errors import DatasetError
from circuitml.formats import write_circuit
from tests.test_datasets_build import _circuit

DESIGN = "module g{k}(input a, b, output y);\n  assign y = a {op} b;\nendmodule\n"
TESTBENCH = """`timescale 1ns/1ps
module tb;
  reg a, b; wire y;
  g0 dut(.a(a), .b(b), .y(y));
  initial begin a = 0; b = 1; #1 $display("%b", y); $finish; end
endmodule
"""
LATCH = "module lt(input s, a, output reg y);\n  always @* if (s) y = a;\nendmodule\n"


def _files(tree: dict[str, str], root: Path) -> Path:
    for rel, text in tree.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def _manifest(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_identical_files_each_get_a_record_sharing_one_circuit(tmp_path: Path) -> None:
    same = DESIGN.format(k=0, op="&")
    src = _files({"p1/g.v": same, "p2/g.v": same, "p3/h.v": DESIGN.format(k=1, op="|")}, tmp_path / "src")
    out = tmp_path / "ds"
    report = build_dataset([src], out, workers=1, progress=False)
    assert (report.built, report.aliased, report.records) == (2, 1, 3)
    ds = CircuitDataset(out)
    recs = {r["family"]: r for r in ds.records}
    assert set(recs) == {"p1", "p2", "p3"}
    alias = next(r for r in ds.records if r.get("alias_of"))
    original = next(r for r in ds.records if r["id"] == alias["alias_of"])
    assert alias["sha256"] == original["sha256"] and alias["source"] != original["source"]
    assert len(list((out / "circuits").glob("*.safetensors"))) == 2  # one stored circuit for both
    assert ds.aig(ds.index_of(alias["id"])).same_structure(ds.aig(ds.index_of(original["id"])))
    again = build_dataset([src], out, workers=1, progress=False)
    assert (again.built, again.aliased, again.skipped) == (0, 0, 3)


def test_testbenches_excludes_and_outside_symlinks_are_ignored_with_reasons(tmp_path: Path) -> None:
    src = _files(
        {"rtl/g0.v": DESIGN.format(k=0, op="^"), "rtl/tb_g0.v": TESTBENCH, "rtl/old/g9.v": "garbage"},
        tmp_path / "src",
    )
    secret = tmp_path / "secret.v"
    secret.write_text("SECRET-CONTENT module x;\n")
    os.symlink(secret, src / "rtl" / "link.v")
    report = build_dataset([src], tmp_path / "ds", workers=1, progress=False, exclude=["old"])
    assert report.built == 1 and not report.failed, report.failed
    reasons = {Path(p).name: r for p, r in report.ignored}
    assert reasons["tb_g0.v"].startswith("testbench")
    assert reasons["g9.v"] == "excluded by --exclude old"
    assert "outside" in reasons["link.v"] and "SECRET" not in json.dumps(report.ignored)
    assert "SECRET" not in (tmp_path / "ds" / "manifest.json").read_text()
    followed = build_dataset(
        [src], tmp_path / "ds2", workers=1, progress=False, exclude=["old", "tb_*"], follow_symlinks=True
    )
    assert len(followed.failed) == 1 and followed.failed[0][0].endswith("link.v")


def test_strict_only_bad_and_warnings_through_the_cli(tmp_path: Path, capsys) -> None:
    bad = _files(
        {"a/bad.v": "module bad(input a, output y);\n  assign y = a &;\nendmodule\n"}, tmp_path / "b"
    )
    out = tmp_path / "ds"
    assert main(["data", "build", str(bad), "--out", str(out), "-j", "1"]) == 2
    assert "nothing built" in capsys.readouterr().err and not out.exists()
    good = _files({"x/g0.v": DESIGN.format(k=0, op="&"), "x/lt.v": LATCH}, tmp_path / "g")
    assert main(["data", "build", str(good), str(bad), "--out", str(out), "-j", "1"]) == 0
    captured = capsys.readouterr()
    assert "latch inferred for lt.y" in captured.out and "bad.v" in captured.out
    rec = next(r for r in _manifest(out)["records"] if r["id"] == "lt")
    assert rec["warnings"] == ["lt.v: latch inferred for lt.y"]
    with pytest.raises(DatasetError, match="bad.v.*--strict"):
        build_dataset([bad], tmp_path / "ds3", workers=1, progress=False, strict=True)
    assert main(["data", "build", str(good), "--out", str(tmp_path / "ds4"), "--latch-error", "-j", "1"]) == 0
    assert [r["id"] for r in _manifest(tmp_path / "ds4")["records"]] == ["g0"]


def _aiger_sources(root: Path, names: list[str], offset: int) -> Path:
    """One AND chain per name, of a length no other source has (so no two files share content)."""
    for k, name in enumerate(names):
        b = AIGBuilder(name)
        pis = [b.add_pi(f"x{i}") for i in range(2 + offset + k)]
        acc = pis[0]
        for p in pis[1:]:
            acc = b.and_(acc, p)
        b.add_po(acc, "y")
        write_circuit(b.build(), root / f"{name}.aig")
    return root


def _build(args: tuple[str, str]) -> int:
    build_dataset([args[0]], args[1], workers=1, progress=False)
    return 0


def test_concurrent_builds_into_one_folder_end_with_the_union(tmp_path: Path) -> None:
    a = _aiger_sources(tmp_path / "fa", [f"a{k}" for k in range(8)], 0)
    b = _aiger_sources(tmp_path / "fb", [f"b{k}" for k in range(8)], 8)
    sequential = tmp_path / "seq"
    build_dataset([a], sequential, workers=1, progress=False)
    build_dataset([b], sequential, workers=1, progress=False)
    together = tmp_path / "par"
    with mp.get_context("fork").Pool(2) as pool:
        assert pool.map(_build, [(str(a), str(together)), (str(b), str(together))]) == [0, 0]
    assert len(_manifest(together)["records"]) == 16
    assert (together / "manifest.json").read_bytes() == (sequential / "manifest.json").read_bytes()
    for f in (sequential / "circuits").iterdir():
        assert (together / "circuits" / f.name).read_bytes() == f.read_bytes()


def test_interrupted_build_gives_the_ids_of_a_clean_one(tmp_path: Path, monkeypatch) -> None:
    src = tmp_path / "src" / "iscas"
    src.mkdir(parents=True)
    for k, name in enumerate(["c432", "c499", "c880"]):
        write_circuit(_circuit(k), src / f"{name}.bench")
    for k, name in enumerate(["c432", "c880"]):  # a Verilog twin of some of them, as in real folders
        (src / f"{name}.v").write_text(DESIGN.format(k=k, op="&").replace(f"g{k}", name))
    clean = tmp_path / "clean"
    build_dataset([tmp_path / "src"], clean, workers=1, progress=False)

    real, calls = build_module.build_item, {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    out = tmp_path / "ds"
    monkeypatch.setattr(build_module, "build_item", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_dataset([tmp_path / "src"], out, workers=1, progress=False)
    monkeypatch.setattr(build_module, "build_item", real)
    build_dataset([tmp_path / "src"], out, workers=1, progress=False)
    ids = sorted(r["id"] for r in _manifest(out)["records"])
    assert ids == sorted(r["id"] for r in _manifest(clean)["records"])
    assert "c432_v" in ids and "c432_bench" in ids and "c499" in ids


def test_batched_synthesis_gives_the_same_dataset_as_one_design_per_yosys(
    tmp_path: Path, monkeypatch
) -> None:
    tree = {f"f{k}/g{k}.v": DESIGN.format(k=k, op="&|^"[k % 3]) for k in range(4)}
    tree["f9/lt.v"] = LATCH
    src = _files(tree, tmp_path / "src")
    batched = tmp_path / "batched"
    assert build_dataset([src], batched, workers=1, progress=False).built == 5
    monkeypatch.setattr(build_module, "_VERILOG_BATCH", 1)
    single = tmp_path / "single"
    assert build_dataset([src], single, workers=1, progress=False).built == 5
    assert (batched / "manifest.json").read_bytes() == (single / "manifest.json").read_bytes()
    for f in (single / "circuits").iterdir():
        assert (batched / "circuits" / f.name).read_bytes() == f.read_bytes()
    assert next(r for r in _manifest(batched)["records"] if r["id"] == "lt")["warnings"]


def test_data_qor_does_not_read_symlinks_leaving_its_folder(tmp_path: Path) -> None:
    """``data qor`` walks input folders like ``data build``: a symlink to a file outside is left out with a
    reason naming the link, unless ``--follow-symlinks``."""
    from circuitml.datasets.qor import generate_qor_labels

    outside = tmp_path / "outside"
    outside.mkdir()
    write_circuit(_circuit(1), outside / "secret.bench")
    src = tmp_path / "designs"
    src.mkdir()
    write_circuit(_circuit(0), src / "inside.bench")
    (src / "link.bench").symlink_to(outside / "secret.bench")

    rep = generate_qor_labels([src], tmp_path / "labels", num_recipes=2, workers=1)
    assert rep.designs == 1
    assert [Path(link).name for link, _ in rep.ignored] == ["link.bench"]
    assert "secret" not in rep.ignored[0][1]  # the reason names the link, never the target
    rep = generate_qor_labels([src], tmp_path / "labels_all", num_recipes=2, workers=1, follow_symlinks=True)
    assert rep.designs == 2 and rep.ignored == []


# VerilogEval's layout: every problem's testbench carries a stimulus generator *with ports*, instantiates the
# reference design (same module name in every problem) and has a port-less ``tb`` top that calls $finish.
VERILOGEVAL_TB = """`timescale 1 ps/1 ps
module stimulus_gen (input clk, output reg a, output reg b);
  initial begin a = 0; b = 0; repeat (4) @(posedge clk) {a, b} <= $random; #1 $finish; end
endmodule
module tb();
  reg clk = 0; wire a, b, y_ref, y_dut;
  always #5 clk = ~clk;
  stimulus_gen stim1 (.clk(clk), .a(a), .b(b));
  RefModule good1 (.a(a), .b(b), .y(y_ref));
  TopModule top_module1 (.a(a), .b(b), .y(y_dut));
endmodule
"""
REF = "module RefModule(input a, input b, output y);\n  assign y = a {op} b;\nendmodule\n"
INIT_DESIGN = """module rom(input [1:0] addr, output [3:0] q);
  reg [3:0] mem [0:3];
  initial begin mem[0] = 1; mem[1] = 2; mem[2] = 4; mem[3] = 8; end
  assign q = mem[addr];
endmodule
"""


def test_testbenches_with_helper_modules_are_left_out_and_designs_kept(tmp_path: Path) -> None:
    tree = {f"p/Prob00{k}_ref.sv": REF.format(op=op) for k, op in enumerate("&|^", 1)}
    tree |= {f"p/Prob00{k}_test.sv": VERILOGEVAL_TB for k in (1, 2, 3)}
    tree["p/rom.v"] = INIT_DESIGN  # `initial` in a module with ports is a design (memory init), not a bench
    src = _files(tree, tmp_path / "src")
    report = build_dataset([src], tmp_path / "ds", workers=1, progress=False)
    assert not report.failed, report.failed
    reasons = {Path(p).name: r for p, r in report.ignored}
    assert sorted(n for n, r in reasons.items() if r.startswith("testbench")) == [
        f"Prob00{k}_test.sv" for k in (1, 2, 3)
    ]
    ids = sorted(r["source"].rsplit("/", 1)[-1] for r in _manifest(tmp_path / "ds")["records"])
    assert ids == ["Prob001_ref.sv", "Prob002_ref.sv", "Prob003_ref.sv", "rom.v"]


def test_empty_and_garbage_files_fail_with_their_own_reader_errors(tmp_path: Path) -> None:
    # an empty .aig and an empty .bench share a hash, not a reader: each file gets its own reader's one-line error
    src = _files(
        {"a.aig": "", "b.bench": "", "c.bench": " \n", "d.bench": "garbage\n", "e.bench": "garbage\n"},
        tmp_path / "s",
    )
    report = build_dataset([src], tmp_path / "ds", workers=1, progress=False)
    assert (report.built, report.aliased) == (0, 0)
    reasons = {Path(p).name: r for p, r in report.failed}
    assert (
        reasons["a.aig"] == f"{src / 'a.aig'}:1: expected AIGER header 'aag|aig M I L O A', got 'end of file'"
    )
    for name in ("b.bench", "c.bench"):
        assert reasons[name] == (
            f"{src / name}:1: expected 'INPUT(x)', 'OUTPUT(x)' or 'y = GATE(a, ...)' lines, got 'an empty file'"
        )
    for name in (
        "d.bench",
        "e.bench",
    ):  # the same bytes, the same reader: the same error, naming its own file
        assert reasons[name].startswith(f"{src / name}:1: expected") and reasons[name].endswith(
            "got 'garbage'"
        )
    assert len(reasons) == 5 and "same content" not in json.dumps(report.failed)
