"""Pretraining heads shipped beside an encoder and used as task heads: exported with the encoder, loaded and
trained by `evaluate --head pretrained`, zero-shot = the pretraining head's own output, a missing head an error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from circuitml.tasks.common import TrainConfig, pretrained_head
from circuitml.tasks.probability import _gate_mask, build_probability_graphs, run_probability

import circuitml
from circuitml.cli import main as cli_main
from circuitml.encoders import build_encoder, load_encoder
from circuitml.encoders.shipped import shipped_encoders
from circuitml.errors import CheckpointError, ConfigError
from circuitml.pretrain.checkpoint import latest_checkpoint, load_checkpoint
from circuitml.pretrain.config import load_config
from circuitml.pretrain.funcrec import FunctionalReconstructionHead
from circuitml.pretrain.heads import (
    HEADS_CONFIG,
    HEADS_FILE,
    ProbabilityDecoderHead,
    SimilarityPairHead,
    load_task_head,
    read_heads,
)
from circuitml.pretrain.trainer import export_encoder, train
from tests.test_pretrain_train import TINY, tiny_dataset  # noqa: F401  (session fixture)
from tests.test_tasks_train import random_circuit

SHIPPED = shipped_encoders()
WITH_HEADS = sorted(n for n, f in SHIPPED.items() if (f / HEADS_FILE).is_file())


@pytest.fixture(scope="module")
def tiny_run(tiny_dataset, tmp_path_factory) -> Path:  # noqa: F811
    """A 3-step pretraining run with the functional objectives (funcrec, funcsim, contrast off: no variants)."""
    before = torch.get_num_threads()
    out = tmp_path_factory.mktemp("heads") / "run"
    sets = [*TINY, f"data.root={tiny_dataset}", "schedule.steps=3", "vga.enabled=false", "mgm.enabled=false"]
    sets += ["funcrec.enabled=true", "funcsim.enabled=true", "funcrec.decoder_layers=1"]
    train(load_config(None, sets), out)
    torch.set_num_threads(before)
    return out


def test_a_finished_run_and_an_export_both_carry_the_heads(tiny_run, tmp_path):
    exported = export_encoder(tiny_run, tmp_path / "enc")
    for folder in (tiny_run / "encoder", exported):
        tensors, heads = read_heads(folder)
        assert set(heads) == {"funcrec", "funcsim"}  # contrast was off: no head for circuits
        assert heads["funcrec"]["decoder_layers"] == 1
        assert not any(k.startswith("funcrec.bit_head") for k in tensors)
    ckpt, _ = load_checkpoint(latest_checkpoint(tiny_run / "checkpoints"))
    tensors, _ = read_heads(exported)
    for key, value in tensors.items():
        assert torch.equal(value, ckpt[f"model.{key}"].float())
    # the encoder alone loads exactly as before
    assert set(load_encoder(exported).state_dict()) == {
        k[len("model.encoder.") :] for k in ckpt if k.startswith("model.encoder.")
    }


def test_zero_shot_probability_is_the_pretraining_decoder_on_each_fold_masked(tiny_run):
    folder = tiny_run / "encoder"
    ckpt, _ = load_checkpoint(latest_checkpoint(tiny_run / "checkpoints"))
    ref = FunctionalReconstructionHead(16, 128, 1)
    ref.load_state_dict(
        {k[len("model.funcrec.") :]: v for k, v in ckpt.items() if k.startswith("model.funcrec.")}
    )
    head = load_task_head(folder, "probability")
    assert isinstance(head, ProbabilityDecoderHead) and head.folds == 4  # mask ratio 0.3
    encoder = load_encoder(folder)
    circuits = [random_circuit(s, num_gates=40) for s in range(6)]
    graphs = build_probability_graphs(circuits)
    g = graphs[0]
    with torch.no_grad():
        latent = encoder(g).node
        got = head(latent, g.edge_index)
        fold = head.fold_of(g.num_nodes, latent.device)
        for k in range(head.folds):
            mask = fold == k
            want = torch.sigmoid(ref.prob_head(ref.decode(latent, mask, g.edge_index))[:, 0])
            torch.testing.assert_close(got[mask], want[mask])
    # the zero-shot task run reports exactly that head's error on the held-out circuits, and trains nothing
    cfg = TrainConfig(epochs=1, seed=0, head="pretrained", zero_shot=True)
    res = run_probability(None, str(folder), "frozen", cfg, graphs=graphs)
    errors = []
    with torch.no_grad():
        for i in sorted(set(res.group.tolist())):
            m = _gate_mask(graphs[i])
            errors.append((head(encoder(graphs[i]).node, graphs[i].edge_index)[m] - graphs[i].prob[m]).abs())
    assert res.metrics["mae"] == pytest.approx(float(torch.cat(errors).mean()), abs=1e-6)
    assert res.history == []


def test_fine_tuning_starts_from_the_pretrained_head(tiny_run):
    folder = tiny_run / "encoder"
    graphs = build_probability_graphs([random_circuit(s, num_gates=40) for s in range(6)])
    zero = run_probability(
        None, str(folder), "frozen", TrainConfig(head="pretrained", zero_shot=True), graphs=graphs
    )
    # with (almost) no learning rate, fine-tuning predicts what the shipped head predicts ...
    still = TrainConfig(epochs=1, head="pretrained", lr=1e-12, encoder_lr=1e-12)
    tuned = run_probability(None, str(folder), "finetune", still, graphs=graphs)
    np.testing.assert_allclose(tuned.pred, zero.pred, atol=1e-5)
    # ... and with a real one it moves away from it
    moved = run_probability(
        None, str(folder), "finetune", TrainConfig(epochs=2, head="pretrained"), graphs=graphs
    )
    assert np.isfinite(moved.metrics["mae"]) and np.abs(moved.pred - zero.pred).max() > 1e-3
    # the similarity head starts as the pretrained distance alone (its residual MLP starts at zero)
    sim = load_task_head(folder, "equivalence")
    assert isinstance(sim, SimilarityPairHead)
    a, b = torch.randn(5, 16), torch.randn(5, 16)
    with torch.no_grad():
        torch.testing.assert_close(sim(a, b), sim.log_scale.exp() * (sim.threshold - sim.distance(a, b)))


def test_a_missing_head_is_an_error_never_a_fresh_head(tiny_run, tmp_path, capsys):
    folder = tiny_run / "encoder"
    with pytest.raises(CheckpointError, match="no 'contrast' head"):
        load_task_head(folder, "equivalence", "circuits")  # pretrained without contrast
    with pytest.raises(ConfigError, match="no pretraining head for qor"):
        load_task_head(folder, "qor")
    bare = build_encoder({"kind": "deepgcn", "hidden": 8, "num_layers": 2}).save_pretrained(tmp_path / "bare")
    with pytest.raises(CheckpointError, match="no pretraining heads"):
        load_task_head(bare, "probability")
    cfg = TrainConfig(head="pretrained")
    with pytest.raises(ConfigError, match="scratch encoder has no pretraining head"):
        pretrained_head(str(folder), "scratch", cfg, "probability")
    with pytest.raises(ConfigError, match="zero_shot needs head 'pretrained'"):
        TrainConfig(zero_shot=True).validate()
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for f in folder.iterdir():
        (damaged / f.name).write_bytes(f.read_bytes())
    (damaged / HEADS_CONFIG).write_text('{"format": "circuitml-heads", "version": 1, "heads": []}')
    with pytest.raises(CheckpointError, match="key 'heads'"):
        load_task_head(damaged, "probability")
    # the CLI: one line, exit 2
    data = tmp_path / "c"
    data.mkdir()
    from circuitml.formats import write_circuit

    for s in range(4):
        write_circuit(random_circuit(s, num_gates=20), data / f"r{s}.aag")
    for args in (
        ["--encoder", str(bare), "--head", "pretrained"],
        ["--encoder", str(folder), "--head", "pretrained", "--zero-shot"],  # zero-shot needs --frozen
        ["--head", "pretrained"],  # scratch
    ):
        code = cli_main(["evaluate", "probability", "--data", str(data), "--out", str(tmp_path / "o"), *args])
        err = capsys.readouterr().err.strip()
        assert code == 2 and len(err.splitlines()) == 1, err


@pytest.mark.parametrize("name", WITH_HEADS)
def test_shipped_heads_load_and_stay_small(name):
    folder = SHIPPED[name]
    assert (folder / HEADS_FILE).stat().st_size < 1_000_000
    encoder = circuitml.load_encoder(name)  # unchanged for users who want only the encoder
    shipped = json.loads((folder / "heads.json").read_text())["heads"]
    needs = {("probability", "gates"): "funcrec", ("equivalence", "gates"): "funcsim"}
    needs[("equivalence", "circuits")] = "contrast"
    for (task, setting), objective in needs.items():
        if objective not in shipped:  # an encoder pretrained without that objective names what it lacks
            with pytest.raises(CheckpointError, match=objective):
                load_task_head(name, task, setting)
            continue
        head = load_task_head(name, task, setting)
        h = torch.randn(5, encoder.hidden)
        with torch.no_grad():
            out = (
                head(h, torch.tensor([[0, 1, 2], [3, 3, 4]])) if task == "probability" else head(h, h.flip(0))
            )
        assert out.shape == (5,) and torch.isfinite(out).all()


@pytest.mark.slow  # two suite rows over 3 seeds, 1 epoch, 6 tiny circuits
def test_suite_zero_shot_rows_and_the_pretrained_fine_tuning_head(tiny_run, tmp_path, capsys):
    from circuitml.tasks.suite import Row, proof_rows, row_head, run_suite

    from circuitml.formats import write_circuit

    src = tmp_path / "src"
    src.mkdir()
    for s in range(6):
        write_circuit(random_circuit(s, num_gates=30), src / f"c{s}.aag")
    enc = str(tiny_run / "encoder")
    rows = [
        r
        for r in proof_rows(enc, circuits=str(src))
        if r.task == "probability" and r.table in ("finetune", "zeroshot")
    ]
    assert [r.table for r in rows] == ["finetune", "zeroshot"]
    started: list[str] = []
    out = run_suite(
        rows,
        tmp_path / "s",
        cfg=TrainConfig(epochs=1),
        log=lambda s: None,
        progress=lambda label, epoch, epochs, loss: started.append(label),
        finetune_head="pretrained",
    )
    assert [r["head"] for r in out["rows"]] == ["pretrained", "pretrained"]
    # scratch, the reference of both rows, trained once per seed; zero-shot trained nothing
    assert sorted(started) == sorted(
        [f"probability {v} seed {s}" for v in ("pretrained", "scratch") for s in range(3)]
    )
    assert out["rows"][0]["metrics"]["scratch"] == out["rows"][1]["metrics"]["scratch"]
    report = (tmp_path / "s" / "report.md").read_text()
    assert "Zero-shot" in report and "| probability · zero-shot |" in report
    # QoR has no pretraining head: its fine-tuned row keeps (and reports) the MLP
    assert row_head(Row("q", "finetune", "qor", "d", enc), "pretrained") == "mlp"
    # an encoder without the heads a row needs stops the suite before any data work, in one line
    bare = build_encoder({"kind": "deepgcn", "hidden": 8, "num_layers": 2}).save_pretrained(tmp_path / "bare")
    args = ["evaluate-suite", "--encoder", str(bare), "--circuits", str(src), "--out", str(tmp_path / "o")]
    code = cli_main([*args, "--tables", "zeroshot", "--tasks", "probability"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "no pretraining heads" in err, err


@pytest.mark.parametrize(
    "key, value", [("hidden", 10**9), ("hidden", -4), ("decoder_layers", "two"), ("mask_ratio", "x")]
)
def test_head_sizes_in_heads_json_are_bounded_before_any_layer_is_built(tiny_run, tmp_path, key, value):
    import shutil

    folder = shutil.copytree(tiny_run / "encoder", tmp_path / "enc")
    meta = json.loads((folder / HEADS_CONFIG).read_text())
    meta["heads"]["funcrec"][key] = value
    (folder / HEADS_CONFIG).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=f"head 'funcrec': {key}: expected") as err:
        load_task_head(folder, "probability")
    assert "\n" not in str(err.value)
