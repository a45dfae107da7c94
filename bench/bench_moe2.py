"""MoE² budgeted expert selection on heterogeneous experts: the quality-vs-budget curve, measured here.

Experts: ``M`` next-character MLPs of different widths on the SQuAD sample (input: the last ``CONTEXT``
characters one-hot; output: next-character probabilities), each trained alone. Their latency (wall clock)
and energy proxy (CPU seconds) per ``--batch``-row batch are measured on this machine (best of 5). A gate
(``BudgetedMoE.gate``) is trained over all experts (frozen) on the soft mixture's likelihood. For each budget
the branch-and-bound selection (``select_experts``) picks the subset maximizing the held-out quality
``-bits/char`` of the gate restricted to the subset; exhaustive search over all ``2^M`` subsets is run beside
it as the check. Budgets: the latency budget (slowest chosen expert, experts on parallel devices) and the
energy budget (sum), each swept as fractions of the all-expert cost.

    python bench/bench_moe2.py
    python bench/bench_moe2.py --quick
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
from circuitml.moe.systems.moe2 import BudgetedMoE, brute_force, measure_cost, select_experts
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import moe_tasks as T  # noqa: E402


def windows(ids: torch.Tensor, vocab: int, starts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ctx = ids[starts[:, None] + torch.arange(T.CONTEXT)]
    return F.one_hot(ctx, vocab).float().flatten(1), ids[starts + T.CONTEXT]


class Probs(nn.Module):
    """An expert returning next-character probabilities (so a gated mixture is a distribution)."""

    def __init__(self, d_in: int, width: int, vocab: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(d_in, width), nn.GELU(), nn.Linear(width, vocab))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.net(x), dim=-1)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", default="8,16,32,64,128,256,512,1024")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.widths, args.steps = "8,32,128,512", 40
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    train_ids, test_ids, vocab = T.text_data()
    d_in = T.CONTEXT * vocab
    g = torch.Generator().manual_seed(args.seed)
    widths = [int(w) for w in args.widths.split(",")]

    def fit(model: nn.Module, params) -> None:
        opt = torch.optim.Adam(params, lr=3e-3)
        for _ in range(args.steps):
            starts = torch.randint(0, len(train_ids) - T.CONTEXT, (args.batch,), generator=g)
            x, y = windows(train_ids, vocab, starts)
            loss = F.nll_loss(torch.log(model(x) + 1e-9), y)
            opt.zero_grad()
            loss.backward()
            opt.step()

    experts = []
    for w in widths:
        e = Probs(d_in, w, vocab)
        fit(e, e.parameters())
        e.requires_grad_(False)
        experts.append(e.eval())
    moe = BudgetedMoE(experts, d_in, top_k=len(experts))
    fit(moe, moe.gate.parameters())  # the gate over the frozen experts, on the soft mixture's likelihood
    probe = windows(train_ids, vocab, torch.arange(args.batch))[0]
    costs = [measure_cost(e, probe) for e in experts]
    # Held-out quality of any subset, from cached expert outputs and gate logits (same formula as forward).
    xt, yt = windows(test_ids, vocab, torch.arange(len(test_ids) - T.CONTEXT))
    with torch.no_grad():
        p_true = torch.stack([e(xt)[torch.arange(len(yt)), yt] for e in experts], dim=1)  # [N, M]
        logits = moe.gate(xt)

    def quality(s: tuple[int, ...]) -> float:
        if not s:
            return -math.log2(vocab)  # no expert: a uniform guess
        w = torch.softmax(logits[:, list(s)], dim=-1)
        return float(torch.log2((w * p_true[:, list(s)]).sum(1) + 1e-12).mean())

    full = tuple(range(len(experts)))
    moe.select(full)
    with torch.no_grad():
        direct = float(torch.log2(moe(xt)[torch.arange(len(yt)), yt] + 1e-12).mean())
    assert abs(direct - quality(full)) < 1e-4, (direct, quality(full))
    print(
        f"MoE²: experts widths={widths} steps={args.steps} batch={args.batch} seed={args.seed} (machine shared)"
    )
    print(f"  {'expert':>7} {'width':>6} {'params':>9} {'ms/batch':>9} {'cpu ms':>8} {'bits/char alone':>16}")
    for i, (w, c) in enumerate(zip(widths, costs, strict=True)):
        print(
            f"  {i:>7} {w:>6} {T.num_params(experts[i]):>9,} {1e3 * c.latency:>9.2f} {1e3 * c.energy:>8.2f} {-quality((i,)):>16.3f}"
        )
    max_lat = max(c.latency for c in costs)
    sum_en = sum(c.energy for c in costs)
    print(f"  all experts: bits/char {-quality(full):.3f}")
    print(
        f"  {'budget':<18} {'chosen':<22} {'bits/char':>9} {'evals':>6} {'brute':>9} {'latency ms':>11} {'energy ms':>10}"
    )
    for kind in ("latency", "energy"):
        for frac in (0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0):
            lat = frac * max_lat if kind == "latency" else float("inf")
            en = frac * sum_en if kind == "energy" else float("inf")
            sel = select_experts(quality, costs, lat, en)
            ref = brute_force(quality, costs, lat, en)
            used_lat = max((costs[i].latency for i in sel.subset), default=0.0)
            used_en = sum(costs[i].energy for i in sel.subset)
            assert used_lat <= lat and used_en <= en
            print(
                f"  {kind} {frac:>5.2f} x all  {str(list(sel.subset)):<22} {-sel.quality:>9.3f} {sel.evaluations:>6} "
                f"{-ref.quality:>9.3f} {1e3 * used_lat:>11.2f} {1e3 * used_en:>10.2f}"
            )


if __name__ == "__main__":
    main()
