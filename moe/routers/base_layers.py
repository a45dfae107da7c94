"""BASE layers: a balanced linear assignment of tokens to experts in training (Lewis et al. 2021)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from circuitml.moe.config import RouterConfig
from circuitml.moe.registry import register_router
from circuitml.moe.router import Router, RouterOutput, softmax_probs
from circuitml.moe.routers._gating import log_sinkhorn
from torch import Tensor, nn


@dataclass
class BaseLayerConfig(RouterConfig):
    """Options of :class:`BaseLayerRouter`.

    Args:
        sinkhorn_iters: Sinkhorn iterations of the balanced relaxation that orders the tokens' preferences.
        sinkhorn_temperature: temperature of that relaxation (scores are divided by it; smaller is closer to
            the linear assignment, larger balances more softly).
    """

    top_k: int = 1
    sinkhorn_iters: int = 50
    sinkhorn_temperature: float = 0.05
    balance_loss: str | None = None


@register_router("base")
class BaseLayerRouter(Router):
    r"""BASE layers of Lewis et al. 2021, "BASE Layers: Simplifying Training of Large, Sparse Models" (ICML).

    Each expert ``e`` has an embedding ``w_e``; a token's affinity is ``s_{te} = x_t \cdot w_e``. In training the
    tokens are assigned by the balanced linear assignment

    .. math::
        \max_{a} \sum_t s_{t, a_t} \quad \text{s.t.} \quad |\{t : a_t = e\}| = N / E \;\; \forall e

    so every expert gets exactly ``N/E`` tokens (at most ``ceil(N/E)`` when ``E`` does not divide ``N``) and no
    balancing loss is needed. At inference each token takes its best expert ``argmax_e s_{te}``. The expert's
    output is gated by ``sigmoid(s_{t, a_t})`` (the paper's eq. for the layer output, whose residual is left to
    the block).

    The assignment is solved in two vectorised steps instead of fairseq's C++ auction: a Sinkhorn relaxation
    (Cuturi 2013) of the transport problem with expert capacities gives each token a balance-aware preference,
    then capacity-constrained rounding lets every unassigned token propose to its best expert with room left
    and each expert accept its best proposers up to its remaining capacity. Every round fills an expert or
    places every proposer, so at most ``E`` rounds run. Always one expert per token (``top_k`` is ignored).
    """

    config_class = BaseLayerConfig
    overrides = frozenset()
    routes_one_expert = True

    def __init__(self, config: BaseLayerConfig) -> None:
        super().__init__(config)
        self.expert_embeddings = nn.Parameter(torch.empty(config.num_experts, config.d_model))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # The paper initialises expert embeddings orthogonally so initial affinities are decorrelated.
        nn.init.orthogonal_(self.expert_embeddings)

    def forward(self, x: Tensor, **ctx: Any) -> RouterOutput:
        scores = x @ self.expert_embeddings.t()
        if self.training:
            experts = balanced_assignment(
                scores.detach(), self.config.sinkhorn_iters, self.config.sinkhorn_temperature
            )
        else:
            experts = scores.detach().argmax(dim=-1)
        indices = experts[:, None]
        weights = torch.sigmoid(scores.gather(-1, indices))
        probs = softmax_probs(scores)
        aux = self.standard_losses(scores, probs, indices, weights)
        return RouterOutput(logits=scores, probs=probs, weights=weights, indices=indices, aux_losses=aux)


@torch.no_grad()
def balanced_assignment(scores: Tensor, sinkhorn_iters: int = 50, temperature: float = 0.05) -> Tensor:
    """Expert id per token with every expert holding at most ``ceil(N/E)`` tokens (exactly ``N/E`` if divisible).

    Args:
        scores: ``[N, E]`` token-expert affinities (higher is better).
        sinkhorn_iters: iterations of the capacity-aware Sinkhorn relaxation ranking preferences.
        temperature: its temperature, relative to the scores' spread.
    Returns:
        ``[N]`` long expert ids.
    """
    num_tokens, num_experts = scores.shape
    if num_tokens == 0:
        return torch.zeros(0, dtype=torch.long, device=scores.device)
    capacity = math.ceil(num_tokens / num_experts)
    scale = scores.std().clamp_min(1e-6) * temperature
    # Transport plan with token mass 1 and expert mass N/E; its log entries rank each token's experts.
    col_mass = torch.full((num_experts,), num_tokens / num_experts, dtype=scores.dtype, device=scores.device)
    pref = log_sinkhorn(scores / scale, sinkhorn_iters, col_mass=col_mass)
    assigned = torch.full((num_tokens,), -1, dtype=torch.long, device=scores.device)
    room = torch.full((num_experts,), capacity, dtype=torch.long, device=scores.device)
    for _ in range(num_experts + 1):
        open_tokens = (assigned < 0).nonzero().squeeze(1)
        if open_tokens.numel() == 0:
            break
        masked = pref[open_tokens].masked_fill(room[None, :] <= 0, float("-inf"))
        value, choice = masked.max(dim=-1)
        # Within each expert, rank proposers by value: sort by value, then stably by expert.
        by_value = torch.argsort(value, descending=True)
        by_expert = by_value[torch.argsort(choice[by_value], stable=True)]
        sorted_choice = choice[by_expert]
        counts = torch.bincount(sorted_choice, minlength=num_experts)
        starts = torch.cumsum(counts, 0) - counts
        rank = torch.arange(by_expert.numel(), device=scores.device) - starts[sorted_choice]
        accept = rank < room[sorted_choice]
        winners = by_expert[accept]
        assigned[open_tokens[winners]] = choice[winners]
        room -= torch.bincount(choice[winners], minlength=num_experts)
    return assigned
