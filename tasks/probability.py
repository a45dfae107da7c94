"""Signal-probability regression: predict, per gate, the probability that it is 1 under uniform random inputs.

The task of DeepGate (Li et al., "DeepGate: Learning Neural Representations of Logic Gates", DAC 2022, Sec. 4):
labels come from bit-parallel random simulation (:func:`circuitml.sim.signal_probability`, 4,096 patterns by
default); the head maps each node embedding to ``sigmoid(MLP(h_v))`` and trains with the L1 loss
``mean_v |p̂_v - p_v|``. Whole circuits are held out. Reported: mean absolute error on the held-out circuits'
gates (AND and NOT nodes: PIs are 0.5 by definition and POs copy their driver), against the trivial baseline that
predicts the training gates' mean probability for every gate.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from circuitml.tasks.common import (
    GraphEncoding,
    TaskResult,
    TrainConfig,
    is_pretrained,
    make_encoder,
    make_head,
    param_groups,
    pretrained_head,
    result_label,
    seed_everything,
    split_items,
    train_loop,
)

from circuitml.aig import AIG

__all__ = ["build_probability_graphs", "run_probability"]


def build_probability_graphs(
    circuits: Sequence[AIG], *, num_patterns: int = 4096, seed: int = 0, explicit_not: bool = True
):
    """One graph per circuit with ``prob`` labels (simulation seed ``seed``)."""
    from circuitml.graph import aig_to_data

    return [
        aig_to_data(c, explicit_not=explicit_not, with_prob=True, num_patterns=num_patterns, seed=seed)
        for c in circuits
    ]


def _gate_mask(data) -> torch.Tensor:
    from circuitml.graph import AND, NOT

    return (data.x == AND) | (data.x == NOT)


def run_probability(
    circuits: Sequence[AIG] | None,
    encoder_source,
    mode: str,
    cfg: TrainConfig,
    *,
    graphs: Sequence | None = None,
    encoder_config: dict | None = None,
    progress: Callable[[int, float], None] | None = None,
    groups: Sequence[str] | None = None,
    cache: list | None = None,
) -> TaskResult:
    """Train a probability head on the training circuits and report MAE on the held-out ones.

    ``groups``: a name per circuit (its family) to hold out whole groups; ``cache``: frozen embeddings shared
    between runs.
    """
    cfg.validate()
    seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    encoder, trainable = make_encoder(encoder_source, mode, seed=cfg.seed, config=encoder_config)
    encoder.to(device)
    explicit_not = getattr(getattr(encoder, "config", None), "explicit_not", True)
    if graphs is None:
        graphs = build_probability_graphs(circuits, explicit_not=explicit_not)
    names = [str(getattr(g, "name", i)) for i, g in enumerate(graphs)]
    train_ids, test_ids = split_items(len(graphs), groups, cfg)
    torch.manual_seed(cfg.seed)
    transfer = cfg.head == "pretrained"
    if transfer:  # funcrec's decoder: it reads the graph's edges, not only each node's embedding
        head = pretrained_head(encoder_source, mode, cfg, "probability").to(device)
    else:
        head = make_head(cfg.head, encoder.out_dim, 64, 1).to(device)
    enc = GraphEncoding(encoder, graphs, trainable, device=device, cache=cache)

    def predict(idx: Sequence[int]) -> torch.Tensor:
        node, _, _, _ = enc(idx)
        if transfer:
            return head(node, enc.edges(idx))
        return torch.sigmoid(head(node)).squeeze(-1)

    def step(batch: np.ndarray) -> torch.Tensor:
        idx = train_ids[batch]
        pred = predict(idx)
        true = torch.cat([graphs[i].prob for i in idx]).to(device)
        mask = torch.cat([_gate_mask(graphs[i]) for i in idx]).to(device)
        return (pred[mask] - true[mask]).abs().mean() + 0.01 * enc.aux_loss()

    opt_groups = param_groups(head, encoder, trainable, is_pretrained(encoder_source, mode), cfg)
    per_batch = max(1, cfg.batch_size // 16)  # graphs per step: a graph holds many labelled nodes
    small = TrainConfig(**{**cfg.__dict__, "batch_size": per_batch})
    history = (
        []  # zero-shot: the pretraining head as shipped
        if cfg.zero_shot
        else train_loop(
            opt_groups,
            step,
            len(train_ids),
            small,
            progress=progress,
            modules=[head, encoder] if trainable else [head],
        )
    )

    encoder.eval()
    head.eval()
    preds, trues, group = [], [], []
    with torch.no_grad():
        for g in test_ids:
            mask = _gate_mask(graphs[g])
            preds.append(predict([g])[mask.to(device)].cpu().numpy())
            trues.append(graphs[g].prob[mask].numpy())
            group.append(np.full(int(mask.sum()), g))
    pred, true = np.concatenate(preds), np.concatenate(trues)
    train_mean = float(torch.cat([graphs[i].prob[_gate_mask(graphs[i])] for i in train_ids]).mean())
    metrics = {"mae": float(np.abs(pred - true).mean())}
    baseline = {"mae": float(np.abs(train_mean - true).mean())}
    held_out = "circuits" if groups is None else "whole families"
    return TaskResult(
        "probability",
        result_label(encoder_source, mode),
        mode,
        cfg.seed,
        metrics,
        baseline,
        history,
        pred,
        true,
        np.concatenate(group),
        names,
        notes=(
            f"MAE over AND/NOT nodes of held-out {held_out}; head: {cfg.head}{' (zero-shot)' if cfg.zero_shot else ''}; baseline predicts the training gates' "
            "mean probability."
        ),
    )
