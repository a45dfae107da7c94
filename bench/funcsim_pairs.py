"""How much of the functional-similarity target a predictor that ignores function can explain, per pair sampler.

    python bench/funcsim_pairs.py CORPUS [--circuits 300] [--batch 16] [--seed 0]

For uniform pairs and for pairs of similar signal probability (``funcsim.sampling = uniform | prob``), on the same
batches of corpus AIGs, prints the target's mean and std (normalized signature Hamming distance) and the MAE of:
a constant (the mean), the structural linear fit that ``metrics.csv`` reports as ``base_funcsim``, the
independence formula ``p_i (1 - p_j) + p_j (1 - p_i)`` (what two independent signals of probabilities ``p_i``,
``p_j`` would give: readable from the probabilities alone), and a linear fit on both. A sampler whose target the
independence formula already explains teaches the encoder probabilities, not function.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from circuitml.datasets import CircuitDataset

from circuitml.pretrain.data import PretrainData, collate
from circuitml.pretrain.funcsim import sample_pairs, sample_similar_pairs
from circuitml.pretrain.signatures import linear_fit, signature_bits, structural_features


class _Subset:
    def __init__(self, ds: CircuitDataset, ids: list[int]) -> None:
        self.ds, self.ids = ds, ids
        self.records = [ds.records[i] for i in ids]

    def __len__(self) -> int:
        return len(self.ids)

    def aig(self, k: int):
        return self.ds.aig(self.ids[k])


def pair_features(graph, pairs: torch.Tensor) -> torch.Tensor:
    """The structural pair features of ``FunctionalSimilarityHead``'s trivial predictor."""
    feats = structural_features(graph)
    a, b = feats[pairs[0]], feats[pairs[1]]
    return torch.cat([a[:, :1], (a[:, 1:5] - b[:, 1:5]).abs(), a[:, 5:] + b[:, 5:], a[:, 5:] * b[:, 5:]], 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("corpus")
    ap.add_argument("--circuits", type=int, default=300)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--window", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    ds = CircuitDataset(args.corpus)
    ids = sorted(np.random.default_rng(args.seed).choice(len(ds), args.circuits, replace=False).tolist())
    data = PretrainData(
        _Subset(ds, ids), explicit_not=True, text=None, max_tokens=1, max_nodes=3000, signatures=True
    )
    rows: dict[str, list[np.ndarray]] = {"uniform": [], "prob": []}
    gen = torch.Generator().manual_seed(args.seed)
    for s in range(0, len(data.samples), args.batch):
        graph = collate(data.samples[s : s + args.batch]).graph
        bits = signature_bits(graph.sig)
        prob = bits.mean(1)
        for name in rows:
            if name == "prob":
                pairs = sample_similar_pairs(graph.batch, graph.num_graphs, prob, 1.0, args.window, gen)
            else:
                pairs = sample_pairs(graph.batch, graph.num_graphs, 1.0, gen)
            target = (bits[pairs[0]] != bits[pairs[1]]).float().mean(1)
            pi, pj = prob[pairs[0]], prob[pairs[1]]
            indep = pi * (1 - pj) + pj * (1 - pi)
            feats = pair_features(graph, pairs)
            structural = linear_fit(feats, target).clamp(0, 1)
            both = linear_fit(torch.cat([feats, indep[:, None], (pi - pj).abs()[:, None]], 1), target).clamp(
                0, 1
            )
            rows[name].append(
                np.stack(
                    [
                        target.numpy(),
                        (target - target.mean()).abs().numpy(),
                        (structural - target).abs().numpy(),
                        (indep - target).abs().numpy(),
                        (both - target).abs().numpy(),
                    ]
                )
            )
    print(
        f"{len(data.samples)} corpus circuits ({data.skipped} over 3000 nodes skipped), batches of {args.batch}, "
        f"seed {args.seed}, window {args.window}"
    )
    print(
        "sampler   pairs   target mean±std   MAE: constant  structural (base_funcsim)  independence  linear(both)"
    )
    for name, parts in rows.items():
        a = np.concatenate(parts, axis=1)
        print(
            f"{name:8s} {a.shape[1]:7d}   {a[0].mean():.3f} ± {a[0].std():.3f}        {a[1].mean():.4f}    "
            f"{a[2].mean():.4f}                     {a[3].mean():.4f}        {a[4].mean():.4f}"
        )


if __name__ == "__main__":
    main()
