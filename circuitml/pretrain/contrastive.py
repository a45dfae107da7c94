r"""Equivalence-aware contrastive learning: recipe variants are positives, proved non-equivalent mutants are hard
negatives, at graph level and per primary output.

Wang et al., "Functionality Matters in Netlist Representation Learning" (FGNN, DAC 2022) and its successor
FGNN2 (Wang et al., TCAD 2024) pretrain circuit encoders contrastively with functionally equivalent
transformations as positives; here the positives are the same design after another random ABC recipe (same
function, other structure; :mod:`circuitml.datasets.corpus`), and each anchor also meets a one-gate mutant of
itself whose outputs differ on a simulated pattern (a proof of non-equivalence) as a hard negative. With
normalized projections :math:`z` and temperature :math:`\tau` (InfoNCE, van den Oord et al., 2018):

.. math::
    \mathcal L_{CL} = -\frac1B\sum_i \log\frac{e^{z_i\cdot z_i^+/\tau}}
        {\sum_{c\in\{z_j^+\}_j\cup\{z_j^-\}_j} e^{z_i\cdot c/\tau}}

and the same per primary output :math:`k`: PO :math:`k` of the anchor against the POs of its positive (PO
:math:`k` is the positive) and PO :math:`k` of its mutant when the mutation changed it. Candidates known to be
equivalent to the anchor (another variant of the same design; another PO with the same signature) are left
out of the denominator, so equivalent pairs are never pushed apart.

The trivial predictor retrieves the positive by cosine similarity of standardized structural statistics
(node, edge, PI/PO counts, depth, gate-type fractions); a mutant has the anchor's exact statistics, so only a
function-aware embedding ranks the true variant first.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.utils import scatter, to_dense_batch

from circuitml.graph import NUM_NODE_TYPES, PO

__all__ = ["ContrastiveHead", "ContrastiveOutput", "graph_statistics"]


@dataclass
class ContrastiveOutput:
    loss: Tensor
    graph_accuracy: Tensor
    po_accuracy: Tensor
    baseline_accuracy: Tensor


def graph_statistics(graph) -> Tensor:
    """``[B, 5 + NUM_NODE_TYPES]`` log sizes, depth and type fractions of every graph of a batch."""
    b = graph.num_graphs
    ones = torch.ones(graph.num_nodes, device=graph.x.device)
    nodes = scatter(ones, graph.batch, 0, dim_size=b, reduce="sum")
    edges = scatter(
        torch.ones(graph.edge_index.size(1), device=graph.x.device),
        graph.batch[graph.edge_index[1]],
        0,
        dim_size=b,
        reduce="sum",
    )
    depth = scatter(graph.level.float(), graph.batch, 0, dim_size=b, reduce="max")
    onehot = F.one_hot(graph.x.clamp(max=NUM_NODE_TYPES - 1), NUM_NODE_TYPES).float()
    types = scatter(onehot, graph.batch, 0, dim_size=b, reduce="sum")
    return torch.cat(
        [
            torch.log1p(torch.stack([nodes, edges, depth, types[:, 0], types[:, 1]], 1)),
            types / nodes[:, None],
        ],
        1,
    )


def _info_nce(logits: Tensor, allowed: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    logits = logits.masked_fill(~allowed, float("-inf"))
    loss = F.cross_entropy(logits, target)
    return loss, (logits.argmax(1) == target).float().mean().detach()


def _po_embeddings(node: Tensor, graph) -> tuple[Tensor, Tensor, Tensor]:
    is_po = graph.x == PO
    dense, mask = to_dense_batch(node[is_po], graph.batch[is_po], batch_size=graph.num_graphs)
    sig, _ = to_dense_batch(graph.sig[is_po], graph.batch[is_po], batch_size=graph.num_graphs)
    return dense, mask, sig


class ContrastiveHead(nn.Module):
    """Projection heads (graph level, PO level) and the two InfoNCE losses.

    Args:
        hidden: width of the encoder's embeddings.
        temperature: :math:`\\tau`.
        po_weight: weight of the per-PO loss relative to the graph-level one.
    """

    def __init__(self, hidden: int, temperature: float = 0.1, po_weight: float = 1.0):
        super().__init__()
        self.temperature = temperature
        self.po_weight = po_weight
        self.graph_proj = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.po_proj = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))

    def forward(
        self,
        anchor: tuple[Tensor, Tensor, object],
        positive: tuple[Tensor, Tensor, object],
        mutant: tuple[Tensor, Tensor, object] | None,
        design: Tensor,
        mutant_of: Tensor,
    ) -> ContrastiveOutput:
        """Losses of a batch.

        Args:
            anchor, positive, mutant: ``(node embeddings, graph embeddings, batched graph)``; graph ``i`` of
                ``positive`` is a recipe variant of anchor ``i``; graph ``j`` of ``mutant`` is a mutant of anchor
                ``mutant_of[j]``.
            design: ``[B]`` design index of each anchor (variants of one design are never negatives).
            mutant_of: ``[M]`` long.
        """
        tau = self.temperature
        b = design.numel()
        za = F.normalize(self.graph_proj(anchor[1]).float(), dim=1)
        zp = F.normalize(self.graph_proj(positive[1]).float(), dim=1)
        eye = torch.eye(b, dtype=torch.bool, device=za.device)
        allowed = eye | (design[:, None] != design[None, :])
        candidates, stats_c = [zp], [graph_statistics(positive[2])]
        if mutant is not None and mutant_of.numel():
            zm = F.normalize(self.graph_proj(mutant[1]).float(), dim=1)
            candidates.append(zm)
            stats_c.append(graph_statistics(mutant[2]))
            allowed = torch.cat([allowed, torch.ones(b, zm.size(0), dtype=torch.bool, device=za.device)], 1)
        target = torch.arange(b, device=za.device)
        graph_loss, graph_acc = _info_nce(za @ torch.cat(candidates).T / tau, allowed, target)

        with torch.no_grad():  # structural retrieval: standardized statistics, cosine, same candidate set
            sa, sc = graph_statistics(anchor[2]), torch.cat(stats_c)
            both = torch.cat([sa, sc])
            mean, std = both.mean(0), both.std(0).clamp(min=1e-6)
            sa, sc = F.normalize((sa - mean) / std, dim=1), F.normalize((sc - mean) / std, dim=1)
            sims = (sa @ sc.T).masked_fill(~allowed, float("-inf"))
            baseline = (sims.argmax(1) == target).float().mean()

        # per PO: anchor PO k against the positive's POs and the mutant's PO k
        pa, pmask, sig_a = _po_embeddings(anchor[0], anchor[2])
        pp, _, sig_p = _po_embeddings(positive[0], positive[2])
        qa = F.normalize(self.po_proj(pa).float(), dim=-1)
        qp = F.normalize(self.po_proj(pp).float(), dim=-1)
        logits = torch.einsum("bkd,bld->bkl", qa, qp) / tau
        same_sig = (sig_a[:, :, None, :] == sig_p[:, None, :, :]).all(-1)
        npo = pmask.size(1)
        diag = torch.eye(npo, dtype=torch.bool, device=qa.device)[None]
        allowed_po = (diag | ~same_sig) & pmask[:, None, :]
        if mutant is not None and mutant_of.numel():
            pm, mmask, sig_m = _po_embeddings(mutant[0], mutant[2])
            qm = torch.zeros_like(qa)
            changed = torch.zeros_like(pmask)
            width = min(npo, pm.size(1))
            qm[mutant_of, :width] = F.normalize(self.po_proj(pm[:, :width]).float(), dim=-1)
            changed[mutant_of, :width] = mmask[:, :width] & (
                sig_m[:, :width] != sig_a[mutant_of, :width]
            ).any(-1)
            logits = torch.cat([logits, (qa * qm).sum(-1, keepdim=True) / tau], -1)
            allowed_po = torch.cat([allowed_po, changed[:, :, None]], -1)
        rows = pmask.reshape(-1)
        po_target = torch.arange(npo, device=qa.device).repeat(b)[rows]
        po_loss, po_acc = _info_nce(
            logits.reshape(b * npo, -1)[rows], allowed_po.reshape(b * npo, -1)[rows], po_target
        )
        return ContrastiveOutput(
            loss=graph_loss + self.po_weight * po_loss,
            graph_accuracy=graph_acc,
            po_accuracy=po_acc,
            baseline_accuracy=baseline,
        )
