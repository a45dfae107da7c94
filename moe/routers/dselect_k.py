"""DSelect-k: k selectors of smooth-step binary codes over the experts (Hazimeh et al. 2021)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from circuitml.moe.config import RouterConfig
from circuitml.moe.registry import register_router
from circuitml.moe.router import Router, RouterOutput
from circuitml.moe.routers._gating import entropy, pack_support, smooth_step, truncated_support
from torch import Tensor, nn

from circuitml.errors import ConfigError


@dataclass
class DSelectKConfig(RouterConfig):
    """Options of :class:`DSelectKRouter`.

    Args:
        gamma: width of the smooth-step's transition region (the paper's ``gamma``).
        entropy_weight: weight ``lambda`` of the entropy regulariser that drives each selector to one expert.
    """

    gamma: float = 1.0
    entropy_weight: float = 1e-3
    balance_loss: str | None = None

    def validate(self) -> None:
        super().validate()
        if self.gamma <= 0:
            raise ConfigError(f"router config: gamma: expected > 0, got {self.gamma}")


def binary_codes(num_bits: int, num_experts: int, device: torch.device | None = None) -> Tensor:
    """``[2^m, m]`` 0/1 matrix: row ``c`` holds the bits of code ``c`` (bit ``j`` = ``(c >> j) & 1``)."""
    codes = torch.arange(2**num_bits, device=device)
    return ((codes[:, None] >> torch.arange(num_bits, device=device)[None, :]) & 1).to(torch.bool)


@register_router("dselect_k")
class DSelectKRouter(Router):
    r"""Per-example DSelect-k of Hazimeh et al. 2021, "DSelect-k: Differentiable Selection in the Mixture of
    Experts with Applications to Multi-Task Learning" (NeurIPS).

    With ``m = ceil(log2 E)`` bits, selector ``i`` has codes ``z^{(i)} = Z_i x \in \mathbb{R}^m`` and picks expert
    ``e`` (bits ``b_j(e)``) with probability

    .. math::
        r(z^{(i)})_e = \prod_{j=1}^{m} S(z^{(i)}_j)^{b_j(e)} \, (1 - S(z^{(i)}_j))^{1 - b_j(e)},
        \qquad q(x) = \sum_{i=1}^{k} \mathrm{softmax}(A x)_i \; r(z^{(i)})

    with ``S`` the cubic smooth-step, which is exactly 0 or 1 outside ``[-gamma/2, gamma/2]``. The entropy
    regulariser :math:`\lambda \sum_i H(r(z^{(i)}))` (``aux_losses["entropy_loss"]``) drives every selector to a
    single expert, at which point ``q`` is exactly ``k``-sparse (fewer when selectors agree).

    Output slots are the support of ``q`` (``q > 0``), padded with ``-1`` to the largest support in the batch:
    dense early in training, exactly ``<= k`` once converged. Under an inference override (``top_k``, SCMoE's
    rank routing) the slots are the largest entries of ``q``, renormalized. When ``E`` is not a power of two, code ``c``
    selects expert ``c mod E`` so every code maps to a real expert and ``q`` still sums to 1.
    """

    config_class = DSelectKConfig
    top_k_shapes_parameters = True  # k selectors

    def __init__(self, config: DSelectKConfig) -> None:
        super().__init__(config)
        self.num_bits = max(1, math.ceil(math.log2(config.num_experts)))
        self.num_selectors = config.top_k
        self.code_layer = nn.Linear(config.d_model, self.num_selectors * self.num_bits)
        self.selector_layer = nn.Linear(config.d_model, self.num_selectors)
        self.register_buffer("codes", binary_codes(self.num_bits, config.num_experts), persistent=False)
        self.register_buffer(
            "code_expert", torch.arange(2**self.num_bits) % config.num_experts, persistent=False
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # As in the reference code: small codes start every selector near uniform over the experts.
        g = self.config.gamma
        nn.init.uniform_(self.code_layer.weight, -g / 100, g / 100)
        nn.init.uniform_(self.code_layer.bias, -g / 100, g / 100)
        nn.init.normal_(self.selector_layer.weight, std=self.d_model**-0.5)
        nn.init.zeros_(self.selector_layer.bias)

    def selector_distributions(self, x: Tensor) -> Tensor:
        """``[N, k, E]`` per-selector expert distributions ``r(z^{(i)})`` (each row sums to 1)."""
        z = self.code_layer(x).view(-1, self.num_selectors, self.num_bits)
        s = smooth_step(z, self.config.gamma)[:, :, None, :]  # [N, k, 1, m]
        bits = self.codes[None, None]  # [1, 1, 2^m, m]
        per_code = torch.where(bits, s, 1.0 - s).prod(dim=-1)  # [N, k, 2^m]
        if per_code.shape[-1] == self.num_experts:
            return per_code
        folded = per_code.new_zeros(*per_code.shape[:-1], self.num_experts)
        return folded.index_add(-1, self.code_expert, per_code)

    def forward(self, x: Tensor, **ctx: Any) -> RouterOutput:
        r = self.selector_distributions(x)
        alpha = self.selector_layer(x)
        mix = torch.softmax(alpha, dim=-1)
        q = (mix[:, :, None] * r).sum(dim=1)  # [N, E]
        if self.routing_override is not None:
            weights, indices = truncated_support(self, q)
        else:
            weights, indices = pack_support(q, q > 0)
        aux = self.standard_losses(None, q, indices, weights)
        if self.config.entropy_weight > 0 and x.shape[0]:
            aux["entropy_loss"] = self.config.entropy_weight * entropy(r).sum(dim=-1).mean()
        return RouterOutput(logits=None, probs=q, weights=weights, indices=indices, aux_losses=aux)
