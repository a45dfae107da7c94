"""Building datasets: every format in, bad files reported and skipped, resumable after an interrupt, Verilog
folders as one design, and the loader on top (AIGs, graphs, tokens)."""

from __future__ import annotations

import json

import circuitml.datasets.build as build_module
import numpy as np
import pytest
import torch
from circuitml.datasets import CircuitDataset, build_dataset, discover_sources
from torch_geometric.data import Batch

from circuitml.aig import AIGBuilder
from circuitml.errors import DatasetError
from circuitml.formats import read_circuit, write_circuit

from .conftest import shared_files


def _circuit(k: int):
    b = AIGBuilder(f"c{k}")
    pis = [b.add_pi(f"x{i}") for i in range(2 + k % 3)]
    acc = pis[0]
    for p in pis[1:]:
        acc = b.xor_(acc, p) if k % 2 else b.and_(acc, p ^ 1)
    b.add_po(acc, "y")
    b.add_po(b.or_(pis[0], pis[-1]), "z")
    return b.build()


@pytest.fixture
def sources(tmp_path):
    """Six small circuits in two families (AIGER binary/ASCII, bench) and one malformed file."""
    root = tmp_path / "src"
    for k in range(6):
        family = "alpha" if k < 3 else "beta"
        suffix = (".aig", ".aag", ".bench")[k % 3]
        path = root / family / f"c{k}{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_circuit(_circuit(k), path)
    (root / "beta" / "broken.aag").write_text("aag 3 2 0 1 1\n2\n4\n6\n6 2 9\n")
    return root


def _manifest(path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def test_build_reports_bad_file_and_keeps_the_rest(sources, tmp_path):
    out = tmp_path / "ds"
    report = build_dataset([sources], out, workers=2, progress=False)
    assert (report.built, report.skipped, report.records) == (6, 0, 6)
    assert len(report.failed) == 1
    src, reason = report.failed[0]
    assert src.endswith("broken.aag") and "broken.aag" in reason and "\n" not in reason
    ds = CircuitDataset(out)
    assert ds.families() == {"alpha": 3, "beta": 3}
    for i, rec in enumerate(ds.records):
        original = read_circuit(rec["source"])
        assert ds.aig(i).same_structure(original)
        assert (rec["num_ands"], rec["depth"], rec["num_pis"]) == (
            original.num_ands,
            original.depth(),
            original.num_pis,
        )
        assert ds.verilog_source(i) is None and ds.verilog_tokens(i) is None
    assert _manifest(out)["failures"][0]["source"].endswith("broken.aag")


def test_rebuild_skips_everything_and_keeps_the_manifest(sources, tmp_path):
    out = tmp_path / "ds"
    build_dataset([sources], out, workers=1, progress=False)
    first = _manifest(out)
    again = build_dataset([sources], out, workers=2, progress=False)
    assert (again.built, again.skipped, len(again.failed)) == (0, 6, 1)
    assert _manifest(out) == first


def test_interrupted_build_resumes_to_the_same_manifest(sources, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    build_dataset([sources], reference, workers=1, progress=False)

    out = tmp_path / "ds"
    real = build_module.build_item
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(build_module, "build_item", flaky)
    with pytest.raises(KeyboardInterrupt):
        build_dataset([sources], out, workers=1, progress=False)
    partial = _manifest(out)
    assert len(partial["records"]) == 3  # finished items survive the interrupt
    monkeypatch.setattr(build_module, "build_item", real)

    resumed = build_dataset([sources], out, workers=2, progress=False)
    assert resumed.skipped == 3 and resumed.built == 3
    assert _manifest(out)["records"] == _manifest(reference)["records"]


def test_deleted_circuit_file_is_rebuilt_and_stale_file_detected(sources, tmp_path):
    out = tmp_path / "ds"
    build_dataset([sources], out, workers=1, progress=False)
    ds = CircuitDataset(out)
    (out / "circuits" / f"{ds.records[0]['id']}.safetensors").unlink()
    with pytest.raises(DatasetError, match="cannot read circuit file"):
        ds.aig(0)
    report = build_dataset([sources], out, workers=1, progress=False)
    assert report.built == 1
    # a circuit file of another source under this id is reported, not silently used
    ids = [r["id"] for r in ds.records]
    other = out / "circuits" / f"{ids[1]}.safetensors"
    (out / "circuits" / f"{ids[0]}.safetensors").write_bytes(other.read_bytes())
    with pytest.raises(DatasetError, match="stale file"):
        CircuitDataset(out).aig(0)


def test_graphs_batch_with_graph_ids(sources, tmp_path):
    out = tmp_path / "ds"
    build_dataset([sources], out, workers=1, progress=False)
    ds = CircuitDataset(out)
    graphs = list(ds)
    assert len(graphs) == len(ds) == 6
    batch = Batch.from_data_list(graphs)
    assert batch.graph_id.tolist() == list(range(6))
    assert int(batch.num_graphs) == 6
    g = ds.graph(2, explicit_not=False)
    assert g.edge_attr is not None and torch.equal(g.graph_id, torch.tensor([2]))
    sub = ds.subset([4, 1])
    assert [r["id"] for r in sub.records] == [ds.records[4]["id"], ds.records[1]["id"]]
    assert sub.aig(0).same_structure(ds.aig(4))


def test_missing_sources_and_wrong_suffix_are_reported(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    report = build_dataset([tmp_path / "nope", tmp_path / "notes.txt"], tmp_path / "ds", progress=False)
    reasons = dict(report.failed)
    assert "no such file" in reasons[str(tmp_path / "nope")]
    assert "expected a file ending" in reasons[str(tmp_path / "notes.txt")]
    assert report.records == 0


MULTI_TOP = """`include "defs.vh"
module chip(input [`W-1:0] a, input [`W-1:0] b, output [`W-1:0] y, output c);
  half_sum u0 (.a(a), .b(b), .s(y));
  assign c = |(a & b);
endmodule
"""
MULTI_SUB = """`include "defs.vh"
module half_sum(input [`W-1:0] a, input [`W-1:0] b, output [`W-1:0] s);
  assign s = a ^ b;
endmodule
"""


def test_verilog_folder_with_submodules_is_one_design(tmp_path):
    rtl = tmp_path / "designs" / "chipset"
    rtl.mkdir(parents=True)
    (rtl / "defs.vh").write_text("`define W 4\n")
    (rtl / "chip.v").write_text(MULTI_TOP)
    (rtl / "half_sum.v").write_text(MULTI_SUB)
    (rtl / "lonely.v").write_text("module lonely(input a, b, output y);\n  assign y = a & ~b;\nendmodule\n")
    items, problems = discover_sources([tmp_path / "designs"])
    assert not problems
    assert sorted((it.stem, it.top, len(it.paths)) for it in items) == [
        ("chip", "chip", 2),
        ("lonely", "lonely", 1),
    ]
    out = tmp_path / "ds"
    report = build_dataset([tmp_path / "designs"], out, workers=1, progress=False)
    assert report.built == 2, report.failed
    ds = CircuitDataset(out)
    chip = ds.index_of("chip")
    aig = ds.aig(chip)
    assert (aig.num_inputs, aig.num_outputs) == (8, 5)
    from circuitml.sim import truth_tables

    tt = truth_tables(aig)
    rows = np.arange(256)
    a, b = rows & 15, rows >> 4
    bits = ((tt[:, :, None] >> np.arange(64, dtype=np.uint64)) & np.uint64(1)).reshape(5, -1)[:, :256]
    y = sum(bits[k].astype(int) << k for k in range(4))
    assert np.array_equal(y, a ^ b) and np.array_equal(bits[4], ((a & b) != 0).astype(np.uint64))
    text = ds.verilog_source(chip)
    assert "module half_sum" in text and "module chip" in text
    tokens = ds.verilog_tokens(chip)
    assert tokens and all(isinstance(t, int) for t in tokens)
    assert ds.records[chip]["family"] == "chipset"


_DFF = "module dff(input CK, D, output reg Q);\n  always @(posedge CK) Q <= D;\nendmodule\n"


def test_files_that_define_what_they_instantiate_are_designs_of_their_own(tmp_path):
    """ISCAS89's Verilog: every file carries its own ``dff``. A file that defines the module it instantiates is
    self-contained; a file that only uses a module several files define is ambiguous and stays alone (its build
    then names the missing module) instead of merging the whole folder into one design."""
    rtl = tmp_path / "iscas89"
    rtl.mkdir()
    for name in ("s1", "s2"):
        (rtl / f"{name}.v").write_text(
            _DFF + f"module {name}(input CK, a, output q);\n  dff d0(CK, a, q);\nendmodule\n"
        )
    (rtl / "s3.v").write_text("module s3(input CK, a, output q);\n  dff d0(CK, a, q);\nendmodule\n")
    (rtl / "lib.v").write_text("module inv(input a, output y);\n  assign y = ~a;\nendmodule\n")
    (rtl / "s4.v").write_text("module s4(input a, output y);\n  inv i0(a, y);\nendmodule\n")
    items, problems = discover_sources([rtl])
    assert not problems
    assert sorted((it.top, [p.name for p in it.paths]) for it in items) == [
        ("s1", ["s1.v"]),
        ("s2", ["s2.v"]),
        ("s3", ["s3.v"]),
        ("s4", ["lib.v", "s4.v"]),  # a module defined in exactly one other file still joins its design
    ]


def test_a_failing_multi_file_design_keeps_its_reason_in_the_message(tmp_path, monkeypatch):
    """A multi-file design's error starts with its file list (how Yosys' messages name it); a plain cut at 400
    characters kept only the list, and the reason was lost (seen on ISCAS89's 21 Verilog files)."""
    rtl = tmp_path / "big"
    rtl.mkdir()
    names = [f"part_with_a_long_file_name_{k:02d}" for k in range(12)]
    for k, name in enumerate(names):
        inst = f"  {names[k + 1]} u(a, y);\n" if k + 1 < len(names) else "  assign y = a;\n"
        (rtl / f"{name}.v").write_text(f"module {name}(input a, output y);\n{inst}endmodule\n")
    (item,), _ = discover_sources([rtl])
    listed = ", ".join(str(p) for p in item.paths)

    def fail(*args, **kwargs):
        raise RuntimeError(f"{listed}: Yosys failed: ERROR: the reason a user needs")

    monkeypatch.setattr(build_module, "build_item", fail)
    _, reason = build_module._worker(item, "c0", str(tmp_path / "ds"), 10.0)
    assert len(reason) <= 400 and reason.startswith(str(item.paths[0]))
    assert reason.endswith("Yosys failed: ERROR: the reason a user needs")


@pytest.mark.parametrize("pattern", ["ispras__hdl-benchmarks/iscas85/bench/c*.bench"])
def test_shared_circuits_build(shared_data, tmp_path, pattern):
    files = shared_files(pattern)[:4] + shared_files("lsils__benchmarks/random_control/*.aig")[:3]
    report = build_dataset(files, tmp_path / "ds", workers=2, progress=False)
    assert report.built == len(files) and not report.failed
    ds = CircuitDataset(tmp_path / "ds")
    assert set(ds.families()) == {"iscas85", "random_control"}
    for i, rec in enumerate(ds.records):
        assert ds.aig(i).same_structure(read_circuit(rec["source"]))


def test_openabc_rtl_folders_group_into_designs(shared_data):
    items, problems = discover_sources([shared_data / "NYU-MLDA__OpenABC" / "bench_rtl" / "src"])
    assert not problems
    tops = {it.family: it.top for it in items if len(it.paths) > 1}
    assert tops == {
        "i2c": "i2c_master_top",
        "sasc": "sasc_top",
        "simple_spi": "simple_spi_top",
        "spi": "spi_top",
        "usb_phy": "usb_phy",
    }
    spi = next(it for it in items if it.top == "spi_top")
    assert {p.name for p in spi.include_files} == {"spi_defines.v", "timescale.v"}


def test_stray_temp_files_are_cleaned(sources, tmp_path):
    out = tmp_path / "ds"
    (out / "circuits").mkdir(parents=True)
    stray = out / "circuits" / ".c0.safetensors.x1y2.tmp"
    stray.write_bytes(b"half")
    build_dataset([sources], out, workers=1, progress=False)
    assert not stray.exists()


def test_dataset_inside_a_source_folder_is_not_read_back(tmp_path):
    rtl = tmp_path / "work" / "logic"
    rtl.mkdir(parents=True)
    (rtl / "g.v").write_text("module g(input a, b, output y);\n  assign y = a ^ b;\nendmodule\n")
    out = tmp_path / "work" / "ds"
    assert build_dataset([tmp_path / "work"], out, workers=1, progress=False).built == 1
    again = build_dataset([tmp_path / "work"], out, workers=1, progress=False)
    assert (again.total, again.built, again.skipped) == (1, 0, 1)


def test_ids_are_short_unique_and_stable(tmp_path):
    for k, (folder, suffix) in enumerate(
        (("one", ".aig"), ("one", ".bench"), ("two", ".aig"), ("two", ".aag"))
    ):
        path = tmp_path / "src" / folder / f"c{suffix}"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_circuit(_circuit(k), path)
    write_circuit(_circuit(9), tmp_path / "src" / "two" / "solo.aig")
    out = tmp_path / "ds"
    build_dataset([tmp_path / "src"], out, workers=1, progress=False)
    ids = sorted(r["id"] for r in CircuitDataset(out).records)
    assert ids == ["c_aag", "c_bench", "one__c_aig", "solo", "two__c_aig"]
    build_dataset([tmp_path / "src"], out, workers=1, progress=False)
    assert sorted(r["id"] for r in CircuitDataset(out).records) == ids
