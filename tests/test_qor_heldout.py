"""QoR with many designs: named test designs (train on generated, test on real), pretraining-corpus designs
dropped from a labels folder, and the two-way ANOVA of the labels against a naive reference."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from circuitml.datasets.qor import generate_recipes, load_qor_labels, recipe_text
from circuitml.tasks.common import TrainConfig
from circuitml.tasks.qor import run_qor, split_rows
from circuitml.tasks.qor_anova import anova_two_way, design_family, qor_variance, shared_interaction
from circuitml.tasks.runner import Variant, prepare_task, run_variants

from circuitml.errors import ConfigError
from circuitml.formats import aiger_bytes, write_aiger
from tests.test_tasks_train import random_circuit

SMALL = {"kind": "gcn", "hidden": 8, "num_layers": 1}


def _labels_folder(root: Path, names: list[str], sources: list[str], num_recipes: int = 6) -> Path:
    """A QoR labels folder as ``data qor`` writes it, with seeded AND counts (no ABC run needed)."""
    rng = np.random.default_rng(0)
    recipes = generate_recipes(num_recipes, seed=0)
    (root / "designs").mkdir(parents=True)
    designs, rows = [], []
    for k, (name, src) in enumerate(zip(names, sources, strict=True)):
        aig = random_circuit(200 + k, num_gates=15 + k, name=name)
        (root / "designs" / f"{name}.aig").write_bytes(aiger_bytes(aig, binary=True))
        designs.append({"id": name, "source": src, "ands": aig.num_ands, "depth": aig.depth()})
        for r in range(num_recipes):
            n = int(rng.integers(5, 40))
            rows.append({"design": name, "recipe": r, "ands": n, "depth": n // 3})
    meta = {
        "format": "circuitml-qor-labels", "version": 1, "seed": 0, "recipe_length": 20,
        "recipes": [recipe_text(r) for r in recipes], "metrics": ["ands", "depth"], "designs": designs,
    }  # fmt: skip
    (root / "meta.json").write_text(json.dumps(meta))
    (root / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


NAMES = ["alu_w4_s1", "alu_w6_s2", "mux_w4_s3", "mux_w8_s4", "c432", "c880"]
SOURCES = [f"/gen/circuits/{n}.aig" for n in NAMES[:4]] + [
    "/real/iscas85/c432.bench",
    "/real/iscas85/c880.bench",
]


def test_test_designs_hold_out_exactly_the_named_designs_at_every_seed(tmp_path: Path, monkeypatch) -> None:
    labels = load_qor_labels(_labels_folder(tmp_path / "q", NAMES, SOURCES))
    assert labels.match_designs(["/real/*"]).tolist() == [4, 5]
    assert labels.match_designs(["mux_*", "c880"]).tolist() == [2, 3, 5]
    monkeypatch.chdir("/")  # a relative path pattern starts at the working folder
    assert labels.match_designs(["real/iscas85/c4*"]).tolist() == [4]
    for seed in (0, 1, 2):
        tr, te = split_rows(labels, "designs", 0.25, seed, test_designs=("c432", "c880"))
        assert set(labels.design[te]) == {4, 5} and set(labels.design[tr]) == {0, 1, 2, 3}
        # validation: a share of the training (generated) designs; the named test designs stay unused
        vtr, vte = split_rows(labels, "designs", 0.25, seed, validation=True, test_designs=("c432", "c880"))
        assert set(labels.design[vtr]) | set(labels.design[vte]) == {0, 1, 2, 3}
        assert not set(labels.design[vtr]) & set(labels.design[vte])
    with pytest.raises(ConfigError, match="designs' split"):
        split_rows(labels, "recipes", 0.25, 0, test_designs=("c432",))
    with pytest.raises(ConfigError, match="nope"):
        split_rows(labels, "designs", 0.25, 0, test_designs=("nope",))


def test_prepare_task_resolves_test_design_patterns_and_runs_on_them(tmp_path: Path) -> None:
    root = _labels_folder(tmp_path / "q", NAMES, SOURCES)
    data = prepare_task("qor", root, test_designs=("/real/*",))
    assert data.test_designs == ("c432", "c880")
    runs = run_variants(
        data, [Variant("scratch", "scratch", "scratch")], [0, 1], TrainConfig(epochs=1), encoder_config=SMALL
    )
    for res in runs["scratch"]:
        assert sorted({res.group_names[d] for d in res.group}) == ["c432", "c880"]
        assert "--test-designs" in res.notes
    with pytest.raises(ConfigError, match="matches no design"):
        prepare_task("qor", root, test_designs=("/real/*", "zzz*"))
    with pytest.raises(ConfigError, match="none is left to train on"):
        prepare_task("qor", root, test_designs=("*",))
    with pytest.raises(ConfigError, match="--split designs"):
        prepare_task("qor", root, split="recipes", test_designs=("c432",))


def test_exclude_seen_drops_corpus_designs_from_a_qor_labels_folder(tmp_path: Path) -> None:
    from circuitml.datasets import build_dataset

    root = _labels_folder(tmp_path / "q", NAMES, SOURCES)
    full = load_qor_labels(root)
    src = tmp_path / "corpus_src"
    src.mkdir()
    seen = full.aig(1)  # alu_w6_s2's very function, under another name
    seen.name = "renamed"
    write_aiger(seen, src / "renamed.aig")
    build_dataset([src], tmp_path / "corpus", workers=1)
    data = prepare_task("qor", root, exclude_seen=tmp_path / "corpus")
    assert data.labels.design_ids == [n for n in NAMES if n != "alu_w6_s2"]
    assert data.heldout["seen_by_function"] == 1 and data.heldout["dropped"] == ["alu_w6_s2"]
    assert len(data.prepared) == 5 and len(data.labels) == 5 * len(full.recipes)
    # the kept rows are the original rows of the kept designs, re-indexed
    for d, name in enumerate(data.labels.design_ids):
        old = NAMES.index(name)
        assert np.array_equal(
            data.labels.values["ands"][data.labels.design == d], full.values["ands"][full.design == old]
        )
    res = run_qor(
        data.labels, "scratch", "scratch", TrainConfig(epochs=1), graphs=data.prepared, encoder_config=SMALL
    )
    assert "alu_w6_s2" not in res.group_names


def _naive_anova(y: np.ndarray) -> tuple[float, float, float, float]:
    d_n, r_n = y.shape
    mu = sum(y[d, r] for d in range(d_n) for r in range(r_n)) / (d_n * r_n)
    row = [sum(y[d]) / r_n for d in range(d_n)]
    col = [sum(y[:, r]) / d_n for r in range(r_n)]
    ss_d = sum(r_n * (row[d] - mu) ** 2 for d in range(d_n))
    ss_r = sum(d_n * (col[r] - mu) ** 2 for r in range(r_n))
    ss_i = sum((y[d, r] - row[d] - col[r] + mu) ** 2 for d in range(d_n) for r in range(r_n))
    ss_t = sum((y[d, r] - mu) ** 2 for d in range(d_n) for r in range(r_n))
    return ss_d, ss_r, ss_i, ss_t


def test_two_way_anova_matches_a_naive_reference_and_its_shares_add_up() -> None:
    rng = np.random.default_rng(3)
    y = rng.normal(size=(7, 5)) + rng.normal(size=(7, 1)) * 3 + rng.normal(size=(1, 5))
    got = anova_two_way(y)
    ss_d, ss_r, ss_i, ss_t = _naive_anova(y)
    assert got["ss_design"] == pytest.approx(ss_d) and got["ss_recipe"] == pytest.approx(ss_r)
    assert got["ss_interaction"] == pytest.approx(ss_i) and got["ss_total"] == pytest.approx(ss_t)
    assert got["frac_design"] + got["frac_recipe"] + got["frac_interaction"] == pytest.approx(1.0)
    # additive table: no interaction at all
    assert anova_two_way(rng.normal(size=(4, 1)) + rng.normal(size=(1, 6)))["frac_interaction"] < 1e-12


def test_family_share_of_the_interaction_is_a_leave_one_out_prediction() -> None:
    rng = np.random.default_rng(5)
    pattern = rng.normal(size=(2, 6))  # each family's own recipe ranking
    groups = ["a", "a", "a", "b", "b", None, "c"]
    y = np.stack([pattern[0 if g == "a" else 1] if g in ("a", "b") else rng.normal(size=6) for g in groups])
    y += rng.normal(scale=0.1, size=y.shape) + rng.normal(size=(7, 1))
    got = shared_interaction(y, groups)
    # naive: interaction rows, then for each design of a group of 2+ the mean row of the others
    ab = y - y.mean(1, keepdims=True) - y.mean(0, keepdims=True) + y.mean()
    use = [i for i, g in enumerate(groups) if g is not None and groups.count(g) >= 2]
    err = sum(
        ((ab[i] - np.mean([ab[j] for j in use if groups[j] == groups[i] and j != i], axis=0)) ** 2).sum()
        for i in use
    )
    assert got["designs"] == 5 and got["groups"] == 2
    assert got["explained"] == pytest.approx(1 - err / sum((ab[i] ** 2).sum() for i in use))
    assert got["explained"] > 0.5  # the families share their ranking
    assert design_family("alu_w16_s123") == "alu" and design_family("c432") is None


def test_qor_variance_on_z_scores_has_no_design_effect(tmp_path: Path) -> None:
    labels = load_qor_labels(_labels_folder(tmp_path / "q", NAMES, SOURCES))
    v = qor_variance(labels)
    assert v["z"]["frac_design"] < 1e-12
    assert v["z"]["frac_recipe"] + v["z"]["frac_interaction"] == pytest.approx(1.0)
    assert v["raw"]["designs"] == 6 and v["raw"]["family"]["groups"] == 2


def test_ratio_target_is_the_log_shrink_and_its_baselines_use_the_training_rows(tmp_path: Path) -> None:
    labels = load_qor_labels(_labels_folder(tmp_path / "q", NAMES, SOURCES))
    meta = json.loads((tmp_path / "q" / "meta.json").read_text())
    orig = {d["id"]: d["ands"] for d in meta["designs"]}
    naive = [
        np.log(max(labels.values["ands"][i], 1)) - np.log(orig[labels.design_ids[labels.design[i]]])
        for i in range(len(labels))
    ]
    assert np.allclose(labels.log_ratios("ands"), naive, atol=1e-6)
    cfg = TrainConfig(epochs=1, seed=0)
    res = run_qor(labels, "scratch", "scratch", cfg, target="ratio", encoder_config=SMALL)
    tr, te = split_rows(labels, "designs", cfg.test_fraction, 0)
    y = labels.log_ratios("ands")
    assert np.allclose(res.true, y[te])
    assert res.baseline["mse"] == pytest.approx(float(np.mean((y[te] - y[tr].mean()) ** 2)), rel=1e-5)
    per_recipe = {r: y[tr][labels.recipe[tr] == r].mean() for r in np.unique(labels.recipe[tr])}
    ref = np.mean([(y[i] - per_recipe[labels.recipe[i]]) ** 2 for i in te])
    assert res.baseline["mse_recipe_mean"] == pytest.approx(float(ref), rel=1e-5)
    assert "log(ands" in res.notes
    with pytest.raises(ConfigError, match="qor target"):
        run_qor(labels, "scratch", "scratch", cfg, target="raw", encoder_config=SMALL)


def test_anova_script_exits_quietly_when_its_reader_goes_away(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys

    if not hasattr(signal, "SIGPIPE"):
        pytest.skip("no SIGPIPE on this platform")
    folder = _labels_folder(tmp_path / "q", NAMES, SOURCES)
    script = Path(__file__).resolve().parents[1] / "bench" / "qor_anova.py"
    # `qor_anova.py LABELS | head -1`: the reader is gone before the script prints its first line
    proc = subprocess.Popen(
        [sys.executable, str(script), str(folder)], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    proc.stdout.close()
    err = proc.stderr.read()
    proc.stderr.close()
    assert proc.wait(timeout=120) == -signal.SIGPIPE and err == b"", err.decode()[-500:]


@pytest.mark.parametrize(
    "bad",
    [
        ["qor", "--test-designs", " , "],
        ["probability", "--target", "ratio"],
        ["qor", "--target", "raw"],
        ["qor", "--test-designs", "zzz*"],
        ["qor", "--test-designs", "c432", "--split", "recipes"],
    ],
)
def test_evaluate_rejects_impossible_qor_options_in_one_line(tmp_path: Path, capsys, bad) -> None:
    from circuitml.cli import main

    root = _labels_folder(tmp_path / "q", NAMES, SOURCES)
    code = main(["evaluate", bad[0], "--data", str(root), "--out", str(tmp_path / "o"), *bad[1:]])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert bad[1] in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("target", ["z", "ratio"])
def test_a_recipe_that_leaves_zero_ands_is_left_out_of_mape_not_a_crash(tmp_path: Path, target: str) -> None:
    # a recipe can reduce a design to constants; MAPE (a percentage of the true count) skips those rows, and
    # --split recipes puts every design in the test set, so one such row used to end the run with a ValueError
    root = _labels_folder(tmp_path / "q", NAMES, SOURCES)
    cfg = TrainConfig(epochs=1, seed=0)
    _, te = split_rows(load_qor_labels(root), "recipes", cfg.test_fraction, 0)
    rows = [json.loads(line) for line in (root / "labels.jsonl").read_text().splitlines()]
    for i in te[:2]:  # labels.jsonl rows are in label order
        rows[int(i)]["ands"] = 0
    (root / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    labels = load_qor_labels(root)
    assert int((labels.values["ands"][te] == 0).sum()) == 2
    res = run_qor(labels, "scratch", "scratch", cfg, target=target, split="recipes", encoder_config=SMALL)
    assert np.isfinite(res.metrics["mape"]) and np.isfinite(res.baseline["mape"])
    assert "leaves out the 2 test rows" in res.notes


def test_held_out_recipes_report_the_design_mean_lookup_as_a_baseline(tmp_path: Path) -> None:
    labels = load_qor_labels(_labels_folder(tmp_path / "q", NAMES, SOURCES))
    cfg = TrainConfig(epochs=1, seed=0)
    res = run_qor(labels, "scratch", "scratch", cfg, target="ratio", split="recipes", encoder_config=SMALL)
    tr, te = split_rows(labels, "recipes", cfg.test_fraction, 0)
    y = labels.log_ratios("ands")
    seen = {d: y[tr][labels.design[tr] == d].mean() for d in np.unique(labels.design[tr])}
    ref = np.mean([(y[i] - seen[labels.design[i]]) ** 2 for i in te])
    assert res.baseline["mse_design_mean"] == pytest.approx(float(ref), rel=1e-5)
    assert "mse_design_mean" in res.notes
    held_out_designs = run_qor(labels, "scratch", "scratch", cfg, target="ratio", encoder_config=SMALL)
    assert "mse_design_mean" not in held_out_designs.baseline  # unseen designs have no mean to remember
