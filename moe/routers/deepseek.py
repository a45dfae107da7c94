r"""DeepSeek-V3 routing: sigmoid affinities, auxiliary-loss-free balancing, group-limited top-k, routed scaling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from circuitml.moe.config import RouterConfig
from circuitml.moe.registry import register_router
from circuitml.moe.router import Router, RouterOutput
from circuitml.moe.routers._gating import group_limited_mask
from torch import Tensor, nn

from circuitml.errors import ConfigError


@dataclass
class DeepSeekConfig(RouterConfig):
    """Options of :class:`DeepSeekRouter` (names as in DeepSeek-V3's config).

    Args:
        n_group: expert groups (devices/nodes in the paper); ``1`` disables group-limited routing.
        topk_group: groups a token may use (``M`` in the paper).
        routed_scaling_factor: multiplier of the routed experts' weights.
        bias_update_speed: ``gamma``, the step of the balancing bias per optimizer step.
        normalize_weights: ``norm_topk_prob``: normalise the chosen affinities to sum to 1 (before scaling).
        balance_loss: none by default — balance comes from the bias, not from a loss.
    """

    n_group: int = 1
    topk_group: int = 1
    routed_scaling_factor: float = 1.0
    bias_update_speed: float = 1e-3
    balance_loss: str | None = None

    def validate(self) -> None:
        super().validate()
        if self.n_group < 1 or self.num_experts % self.n_group:
            raise ConfigError(
                f"router config: n_group: expected a divisor of num_experts={self.num_experts}, got {self.n_group}"
            )
        if not 1 <= self.topk_group <= self.n_group:
            raise ConfigError(
                f"router config: topk_group: expected 1..n_group={self.n_group}, got {self.topk_group}"
            )
        reachable = self.topk_group * (self.num_experts // self.n_group)
        if self.top_k > reachable:
            raise ConfigError(
                f"router config: top_k={self.top_k} exceeds the {reachable} experts of topk_group={self.topk_group} groups"
            )
        if self.bias_update_speed < 0:
            raise ConfigError(
                f"router config: bias_update_speed: expected >= 0, got {self.bias_update_speed}"
            )


@register_router("deepseek")
class DeepSeekRouter(Router):
    r"""Router of DeepSeek-V3 (DeepSeek-AI 2024, "DeepSeek-V3 Technical Report", arXiv:2412.19437, Sec. 2.1.2),
    with DeepSeekMoE's fine-grained and shared experts (Dai et al. 2024, ACL) left to the block.

    .. math::
        s_{t,i} = \sigma(u_t^\top e_i), \qquad
        \mathcal{K}_t = \mathrm{TopK}\big(\{ s_{t,j} + b_j \}_{j \in \mathcal{G}_t},\, K\big), \qquad
        g_{t,i} = \rho \, \frac{s_{t,i}}{\sum_{j \in \mathcal{K}_t} s_{t,j}} \; (i \in \mathcal{K}_t)

    * sigmoid affinities ``s`` (not a softmax over experts);
    * auxiliary-loss-free balancing: a per-expert bias ``b`` enters the *selection only* (the weights use the
      plain ``s``); after every optimizer step (:meth:`on_optimizer_step`) ``b_i`` moves by ``-gamma`` when
      expert ``i`` was overloaded and by ``+gamma`` when underloaded, judged against the mean load of the tokens
      routed since the last step (all-reduced across processes, so every rank keeps the same bias);
    * group-limited routing: the experts form ``n_group`` groups, a group scores the sum of its two best biased
      affinities, and a token only selects among its ``topk_group`` best groups (``\mathcal{G}_t``);
    * the routed scaling factor ``rho`` (``routed_scaling_factor``).

    Weights are computed in float32, as in the reference implementation.
    """

    config_class = DeepSeekConfig

    def __init__(self, config: DeepSeekConfig) -> None:
        super().__init__(config)
        self.gate = nn.Linear(config.d_model, config.num_experts, bias=False)
        self.register_buffer("e_score_correction_bias", torch.zeros(config.num_experts))
        self.register_buffer("load", torch.zeros(config.num_experts), persistent=False)
        nn.init.normal_(self.gate.weight, std=self.d_model**-0.5)

    def forward(self, x: Tensor, **ctx: Any) -> RouterOutput:
        logits = nn.functional.linear(self.jitter_input(x).float(), self.gate.weight.float())
        scores = torch.sigmoid(logits)
        biased = scores.detach() + self.e_score_correction_bias
        mask = group_limited_mask(biased, self.config.n_group, self.config.topk_group)
        biased = biased.masked_fill(~mask, float("-inf"))
        indices = self.select_topk(biased)[1]
        weights = scores.gather(1, indices)
        if self.config.normalize_weights:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        weights = (weights * self.config.routed_scaling_factor).to(x.dtype)
        if self.training:
            self.load += torch.bincount(indices.reshape(-1), minlength=self.num_experts).to(self.load.dtype)
        probs = scores / scores.sum(dim=-1, keepdim=True).clamp_min(1e-20)
        aux = self.standard_losses(logits, probs, indices, weights)
        indices, weights = self.apply_capacity(indices, weights)
        return RouterOutput(logits=logits, probs=probs, weights=weights, indices=indices, aux_losses=aux)

    @torch.no_grad()
    def on_optimizer_step(self, experts: nn.Module | None = None) -> None:
        """The auxiliary-loss-free bias update: ``b_i += gamma * sign(mean load - load_i)``, then reset the load."""
        load = self.load
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(load)
        if load.sum() > 0:
            self.e_score_correction_bias += self.config.bias_update_speed * torch.sign(load.mean() - load)
        load.zero_()
