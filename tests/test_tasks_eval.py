"""Evaluation that finishes and repeats: one encoding per design per step, frozen embeddings shared by seeds,
the same seed giving the same numbers, held-out splits (designs, recipes, families), linear probes, readable
plots, and circuits of the pretraining corpus kept out of the evaluation."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from circuitml.datasets.qor import QoRLabels
from circuitml.tasks.common import GraphEncoding, TrainConfig, make_encoder, split_items
from circuitml.tasks.probability import build_probability_graphs, run_probability
from circuitml.tasks.qor import QoRHead, run_qor, split_rows

from circuitml.aig import AIGBuilder
from circuitml.encoders import build_encoder
from circuitml.formats import write_aiger
from circuitml.graph import aig_to_data
from tests.test_tasks_train import random_circuit

SMALL = {"kind": "gcn", "hidden": 16, "num_layers": 2}


def _labels(num_designs: int = 6, num_recipes: int = 8, seed: int = 0) -> QoRLabels:
    """A QoR table in memory with random (seeded) AND counts: enough to check splits and step structure."""
    rng = np.random.default_rng(seed)
    design = np.repeat(np.arange(num_designs), num_recipes)
    recipe = np.tile(np.arange(num_recipes), num_designs)
    ands = rng.integers(50, 100, size=design.size).astype(np.float64)
    circuits = [random_circuit(100 + d, num_gates=20 + 5 * d, name=f"d{d}") for d in range(num_designs)]
    labels = QoRLabels(
        root=None,
        design_ids=[c.name for c in circuits],
        recipes=rng.integers(0, 7, size=(num_recipes, 20)).astype(np.int8),
        design=design,
        recipe=recipe,
        values={"ands": ands, "depth": ands / 5},
        originals={"ands": np.full(num_designs, np.nan), "depth": np.full(num_designs, np.nan)},
    )
    graphs = [aig_to_data(c) for c in circuits]
    return labels, graphs


class CountingEncoder(torch.nn.Module):
    """Wraps an encoder and counts the graphs it encodes."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner, self.config, self.out_dim = inner, inner.config, inner.out_dim
        self.graphs_seen = 0

    def forward(self, batch):
        self.graphs_seen += int(batch.num_graphs)
        return self.inner(batch)


def test_qor_encodes_each_training_design_once_per_epoch() -> None:
    labels, graphs = _labels()
    torch.manual_seed(0)
    enc = CountingEncoder(build_encoder(SMALL))
    cfg = TrainConfig(epochs=3, seed=0, batch_size=16)
    run_qor(labels, enc, "finetune", cfg, graphs=graphs)
    train_rows, test_rows = split_rows(labels, "designs", cfg.test_fraction, cfg.seed)
    n_train, n_test = len(np.unique(labels.design[train_rows])), len(np.unique(labels.design[test_rows]))
    # 3 epochs x each training design once, then one evaluation pass over the held-out designs
    assert enc.graphs_seen == 3 * n_train + n_test


def test_qor_design_steps_score_rows_like_a_per_row_reference() -> None:
    labels, graphs = _labels()
    torch.manual_seed(0)
    encoder = build_encoder(SMALL).eval()
    head = QoRHead(encoder.out_dim).eval()
    enc = GraphEncoding(encoder, graphs, trainable=True)
    rows = np.arange(len(labels))
    designs, inverse = np.unique(labels.design[rows], return_inverse=True)
    _, g, _, _ = enc(designs)
    recipes = torch.from_numpy(labels.recipes.astype(np.int64))
    batched = head(g[torch.from_numpy(inverse)], recipes[labels.recipe[rows]])
    with torch.no_grad():  # reference: each row encodes its own design alone
        naive = torch.stack(
            [head(enc([labels.design[r]])[1], recipes[labels.recipe[r : r + 1]])[0] for r in rows]
        )
    assert torch.allclose(batched, naive, atol=1e-5)


def test_qor_held_out_recipes_are_unseen_recipes_on_seen_designs() -> None:
    labels, graphs = _labels()
    tr, te = split_rows(labels, "recipes", 0.25, seed=1)
    assert not set(labels.recipe[tr]) & set(labels.recipe[te])
    assert set(labels.design[te]) == set(labels.design[tr]) == set(range(6))
    res = run_qor(
        labels, "scratch", "scratch", TrainConfig(epochs=2, seed=1), graphs=graphs, split="recipes",
        encoder_config=SMALL,
    )  # fmt: skip
    assert len(res.pred) == len(te) and "recipes" in res.notes


def test_linear_probe_qor_head_is_linear_in_the_graph_embedding() -> None:
    torch.manual_seed(0)
    head = QoRHead(8, head="linear")
    g = torch.randn(5, 8)
    r = torch.randint(0, 7, (5, 20))
    f0 = head(torch.zeros(5, 8), r)
    assert torch.allclose(head(3 * g, r) - f0, 3 * (head(g, r) - f0), atol=1e-5)


def test_frozen_embeddings_shared_across_seeds_give_the_same_numbers() -> None:
    circuits = [random_circuit(s, num_gates=30) for s in range(8)]
    graphs = build_probability_graphs(circuits)
    torch.manual_seed(0)
    encoder = build_encoder(SMALL)
    cache: list = []
    for seed in (0, 1):
        cfg = TrainConfig(epochs=2, seed=seed, head="linear")
        shared = run_probability(None, encoder, "frozen", cfg, graphs=graphs, cache=cache)
        alone = run_probability(None, encoder, "frozen", cfg, graphs=graphs)
        assert shared.metrics == alone.metrics
        assert np.array_equal(shared.pred, alone.pred)
    assert len(cache) == len(graphs)  # encoded once, for both seeds


def test_random_mode_is_a_frozen_copy_of_the_architecture_at_random_init() -> None:
    torch.manual_seed(5)
    pretrained = build_encoder(SMALL)
    enc, trainable = make_encoder(pretrained, "random", seed=3)
    assert not trainable and not any(p.requires_grad for p in enc.parameters())
    assert enc.config.to_dict() == pretrained.config.to_dict()
    assert not torch.equal(next(enc.parameters()), next(pretrained.parameters()))
    again, _ = make_encoder(pretrained, "random", seed=3)
    assert all(torch.equal(a, b) for a, b in zip(enc.parameters(), again.parameters(), strict=True))


def test_family_split_holds_out_whole_families() -> None:
    fams = ["alu", "alu", "crc", "mux", "crc", "mux", "adder", "adder", "alu"]
    for seed in range(4):
        tr, te = split_items(len(fams), fams, TrainConfig(seed=seed, test_fraction=0.3))
        assert not {fams[i] for i in tr} & {fams[i] for i in te} and len(tr) and len(te)
    tr, te = split_items(len(fams), fams, TrainConfig(test_groups=("alu", "crc")))
    assert {fams[i] for i in te} == {"alu", "crc"} and {fams[i] for i in tr} == {"mux", "adder"}


def test_per_design_error_plot_stays_narrow_at_many_designs(tmp_path) -> None:
    from circuitml.tasks.common import TaskResult
    from circuitml.tasks.report import write_report
    from PIL import Image

    rng = np.random.default_rng(0)
    n = 400
    group = np.repeat(np.arange(n), 3)
    runs = {
        name: [
            TaskResult(
                "probability", name, "scratch", 0, {"mae": 0.1}, {"mae": 0.2}, [1.0],
                rng.random(group.size), rng.random(group.size), group, [f"design_{i}" for i in range(n)],
            )
        ]
        for name in ("pretrained", "scratch")
    }  # fmt: skip
    write_report(runs, tmp_path)
    width, _ = Image.open(tmp_path / "per_design_error.png").size
    assert width <= 2000, width  # 400 designs once made a plot of ~22,000 px


def test_unseen_drops_designs_and_recipe_variants_of_the_corpus(tmp_path) -> None:
    from circuitml.datasets import build_dataset
    from circuitml.tasks.heldout import unseen

    corpus_src = tmp_path / "corpus_src"
    corpus_src.mkdir()
    seen = random_circuit(1, num_gates=25, name="seen")
    write_aiger(seen, corpus_src / "seen.aig")
    build_dataset([corpus_src], tmp_path / "corpus", workers=1)
    # a "recipe variant": the same function built another way (OR as NOT-AND of NOTs, double negations)
    b = AIGBuilder("variant")
    pis = [b.add_pi() for _ in range(seen.num_pis)]
    lits = {0: 0}
    for k in range(seen.num_pis):
        lits[k + 1] = pis[k]
    for j, (x, y) in enumerate(seen.ands):
        lx = lits[int(x) >> 1] ^ (int(x) & 1)
        ly = lits[int(y) >> 1] ^ (int(y) & 1)
        lits[seen.num_pis + 1 + j] = b.and_(b.and_(lx, lx), ly)
    for po in seen.pos:
        b.add_po(lits[int(po) >> 1] ^ (int(po) & 1))
    variant = b.build()
    fresh = random_circuit(2, num_gates=25, name="fresh")
    keep, info = unseen([variant, fresh], tmp_path / "corpus")
    assert keep.tolist() == [1] and info["seen_by_function"] == 1


@pytest.mark.slow  # two CLI processes: seconds on an idle machine
def test_same_seed_same_numbers_across_processes_with_two_threads(tmp_path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for s in range(8):
        write_aiger(random_circuit(s, num_gates=30), src / f"c{s}.aig")
    metrics = []
    for k in range(2):
        out = tmp_path / f"eval{k}"
        cmd = [
            sys.executable, "-m", "circuitml.cli", "evaluate", "probability", "--data", str(src), "--out", str(out),
            "--epochs", "2", "--threads", "2", "--encoder-config", json.dumps({"kind": "deepgcn", "hidden": 16,
            "num_layers": 2}),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "epoch 2/2" in proc.stderr  # log lines when the output is not a terminal
        metrics.append(json.loads((out / "metrics.json").read_text())["encoders"]["scratch"]["metrics"])
    assert metrics[0] == metrics[1]


@pytest.mark.parametrize("bad", [["--threads", "0"], ["--device", "tpu"], ["--head", "cubic"]])
def test_evaluate_rejects_bad_runtime_options_in_one_line(tmp_path, capsys, bad) -> None:
    from circuitml.cli import main

    code = main(["evaluate", "probability", "--data", str(tmp_path), "--out", str(tmp_path), *bad])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.slow  # every row of the proof at 1 epoch on 8 tiny circuits
def test_suite_writes_the_proof_tables(tmp_path) -> None:
    from circuitml.cli import main

    src = tmp_path / "src"
    src.mkdir()
    for s in range(8):
        write_aiger(random_circuit(s, num_gates=30), src / f"c{s}.aig")
    torch.manual_seed(0)
    build_encoder({"kind": "gcn", "hidden": 16, "num_layers": 2}).save_pretrained(tmp_path / "enc")
    out = tmp_path / "suite"
    code = main(
        [
            "evaluate-suite", "--encoder", str(tmp_path / "enc"), "--circuits", str(src), "--out", str(out),
            "--epochs", "1", "--ablation", f"a={tmp_path / 'enc'}", "--threads", "1",
        ]
    )  # fmt: skip
    assert code == 0
    report = (out / "report.md").read_text()
    for title in ("Pretrained (fine-tuned) vs scratch", "Linear probe", "Ablation"):
        assert title in report
    rows = json.loads((out / "metrics.json").read_text())["rows"]
    assert sorted(r["table"] for r in rows) == ["ablation"] * 2 + ["finetune"] * 3 + ["probe"] * 2
    for r in rows:
        v = r["verdict"]
        assert v["pretrained"]["n"] == 3 and v["difference"]["n"] == 3


def test_report_header_states_each_variants_own_note_when_they_differ(tmp_path) -> None:
    """A pretraining head compared against scratch's MLP: the header once showed only the first variant's head."""
    from circuitml.tasks.common import TaskResult
    from circuitml.tasks.report import write_report

    def run(name: str, note: str) -> list[TaskResult]:
        pred = np.array([0.1, 0.2])
        group = np.array([0, 1])
        args = ("probability", name, "scratch", 0, {"mae": 0.1}, {"mae": 0.2}, [1.0], pred, pred, group)
        return [TaskResult(*args, ["c0", "c1"], notes=note)]

    write_report(
        {"pretrained": run("pretrained", "head: pretrained"), "scratch": run("scratch", "head: mlp")},
        tmp_path,
    )
    text = (tmp_path / "report.md").read_text()
    assert "- **pretrained**: head: pretrained" in text and "- **scratch**: head: mlp" in text
    write_report({"a": run("a", "head: mlp"), "b": run("b", "head: mlp")}, tmp_path)
    assert (tmp_path / "report.md").read_text().count("head: mlp") == 1
