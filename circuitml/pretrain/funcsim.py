r"""Functional similarity: the distance of two gates' embeddings regresses the Hamming distance of their signatures.

Shi et al., "DeepGate2: Functionality-Aware Circuit Representation Learning", ICCAD 2023, Sec. 3.3: for sampled
gate pairs :math:`(i, j)` the normalized truth-table distance :math:`D_{ij} = \mathrm{Ham}(T_i, T_j) / K` is
the target of the embeddings' dissimilarity. Here :math:`T` is the simulation signature over :math:`K` fixed
random patterns and the prediction is the cosine dissimilarity of projected embeddings, scaled to
:math:`[0, 1]` so that independent signals (:math:`D \approx 0.5`) sit at orthogonal embeddings and a gate and
its complement (:math:`D = 1`) at opposite ones:

.. math::
    \hat D_{ij} = \tfrac12\big(1 - \cos(W h_i, W h_j)\big), \qquad
    \mathcal L_{FS} = \frac{1}{|P|}\sum_{(i,j)\in P} |\hat D_{ij} - D_{ij}|

Pairs are drawn within each graph of the batch. Uniform pairs are mostly independent signals whose distance is
near 0.5 and readable from the two probabilities alone (:math:`p_i(1-p_j) + p_j(1-p_i)`), so a trivial predictor
does well on them. With ``sampling="prob"`` the second end is a gate of similar signal probability instead (a
neighbour in the graph's probability order, at most ``window`` of its gates away), as DeepGate2 samples pairs of
close logic probability: then the distance depends on the functions, not on the probabilities. With
``sampling="equiv"`` half the pairs are gates of *equal* signature (:math:`D = 0`) and the other half are
proved-different gates that read a common fanin (structurally alike) or random gates, the pairs of the
gate-equivalence task (:mod:`circuitml.tasks.equivalence`); on graphs that merge a design with a recipe variant
of itself (``data.merge_variants``) most equal pairs are one gate in each copy, the same function with another
structure, which anonymous-input message passing cannot match by structure alone. The trivial predictor is a
least-squares fit of :math:`D` on the pair's level, fanin/fanout and type differences.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from circuitml.pretrain.signatures import linear_fit, signature_bits, structural_features

__all__ = [
    "PAIR_SAMPLING",
    "FunctionalSimilarityHead",
    "FunctionalSimilarityOutput",
    "sample_pairs",
    "sample_similar_pairs",
    "sample_equivalence_pairs",
]

#: ``funcsim.sampling``: uniform pairs within a graph, pairs of similar signal probability, or equal-function
#: pairs balanced with different-function ones.
PAIR_SAMPLING = ("uniform", "prob", "equiv")


@dataclass
class FunctionalSimilarityOutput:
    loss: Tensor
    mae: Tensor
    baseline_mae: Tensor


def sample_pairs(batch: Tensor, num_graphs: int, per_node: float, generator: torch.Generator) -> Tensor:
    """``long [2, P]`` node pairs, both ends in the same graph, ``P ≈ per_node * N`` (first ends uniform)."""
    n = batch.numel()
    count = torch.bincount(batch.cpu(), minlength=num_graphs)
    start = torch.cumsum(count, 0) - count
    num = max(1, int(per_node * n))
    first = torch.randint(n, (num,), generator=generator)
    g = batch.cpu()[first]
    second = start[g] + (torch.rand(num, generator=generator) * count[g]).long().clamp(max=count[g] - 1)
    return torch.stack([first, second]).to(batch.device)


def sample_similar_pairs(
    batch: Tensor, num_graphs: int, prob: Tensor, per_node: float, window: float, generator: torch.Generator
) -> Tensor:
    """``long [2, P]`` node pairs within one graph whose signal probabilities ``prob [N]`` are close: the second
    end is at most ``max(1, window * n_g)`` places from the first in graph ``g``'s probability order."""
    batch_cpu, prob_cpu = batch.cpu(), prob.detach().float().cpu()
    n = batch_cpu.numel()
    count = torch.bincount(batch_cpu, minlength=num_graphs)
    start = torch.cumsum(count, 0) - count
    # batch vectors are sorted by graph, so sorting by (graph, probability) keeps every graph's segment in place
    order = torch.argsort(batch_cpu.double() * 2.0 + prob_cpu, stable=True)
    num = max(1, int(per_node * n))
    pos = torch.randint(n, (num,), generator=generator)
    g = batch_cpu[order[pos]]
    reach = (window * count[g].float()).long().clamp(min=1)
    step = 1 + (torch.rand(num, generator=generator) * reach).long().clamp(max=reach - 1)
    sign = torch.where(torch.rand(num, generator=generator) < 0.5, -1, 1)
    lo, hi = start[g], start[g] + count[g] - 1
    other = pos + sign * step
    other = torch.where((other < lo) | (other > hi), pos - sign * step, other).clamp(lo, hi)
    return torch.stack([order[pos], order[other]]).to(batch.device)


def _signature_key(sig: Tensor) -> Tensor:
    """A 63-bit key per signature row (a wrapping odd-multiplier hash; equal rows give equal keys)."""
    mult = torch.tensor([0x9E3779B97F4A7C15 - (1 << 64), 0x632BE59BD9B4E019], dtype=torch.long)
    key = torch.zeros(sig.size(0), dtype=torch.long)
    for w in range(sig.size(1)):
        key = (key ^ sig[:, w]) * mult[w % 2]
    return key & ((1 << 62) - 1)


def _choose(pairs: Tensor, k: int, generator: torch.Generator) -> Tensor:
    if pairs.size(1) <= k:
        return pairs
    return pairs[:, torch.randperm(pairs.size(1), generator=generator)[:k]]


def sample_equivalence_pairs(
    batch: Tensor,
    sig: Tensor,
    node_type: Tensor,
    edge_index: Tensor,
    per_node: float,
    generator: torch.Generator,
) -> Tensor:
    """``long [2, P]`` AND-gate pairs within one graph: equal-signature pairs (constant signatures excluded: a
    rare gate that is 0 on every pattern is not proved equal to another), and as many pairs of different
    signatures, half of them two readers of one fanin node, the rest random. ``P <= per_node * #ANDs``."""
    from circuitml.graph import AND

    dev = batch.device
    batch, sig, node_type, edge_index = batch.cpu(), sig.cpu(), node_type.cpu(), edge_index.cpu()
    ands = torch.nonzero(node_type == AND).flatten()
    budget = max(2, int(per_node * ands.numel()))
    if ands.numel() < 2:
        return torch.zeros(2, 0, dtype=torch.long, device=dev)
    key = _signature_key(sig)
    constant = (sig == 0).all(1) | (sig == -1).all(1)
    # equal signatures sit next to each other in the order by (graph, key)
    cand = ands[~constant[ands]]
    order = cand[torch.argsort(key[cand], stable=True)]
    order = order[torch.argsort(batch[order], stable=True)]
    a, b = order[:-1], order[1:]
    same = (batch[a] == batch[b]) & (key[a] == key[b]) & (sig[a] == sig[b]).all(1)
    positive = _choose(torch.stack([a[same], b[same]]), budget // 2, generator)
    want = max(1, positive.size(1))
    # siblings: two AND readers of one fanin node, with different functions
    src, dst = edge_index
    reads = node_type[dst] == AND
    src, dst = src[reads], dst[reads]
    o = torch.argsort(src, stable=True)
    src, dst = src[o], dst[o]
    adj = src[1:] == src[:-1]
    sib = torch.stack([dst[:-1][adj], dst[1:][adj]])
    sib = sib[:, (sig[sib[0]] != sig[sib[1]]).any(1)]
    sib = _choose(sib, want // 2, generator)
    # random pairs of different function fill the rest
    count = torch.bincount(batch[ands], minlength=int(batch.max()) + 1)
    start = torch.cumsum(count, 0) - count
    first = ands[torch.randint(ands.numel(), (2 * want + 8,), generator=generator)]
    g = batch[first]
    rank = (torch.rand(first.numel(), generator=generator) * count[g]).long().clamp(max=count[g] - 1)
    second = ands[start[g] + rank]  # ands is sorted, and so grouped by graph like batch
    rnd = torch.stack([first, second])
    rnd = rnd[:, (sig[rnd[0]] != sig[rnd[1]]).any(1)][:, : max(0, want - sib.size(1))]
    return torch.cat([positive, sib, rnd], 1).to(dev)


class FunctionalSimilarityHead(nn.Module):
    """A projection of node embeddings whose cosine geometry mirrors signature Hamming distances.

    Args:
        hidden: width of the encoder's node embeddings.
        pairs_per_node: sampled pairs per node of the batch.
        sampling: ``uniform``, ``prob`` (pairs of similar signal probability, see :func:`sample_similar_pairs`) or
            ``equiv`` (equal-function pairs and as many different ones, see :func:`sample_equivalence_pairs`).
        window: for ``prob``, the largest distance of a pair in its graph's probability order, as a share of
            the graph's nodes.
    """

    def __init__(
        self, hidden: int, pairs_per_node: float = 1.0, sampling: str = "uniform", window: float = 0.05
    ):
        super().__init__()
        if sampling not in PAIR_SAMPLING:
            raise ValueError(
                f"funcsim sampling: expected one of {', '.join(PAIR_SAMPLING)}, got {sampling!r}"
            )
        self.pairs_per_node = pairs_per_node
        self.sampling = sampling
        self.window = window
        self.proj = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))

    def forward(self, node: Tensor, graph, generator: torch.Generator) -> FunctionalSimilarityOutput:
        bits = signature_bits(graph.sig)
        if self.sampling == "equiv":
            pairs = sample_equivalence_pairs(
                graph.batch, graph.sig, graph.x, graph.edge_index, self.pairs_per_node, generator
            )
        elif self.sampling == "prob":
            pairs = sample_similar_pairs(
                graph.batch, graph.num_graphs, bits.mean(1), self.pairs_per_node, self.window, generator
            )
        else:
            pairs = sample_pairs(graph.batch, graph.num_graphs, self.pairs_per_node, generator)
        z = self.proj(node).float()
        pred = 0.5 * (1.0 - F.cosine_similarity(z[pairs[0]], z[pairs[1]], dim=1))
        target = (bits[pairs[0]] != bits[pairs[1]]).float().mean(1)
        loss = (pred - target).abs().mean()
        with torch.no_grad():
            feats = structural_features(graph)
            a, b = feats[pairs[0]], feats[pairs[1]]
            pair_feats = torch.cat(
                [a[:, :1], (a[:, 1:5] - b[:, 1:5]).abs(), a[:, 5:] + b[:, 5:], a[:, 5:] * b[:, 5:]], 1
            )
            base = linear_fit(pair_feats, target).clamp(0, 1)
            return FunctionalSimilarityOutput(
                loss=loss, mae=loss.detach(), baseline_mae=(base - target).abs().mean()
            )
