"""Recipe-response pretraining (the ``qor`` objective) and continued pretraining (``model.init``): the head's loss
against a naive reference, label rows matched to corpus circuits by id, a run that trains and exports with its
design-blind baseline logged, exact resume, and an encoder continued from a saved one."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from circuitml.datasets.qor import generate_recipes, load_qor_labels, recipe_text

from circuitml.cli import main as cli_main
from circuitml.errors import ConfigError
from circuitml.pretrain.config import OBJECTIVE_PRESETS, load_config, objective_overrides
from circuitml.pretrain.logging import read_metrics
from circuitml.pretrain.qor import QoRLabelSet, QoRPretrainHead
from circuitml.pretrain.trainer import train
from tests.test_pretrain_train import _restore_threads  # noqa: F401  (autouse: run.threads=1 is undone)

TINY = [
    "model.encoder={kind: gcn, hidden: 16, num_layers: 2}",
    "data.batch_size=4",
    "schedule.warmup_steps=2",
    "qor.designs_per_step=3",
    "run.tensorboard=false",
    "run.plot=false",
    "run.progress=false",
    "run.threads=1",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    from circuitml.datasets import generate

    root = tmp_path_factory.mktemp("qor_pretrain") / "ds"
    generate(root, 6, families=["comparator", "mux", "parity", "adder_rc"], widths=[2, 3], progress=False)
    return root


def _records(root: Path) -> list[dict]:
    return json.loads((root / "manifest.json").read_text())["records"]


def _labels(root: Path, corpus: Path, extra: tuple[str, ...] = (), wrong_ands: str | None = None) -> Path:
    """A labels folder as ``data qor`` on the corpus's exported circuits writes it, with AND counts that grow
    with the design's size on odd recipes (a pattern a graph can learn); ``extra`` ids are not in the corpus."""
    rng = np.random.default_rng(0)
    recipes = generate_recipes(5, seed=3)
    designs, rows = [], []
    recs = _records(corpus)
    for rec in recs:
        ands = rec["num_ands"] + (1 if rec["id"] == wrong_ands else 0)
        designs.append(
            {"id": rec["id"], "source": f"/x/{rec['id']}.aig", "ands": ands, "depth": rec["depth"]}
        )
        for r in range(len(recipes)):
            n = ands - (r % 2) * ands // 3 + int(rng.integers(0, 2))
            rows.append({"design": rec["id"], "recipe": r, "ands": n, "depth": rec["depth"]})
    for k, name in enumerate(extra):
        designs.append({"id": name, "source": f"/x/{name}.aig", "ands": 10, "depth": 3})
        rows += [{"design": name, "recipe": r, "ands": 10 + k + r, "depth": 3} for r in range(len(recipes))]
    meta = {
        "format": "circuitml-qor-labels", "version": 1, "seed": 3, "recipe_length": 20,
        "recipes": [recipe_text(r) for r in recipes], "metrics": ["ands", "depth"], "designs": designs,
    }  # fmt: skip
    root.mkdir(parents=True)
    (root / "meta.json").write_text(json.dumps(meta))
    (root / "labels.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def test_head_loss_is_the_masked_mse_and_its_baseline_the_recipe_mean():
    torch.manual_seed(0)
    recipes = torch.from_numpy(generate_recipes(4, seed=1).astype(np.int64))
    z = torch.randn(3, 4)
    z[1, 2] = float("nan")  # an unlabelled cell counts nowhere
    recipe_mean = torch.nanmean(z, dim=0)
    head = QoRPretrainHead(8, recipes, recipe_mean)
    g = torch.randn(3, 8)
    out = head(g, z)
    rec = head.recipe(recipes)
    naive, base, n = 0.0, 0.0, 0
    for d in range(3):
        for r in range(4):
            if torch.isnan(z[d, r]):
                continue
            pred = head.mlp(torch.cat([g[d], rec[r]]))[0]
            naive += float((pred - z[d, r]).detach() ** 2)
            base += float((recipe_mean[r] - z[d, r]) ** 2)
            n += 1
    assert float(out.loss.detach()) == pytest.approx(naive / n, rel=1e-5)
    assert float(out.baseline_mse) == pytest.approx(base / n, rel=1e-5)
    out.loss.backward()
    assert g.grad is None and head.recipe.step.weight.grad is not None


def test_label_rows_are_matched_to_corpus_circuits_by_id(corpus, tmp_path):
    from circuitml.datasets import CircuitDataset

    labels = load_qor_labels(_labels(tmp_path / "q", corpus, extra=("not_in_corpus",)))
    dataset = CircuitDataset(corpus)
    qs = QoRLabelSet(labels, dataset, explicit_not=True, max_nodes=10_000)
    assert len(qs) == len(dataset) and qs.unmatched == 1
    z = labels.targets("ands")
    for k, rec in enumerate(dataset.records):  # row k holds design rec's z-scores, recipe by recipe
        d = labels.design_ids.index(rec["id"])
        rows = np.flatnonzero(labels.design == d)
        assert torch.allclose(qs.z[k, labels.recipe[rows]], torch.from_numpy(z[rows]))
        assert qs.graphs[k].num_nodes > 0
    a = qs.batch(3, torch.Generator().manual_seed(5))
    b = qs.batch(3, torch.Generator().manual_seed(5))
    assert a.graph.num_graphs == 3 and torch.equal(a.z, b.z)  # drawn from the step's generator only


def test_labels_of_other_circuits_are_refused_in_one_line(corpus, tmp_path):
    from circuitml.datasets import CircuitDataset

    dataset = CircuitDataset(corpus)
    victim = dataset.records[0]["id"]
    labels = load_qor_labels(_labels(tmp_path / "q", corpus, wrong_ands=victim))
    with pytest.raises(ConfigError, match=f"design '{victim}': expected the corpus circuit's") as err:
        QoRLabelSet(labels, dataset, explicit_not=True, max_nodes=10_000)
    assert "\n" not in str(err.value)
    other = load_qor_labels(_labels(tmp_path / "o", corpus))
    with pytest.raises(ConfigError, match="matched none"):
        QoRLabelSet(other, dataset.subset([]), explicit_not=True, max_nodes=10_000)


def test_qor_objective_trains_logs_its_baseline_and_resumes_exactly(corpus, tmp_path):
    labels = _labels(tmp_path / "q", corpus)
    sets = [*TINY, f"data.root={corpus}", f"qor.labels={labels}", "schedule.steps=16", "optim.lr=5e-3"]
    cfg = load_config(None, objective_overrides("funcrec+funcsim+qor") + sets)
    one = train(cfg, tmp_path / "one")
    rows = [{k: float(v) for k, v in r.items()} for r in read_metrics(tmp_path / "one" / "metrics.csv")]
    assert all(np.isfinite(r["loss_qor"]) and r["base_qor"] > 0 for r in rows)
    first, last = np.mean([r["mse_qor"] for r in rows[:4]]), np.mean([r["mse_qor"] for r in rows[-4:]])
    assert last < first
    card = json.loads((one.encoder_dir / "config.json").read_text())["card"]
    assert card["objectives"] == ["funcrec", "funcsim", "qor"]
    assert card["qor_labels"]["designs"] == len(_records(corpus)) and card["qor_labels"]["recipes"] == 5

    from circuitml.pretrain.trainer import export_encoder

    # from the checkpoint: the same card and heads
    again = export_encoder(tmp_path / "one", tmp_path / "exported")
    card2 = json.loads((again / "config.json").read_text())["card"]
    assert card2["qor_labels"]["recipes"] == 5 and card2["qor_labels"]["folder"] == str(labels)
    heads_run = json.loads((one.encoder_dir / "heads.json").read_text())["heads"]
    assert (
        json.loads((again / "heads.json").read_text())["heads"] == heads_run
    )  # widths too, whatever the key order
    assert heads_run["funcrec"]["hidden"] == 16 and heads_run["qor"]["hidden"] == 16

    # the exported recipe-response head scores (graph, recipe) rows as the pretraining head scored them
    from circuitml.pretrain.heads import load_task_head, read_heads

    task_head = load_task_head(one.encoder_dir, "qor", "designs").eval()
    tensors, _ = read_heads(one.encoder_dir)
    ref = QoRPretrainHead(16, tensors["qor.recipes"], torch.zeros(5)).eval()
    ref.load_state_dict({k[4:]: v for k, v in tensors.items() if k.startswith("qor.")}, strict=False)
    g = torch.randn(3, 16)
    with torch.no_grad():
        full = ref.predict(g)
        rows = task_head(g.repeat_interleave(5, 0), tensors["qor.recipes"].repeat(3, 1))
    assert torch.allclose(rows.view(3, 5), full, atol=1e-6)
    with pytest.raises(ConfigError, match=r"no pretraining head for qor \(recipes\)"):
        load_task_head(one.encoder_dir, "qor", "recipes")  # its recipes could be the held-out ones

    # the QoR task starts from that head (held-out designs only) and says how many of its recipes it has seen
    from circuitml.tasks.common import TrainConfig
    from circuitml.tasks.qor import run_qor

    from tests.test_qor_heldout import NAMES, SOURCES, _labels_folder

    task_labels = load_qor_labels(_labels_folder(tmp_path / "task", NAMES, SOURCES))
    res = run_qor(task_labels, one.encoder_dir, "finetune", TrainConfig(epochs=1, head="pretrained"))
    assert np.isfinite(res.metrics["mse"]) and "0 of the 6 recipes were among" in res.notes
    with pytest.raises(ConfigError, match=r"no pretraining head for qor \(recipes\)"):
        run_qor(
            task_labels,
            one.encoder_dir,
            "finetune",
            TrainConfig(epochs=1, head="pretrained"),
            split="recipes",
        )

    cfg2 = load_config(None, objective_overrides("funcrec+funcsim+qor") + sets)
    part = train(cfg2, tmp_path / "two", stop_after=7)
    assert part.interrupted is False and part.step == 7
    train(cfg2, tmp_path / "two", resume=True)
    a = read_metrics(tmp_path / "one" / "metrics.csv")
    b = read_metrics(tmp_path / "two" / "metrics.csv")
    assert [float(r["loss_qor"]) for r in a] == pytest.approx([float(r["loss_qor"]) for r in b], rel=1e-6)


def test_presets_and_cli_refuse_qor_labels_without_the_objective(corpus, tmp_path, capsys):
    assert OBJECTIVE_PRESETS["funcrec+funcsim+qor"] == ("funcrec", "funcsim", "qor")
    with pytest.raises(ConfigError, match="qor.labels: expected a QoR labels folder"):
        load_config(None, objective_overrides("funcrec+funcsim+qor"))
    labels = _labels(tmp_path / "q", corpus)
    code = cli_main(["pretrain", "--data", str(corpus), "--objectives", "funcrec", "--qor-labels", str(labels),
                     "--out", str(tmp_path / "r"), "--steps", "1"])  # fmt: skip
    err = capsys.readouterr().err
    assert code != 0 and "--qor-labels" in err and "not enabled" in err and "Traceback" not in err
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_continued_pretraining_starts_from_the_saved_encoder(corpus, tmp_path):
    from circuitml.encoders import build_encoder, load_encoder

    start = build_encoder({"kind": "gcn", "hidden": 16, "num_layers": 2})
    with torch.no_grad():
        for p in start.parameters():
            p.add_(0.5)  # not what a fresh build with the run's seed would draw
    start.save_pretrained(tmp_path / "start")
    sets = [s for s in TINY if not s.startswith("model.encoder")]
    sets += [f"data.root={corpus}", f"model.init={tmp_path / 'start'}", "schedule.steps=1", "optim.lr=1e-9"]
    result = train(load_config(None, objective_overrides("funcrec") + sets), tmp_path / "run")
    got = load_encoder(result.encoder_dir)
    for (name, a), b in zip(start.state_dict().items(), got.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6), name
    stored = json.loads((tmp_path / "run" / "config.json").read_text())["model"]
    assert stored["encoder"] == start.config.to_dict()  # checkpoints and exports rebuild this architecture

    other = [*sets, "model.encoder={kind: gcn, hidden: 32, num_layers: 2}"]
    with pytest.raises(ConfigError, match="model.init: .*differs from model.encoder"):
        train(load_config(None, objective_overrides("funcrec") + other), tmp_path / "bad")


def test_cli_continues_an_encoder_whatever_the_config_file_says(corpus, tmp_path):
    from circuitml.encoders import build_encoder, load_encoder

    start = build_encoder({"kind": "gcn", "hidden": 16, "num_layers": 2})
    start.save_pretrained(tmp_path / "start")
    config = (
        Path(__file__).resolve().parents[1] / "configs" / "pretrain_corpus.toml"
    )  # sets a deepgcn encoder
    args = ["pretrain", "--config", str(config), "--data", str(corpus), "--objectives", "funcrec",
            "--init-encoder", str(tmp_path / "start"), "--steps", "1", "--out", str(tmp_path / "run"),
            "--set", "run.tensorboard=false", "--set", "run.plot=false", "--set", "data.batch_size=4"]  # fmt: skip
    assert cli_main(args) in (0, None)
    assert load_encoder(tmp_path / "run" / "encoder").config.to_dict() == start.config.to_dict()


def test_a_checkpoint_from_before_the_qor_section_resumes(corpus, tmp_path):
    sets = [s for s in TINY if not s.startswith("qor.")] + [f"data.root={corpus}", "schedule.steps=4"]
    cfg = load_config(None, objective_overrides("funcrec") + sets)
    train(cfg, tmp_path / "run", stop_after=2)
    ckpt = tmp_path / "run" / "checkpoints" / "step_00000002.json"
    record = json.loads(ckpt.read_text())
    del record["state"]["config"]["qor"]  # as written by an older circuitml
    del record["state"]["config"]["model"]["init"]
    ckpt.write_text(json.dumps(record))
    result = train(cfg, tmp_path / "run", resume=True)
    assert result.step == 4 and result.encoder_dir is not None


def test_export_designs_only_leaves_out_a_corpus_s_recipe_variants(corpus, tmp_path):
    import shutil

    root = shutil.copytree(corpus, tmp_path / "ds")
    manifest = json.loads((root / "manifest.json").read_text())
    variant = manifest["records"][0]
    variant["recipe"] = "balance; rewrite"  # as `data corpus` marks an ABC-recipe variant of a design
    (root / "manifest.json").write_text(json.dumps(manifest))
    assert cli_main(["data", "export", str(root), str(tmp_path / "all")]) in (0, None)
    assert cli_main(["data", "export", str(root), str(tmp_path / "base"), "--designs-only"]) in (0, None)
    everything = {p.stem for p in (tmp_path / "all").glob("*.aig")}
    base = {p.stem for p in (tmp_path / "base").glob("*.aig")}
    assert everything == {r["id"] for r in manifest["records"]}
    assert base == everything - {variant["id"]}


def test_a_bad_encoder_kind_or_labels_folder_fails_before_anything_is_written(tmp_path, capsys):
    for extra in (["--set", "model.encoder={kind: nope}"], ["--objectives", "funcrec+funcsim+qor",
                  "--qor-labels", str(tmp_path / "nolabels")]):  # fmt: skip
        out = tmp_path / "run"
        assert cli_main(["pretrain", "--out", str(out), "--steps", "1", *extra]) == 2
        err = capsys.readouterr().err
        assert ("kind 'nope' is unknown" in err or "QoR labels folder" in err) and "Traceback" not in err
        assert not out.exists()  # no config.json, no generated data/
