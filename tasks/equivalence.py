"""Logic equivalence identification: do two gates, or two circuits, compute the same Boolean function?

MGVGA (Wu et al., ICLR 2025, Sec. 5.2) evaluates encoders on identifying functionally equivalent logic;
DeepGate2 (Shi et al., ICCAD 2023) learns gate embeddings whose similarity follows functional similarity. Two
settings, both scored with a pair head ``sigmoid(MLP([h_a * h_b ; |h_a - h_b|]))`` (symmetric in a, b) and BCE:

``gates`` — node pairs within one circuit. Each circuit is merged with its ABC-optimized copy (same PIs; the
copy's ANDs appended), so functionally equal but structurally different gates exist in every circuit. Labels
come from node signatures: exact truth tables when the circuit has at most 16 inputs, else 4,096 random
patterns (pairs equal on all of them are labelled equivalent; a false positive has probability about
``2^-4096`` per pair for non-degenerate functions). Negatives are balanced with positives: half are *siblings*
(gates sharing a fanin — structurally alike, functionally different), half random pairs.

``circuits`` — circuit pairs. Positive: ``(c, ABC(c))``. Hard negative: ``(c, ABC(c'))`` where ``c'`` is ``c`` with
one AND fanin's complement flipped, kept only when :func:`circuitml.sim.equivalent` shows it differs; both sides
of every pair went through ABC, so structure alone does not give the label away.

Whole circuits are held out. Metrics: accuracy, F1 and AUC against the majority-class baseline.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import torch
from circuitml.tasks.common import (
    GraphEncoding,
    TaskResult,
    TrainConfig,
    binary_metrics,
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
from torch import Tensor

from circuitml.aig import AIG, merge_with_copy
from circuitml.errors import ConfigError

__all__ = ["merge_with_copy", "node_signatures", "gate_pairs", "flip_one_fanin", "run_equivalence"]

SETTINGS = ("gates", "circuits")


def node_signatures(aig: AIG, *, num_patterns: int = 4096, seed: int = 0) -> np.ndarray:
    """``uint64 [num_nodes, W]``: exhaustive truth tables for <= 16 inputs, else random-pattern signatures."""
    from circuitml.sim import projection_words, random_pi_words, simulate_words

    if aig.num_pis <= 16:
        return simulate_words(aig, projection_words(aig.num_pis))
    return simulate_words(aig, random_pi_words(aig.num_pis, num_patterns, seed))


def gate_pairs(aig: AIG, *, max_pairs: int = 512, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Balanced labelled AND-node pairs ``(int64 [P, 2] AIG node ids, float32 [P] labels)`` of one circuit."""
    rng = np.random.default_rng(seed)
    sig = node_signatures(aig, seed=seed)
    ands = aig.first_and + np.arange(aig.num_ands, dtype=np.int64)
    if ands.size < 2:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    rows = np.ascontiguousarray(sig[ands])
    _, func = np.unique(
        rows.view(np.dtype((np.void, rows.dtype.itemsize * rows.shape[1]))), return_inverse=True
    )
    func = func.reshape(-1)
    # positives: neighbours in the order sorted by function id that share it
    order = np.argsort(func, kind="stable")
    same = func[order[1:]] == func[order[:-1]]
    pos = np.stack([ands[order[:-1]][same], ands[order[1:]][same]], axis=1)
    if pos.shape[0] == 0:
        return np.zeros((0, 2), np.int64), np.zeros(0, np.float32)
    n = min(pos.shape[0], max_pairs // 2)
    pos = pos[rng.choice(pos.shape[0], n, replace=False)]
    func_of = np.full(aig.num_nodes, -1, dtype=np.int64)
    func_of[ands] = func
    # sibling negatives: ANDs reading the same fanin node, with different functions
    fanin = (aig.ands >> 1).reshape(-1)
    reader = np.repeat(ands, 2)
    o = np.argsort(fanin, kind="stable")
    adj = fanin[o[1:]] == fanin[o[:-1]]
    sib = np.stack([reader[o[:-1]][adj], reader[o[1:]][adj]], axis=1)
    sib = sib[func_of[sib[:, 0]] != func_of[sib[:, 1]]]
    n_sib = min(sib.shape[0], n // 2)
    sib = sib[rng.choice(sib.shape[0], n_sib, replace=False)] if n_sib else sib[:0]
    # random negatives fill the rest
    cand = rng.choice(ands, size=(4 * (n - n_sib) + 8, 2))
    cand = cand[func_of[cand[:, 0]] != func_of[cand[:, 1]]][: n - n_sib]
    neg = np.concatenate([sib, cand])
    pairs = np.concatenate([pos, neg]).astype(np.int64)
    labels = np.concatenate([np.ones(len(pos)), np.zeros(len(neg))]).astype(np.float32)
    return pairs, labels


def flip_one_fanin(aig: AIG, rng: np.random.Generator, tries: int = 8) -> AIG | None:
    """``aig`` with one AND fanin complemented, checked functionally different (``None`` if no try differs)."""
    from circuitml.sim import equivalent

    if aig.num_ands == 0:
        return None
    for _ in range(tries):
        out = aig.copy()
        row, side = int(rng.integers(aig.num_ands)), int(rng.integers(2))
        out.ands[row, side] ^= 1
        if not equivalent(aig, out, method="sim").equal:  # a found difference is a proof of non-equivalence
            return out
    return None


@dataclass
class _GatePairs:
    graphs: list
    pairs: list[Tensor]  # graph-node ids [P, 2] per graph
    labels: list[Tensor]


def _graph_node_of(data) -> np.ndarray:
    """AIG node id → graph node id (for nodes that are not NOT/PO nodes)."""
    from circuitml.graph import NOT, PO

    aig_node = data.aig_node.numpy()
    keep = (data.x.numpy() != NOT) & (data.x.numpy() != PO) & (aig_node >= 0)
    table = np.full(int(aig_node.max()) + 1 if aig_node.size else 1, -1, dtype=np.int64)
    table[aig_node[keep]] = np.flatnonzero(keep)
    return table


def _optimize_all(circuits: Sequence[AIG], seed: int, workers: int = 2) -> list[AIG]:
    """Each circuit after one seeded OpenABC-D recipe (one ABC process per circuit, ``workers`` at a time)."""
    from circuitml.datasets.qor import generate_recipes, run_recipes

    recipes = generate_recipes(len(circuits), seed=seed)

    def one(k: int) -> AIG:
        return run_recipes(circuits[k], recipes[k : k + 1], keep_aigs=True)[0].aig

    with ThreadPoolExecutor(max_workers=workers) as pool:
        out = list(pool.map(one, range(len(circuits))))
    for a, c in zip(out, circuits, strict=True):
        a.name = c.name
    return out


def build_gate_pairs(
    circuits: Sequence[AIG], *, seed: int = 0, explicit_not: bool = True, max_pairs: int = 512
) -> _GatePairs:
    from circuitml.graph import aig_to_data

    optimized = _optimize_all(circuits, seed)
    graphs, pairs, labels = [], [], []
    for k, (c, o) in enumerate(zip(circuits, optimized, strict=True)):
        merged = merge_with_copy(c, o)
        p, y = gate_pairs(merged, max_pairs=max_pairs, seed=seed + k)
        data = aig_to_data(merged, explicit_not=explicit_not)
        data.name = c.name
        table = _graph_node_of(data)
        graphs.append(data)
        pairs.append(torch.from_numpy(table[p]))
        labels.append(torch.from_numpy(y))
    return _GatePairs(graphs, pairs, labels)


def build_circuit_pairs(circuits: Sequence[AIG], *, seed: int = 0, explicit_not: bool = True):
    """Graphs ``[c_0, ABC(c_0), ABC(c_0'), c_1, ...]`` and pair rows ``(i, j, label, circuit)``."""
    from circuitml.graph import aig_to_data

    rng = np.random.default_rng(seed)
    mutants = [flip_one_fanin(c, rng) for c in circuits]
    todo = list(circuits) + [m for m in mutants if m is not None]
    optimized = _optimize_all(todo, seed)
    graphs, rows = [], []
    mut_k = len(circuits)
    for k, c in enumerate(circuits):
        base = len(graphs)
        graphs.extend(
            [aig_to_data(c, explicit_not=explicit_not), aig_to_data(optimized[k], explicit_not=explicit_not)]
        )
        rows.append((base, base + 1, 1.0, k))
        if mutants[k] is not None:
            graphs.append(aig_to_data(optimized[mut_k], explicit_not=explicit_not))
            mut_k += 1
            rows.append((base, base + 2, 0.0, k))
    return graphs, np.array(rows, dtype=np.float64).reshape(-1, 4)


def run_equivalence(
    circuits: Sequence[AIG],
    encoder_source,
    mode: str,
    cfg: TrainConfig,
    *,
    setting: str = "gates",
    prepared=None,
    encoder_config: dict | None = None,
    progress: Callable[[int, float], None] | None = None,
    groups: Sequence[str] | None = None,
    cache: list | None = None,
) -> TaskResult:
    """Train the pair head for ``setting`` (``gates`` or ``circuits``) and evaluate on held-out circuits.

    ``prepared`` reuses the pairs of an earlier run (from :func:`prepare_equivalence`) so that compared encoders
    see the same data and ABC is run once. ``groups``: a name per circuit (its family) to hold out whole groups;
    ``cache``: frozen embeddings shared between runs.
    """
    if setting not in SETTINGS:
        raise ConfigError(f"equivalence setting: expected one of {', '.join(SETTINGS)}, got {setting!r}")
    cfg.validate()
    seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    encoder, trainable = make_encoder(encoder_source, mode, seed=cfg.seed, config=encoder_config)
    encoder.to(device)
    explicit_not = getattr(getattr(encoder, "config", None), "explicit_not", True)
    if prepared is None:
        prepared = prepare_equivalence(circuits, setting, seed=0, explicit_not=explicit_not)
    torch.manual_seed(cfg.seed)
    transfer = cfg.head == "pretrained"
    if transfer:  # funcsim's (gates) / the contrastive (circuits) projection, calibrated + a residual MLP
        head = pretrained_head(encoder_source, mode, cfg, "equivalence", setting).to(device)
    else:
        head = make_head(cfg.head, 2 * encoder.out_dim, 64, 1).to(device)
    if cfg.zero_shot:  # only the two calibration scalars: AUC is the pretrained similarity's own
        for p in head.parameters():
            p.requires_grad_(False)
        for p in head.calibration():
            p.requires_grad_(True)
    opt_groups = param_groups(head, encoder, trainable, is_pretrained(encoder_source, mode), cfg)
    modules = [head, encoder] if trainable else [head]
    # a step holds a few circuits: the gates setting scores hundreds of pairs per circuit
    per_step = TrainConfig(**{**cfg.__dict__, "batch_size": max(1, cfg.batch_size // 16)})

    def pair_logit(ha: Tensor, hb: Tensor) -> Tensor:
        if transfer:
            return head(ha, hb)
        return head(torch.cat([ha * hb, (ha - hb).abs()], dim=-1)).squeeze(-1)

    bce = torch.nn.functional.binary_cross_entropy_with_logits
    if setting == "gates":
        data: _GatePairs = prepared
        names = [str(g.name) for g in data.graphs]
        tr, te = split_items(len(data.graphs), groups, cfg)
        enc = GraphEncoding(encoder, data.graphs, trainable, device=device, cache=cache)

        def logits(idx: Sequence[int]) -> tuple[Tensor, Tensor]:
            node, _, _, offsets = enc(idx)
            p = torch.cat([data.pairs[i].to(device) + offsets[k] for k, i in enumerate(idx)])
            y = torch.cat([data.labels[i] for i in idx]).to(device)
            return pair_logit(node[p[:, 0]], node[p[:, 1]]), y

        def step(batch: np.ndarray) -> Tensor:
            out, y = logits(tr[batch])
            return bce(out, y) + 0.01 * enc.aux_loss()

        history = train_loop(opt_groups, step, len(tr), per_step, progress=progress, modules=modules)
        encoder.eval()
        head.eval()
        with torch.no_grad():
            outs = [logits([g]) for g in te]
        score = torch.sigmoid(torch.cat([o for o, _ in outs])).cpu().numpy()
        label = torch.cat([y for _, y in outs]).cpu().numpy()
        group = np.concatenate([np.full(len(data.labels[g]), g) for g in te])
        train_labels = torch.cat([data.labels[i] for i in tr]).numpy()
    else:
        graphs, rows = prepared
        circuit = rows[:, 3].astype(np.int64)
        n_circuits = int(circuit.max()) + 1
        names = [str(getattr(graphs[int(r[0])], "name", k)) for k, r in enumerate(rows) if r[2] == 1.0]
        tr_c, te_c = split_items(n_circuits, groups, cfg)
        tr = np.flatnonzero(np.isin(circuit, tr_c))
        te = np.flatnonzero(np.isin(circuit, te_c))
        rows_of = [np.flatnonzero(circuit == c) for c in tr_c]
        enc = GraphEncoding(encoder, graphs, trainable, device=device, cache=cache)
        y_all = torch.from_numpy(rows[:, 2]).float().to(device)

        def logits_rows(r: np.ndarray) -> Tensor:
            ids, inv = np.unique(rows[r, :2].astype(np.int64), return_inverse=True)
            _, g, _, _ = enc(ids)
            inv = torch.from_numpy(inv.reshape(-1, 2)).to(device)
            return pair_logit(g[inv[:, 0]], g[inv[:, 1]])

        def step(batch: np.ndarray) -> Tensor:
            # steps over circuits: a circuit's pairs share its graph, encoded once per step
            r = np.concatenate([rows_of[i] for i in batch])
            return bce(logits_rows(r), y_all[r]) + 0.01 * enc.aux_loss()

        # about two pairs per circuit: batch_size // 2 circuits keep the old batch of batch_size pairs
        per_circuit = TrainConfig(**{**cfg.__dict__, "batch_size": max(1, cfg.batch_size // 2)})
        history = train_loop(opt_groups, step, len(tr_c), per_circuit, progress=progress, modules=modules)
        encoder.eval()
        head.eval()
        with torch.no_grad():
            score = torch.sigmoid(logits_rows(te)).cpu().numpy()
        label = rows[te, 2]
        group = circuit[te]
        train_labels = rows[tr, 2]
    metrics = binary_metrics(score, label)
    majority = float(np.mean(train_labels) >= 0.5)
    baseline = binary_metrics(np.full(label.shape, majority), label)
    baseline["auc"] = 0.5
    held_out = "circuits" if groups is None else "whole families"
    return TaskResult(
        "equivalence",
        result_label(encoder_source, mode),
        mode,
        cfg.seed,
        metrics,
        baseline,
        history,
        score,
        label.astype(np.float32),
        group,
        names,
        notes=(
            f"setting={setting}; held out: {held_out}; head: {cfg.head}{' (zero-shot)' if cfg.zero_shot else ''}; baseline predicts the training majority "
            "class (AUC 0.5 by definition)."
        ),
    )


def prepare_equivalence(
    circuits: Sequence[AIG], setting: str = "gates", *, seed: int = 0, explicit_not: bool = True
):
    """The labelled pairs of ``setting`` for ``circuits`` (runs ABC once per circuit / mutant)."""
    if setting == "gates":
        return build_gate_pairs(circuits, seed=seed, explicit_not=explicit_not)
    if setting == "circuits":
        return build_circuit_pairs(circuits, seed=seed, explicit_not=explicit_not)
    raise ConfigError(f"equivalence setting: expected one of {', '.join(SETTINGS)}, got {setting!r}")
