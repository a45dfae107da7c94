"""Fine-tuning practice for pretrained encoders (discriminative LR, LP-FT, frozen bottom blocks), the validation
split that settings are picked on, the QoR recipe-only baseline, and funcsim pairs of similar probability."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from circuitml.tasks.common import (
    TrainConfig,
    param_groups,
    split_items,
    train_loop,
    validation_split,
)
from circuitml.tasks.l2_sp import anchor_group
from circuitml.tasks.probability import build_probability_graphs, run_probability
from circuitml.tasks.qor import recipe_means, split_rows

from circuitml.encoders import build_encoder
from circuitml.errors import ConfigError
from circuitml.pretrain.funcsim import sample_pairs, sample_similar_pairs
from tests.test_tasks_eval import _labels
from tests.test_tasks_train import random_circuit

DEEP = {"kind": "deepgcn", "hidden": 8, "num_layers": 3}


def test_validation_split_lies_inside_the_training_side_and_never_touches_the_test_split() -> None:
    groups = [f"f{k % 5}" for k in range(40)]
    for seed in range(4):
        cfg = TrainConfig(seed=seed)
        train, test = split_items(40, None, cfg)
        fit, val = split_items(40, None, TrainConfig(seed=seed, validation=True))
        assert set(fit) | set(val) == set(train) and not set(val) & set(fit) and val.size > 0
        train, test = split_items(40, groups, cfg)
        fit, val = split_items(40, groups, TrainConfig(seed=seed, validation=True))
        assert set(fit) | set(val) == set(train) and not (set(fit) | set(val)) & set(test)
        # whole families on one side
        assert not {groups[i] for i in fit} & {groups[i] for i in val}


def test_qor_validation_rows_are_training_designs_and_recipes() -> None:
    labels, _ = _labels(num_designs=9, num_recipes=8)
    for split, key in (("designs", labels.design), ("recipes", labels.recipe)):
        train, test = split_rows(labels, split, 0.25, 3)
        fit, val = split_rows(labels, split, 0.25, 3, validation=True)
        assert set(fit) | set(val) == set(train)
        assert not set(key[fit]) & set(key[val]) and not set(key[val]) & set(key[test])
    with pytest.raises(Exception, match="at least 2"):
        validation_split(np.zeros(4, dtype=int), np.arange(4), 0.25, 0)


def test_recipe_means_match_a_loop() -> None:
    labels, _ = _labels(num_designs=5, num_recipes=6)
    z = labels.targets("ands")
    rows = np.flatnonzero(labels.design != 2)
    got = recipe_means(labels, z, rows)
    for r in range(6):
        assert got[r] == pytest.approx(np.mean([z[i] for i in rows if labels.recipe[i] == r]))


def test_probe_epochs_keep_a_group_fixed_then_train_it() -> None:
    torch.manual_seed(0)
    head, body = torch.nn.Linear(3, 1), torch.nn.Linear(3, 3)
    x, y = torch.randn(32, 3), torch.randn(32)

    def step(idx: np.ndarray) -> torch.Tensor:
        return ((head(body(x[idx])).squeeze(-1) - y[idx]) ** 2).mean()

    start = body.weight.detach().clone()
    groups = [{"params": list(head.parameters())}, {"params": list(body.parameters()), "frozen_epochs": 2}]
    train_loop(groups, step, 32, TrainConfig(epochs=2, batch_size=8))
    assert torch.equal(body.weight, start)  # probe phase: head only
    groups = [{"params": list(head.parameters())}, {"params": list(body.parameters()), "frozen_epochs": 2}]
    train_loop(groups, step, 32, TrainConfig(epochs=3, batch_size=8))
    assert not torch.equal(body.weight, start)  # then the encoder trains too


def test_freeze_layers_leaves_the_bottom_blocks_out_of_the_optimizer() -> None:
    enc = build_encoder(DEEP)
    head = torch.nn.Linear(8, 1)
    groups = param_groups(
        head, enc, True, True, TrainConfig(freeze_layers=2, encoder_lr=1e-3, probe_epochs=1)
    )
    trained = {id(p) for p in groups[1]["params"]}
    assert groups[1]["lr"] == 1e-3 and groups[1]["frozen_epochs"] == 1
    bottom = [*enc.type_embedding.parameters(), *enc.layers[0].parameters(), *enc.layers[1].parameters()]
    assert all(id(p) not in trained and not p.requires_grad for p in bottom)
    assert all(id(p) in trained for p in enc.layers[2].parameters())
    # scratch trains every weight at the head's lr: nothing of the pretrained practice applies to it
    fresh = build_encoder(DEEP)
    groups = param_groups(head, fresh, True, False, TrainConfig(freeze_layers=2, probe_epochs=1))
    assert len(groups[1]["params"]) == len(list(fresh.parameters())) and groups[1]["lr"] == 3e-3
    with pytest.raises(ConfigError, match="has 3 blocks"):
        param_groups(head, build_encoder(DEEP), True, True, TrainConfig(freeze_layers=4))


def test_lpft_and_frozen_blocks_run_end_to_end_and_keep_frozen_weights(tmp_path) -> None:
    torch.manual_seed(0)
    enc = build_encoder(DEEP)
    enc.save_pretrained(tmp_path / "enc")
    circuits = [random_circuit(s, num_gates=25) for s in range(6)]
    graphs = build_probability_graphs(circuits, num_patterns=256)
    cfg = TrainConfig(epochs=3, probe_epochs=1, freeze_layers=1, encoder_lr=1e-3, validation=True)
    res = run_probability(None, str(tmp_path / "enc"), "finetune", cfg, graphs=graphs)
    assert np.isfinite(res.metrics["mae"]) and len(res.history) == 3
    with pytest.raises(ConfigError, match="probe_epochs"):
        TrainConfig(epochs=3, probe_epochs=3).validate()


def test_similar_probability_pairs_stay_in_their_graph_and_close_in_probability() -> None:
    gen = torch.Generator().manual_seed(0)
    sizes = [50, 200, 3]
    batch = torch.repeat_interleave(torch.arange(3), torch.tensor(sizes))
    prob = torch.rand(batch.numel(), generator=gen)
    pairs = sample_similar_pairs(batch, 3, prob, 2.0, 0.05, gen)
    assert torch.equal(batch[pairs[0]], batch[pairs[1]]) and bool((pairs[0] != pairs[1]).all())
    # reference: rank distance inside the graph is at most max(1, 0.05 * n_g)
    for a, b in pairs.T.tolist():
        g = int(batch[a])
        members = torch.nonzero(batch == g).flatten()
        rank = {int(m): k for k, m in enumerate(members[torch.argsort(prob[members], stable=True)])}
        assert abs(rank[a] - rank[b]) <= max(1, int(0.05 * sizes[g]))
    uniform = sample_pairs(batch, 3, 2.0, gen)
    close = (prob[pairs[0]] - prob[pairs[1]]).abs().mean()
    assert close < 0.25 * (prob[uniform[0]] - prob[uniform[1]]).abs().mean()


@pytest.mark.parametrize(
    "bad",
    [
        ["--probe-epochs", "30"],
        ["--encoder-lr", "0"],
        ["--freeze-layers", "-1"],
        ["--probe-epochs", "-2"],
        ["--sp-alpha", "-1"],
        ["--sp-alpha", "nan"],
        ["--sp-alpha", "1"],  # scratch (the default encoder) has no pretrained weights to anchor to
    ],
)
def test_evaluate_rejects_impossible_finetuning_options_in_one_line(tmp_path, capsys, bad) -> None:
    from circuitml.cli import main

    code = main(["evaluate", "probability", "--data", str(tmp_path), "--out", str(tmp_path), *bad])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert bad[0].lstrip("-").replace("-", "_") in err or bad[0] in err


def test_l2_sp_pulls_the_pretrained_group_toward_its_start_not_toward_zero() -> None:
    """Reference: Adam on the loss alone (no decay), then ``w -= lr * alpha * (w - w0)``, written out by hand."""
    torch.manual_seed(0)
    x, y = torch.randn(16, 3), torch.randn(16)
    body = torch.nn.Linear(3, 1)
    start = [p.detach().clone() for p in body.parameters()]
    ref = [p.detach().clone().requires_grad_(True) for p in start]
    lr, alpha = 0.05, 2.0

    def step(idx: np.ndarray) -> torch.Tensor:
        return ((body(x[idx]).squeeze(-1) - y[idx]) ** 2).mean()

    groups = [anchor_group({"params": list(body.parameters()), "lr": lr}, alpha)]
    cfg = TrainConfig(epochs=1, batch_size=16, weight_decay=0.5)
    train_loop(groups, step, 16, cfg)

    adam = torch.optim.Adam(ref, lr=lr)  # weight decay 0: L2-SP replaces it for this group
    loss = ((x @ ref[0].T + ref[1]).squeeze(-1) - y).pow(2).mean()
    loss.backward()
    adam.step()
    with torch.no_grad():
        for r, s in zip(ref, start, strict=True):
            r -= lr * alpha * (r - s)
    for got, want in zip(body.parameters(), ref, strict=True):
        torch.testing.assert_close(got, want)
    # a large alpha keeps the encoder at its pretrained weights; plain decay would shrink it toward 0
    groups = [anchor_group({"params": list(body.parameters()), "lr": lr}, 1.0 / lr)]
    anchor = [p.detach().clone() for p in body.parameters()]
    train_loop(groups, step, 16, TrainConfig(epochs=3, batch_size=4))
    for p, a in zip(body.parameters(), anchor, strict=True):
        torch.testing.assert_close(p, a)


def test_l2_sp_is_applied_to_the_pretrained_encoder_only_and_checked() -> None:
    enc, head = build_encoder(DEEP), torch.nn.Linear(8, 1)
    groups = param_groups(head, enc, True, True, TrainConfig(sp_alpha=3.0, freeze_layers=1))
    assert groups[1]["sp_alpha"] == 3.0 and groups[1]["weight_decay"] == 0.0
    assert all(torch.equal(p, a) for p, a in zip(groups[1]["params"], groups[1]["sp_anchors"], strict=True))
    assert "sp_alpha" not in groups[0]  # the new head keeps ordinary decay
    fresh = param_groups(head, build_encoder(DEEP), True, False, TrainConfig(sp_alpha=3.0))
    assert "sp_alpha" not in fresh[1]  # scratch has no pretrained weights to anchor to
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="sp_alpha"):
            TrainConfig(sp_alpha=bad).validate()
