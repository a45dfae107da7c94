"""Softmax top-k routing (Mixtral / GShard), Shazeer's noisy top-k, and Switch top-1.

* ``"topk"`` — ``p = softmax(x W_g)``, keep the top k, renormalize (Jiang et al. 2024, Mixtral).
* ``"noisy_topk"`` — noisy top-k gating of the sparsely-gated MoE (Shazeer et al. 2017, eqs. 3-5):
  ``H(x) = x W_g + eps * softplus(x W_noise)``, ``G(x) = softmax(KeepTopK(H(x), k))``, trained with the
  importance + load cv² loss whose load uses the normal CDF of the noise (eqs. 8-11).
* ``"switch"`` — Switch Transformer top-1 (Fedus et al. 2021): weight = the router probability of the chosen
  expert (not renormalized), capacity factor 1.25 with token dropping, multiplicative input jitter.

``softmax(KeepTopK(H, k))`` equals the renormalized top-k of ``softmax(H)``, so the three share one forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch.nn.functional as F
from circuitml.moe import losses as L
from circuitml.moe.config import RouterConfig
from circuitml.moe.registry import register_router
from circuitml.moe.router import Router, RouterOutput, softmax_probs
from torch import Tensor, nn

from circuitml.errors import ConfigError


@register_router("topk")
class TopKRouter(Router):
    """Softmax top-k router with optional noise, capacity, z-loss and balancing loss.

    Args (via :class:`RouterConfig`): ``d_model``, ``num_experts``, ``top_k``, ``noise`` (``"none"``,
    ``"gaussian"``, ``"learned"``), ``capacity_factor`` (``None`` = dropless), ``normalize_weights``,
    ``balance_loss``, ``z_loss_weight``, ``jitter``.

    Shapes: ``x [N, d]`` → ``weights [N, k]``, ``indices [N, k]``, ``logits/probs [N, E]``.
    """

    def __init__(self, config: RouterConfig) -> None:
        super().__init__(config)
        self.gate = nn.Linear(config.d_model, config.num_experts, bias=config.bias)
        self.noise_gate = (
            nn.Linear(config.d_model, config.num_experts, bias=False) if config.noise == "learned" else None
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.gate.reset_parameters()
        if self.noise_gate is not None:
            # Shazeer et al. initialize W_noise (and W_g) at zero; a zero W_noise gives softplus(0) = 0.69 std.
            nn.init.zeros_(self.noise_gate.weight)

    def noise_std(self, x: Tensor) -> Tensor | None:
        """Per-(token, expert) noise std, or ``None`` when no noise is applied (eval, or ``noise="none"``)."""
        if not self.training or self.config.noise == "none":
            return None
        if self.noise_gate is not None:
            return F.softplus(self.noise_gate(x))
        return x.new_full((x.shape[0], self.num_experts), self.config.noise_std)

    def forward(self, x: Tensor, generator: Any = None, **ctx: Any) -> RouterOutput:
        x = self.jitter_input(x)
        clean = self.gate(x)
        std = self.noise_std(x)
        logits = clean if std is None else clean + self.gaussian_noise(clean, generator) * std
        probs = softmax_probs(logits)
        weights, indices = self.select_topk(probs)
        if self.config.normalize_weights:  # with k=1 this makes the weight 1 (Mixtral); Switch turns it off
            weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-20)
        load = None
        if self.config.balance_loss == "cv2" and std is not None:
            load = L.noisy_topk_load(clean, logits, std, indices.shape[-1])
        aux = self.standard_losses(logits, probs, indices, weights=weights, load=load)
        indices, weights = self.apply_capacity(indices, weights)
        return RouterOutput(logits=logits, probs=probs, weights=weights, indices=indices, aux_losses=aux)


@dataclass
class NoisyTopKConfig(RouterConfig):
    """Defaults of Shazeer et al. (2017): learned noise, importance + load cv² loss."""

    noise: str = "learned"
    balance_loss: str | None = "cv2"
    balance_loss_weight: float = 0.01


@register_router("noisy_topk")
class NoisyTopKRouter(TopKRouter):
    """Noisy top-k gating (Shazeer et al. 2017, "Outrageously Large Neural Networks", eqs. 3-5, 8-11)."""

    config_class = NoisyTopKConfig


@dataclass
class SwitchConfig(RouterConfig):
    """Defaults of the Switch Transformer (Fedus et al. 2021): top-1, capacity 1.25, jitter 0.01."""

    top_k: int = 1
    capacity_factor: float | None = 1.25
    normalize_weights: bool = False
    jitter: float = 0.01
    balance_loss: str | None = "switch"

    def validate(self) -> None:
        super().validate()
        if self.top_k != 1:
            raise ConfigError(
                f"router 'switch' config: top_k: expected 1 (Switch routes to one expert), got {self.top_k}"
            )


@register_router("switch")
class SwitchRouter(TopKRouter):
    """Switch Transformer top-1 router (Fedus et al. 2021, "Switch Transformers", sec. 2.1-2.2).

    The output is scaled by the chosen expert's router probability ``p_i(x)`` so the router gets a gradient.
    """

    config_class = SwitchConfig
