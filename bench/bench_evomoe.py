"""EvoMoE (one expert, spawn, dense-to-sparse anneal) against Switch and top-2 at the same optimizer-step budget.

Two tasks, 3 seeds each (issue 14, item 2):

* **text** — character-level language modelling on the SQuAD sample's contexts (../shared/data, haystack test
  samples): a 2-layer pre-norm transformer (d=64, 4 heads, context 64) whose FFNs are MoE blocks of 8 SwiGLU
  experts; contexts are split by article paragraph, 80/20; metric: held-out bits per character.
* **circuit** — DeepGate signal-probability regression (``circuitml.tasks.probability``) on ISCAS85 with a
  2-layer ``moe_gnn`` encoder (SAGE experts, E=4); whole circuits held out; metric: MAE on their gates.

Routers: ``switch`` (top-1, capacity 1.25), ``topk`` (k=2, dropless), ``evomoe`` (20 % of the steps on one
expert, 50 % annealing the DTS gate, then top-1). Besides quality it reports the mean experts per token over
training (a compute proxy: EvoMoE's dense phases cost more than top-1 per step).

    python bench/bench_evomoe.py --seeds 0 1 2 --steps 300
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from circuitml.moe import build_moe
from circuitml.moe.evomoe_recipe import evomoe_options
from circuitml.moe.schedule import step_routers
from torch import nn

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
ROUTERS = ("switch", "topk", "evomoe")


def router_setup(name: str, steps: int) -> tuple[int, dict]:
    """(top_k, router_options) of a compared router for a budget of ``steps`` optimizer steps."""
    if name == "switch":
        return 1, {}
    if name == "topk":
        return 2, {}
    return 1, {**evomoe_options(steps, 0.2, 0.5), "final_top_k": 1, "balance_loss_weight": 0.01}


# -- text: char-level LM ----------------------------------------------------------------------------------
def squad_text() -> tuple[torch.Tensor, torch.Tensor, int]:
    raw = json.loads((DATA / "deepset-ai__haystack/test/samples/squad/small.json").read_text())
    paragraphs = [p["context"] for article in raw["data"] for p in article["paragraphs"]]
    split = int(len(paragraphs) * 0.8)
    train, test = "\n".join(paragraphs[:split]), "\n".join(paragraphs[split:])
    chars = sorted(set(train + test))
    table = {c: i for i, c in enumerate(chars)}
    enc = lambda s: torch.tensor([table[c] for c in s], dtype=torch.long)  # noqa: E731
    return enc(train), enc(test), len(chars)


class CharLM(nn.Module):
    def __init__(
        self, vocab: int, router: str, top_k: int, options: dict, d: int = 64, layers: int = 2
    ) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(64, d)
        self.attn = nn.ModuleList(nn.MultiheadAttention(d, 4, batch_first=True) for _ in range(layers))
        self.n1 = nn.ModuleList(nn.LayerNorm(d) for _ in range(layers))
        self.n2 = nn.ModuleList(nn.LayerNorm(d) for _ in range(layers))
        self.moe = nn.ModuleList(
            build_moe(
                d_model=d, num_experts=8, d_hidden=2 * d, top_k=top_k, router=router, router_options=options
            )
            for _ in range(layers)
        )
        self.out = nn.Linear(d, vocab)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        t = ids.shape[1]
        x = self.emb(ids) + self.pos(torch.arange(t))[None]
        causal = torch.triu(torch.ones(t, t, dtype=torch.bool), 1)
        aux, width = x.new_zeros(()), 0.0
        for attn, n1, n2, moe in zip(self.attn, self.n1, self.n2, self.moe, strict=True):
            h = n1(x)
            x = x + attn(h, h, h, attn_mask=causal, need_weights=False)[0]
            out = moe(n2(x))
            x = x + out.out
            aux = aux + out.aux_loss
            width += float((out.routing.indices >= 0).sum(-1).float().mean())
        return self.out(x), aux, width / len(self.moe)


def run_text(router: str, seed: int, steps: int, data) -> dict:
    train, test, vocab = data
    torch.manual_seed(seed)
    top_k, options = router_setup(router, steps)
    model = CharLM(vocab, router, top_k, options)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    widths = []
    for _ in range(steps):
        starts = torch.randint(0, len(train) - 65, (32,), generator=gen)
        batch = torch.stack([train[s : s + 65] for s in starts.tolist()])
        logits, aux, width = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, vocab), batch[:, 1:].reshape(-1)) + aux
        opt.zero_grad()
        loss.backward()
        opt.step()
        step_routers(model)
        widths.append(width)
    model.eval()
    with torch.no_grad():
        n = (len(test) - 1) // 64
        seqs = test[: n * 64 + 1]
        xs = seqs[:-1].view(n, 64)
        ys = seqs[1:].view(n, 64)
        nll = F.cross_entropy(model(xs)[0].reshape(-1, vocab), ys.reshape(-1))
    return {"quality": float(nll) / math.log(2), "experts_per_token": statistics.fmean(widths)}


# -- circuit: signal probability --------------------------------------------------------------------------
def iscas85():
    from circuitml.tasks.probability import build_probability_graphs

    from circuitml.formats import read_circuit

    files = sorted((DATA / "ispras__hdl-benchmarks/iscas85/bench").glob("*.bench"))
    return build_probability_graphs([read_circuit(f) for f in files])


def run_circuit(router: str, seed: int, epochs: int, graphs) -> dict:
    from circuitml.tasks.common import TrainConfig, split_groups
    from circuitml.tasks.probability import run_probability

    cfg = TrainConfig(epochs=epochs, seed=seed, lr=3e-3)
    train_ids, _ = split_groups(len(graphs), cfg.test_fraction, seed)
    per_step = max(1, cfg.batch_size // 16)
    steps = epochs * math.ceil(len(train_ids) / per_step)
    top_k, options = router_setup(router, steps)
    enc_cfg = {
        "kind": "moe_gnn",
        "hidden": 32,
        "num_layers": 2,
        "options": {"router": router, "num_experts": 4, "top_k": top_k, "router_options": options},
    }
    result = run_probability(None, "scratch", "scratch", cfg, graphs=graphs, encoder_config=enc_cfg)
    return {"quality": result.metrics["mae"], "baseline": result.baseline["mae"], "steps": steps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=300, help="optimizer steps of the text task")
    ap.add_argument("--epochs", type=int, default=40, help="epochs of the circuit task")
    ap.add_argument("--tasks", nargs="+", default=["text", "circuit"])
    args = ap.parse_args()
    torch.set_num_threads(1)
    results: dict[tuple[str, str], list[dict]] = {}
    for task in args.tasks:
        data = squad_text() if task == "text" else iscas85()
        for router in ROUTERS:
            for seed in args.seeds:
                t0 = time.process_time()
                if task == "text":
                    r = run_text(router, seed, args.steps, data)
                else:
                    r = run_circuit(router, seed, args.epochs, data)
                r["cpu_s"] = time.process_time() - t0
                results.setdefault((task, router), []).append(r)
                print(task, router, seed, {k: round(v, 4) for k, v in r.items()}, flush=True)
    print("\n| task | router | metric (mean ± std over seeds) | per-seed | experts/token | CPU s/run |")
    print("|---|---|---|---|---|---|")
    for (task, router), rows in results.items():
        q = [r["quality"] for r in rows]
        spread = statistics.stdev(q) if len(q) > 1 else 0.0
        metric = "bits/char" if task == "text" else "MAE"
        width = (
            f"{statistics.fmean(r['experts_per_token'] for r in rows):.2f}"
            if "experts_per_token" in rows[0]
            else "n/a"
        )
        cpu = statistics.fmean(r["cpu_s"] for r in rows)
        per_seed = ", ".join(f"{v:.4f}" for v in q)
        print(
            f"| {task} | {router} | {metric} {statistics.fmean(q):.4f} ± {spread:.4f} | {per_seed} | {width} | {cpu:.1f} |"
        )


if __name__ == "__main__":
    main()
