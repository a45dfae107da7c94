r"""Functional reconstruction: decode a latent-masked gate's simulation signature and signal probability.

The MGM target (gate type, degree) can be read off the neighbours' degrees; the *function* a gate computes
cannot. Following the masked-modeling setup of Wu et al., "Circuit Representation Learning with Masked Gate
Modeling and Verilog-AIG Alignment" (ICLR 2025, Sec. 3.2: the intact AIG is encoded, masking happens in latent
space) and the functional supervision of DeepGate (Li et al., "DeepGate: Learning Neural Representations of
Logic Gates", DAC 2022: signal probability) and DeepGate2 (Shi et al., ICCAD 2023: truth-table signatures),
the decoder reconstructs, for each masked node :math:`v`, its value :math:`s_{v,k}` under :math:`K` fixed
random input patterns and its signal probability :math:`p_v = \frac1K\sum_k s_{v,k}`:

.. math::
    \mathcal L_{FR} = \frac{1}{|\mathcal M|}\sum_{v\in\mathcal M}
        \Big(\tfrac1K \sum_k \mathrm{BCE}(s_{v,k}, \sigma(\hat s_{v,k})) + |p_v - \hat p_v|\Big)

Reported beside the decoder's probability MAE and bit accuracy: the same numbers for a least-squares fit on
level/fanout/type features (:func:`~circuitml.pretrain.signatures.linear_fit`), so a target that structure alone
predicts shows up as a small gap.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from circuitml.pretrain.mgm import LatentDecoder
from circuitml.pretrain.signatures import linear_fit, signature_bits, structural_features

__all__ = ["FunctionalReconstructionHead", "FunctionalReconstructionOutput"]


@dataclass
class FunctionalReconstructionOutput:
    loss: Tensor
    prob_mae: Tensor
    bit_accuracy: Tensor
    baseline_prob_mae: Tensor
    baseline_bit_accuracy: Tensor


class FunctionalReconstructionHead(LatentDecoder):
    """Latent decoder + signature-bit and probability heads.

    Args:
        hidden: width of the encoder's node embeddings.
        num_bits: signature bits per node (64 per word of :func:`~circuitml.pretrain.signatures.node_signatures`).
        num_layers: decoder layers.
    """

    def __init__(self, hidden: int, num_bits: int, num_layers: int = 2):
        super().__init__(hidden, num_layers)
        self.bit_head = nn.Linear(hidden, num_bits)
        self.prob_head = nn.Linear(hidden, 1)
        self.reset_parameters()

    def forward(self, latent: Tensor, mask: Tensor, graph) -> FunctionalReconstructionOutput:
        """Losses for the nodes in ``mask`` of ``graph`` (a batch carrying ``sig``) given the intact ``latent``."""
        h = self.decode(latent, mask, graph.edge_index)[mask].float()
        bits = signature_bits(graph.sig[mask])
        prob = bits.mean(1)
        bit_logits = self.bit_head(h)
        prob_hat = torch.sigmoid(self.prob_head(h)[:, 0])
        loss = F.binary_cross_entropy_with_logits(bit_logits, bits) + (prob_hat - prob).abs().mean()
        with torch.no_grad():
            base = linear_fit(structural_features(graph)[mask], prob).clamp(0, 1)
            base_bits = (base[:, None] > 0.5).float()
            out = FunctionalReconstructionOutput(
                loss=loss,
                prob_mae=(prob_hat - prob).abs().mean(),
                bit_accuracy=((bit_logits > 0).float() == bits).float().mean(),
                baseline_prob_mae=(base - prob).abs().mean(),
                baseline_bit_accuracy=(base_bits == bits).float().mean(),
            )
        return out
