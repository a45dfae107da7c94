"""UoE on a transformer: FLOPs per token against quality when a trained dense model is decomposed into experts.

A 2-layer pre-norm character-level transformer LM (d=64, 4 heads, FFN 256, context 64) is trained densely on
the SQuAD sample's contexts (the text of ``bench_evomoe.py``), then every attention becomes a
:class:`~circuitml.moe.uoe.SelectiveMultiHeadAttention` (4 head-group experts) and every MLP a
:class:`~circuitml.moe.uoe.UnionOfMLPExperts` (8 experts in 2 groups) — exactly the same function before routing
(checked: same held-out loss). Each (attention k, MLP k) setting is then fine-tuned for the same number of steps
(routers and weights) and evaluated: held-out bits per character and multiply-adds per token of the attention +
MLP blocks. The dense model is fine-tuned for those steps too, so every row has the same training budget.

    python bench/bench_uoe.py --seeds 0 1 2 --steps 150 --finetune 40
"""

from __future__ import annotations

import argparse
import copy
import math
import statistics
import time

import torch
import torch.nn.functional as F
from bench_evomoe import squad_text
from circuitml.moe.uoe import SelectiveMultiHeadAttention, UnionOfMLPExperts
from torch import nn

D, HEADS, FF, T = 64, 4, 256, 64
SETTINGS = [(4, 8), (2, 4), (1, 2)]  # (attention head groups, MLP experts) kept per token


class DenseAttention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.qkv, self.out = nn.Linear(D, 3 * D), nn.Linear(D, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, HEADS, D // HEADS).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.out(a.transpose(1, 2).reshape(b, t, D))

    def flops_per_token(self, t: int) -> int:
        return 3 * D * D + 2 * t * D + D * D


class DenseMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin1, self.lin2 = nn.Linear(D, FF), nn.Linear(FF, D)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin2(F.gelu(self.lin1(x)))

    def flops_per_token(self) -> int:
        return 2 * D * FF


class LM(nn.Module):
    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.emb, self.pos = nn.Embedding(vocab, D), nn.Embedding(T, D)
        self.n1 = nn.ModuleList(nn.LayerNorm(D) for _ in range(2))
        self.n2 = nn.ModuleList(nn.LayerNorm(D) for _ in range(2))
        self.attn = nn.ModuleList(DenseAttention() for _ in range(2))
        self.mlp = nn.ModuleList(DenseMLP() for _ in range(2))
        self.head = nn.Linear(D, vocab)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.emb(ids) + self.pos(torch.arange(ids.shape[1]))[None]
        for n1, n2, attn, mlp in zip(self.n1, self.n2, self.attn, self.mlp, strict=True):
            x = x + attn(n1(x))
            b, t, d = x.shape
            x = x + mlp(n2(x).reshape(-1, d)).view(b, t, d)
        return self.head(x)

    def flops_per_token(self) -> int:
        return sum(
            a.flops_per_token(T) + m.flops_per_token() for a, m in zip(self.attn, self.mlp, strict=True)
        )


def decompose(model: LM, attn_k: int, mlp_k: int) -> LM:
    uoe = copy.deepcopy(model)
    for i in range(2):
        a, m = uoe.attn[i], uoe.mlp[i]
        uoe.attn[i] = SelectiveMultiHeadAttention.from_qkv(
            a.qkv, a.out, HEADS, num_experts=4, top_k=attn_k, causal=True
        )
        uoe.mlp[i] = UnionOfMLPExperts.from_linear(
            m.lin1, m.lin2, num_experts=8, top_k=mlp_k, num_groups=2, top_groups=2 if mlp_k > 4 else 1
        )
    return uoe


def batches(train: torch.Tensor, gen: torch.Generator):
    while True:
        starts = torch.randint(0, len(train) - T - 1, (32,), generator=gen).tolist()
        yield torch.stack([train[s : s + T + 1] for s in starts])


def fit(model: nn.Module, data, steps: int, vocab: int, lr: float) -> None:
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for _ in range(steps):
        batch = next(data)
        loss = F.cross_entropy(model(batch[:, :-1]).reshape(-1, vocab), batch[:, 1:].reshape(-1))
        opt.zero_grad()
        loss.backward()
        opt.step()


@torch.no_grad()
def bits_per_char(model: nn.Module, test: torch.Tensor, vocab: int) -> float:
    model.eval()
    n = (len(test) - 1) // T
    xs, ys = test[: n * T].view(n, T), test[1 : n * T + 1].view(n, T)
    return float(F.cross_entropy(model(xs).reshape(-1, vocab), ys.reshape(-1))) / math.log(2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=150, help="dense pre-training steps")
    ap.add_argument("--finetune", type=int, default=60, help="fine-tuning steps of every row")
    args = ap.parse_args()
    torch.set_num_threads(1)
    train, test, vocab = squad_text()
    rows: dict[str, list[tuple[float, int]]] = {}
    for seed in args.seeds:
        t0 = time.process_time()
        torch.manual_seed(seed)
        data = batches(train, torch.Generator().manual_seed(seed))
        dense = LM(vocab)
        fit(dense, data, args.steps, vocab, 3e-3)
        exact = bits_per_char(decompose(dense, 4, 8), test, vocab)
        assert abs(exact - bits_per_char(dense, test, vocab)) < 1e-4, "decomposition is not exact"
        variants = [("dense", None, None)] + [(f"UoE attn {a}/4, MLP {m}/8", a, m) for a, m in SETTINGS]
        for name, attn_k, mlp_k in variants:
            model = copy.deepcopy(dense) if attn_k is None else decompose(dense, attn_k, mlp_k)
            fit(model, batches(train, torch.Generator().manual_seed(seed + 100)), args.finetune, vocab, 1e-3)
            flops = (
                model.flops_per_token()
                if name == "dense"
                else sum(
                    a.flops_per_token(T) + m.flops_per_token()
                    for a, m in zip(model.attn, model.mlp, strict=True)
                )
            )
            rows.setdefault(name, []).append((bits_per_char(model, test, vocab), flops))
            print(seed, name, rows[name][-1], flush=True)
        print(f"seed {seed}: {time.process_time() - t0:.0f} CPU s", flush=True)
    print("\n| model | kFLOPs/token (attn+MLP) | bits/char (mean ± std) | per-seed |")
    print("|---|---|---|---|")
    for name, rs in rows.items():
        q = [r[0] for r in rs]
        sd = statistics.stdev(q) if len(q) > 1 else 0.0
        print(
            f"| {name} | {rs[0][1] / 1e3:.1f} | {statistics.fmean(q):.4f} ± {sd:.4f} | {', '.join(f'{v:.4f}' for v in q)} |"
        )


if __name__ == "__main__":
    main()
