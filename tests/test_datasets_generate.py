"""The built-in generator: seeded plans over all families, and a small end-to-end generate run."""

from __future__ import annotations

import circuitml.datasets as cds
import numpy as np
import pytest
from circuitml.datasets import FAMILIES, CircuitDataset, plan_designs
from circuitml.datasets.generate.pipeline import DEFAULT_COUNT
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from circuitml.errors import ConfigError

ISSUE_FAMILIES = {
    "adder_rc",
    "adder_cla",
    "subtractor",
    "mult_array",
    "mult_booth",
    "comparator",
    "mux",
    "decoder",
    "encoder",
    "priority_encoder",
    "alu",
    "parity",
    "crc",
    "barrel_shifter",
    "counter",
    "fsm",
    "random_control",
}


def test_generate_is_the_function():
    # ``circuitml.datasets.generate`` names the pipeline function, not the subpackage of families
    assert callable(cds.generate)


def test_every_family_is_deterministic_and_rtl():
    assert set(FAMILIES) == ISSUE_FAMILIES
    for fam in FAMILIES.values():
        for width in fam.widths[:3]:
            name, text = fam.generate(width, 11)
            assert (name, text) == fam.generate(width, 11)
            assert f"module {name}" in text and text.rstrip().endswith("endmodule")
            # readable RTL: parameters or behavioral statements, no gate primitives
            assert any(k in text for k in ("parameter", "always", "assign"))
            assert not any(f" {g} (" in text or f"\n  {g} " in text for g in ("and", "nand", "xor", "nor"))
            assert ("always @(posedge clk)" in text) == fam.sequential


def test_default_plan_covers_all_families_and_is_seeded():
    plan = plan_designs()
    assert len(plan) == DEFAULT_COUNT >= 200
    assert {d.family for d in plan} == ISSUE_FAMILIES
    assert min(sum(d.family == f for d in plan) for f in ISSUE_FAMILIES) >= 8
    assert len({d.module for d in plan}) == len(plan)
    assert plan == plan_designs()
    other = plan_designs(seed=1)
    assert [d.verilog for d in other] != [d.verilog for d in plan]


def test_plan_options():
    plan = plan_designs(10, families=["decoder", "parity"], widths=[3, 40])
    assert {d.family for d in plan} == {"decoder", "parity"}
    assert max(d.width for d in plan if d.family == "decoder") <= FAMILIES["decoder"].max_width
    with pytest.raises(ConfigError, match="families: unknown circuit family 'nope'"):
        plan_designs(3, families=["nope"])
    with pytest.raises(ConfigError, match="widths"):
        plan_designs(3, widths=[0])


def test_small_generate_run_is_a_usable_dataset(tmp_path):
    fams = ["adder_rc", "counter", "mux"]
    report = cds.generate(tmp_path / "a", count=5, families=fams, seed=3, workers=2, progress=False)
    assert (report.built, report.failed) == (5, [])
    ds = CircuitDataset(tmp_path / "a")
    assert len(ds) == 5 and set(ds.families()) == set(fams)
    for i, rec in enumerate(ds.records):
        text = ds.verilog_source(i)
        assert text is not None and f"module {rec['name']}" in text
        assert len(ds.verilog_tokens(i)) == rec["num_tokens"] > 10
        assert ds.aig(i).num_ands == rec["num_ands"]
        assert (rec["num_latches"] > 0) == (rec["family"] == "counter")
        assert ds.graph(i).num_nodes > 0

    # resuming does nothing; the same seed elsewhere gives the same files and the same circuits
    assert cds.generate(tmp_path / "a", count=5, families=fams, seed=3, progress=False).built == 0
    # (a shorter run plans the same first designs: plans grow round-robin)
    assert plan_designs(2, families=fams, seed=3) == plan_designs(5, families=fams, seed=3)[:2]
    cds.generate(tmp_path / "b", count=2, families=fams, seed=3, workers=2, progress=False)
    a_rtl = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a" / "rtl").rglob("*.v"))
    b_rtl = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b" / "rtl").rglob("*.v"))
    assert len(b_rtl) == 2 and set(b_rtl) <= set(a_rtl)
    for rel in b_rtl:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    other = CircuitDataset(tmp_path / "b")
    for j, rec in enumerate(other.records):
        i = ds.index_of(rec["id"])
        assert other.aig(j).same_structure(ds.aig(i))
        assert np.array_equal(other.verilog_tokens(j), ds.verilog_tokens(i))


def test_tokens_are_recomputed_under_another_vocabulary(tmp_path):
    import json

    from circuitml.verilog import encode_tokens, tokenize_verilog

    cds.generate(tmp_path / "d", count=1, families=["parity"], workers=1, progress=False)
    ds = CircuitDataset(tmp_path / "d")
    expected = encode_tokens(tokenize_verilog(ds.verilog_source(0)))
    assert ds.verilog_tokens(0) == expected
    manifest = json.loads((tmp_path / "d" / "manifest.json").read_text())
    manifest["records"][0]["token_vocab"] = "another"
    (tmp_path / "d" / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "d" / "circuits" / f"{ds.records[0]['id']}.safetensors").unlink()  # the cache is not read
    assert CircuitDataset(tmp_path / "d").verilog_tokens(0) == expected


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(family=st.sampled_from(sorted(ISSUE_FAMILIES)), width=st.integers(1, 20), seed=st.integers(0, 10**6))
def test_any_width_and_seed_gives_parseable_rtl(tmp_path, family, width, seed):
    """pyverilog parses every generated module (fallback=False: no Yosys rescue) and finds it as top."""
    from circuitml.verilog import parse_verilog

    fam = FAMILIES[family]
    name, text = fam.generate(min(width, fam.max_width), seed)
    path = tmp_path / f"{name}.v"
    path.write_text(text)
    design = parse_verilog([path], fallback=False)
    assert design.top == name
