"""StableMoE: learn routing while distilling a lightweight router, then freeze it (Dai et al. 2022)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from circuitml.moe.config import RouterConfig
from circuitml.moe.registry import register_router
from circuitml.moe.router import Router, RouterOutput, softmax_probs
from torch import Tensor, nn

from circuitml.errors import ConfigError


@dataclass
class StableMoEConfig(RouterConfig):
    """Options of :class:`StableMoERouter`.

    Args:
        distill_dim: width of the lightweight router's features (the paper distils into word embeddings of
            a small dimension).
        vocab_size: when set, the lightweight router embeds ctx ``token_ids`` (the paper's setting); otherwise it
            projects ctx ``router_input`` (fixed per-token features such as input embeddings) or, without it,
            ``x`` itself (detached) to ``distill_dim``.
        distill_loss_weight: weight of the distillation cross-entropy in stage 1.
        balance_loss_weight: the paper's ``alpha`` for its own balance loss (eq. 3).
        stage: 1 (learn + distil) or 2 (routing frozen to the distilled router); see :meth:`freeze_routing`.
    """

    top_k: int = 1
    distill_dim: int = 16
    vocab_size: int | None = None
    distill_loss_weight: float = 1.0
    balance_loss_weight: float = 0.3
    balance_loss: str | None = None
    stage: int = 1

    def validate(self) -> None:
        super().validate()
        if self.stage not in (1, 2):
            raise ConfigError(f"router config: stage: expected 1 or 2, got {self.stage}")
        if self.distill_dim <= 0:
            raise ConfigError(f"router config: distill_dim: expected a positive int, got {self.distill_dim}")


def stablemoe_balance_loss(scores: Tensor, experts: Tensor, num_experts: int) -> Tensor:
    r"""Balance loss of StableMoE (Dai et al. 2022, eq. 3).

    .. math::
        \mathcal{L}_{bal} = \sum_{e} \frac{|A_e| - \bar n}{\bar n} \sum_{t \in A_e} \sigma(s_{t,e})

    with ``A_e`` the tokens assigned to ``e`` and ``\bar n = N/E``: the scores of over-loaded experts are pushed
    down and those of under-loaded ones up. (The weight ``alpha`` is applied by the caller.)
    """
    counts = torch.bincount(experts, minlength=num_experts).to(scores.dtype)
    mean = experts.numel() / num_experts
    assigned_score = torch.sigmoid(scores.gather(-1, experts[:, None]).squeeze(-1))
    per_expert = scores.new_zeros(num_experts).index_add(0, experts, assigned_score)
    return ((counts - mean) / max(mean, 1e-9) * per_expert).sum()


@register_router("stablemoe")
class StableMoERouter(Router):
    r"""StableMoE of Dai et al. 2022, "StableMoE: Stable Routing Strategy for Mixture of Experts" (ACL).

    Backbone routing scores ``s_{t,e} = x_t \cdot c_e`` against expert centroids; each token goes to one expert
    with gate ``sigmoid(s_{t, a_t})``.

    * **Stage 1**: ``a_t = argmax_e s_{t,e}``, trained with the balance loss (eq. 3) while a lightweight router
      ``D`` (features ``D(t)`` of width ``distill_dim``, centroids ``\hat c_e``) is distilled from it:
      :math:`\mathcal{L}_{dis} = -\sum_t \log \mathrm{softmax}_e(D(t) \cdot \hat c_e)[a_t]`.
    * **Stage 2** (:meth:`freeze_routing`): the distilled router is frozen and decides
      ``a_t = argmax_e D(t) \cdot \hat c_e``; the assignment no longer changes as the backbone trains (with
      ``token_ids`` or fixed ``router_input`` features), while the gate ``sigmoid(s_{t,a_t})`` still trains.

    Always one expert per token (``top_k`` is ignored).
    """

    config_class = StableMoEConfig
    overrides = frozenset()
    routes_one_expert = True

    def __init__(self, config: StableMoEConfig) -> None:
        super().__init__(config)
        self.centroids = nn.Parameter(torch.empty(config.num_experts, config.d_model))
        if config.vocab_size:
            self.distill_features: nn.Module = nn.Embedding(config.vocab_size, config.distill_dim)
        else:
            self.distill_features = nn.Linear(config.d_model, config.distill_dim, bias=False)
        self.distill_centroids = nn.Parameter(torch.empty(config.num_experts, config.distill_dim))
        self.stage = config.stage
        self.reset_parameters()
        if self.stage == 2:
            self.freeze_routing()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.centroids, std=self.d_model**-0.5)
        nn.init.normal_(self.distill_centroids, std=self.config.distill_dim**-0.5)
        if isinstance(self.distill_features, nn.Embedding):
            nn.init.normal_(self.distill_features.weight, std=1.0)
        else:
            nn.init.normal_(self.distill_features.weight, std=self.d_model**-0.5)

    def example_ctx(self, num_tokens: int, generator: torch.Generator | None = None) -> dict[str, Any]:
        if self.config.vocab_size:
            return {"token_ids": torch.randint(0, self.config.vocab_size, (num_tokens,), generator=generator)}
        return {}

    def freeze_routing(self) -> None:
        """Enter stage 2: the distilled router decides the assignment from now on, its parameters frozen."""
        self.stage = 2
        self.distill_centroids.requires_grad_(False)
        for p in self.distill_features.parameters():
            p.requires_grad_(False)

    def distilled_logits(self, x: Tensor, ctx: dict[str, Any]) -> Tensor:
        """``[N, E]`` logits of the lightweight router, from token ids, fixed features, or detached ``x``."""
        if isinstance(self.distill_features, nn.Embedding):
            ids = ctx.get("token_ids")
            if ids is None:
                raise ConfigError("stablemoe router: ctx token_ids is required when vocab_size is set")
            feats = self.distill_features(torch.as_tensor(ids, device=x.device).long().reshape(-1))
        else:
            source = ctx.get("router_input")
            feats = self.distill_features((x if source is None else source).detach())
        return feats @ self.distill_centroids.t()

    def forward(self, x: Tensor, **ctx: Any) -> RouterOutput:
        scores = x @ self.centroids.t()
        distilled = self.distilled_logits(x, ctx)
        aux: dict[str, Tensor] = {}
        if self.stage == 1:
            experts = scores.detach().argmax(dim=-1)
            aux["balance_loss"] = self.config.balance_loss_weight * stablemoe_balance_loss(
                scores, experts, self.num_experts
            )
            # The student follows the teacher's assignment; the teacher gets no gradient from it.
            aux["distill_loss"] = self.config.distill_loss_weight * F.cross_entropy(distilled, experts)
        else:
            experts = distilled.detach().argmax(dim=-1)
        indices = experts[:, None]
        weights = torch.sigmoid(scores.gather(-1, indices))
        if self.config.z_loss_weight > 0:
            aux.update(self.standard_losses(scores, None, indices))
        return RouterOutput(
            logits=scores, probs=softmax_probs(scores), weights=weights, indices=indices, aux_losses=aux
        )
