"""Domain shift across circuit families: signal-probability regression, held-out-family error.

Domains are circuit families — EPFL arithmetic, EPFL random/control, ISCAS (85 and 89), and the project's generated
families — and the task is per-node signal probability (labels from bit-parallel simulation). For each held-out
domain the four methods are compared on the same encoder architecture and budget:

* ``all_sources`` — one model trained on every source domain;
* ``mixda`` — that model with MixDA domain/task adapters (stage 1 on the target's *unlabeled* graphs);
* ``meta_dmoe`` — one teacher per source domain, meta-distilled student adapted on the target's unlabeled graphs;
* ``gelegn`` — the all-sources model as global expert, a local expert and gate trained on ``k`` labeled target
  circuits (the "user's few examples"); evaluated, like the others, on the remaining target circuits.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from circuitml.tasks.shift.base import ShiftOutput, evaluate, fit, frozen_copy
from circuitml.tasks.shift.gelegn import run_gelegn
from circuitml.tasks.shift.meta_dmoe import MetaDMoE
from circuitml.tasks.shift.mixda import run_mixda
from torch import Tensor, nn
from torch_geometric.data import Batch, Data

from circuitml.aig import AIG
from circuitml.encoders import EncoderConfig, build_encoder
from circuitml.graph import MASK_TYPE, NUM_NODE_TYPES, aig_to_data

__all__ = [
    "CircuitProbModel",
    "CircuitProbTask",
    "ShiftConfig",
    "load_circuit_domains",
    "results_markdown",
    "run_circuit_shift",
]


class CircuitProbModel(nn.Module):
    """Encoder → residual FFN sublayer → per-node probability head; ``forward(batch) -> ShiftOutput``."""

    def __init__(self, encoder_config: EncoderConfig) -> None:
        super().__init__()
        self.encoder = build_encoder(encoder_config)
        d = self.encoder.out_dim
        self.ffn = nn.Sequential(nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d))
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 1)
        self.type_head = nn.Linear(d, NUM_NODE_TYPES)  # label-free objective: masked gate types

    def features(self, data: Data, node_type: Tensor | None = None) -> Tensor:
        h = self.encoder(data, node_type=node_type).node
        return self.norm(h + self.ffn(h))

    def forward(self, data: Data) -> ShiftOutput:
        f = self.features(data)
        return ShiftOutput(features=f, preds=torch.sigmoid(self.head(f)).squeeze(-1))


class CircuitProbTask:
    """Signal probability: MSE loss, mean absolute error metric, masked gate-type prediction without labels."""

    mask_rate = 0.3

    def __init__(
        self, encoder_config: EncoderConfig, seed: int = 0, device: torch.device | str = "cpu"
    ) -> None:
        self.encoder_config = encoder_config
        self.device = torch.device(device)
        self.gen = torch.Generator().manual_seed(seed)  # on the CPU: masks are the same numbers on any device

    def make_model(self) -> CircuitProbModel:
        return CircuitProbModel(self.encoder_config).to(self.device)

    def loss(self, out: ShiftOutput, batch: Data) -> Tensor:
        return F.mse_loss(out.preds, batch.prob)

    def metric(self, preds: Tensor, batch: Data) -> float:
        return float((preds - batch.prob).abs().mean())

    def unsup_loss(self, model: nn.Module, batch: Data) -> Tensor:
        masked = (torch.rand(batch.x.shape[0], generator=self.gen) < self.mask_rate).to(batch.x.device)
        types = batch.x.clone()
        types[masked] = MASK_TYPE
        f = model.features(batch, node_type=types)
        return F.cross_entropy(model.type_head(f[masked]), batch.x[masked])

    def unsup_head(self, model: nn.Module) -> nn.Module:
        return model.type_head

    def ffn_names(self, model: nn.Module) -> list[str]:
        return ["ffn"]


# ---------------------------------------------------------------------------------------------------- domains
def _aigs_from_shared(shared: Path) -> dict[str, list[AIG]]:
    from circuitml.formats import read_circuit

    def read(pattern: str) -> list[AIG]:
        return [read_circuit(p) for p in sorted(shared.glob(pattern))]

    domains = {
        "arithmetic": read("lsils__benchmarks/arithmetic/*.aig"),
        "control": read("lsils__benchmarks/random_control/*.aig"),
        "iscas": read("ispras__hdl-benchmarks/iscas85/bench/*.bench")
        + [
            a
            for p in sorted(shared.glob("ispras__hdl-benchmarks/iscas89/bench/*.bench"))
            for a in _try(read_circuit, p)
        ],
    }
    return {k: v for k, v in domains.items() if v}


def _try(fn: Callable[[Path], AIG], path: Path) -> list[AIG]:
    from circuitml.errors import CircuitmlError

    try:
        return [fn(path)]
    except CircuitmlError:  # e.g. ISCAS89 s400 uses an undefined signal; it is simply left out
        return []


def load_circuit_domains(
    shared: Path | None = None, generated: Path | None = None, max_ands: int = 20000
) -> dict[str, list[Data]]:
    """Graphs with ``prob`` labels per domain, from ``../shared/data`` and/or a generated dataset directory.

    Circuits above ``max_ands`` AND nodes are left out to bound the CPU budget.
    """
    aigs: dict[str, list[AIG]] = {}
    if shared is not None and shared.is_dir():
        aigs.update(_aigs_from_shared(shared))
    if generated is not None:
        from circuitml.datasets import CircuitDataset

        ds = CircuitDataset(generated)
        aigs["generated"] = [ds.aig(i) for i in range(len(ds))]
    out: dict[str, list[Data]] = {}
    for name, items in aigs.items():
        graphs = [
            aig_to_data(a, with_prob=True, num_patterns=2048) for a in items if 0 < a.num_ands <= max_ands
        ]
        if graphs:
            out[name] = graphs
    return out


# ---------------------------------------------------------------------------------------------------- benchmark
@dataclass
class ShiftConfig:
    encoder: str = "deepgcn"
    hidden: int = 32
    num_layers: int = 3
    graphs_per_batch: int = 4
    steps: int = 150
    adapt_steps: int = 60
    meta_steps: int = 60
    local_k: int = 1
    lr: float = 3e-3
    seed: int = 0
    device: str = "cpu"


def _batches(graphs: Sequence[Data], size: int, device: torch.device | str = "cpu") -> list[Batch]:
    return [Batch.from_data_list(list(graphs[i : i + size])).to(device) for i in range(0, len(graphs), size)]


def run_circuit_shift(
    domains: dict[str, list[Data]],
    cfg: ShiftConfig,
    held_out: Sequence[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Leave-one-domain-out mean absolute error of each method; ``{held_out_domain: {method: mae}}``."""
    say = progress or (lambda _msg: None)
    return {target: _held_out_row(domains, target, cfg, say) for target in (held_out or list(domains))}


def _held_out_row(
    domains: dict[str, list[Data]], target: str, cfg: ShiftConfig, say: Callable[[str], None]
) -> dict[str, float]:
    torch.manual_seed(cfg.seed)
    enc_cfg = EncoderConfig(kind=cfg.encoder, hidden=cfg.hidden, num_layers=cfg.num_layers)
    dev = torch.device(cfg.device)
    task = CircuitProbTask(enc_cfg, seed=cfg.seed, device=dev)

    def supervised(m: nn.Module, b: Batch) -> Tensor:
        return task.loss(m(b), b)

    sources = [d for d in domains if d != target]
    tgt = domains[target]
    k = min(cfg.local_k, max(len(tgt) - 1, 0))
    local, test = tgt[:k], tgt[k:]
    test_b = _batches(test, cfg.graphs_per_batch, dev)
    unlabeled_b = _batches(test, cfg.graphs_per_batch, dev)  # the target's graphs, labels never read
    src_graphs = [g for d in sources for g in domains[d]]
    src_b = _batches(src_graphs, cfg.graphs_per_batch, dev)
    row: dict[str, float] = {}
    t0 = time.time()

    # baseline: predict the source mean probability everywhere
    mean_p = float(torch.cat([g.prob for g in src_graphs]).mean())
    row["source_mean"] = evaluate(task, lambda b: torch.full_like(b.prob, mean_p), test_b)

    # 1) one model on all sources
    base = task.make_model()
    fit(base, supervised, src_b, cfg.steps, lr=cfg.lr, seed=cfg.seed)
    base.eval()
    row["all_sources"] = evaluate(task, lambda b: base(b).preds, test_b)
    say(f"{target}: all sources {row['all_sources']:.4f}")

    # 2) MixDA on a copy of it
    mix = copy.deepcopy(base)
    mix, _ = run_mixda(
        task,
        mix,
        mix.head,
        cfg.hidden,
        src_b,
        unlabeled_b,
        steps=(cfg.adapt_steps, cfg.adapt_steps),
        lr=cfg.lr,
        seed=cfg.seed,
    )
    row["mixda"] = evaluate(task, lambda b: mix(b).preds, test_b)
    say(f"{target}: MixDA {row['mixda']:.4f}")

    # 3) Meta-DMoE: one teacher per source domain, student initialized from the all-sources model
    teachers = []
    for d in sources:
        t = task.make_model()
        steps = max(1, cfg.steps // len(sources))
        fit(t, supervised, _batches(domains[d], cfg.graphs_per_batch, dev), steps, lr=cfg.lr, seed=cfg.seed)
        teachers.append(frozen_copy(t))
    meta = MetaDMoE(teachers, copy.deepcopy(base), cfg.hidden)
    source_batches = [_batches(domains[d], cfg.graphs_per_batch, dev) for d in sources]
    meta.meta_train(task, source_batches, steps=cfg.meta_steps, seed=cfg.seed)
    params = meta.adapt(unlabeled_b, steps=5)
    row["meta_dmoe"] = evaluate(task, lambda b: meta.predict(params, b), test_b)
    say(f"{target}: Meta-DMoE {row['meta_dmoe']:.4f}")

    # 4) GE/LE/GN with k labeled target circuits
    if local:
        lenc = EncoderConfig(kind=cfg.encoder, hidden=cfg.hidden, num_layers=max(1, cfg.num_layers - 1))
        gate, _ = run_gelegn(
            task,
            frozen_copy(base),
            CircuitProbModel(lenc).to(dev),
            cfg.hidden,
            _batches(local, cfg.graphs_per_batch, dev),
            steps=(cfg.adapt_steps, cfg.adapt_steps),
            lr=cfg.lr,
            seed=cfg.seed,
        )
        row["gelegn"] = evaluate(task, lambda b: gate(b).preds, test_b)
        say(f"{target}: GE/LE/GN {row['gelegn']:.4f}")
    row["seconds"] = time.time() - t0
    row["test_circuits"] = float(len(test))
    return row


def results_markdown(results: dict[str, dict[str, Any]]) -> str:
    methods = ["source_mean", "all_sources", "mixda", "meta_dmoe", "gelegn"]
    lines = [
        "| held-out domain | test circuits | " + " | ".join(methods) + " |",
        "|---|---|" + "---|" * len(methods),
    ]
    for dom, row in results.items():
        cells = [f"{row[m]:.4f}" if m in row else "—" for m in methods]
        lines.append(f"| {dom} | {int(row['test_circuits'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
