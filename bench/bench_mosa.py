"""MoSA vs a standard adapter of the same size, on a frozen circuit encoder and on frozen MiniLM, full and low data.

Both tasks freeze the backbone, so its features are computed once and only ``adapter -> head`` trains (the same
budget for both methods: same steps, learning rate, bottleneck; MoSA is merged before evaluation).

* circuits: per-node signal probability (MAE, lower is better). A DeepGCN probability model is trained on the
  EPFL control + arithmetic circuits of ../shared/data and frozen; the adapter and a fresh head train on ISCAS
  circuits (full: 15 circuits, low: 2) and are scored on 16 other ISCAS circuits.
* text: answer type of a SQuAD question (numeric / name / other, from its gold answer; accuracy, higher is better)
  from MiniLM's mean-pooled question embedding; held-out contexts (full: all training questions, low: 32).

    nice -n 10 python bench/bench_mosa.py --seeds 0 1 2 --out mosa.json
"""

from __future__ import annotations

import argparse
import json
import re
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from circuitml.moe import BottleneckAdapter, MoSAAdapter
from torch import Tensor, nn

from circuitml.fileio import atomic_write

SHARED = Path(__file__).resolve().parents[1].parent / "shared/data"


def train_probe(
    adapter: nn.Module,
    head: nn.Module,
    x: Tensor,
    y: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    steps: int,
    seed: int,
    batch: int = 256,
) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([*adapter.parameters(), *head.parameters()], lr=3e-3, weight_decay=0.01)
    adapter.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (min(batch, len(x)),), generator=gen)
        loss = loss_fn(head(adapter(x[idx])), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()


def make_adapter(kind: str, d: int, r: int, seed: int, strategy: str) -> nn.Module:
    torch.manual_seed(seed)
    if kind == "standard":
        return BottleneckAdapter(d, r)
    return MoSAAdapter(d, r, num_modules=4, strategy=strategy, seed=seed)


def run(
    features: tuple[Tensor, Tensor, Tensor, Tensor],
    out_dim: int,
    loss_fn,
    metric,
    seeds: list[int],
    steps: int,
    r: int,
) -> dict[str, list[float]]:
    xtr, ytr, xte, yte = features
    rows: dict[str, list[float]] = {}
    for kind, strategy in [("standard", ""), ("mosa", "stochastic"), ("mosa", "hierarchical")]:
        name = kind if kind == "standard" else f"mosa-{strategy}"
        for seed in seeds:
            adapter = make_adapter(kind, xtr.shape[1], r, seed, strategy)
            head = nn.Linear(xtr.shape[1], out_dim)
            train_probe(adapter, head, xtr, ytr, loss_fn, steps, seed)
            final = adapter.merge() if isinstance(adapter, MoSAAdapter) else adapter
            final.eval()
            with torch.no_grad():
                rows.setdefault(name, []).append(metric(head(final(xte)), yte))
    return rows


# ------------------------------------------------------------------------------------------------ circuit task
def circuit_features(seed: int = 0) -> dict[str, tuple[Tensor, Tensor, Tensor, Tensor]]:
    from circuitml.tasks.shift.base import fit
    from circuitml.tasks.shift.circuits import CircuitProbTask, _batches, load_circuit_domains

    from circuitml.encoders import EncoderConfig

    domains = load_circuit_domains(SHARED, max_ands=3000)
    torch.manual_seed(seed)
    task = CircuitProbTask(EncoderConfig(kind="deepgcn", hidden=32, num_layers=3), seed=seed)
    base = task.make_model()
    src = _batches(domains["control"] + domains["arithmetic"], 4)
    fit(base, lambda m, b: task.loss(m(b), b), src, 150, seed=seed)
    base.eval()
    with torch.no_grad():
        rows = [(base.features(g), g.prob) for g in domains["iscas"]]

    def cat(part):
        return torch.cat([f for f, _ in part]), torch.cat([p for _, p in part])

    test = cat(rows[15:])
    return {"full": (*cat(rows[:15]), *test), "low": (*cat(rows[:2]), *test)}


# ------------------------------------------------------------------------------------------------ text task
def answer_type(text: str) -> int:
    if re.search(r"\d", text):
        return 0  # numeric
    return 1 if text[:1].isupper() else 2  # name / other


def text_features() -> dict[str, tuple[Tensor, Tensor, Tensor, Tensor]]:
    from circuitml.datasets.squad import read_squad
    from circuitml.tasks.qa.train import split_by_context

    from circuitml.lm import load_lm

    examples, _ = read_squad(SHARED / "deepset-ai__haystack/test/samples/squad/small.json")
    train, test = split_by_context([e for e in examples if e.answers], 0.3, 0)
    model, tok = load_lm("all-minilm-l6-v2")

    def embed(exs) -> Tensor:
        out = []
        with torch.no_grad():
            for lo in range(0, len(exs), 32):
                enc = tok([e.question for e in exs[lo : lo + 32]], padding=True, return_tensors="pt")
                h = model(**enc).last_hidden_state
                m = enc["attention_mask"].unsqueeze(-1).to(h.dtype)
                out.append((h * m).sum(1) / m.sum(1))
        return torch.cat(out)

    def labels(exs) -> Tensor:
        return torch.tensor([answer_type(e.answers[0].text) for e in exs])

    xtr, ytr, test = embed(train), labels(train), (embed(test), labels(test))
    return {"full": (xtr, ytr, *test), "low": (xtr[:32], ytr[:32], *test)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--tasks", nargs="+", default=["circuits", "text"])
    ap.add_argument("--out", type=Path, default=Path("mosa.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    results: dict[str, dict[str, list[float]]] = {}
    for task in args.tasks:
        data = circuit_features() if task == "circuits" else text_features()
        for size, feats in data.items():
            key = f"{task}/{size}"
            if task == "circuits":
                rows = run(
                    feats,
                    1,
                    lambda p, y: F.mse_loss(torch.sigmoid(p).squeeze(-1), y),
                    lambda p, y: float((torch.sigmoid(p).squeeze(-1) - y).abs().mean()),
                    args.seeds,
                    args.steps,
                    8,
                )
            else:
                rows = run(
                    feats,
                    3,
                    F.cross_entropy,
                    lambda p, y: float((p.argmax(-1) == y).float().mean()),
                    args.seeds,
                    args.steps,
                    16,
                )
            results[key] = rows
            summary = {
                k: f"{torch.tensor(v).mean():.4f} ± {torch.tensor(v).std():.4f}" for k, v in rows.items()
            }
            print(f"{key} (train {len(feats[0])} rows, test {len(feats[2])}): {summary}", flush=True)
            atomic_write(args.out, json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
