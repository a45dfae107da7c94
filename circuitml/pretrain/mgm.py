"""Masked gate modeling (MGM) in latent space.

Wu et al., "Circuit Representation Learning with Masked Gate Modeling and Verilog-AIG Alignment", ICLR 2025,
Sec. 3.2: masking gates of the *input* AIG would change its logic function, so MGM encodes the intact AIG and
masks in the latent space instead:

.. math::
    H = f_\theta(G), \\qquad \tilde H_v = \begin{cases} m & v \\in \\mathcal M \\ H_v & \text{otherwise}\\end{cases}

where :math:`m` is a learned mask token; a small GNN decoder :math:`g_\\phi(\tilde H, G)` reconstructs each masked
node's gate type (cross-entropy) and its in- and out-degree (Huber regression, weight 0.1):

.. math::
    \\mathcal L_{MGM} = \frac{1}{|\\mathcal M|}\\sum_{v\\in\\mathcal M} \\mathrm{CE}(t_v, \\hat t_v)
        + \\lambda \big(\\mathrm{Huber}(d^{in}_v, \\hat d^{in}_v) + \\mathrm{Huber}(d^{out}_v, \\hat d^{out}_v)\big)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.nn import GINConv

from circuitml.encoders.pyg_templates import release_template_files
from circuitml.pretrain.signatures import degree_lookup_accuracy

__all__ = ["LatentDecoder", "MGMHead", "MGMOutput", "random_node_mask", "node_degrees"]


@dataclass
class MGMOutput:
    loss: Tensor
    type_loss: Tensor
    degree_loss: Tensor
    accuracy: Tensor
    baseline: Tensor  # accuracy of the (in-degree, out-degree) -> type lookup on the same nodes


def random_node_mask(
    num_nodes: int, ratio: float, generator: torch.Generator, device: torch.device
) -> Tensor:
    """Bool ``[num_nodes]``: each node masked independently with probability ``ratio`` (at least one)."""
    draw = torch.rand(num_nodes, generator=generator)
    mask = draw < ratio
    if num_nodes and not bool(mask.any()):
        mask[int(draw.argmin())] = True
    return mask.to(device)


def node_degrees(edge_index: Tensor, num_nodes: int) -> tuple[Tensor, Tensor]:
    """In-degree (fanins) and out-degree (fanouts) of every node, as float tensors."""
    ones = torch.ones(edge_index.size(1), device=edge_index.device)
    indeg = torch.zeros(num_nodes, device=edge_index.device).index_add_(0, edge_index[1], ones)
    outdeg = torch.zeros(num_nodes, device=edge_index.device).index_add_(0, edge_index[0], ones)
    return indeg, outdeg


def _mlp(hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))


class LatentDecoder(nn.Module):
    r"""Mask token + bidirectional GIN decoder over the latent-masked graph (shared by the latent-space objectives).

    Each decoder layer passes messages along fanin→fanout edges and back (Xu et al., "How Powerful are Graph
    Neural Networks?", ICLR 2019, GIN: :math:`h' = \mathrm{MLP}((1+\epsilon)h + \sum_{u\in N(v)} h_u)`), so the
    decoder sees both the fanins and the fanouts of a masked node.
    """

    def __init__(self, hidden: int, num_layers: int = 2):
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(hidden))
        self.forward_convs = nn.ModuleList(GINConv(_mlp(hidden), train_eps=True) for _ in range(num_layers))
        self.reverse_convs = nn.ModuleList(GINConv(_mlp(hidden), train_eps=True) for _ in range(num_layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(num_layers))
        release_template_files()  # GINConv's rendered template: in memory, not left in the temp folder

    def reset_parameters(self) -> None:
        nn.init.normal_(self.mask_token, std=0.02)
        for conv in (*self.forward_convs, *self.reverse_convs):
            conv.reset_parameters()

    def decode(self, latent: Tensor, mask: Tensor, edge_index: Tensor) -> Tensor:
        h = torch.where(mask[:, None], self.mask_token.to(latent.dtype).expand_as(latent), latent)
        reverse = edge_index.flip(0)
        for fwd, rev, norm in zip(self.forward_convs, self.reverse_convs, self.norms, strict=False):
            h = h + F.relu(norm(fwd(h, edge_index) + rev(h, reverse)))
        return h


class MGMHead(LatentDecoder):
    r"""Latent decoder + gate-type and degree heads.

    Args:
        hidden: width of the encoder's node embeddings.
        num_types: gate-type classes to predict (``circuitml.graph.NUM_NODE_TYPES``).
        num_layers: decoder layers (default 2).
        degree_weight: :math:`\lambda` of the degree regression (default 0.1).
    """

    def __init__(self, hidden: int, num_types: int, num_layers: int = 2, degree_weight: float = 0.1):
        super().__init__(hidden, num_layers)
        self.degree_weight = degree_weight
        self.type_head = nn.Linear(hidden, num_types)
        self.degree_head = nn.Linear(hidden, 2)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.type_head.reset_parameters()
        self.degree_head.reset_parameters()

    def forward(self, latent: Tensor, mask: Tensor, edge_index: Tensor, node_type: Tensor) -> MGMOutput:
        """Losses for the nodes in ``mask`` given the unmasked encoder output ``latent [N, hidden]``."""
        h = self.decode(latent, mask, edge_index)[mask].float()
        target = node_type[mask]
        logits = self.type_head(h)
        type_loss = F.cross_entropy(logits, target)
        indeg, outdeg = node_degrees(edge_index, latent.size(0))
        degree_target = torch.stack([indeg[mask], outdeg[mask]], dim=1)
        degree_loss = F.huber_loss(self.degree_head(h), degree_target, reduction="none").sum(1).mean()
        accuracy = (logits.argmax(1) == target).float().mean()
        return MGMOutput(
            loss=type_loss + self.degree_weight * degree_loss,
            type_loss=type_loss,
            degree_loss=degree_loss,
            accuracy=accuracy.detach(),
            baseline=degree_lookup_accuracy(indeg[mask], outdeg[mask], target),
        )
