"""``circuitml data generate|build|info`` and ``circuitml convert`` through the real CLI entry point."""

from __future__ import annotations

import json

from circuitml.aig import AIGBuilder
from circuitml.cli import main
from circuitml.formats import read_circuit, write_circuit


def _adder_bench(path):
    b = AIGBuilder("fa")
    x, y, c = b.add_pi("x"), b.add_pi("y"), b.add_pi("c")
    b.add_po(b.xor_many([x, y, c]), "s")
    b.add_po(b.or_many([b.and_(x, y), b.and_(c, b.xor_(x, y))]), "co")
    aig = b.build()
    write_circuit(aig, path)
    return aig


def test_build_and_info(tmp_path, capsys):
    src = tmp_path / "src" / "adders"
    src.mkdir(parents=True)
    _adder_bench(src / "fa.bench")
    (src / "bad.bench").write_text("INPUT(a)\nOUTPUT(z)\nz = FROB(a)\n")
    out = tmp_path / "ds"
    assert main(["data", "build", str(tmp_path / "src"), "--out", str(out), "--workers", "1"]) == 0
    text = capsys.readouterr().out
    assert "1 built" in text and "1 failed" in text and "bad.bench" in text
    assert main(["data", "info", str(out)]) == 0
    table = capsys.readouterr().out
    assert "adders" in table and "1 circuits" in table
    assert main(["data", "info", str(out), "--json"]) == 0
    stats = json.loads(capsys.readouterr().out)
    assert stats["families"]["adders"]["num_ands"]["max"] > 0 and stats["failures"] == 1
    assert main(["data", "export", str(out), str(tmp_path / "exported"), "--format", "aag"]) == 0
    assert read_circuit(tmp_path / "exported" / "fa.aag").same_structure(read_circuit(src / "fa.bench"))
    assert main(["data", "export", str(out), str(tmp_path / "x"), "--format", "blif"]) == 2


def test_export_into_the_dataset_folder_is_refused_and_writes_nothing(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    _adder_bench(src / "fa.bench")
    out = tmp_path / "ds"
    assert main(["data", "build", str(src), "--out", str(out), "--workers", "1"]) == 0
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    capsys.readouterr()
    (tmp_path / "link").symlink_to(out)
    for target in (out, out / "circuits", out / "new" / "deeper", tmp_path / "link" / "x", out / ".." / "ds"):
        assert main(["data", "export", str(out), str(target), "--format", "bench"]) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith(f"{target}: expected an export folder outside the dataset folder {out}"), err
        assert "\n" not in err
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before
    assert (
        main(["data", "export", str(out), str(tmp_path / "ds2"), "--format", "bench"]) == 0
    )  # a sibling is fine


def test_info_on_missing_dataset_is_one_line_exit_2(tmp_path, capsys):
    assert main(["data", "info", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err.strip()
    assert "no dataset manifest" in err and "\n" not in err


def test_convert_between_formats(tmp_path, capsys):
    from circuitml.sim import equivalent

    built = _adder_bench(tmp_path / "fa.bench")
    aig = read_circuit(tmp_path / "fa.bench")
    assert equivalent(aig, built, method="exhaustive").equal
    assert main(["convert", str(tmp_path / "fa.bench"), str(tmp_path / "fa.aag")]) == 0
    assert "3 inputs, 2 outputs, 0 latches" in capsys.readouterr().out
    assert read_circuit(tmp_path / "fa.aag").same_structure(aig)
    assert main(["convert", str(tmp_path / "fa.aag"), str(tmp_path / "fa.aig")]) == 0
    assert read_circuit(tmp_path / "fa.aig").same_structure(aig)
    assert main(["convert", str(tmp_path / "fa.aig"), str(tmp_path / "fa.txt")]) == 2
    (tmp_path / "broken.aag").write_text("aag 1 1 0 1 0\n2\n9\n")
    assert main(["convert", str(tmp_path / "broken.aag"), str(tmp_path / "x.aig")]) == 2
    assert "broken.aag" in capsys.readouterr().err
    assert not (tmp_path / "x.aig").exists()


def test_convert_verilog(tmp_path):
    (tmp_path / "m.v").write_text(
        "module m(input [1:0] a, output y);\n  assign y = a[0] ^ a[1];\nendmodule\n"
    )
    assert main(["convert", str(tmp_path / "m.v"), str(tmp_path / "m.bench")]) == 0
    aig = read_circuit(tmp_path / "m.bench")
    assert (aig.num_inputs, aig.num_outputs) == (2, 1)


def test_generate_list_and_small_run(tmp_path, capsys):
    assert main(["data", "generate", "--list"]) == 0
    assert "priority_encoder" in capsys.readouterr().out
    out = tmp_path / "gen"
    args = [
        "data",
        "generate",
        "--out",
        str(out),
        "--count",
        "2",
        "--families",
        "parity,decoder",
        "--seed",
        "5",
    ]
    assert main(args) == 0
    assert "2 built" in capsys.readouterr().out
    assert main(["data", "export", str(out), str(tmp_path / "pairs"), "--verilog"]) == 0
    pairs = sorted(p.suffix for p in (tmp_path / "pairs").iterdir())
    assert pairs == [".aig", ".aig", ".v", ".v"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert sorted(r["family"] for r in manifest["records"]) == ["decoder", "parity"]
    assert main(["data", "generate", "--out", str(out), "--families", "nope"]) == 2
    assert main(["data", "generate"]) == 2
