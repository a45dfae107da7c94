r"""PILL's two modules on rows of mixed modalities: modality adapter experts and the modality-attention gate.

Zhang et al., "PILL: Plug Into LLM with Adapter Expert and Attention Gate", arXiv:2311.02126, 2023.

* Mixture-of-Modality-Adapter-Expert (MoMAE): one adapter expert per modality; a token is routed by its
  modality id ``m_n`` (a hard, known route, no learned router), ``y_n = h_n + \Delta_{m_n}(h_n)``. The experts are the
  core's :class:`~circuitml.moe.AdapterExperts` (bottleneck, zero-initialized up-projection: identity at start).
* Modality-Attention-Gating (MAG): per attention head ``j`` a learned scalar ``g_j = \tanh(\alpha_j)``, ``\alpha_j``
  initialized at 0. Queries of the base modality (text, id 0) attend the base tokens as the frozen model does and
  the other modality's tokens in a separate softmax scaled by the gate,

  .. math:: o_i = \mathrm{softmax}(q_i K_{\text{text}}^\top / \sqrt{d})\, V_{\text{text}}
            + g_j\, \mathrm{softmax}(q_i K_{\text{other}}^\top / \sqrt{d})\, V_{\text{other}},

  so at initialization the text tokens compute exactly what the unchanged model computes; tokens of the other
  modality attend every token with one softmax.
* The improved adapter: ``adapter="glu"`` makes each expert PILL's GLU adapter, ``U (silu(G h) * D h)`` without
  biases (the authors' ``GLUAdapter``, github.com/DsaltYfish/PILL); ``"bottleneck"`` is the standard
  ``U act(D h + b)``.
"""

from __future__ import annotations

import math

import torch
from circuitml.moe.experts.adapters import AdapterExperts
from torch import Tensor, nn

from circuitml.errors import ConfigError

__all__ = ["ModalityAdapterExperts", "ModalityAttentionGate", "gated_modality_attention"]


class ModalityAdapterExperts(nn.Module):
    """One adapter (bottleneck or PILL's GLU adapter) per modality, each token routed to its modality's adapter.

    Shapes: ``h [..., d]``, ``modality [...]`` (long, ``0 <= m < num_modalities``) ``-> [..., d]``.
    """

    def __init__(
        self,
        d_model: int,
        num_modalities: int = 2,
        bottleneck: int = 16,
        activation: str = "gelu",
        adapter: str = "bottleneck",
    ) -> None:
        super().__init__()
        if adapter not in ("bottleneck", "glu"):
            raise ConfigError(
                f"ModalityAdapterExperts: adapter: expected 'bottleneck' or 'glu', got {adapter!r}"
            )
        self.experts = AdapterExperts(
            None, num_modalities, d_model, kind=adapter, rank=bottleneck, activation=activation
        )

    def forward(self, h: Tensor, modality: Tensor) -> Tensor:
        flat = h.reshape(-1, h.shape[-1])
        idx = modality.reshape(-1, 1).long()
        return self.experts(flat, idx, torch.ones_like(idx, dtype=flat.dtype)).reshape(h.shape)


class ModalityAttentionGate(nn.Module):
    """Per-head gate ``tanh(alpha)`` on the text queries' attention to the other modality, ``alpha = 0`` at start."""

    def __init__(self, num_heads: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(num_heads))

    def forward(self) -> Tensor:
        return torch.tanh(self.alpha)


def gated_modality_attention(
    q: Tensor, k: Tensor, v: Tensor, modality: Tensor, key_mask: Tensor, gate: Tensor
) -> Tensor:
    """PILL attention for ``q, k, v [B, H, T, dh]``, ``modality [B, T]`` (0 = base), ``key_mask [B, T]`` (bool,
    True = a real token) and ``gate [H]``: returns ``[B, H, T, dh]``.

    Base-modality queries: separate softmaxes over base and other keys, the second scaled by ``gate``; other queries:
    one softmax over every real key. A query row with no key of a group gets zero from that group.
    """
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])  # [B, H, T, T]
    base_key = (modality == 0) & key_mask
    other_key = (modality != 0) & key_mask

    def attend(allowed: Tensor) -> Tensor:
        s = scores.masked_fill(~allowed[:, None, None, :], float("-inf"))
        p = torch.softmax(s, dim=-1).nan_to_num(0.0)  # rows with no allowed key: all -inf -> zeros
        return p @ v

    to_base, to_other, to_all = attend(base_key), attend(other_key), attend(key_mask)
    base_query = (modality == 0)[:, None, :, None]
    return torch.where(base_query, to_base + gate[None, :, None, None] * to_other, to_all)
