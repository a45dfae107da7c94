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
close logic probability: then the distance depends on the functions, not on the probabilities. The trivial
predictor is a least-squares fit of :math:`D` on the pair's level, fanin/fanout and type differences.
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
]

#: ``funcsim.sampling``: uniform pairs within a graph, or pairs of similar signal probability.
PAIR_SAMPLING = ("uniform", "prob")


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


class FunctionalSimilarityHead(nn.Module):
    """A projection of node embeddings whose cosine geometry mirrors signature Hamming distances.

    Args:
        hidden: width of the encoder's node embeddings.
        pairs_per_node: sampled pairs per node of the batch.
        sampling: ``uniform`` or ``prob`` (pairs of similar signal probability, see :func:`sample_similar_pairs`).
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
        if self.sampling == "prob":
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
