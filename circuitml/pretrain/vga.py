"""Verilog-AIG alignment (VGA): reconstruct input-masked gates by cross-attending to Verilog tokens.

Wu et al., ICLR 2025, Sec. 3.3: a fraction of the nodes of the *input* AIG get the mask type; the circuit encoder
embeds the masked graph, and a decoder reconstructs the masked gate types under the constraint of the equivalent
Verilog's representation:

.. math::
    Q = W_q \tilde H_{\\mathcal M}, \\quad K = W_k T, \\quad V = W_v T, \\quad
    \\hat t_v = \\mathrm{cls}\\Big(\tilde H_v + \\mathrm{softmax}\big(\tfrac{Q K^\top}{\\sqrt d}\big) V\\Big)

Here :math:`T \\in \\mathbb R^{L\times d}` are the TOKEN-LEVEL hidden states of the Verilog source. (With a single
pooled vector as the only key, as in the published code, softmax over one key is the constant 1 and every
masked node receives the same Verilog vector — the alignment degenerates to a bias.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.utils import to_dense_batch

__all__ = ["VGAHead", "VGAOutput", "CrossAttentionBlock"]


@dataclass
class VGAOutput:
    loss: Tensor
    accuracy: Tensor
    attention: Tensor  # [B, Q, L] head-averaged weights of the last block (padding rows/keys hold zeros)
    query_mask: Tensor  # [B, Q] which query rows are real masked nodes


class CrossAttentionBlock(nn.Module):
    """Pre-norm cross-attention + feed-forward block (Vaswani et al., 2017, decoder without self-attention)."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.norm_q = nn.LayerNorm(hidden)
        self.norm_kv = nn.LayerNorm(hidden)
        self.attn = nn.MultiheadAttention(hidden, heads, batch_first=True)
        self.norm_ff = nn.LayerNorm(hidden)
        self.ff = nn.Sequential(nn.Linear(hidden, 2 * hidden), nn.GELU(), nn.Linear(2 * hidden, hidden))

    def forward(self, q: Tensor, kv: Tensor, kv_pad: Tensor) -> tuple[Tensor, Tensor]:
        kv = self.norm_kv(kv)
        out, weights = self.attn(self.norm_q(q), kv, kv, key_padding_mask=kv_pad, need_weights=True)
        q = q + out
        return q + self.ff(self.norm_ff(q)), weights


class VGAHead(nn.Module):
    """Projects Verilog hidden states to the circuit width and decodes masked gate types by cross-attention.

    Args:
        hidden: width of the circuit encoder's node embeddings.
        text_hidden: width of the Verilog encoder's token states.
        num_types: gate-type classes (``circuitml.graph.NUM_NODE_TYPES``).
        heads: attention heads (default 4).
        num_layers: cross-attention blocks (default 1).
    """

    def __init__(self, hidden: int, text_hidden: int, num_types: int, heads: int = 4, num_layers: int = 1):
        super().__init__()
        self.text_proj = nn.Linear(text_hidden, hidden)
        self.blocks = nn.ModuleList(CrossAttentionBlock(hidden, heads) for _ in range(num_layers))
        self.norm = nn.LayerNorm(hidden)
        self.type_head = nn.Linear(hidden, num_types)

    def forward(
        self,
        latent: Tensor,
        mask: Tensor,
        batch: Tensor,
        node_type: Tensor,
        text: Tensor,
        text_mask: Tensor,
        has_text: Tensor,
    ) -> VGAOutput:
        """Loss over masked nodes of graphs that have Verilog.

        Args:
            latent: ``[N, hidden]`` encoder output on the input-masked graph.
            mask: ``[N]`` bool, nodes whose type was replaced by MASK_TYPE.
            batch: ``[N]`` graph index of each node.
            node_type: ``[N]`` true types (targets).
            text: ``[B, L, text_hidden]`` Verilog token states; ``text_mask`` ``[B, L]`` True at real tokens.
            has_text: ``[B]`` bool, graphs with a paired Verilog source.
        """
        num_graphs = text.size(0)
        select = mask & has_text[batch]
        if not bool(select.any()):
            zero = latent.sum() * 0.0
            empty = latent.new_zeros(num_graphs, 0, text.size(1))
            return VGAOutput(zero, zero.detach(), empty, torch.zeros(num_graphs, 0, dtype=torch.bool))
        queries, query_mask = to_dense_batch(latent[select], batch[select], batch_size=num_graphs)
        kv = self.text_proj(text.to(queries.dtype))
        # graphs without Verilog have no queries; give them one dummy key so softmax stays finite
        kv_pad = ~(text_mask | ~has_text[:, None] & (torch.arange(text.size(1), device=text.device) == 0))
        h = queries
        weights = queries.new_zeros(num_graphs, queries.size(1), text.size(1))
        for block in self.blocks:
            h, weights = block(h, kv, kv_pad)
        logits = self.type_head(self.norm(h[query_mask])).float()
        target = node_type[select]
        loss = F.cross_entropy(logits, target)
        accuracy = (logits.argmax(1) == target).float().mean().detach()
        return VGAOutput(loss, accuracy, weights.detach(), query_mask)
