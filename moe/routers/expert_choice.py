"""Expert-choice routing: every expert picks its top-``c`` tokens (Zhou et al. 2022)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from circuitml.moe.config import RouterConfig
from circuitml.moe.registry import register_router
from circuitml.moe.router import Router, RouterOutput, softmax_probs
from torch import Tensor, nn

from circuitml.errors import ConfigError


@dataclass
class ExpertChoiceConfig(RouterConfig):
    """Options of :class:`ExpertChoiceRouter`.

    ``capacity_factor`` is the paper's ``c`` ("on average each token uses c experts"); ``None`` takes ``top_k``
    so that compute matches a top-k router of the same ``k``. No balancing loss by default: balance holds by
    construction.
    """

    balance_loss: str | None = None


@register_router("expert_choice")
class ExpertChoiceRouter(Router):
    r"""Expert-choice routing of Zhou et al. 2022, "Mixture-of-Experts with Expert Choice Routing" (NeurIPS).

    .. math::
        S = \mathrm{softmax}(X W_g) \in \mathbb{R}^{N \times E}, \qquad
        G, I = \mathrm{TopK}(S^\top, c), \qquad c = \lceil N \cdot cf / E \rceil

    Expert ``e`` processes exactly the ``c`` tokens ``I[e]`` with gates ``G[e]`` (``c`` is clipped to ``N``),
    so every expert is exactly full; a token may be chosen by 0..E experts. The output is token-major like
    every router here: ``indices[N, m]`` with ``m`` the largest number of experts any token got in the batch,
    ``-1`` padding the rest, so the core's experts and block consume it unchanged.

    Routing is over the whole batch of tokens (non-causal), as in the paper. A ``top_k`` override sets ``c``
    (only without a capacity factor); rank routing is refused.

    Shapes: ``x[N, d]`` → ``logits, probs [N, E]``, ``weights, indices [N, m]`` with ``1 <= m <= E``.
    """

    config_class = ExpertChoiceConfig
    overrides = frozenset({"topk"})

    def check_override(self, mode: str, value: int) -> None:
        # k only sets the capacity c = ceil(N k / E) when no capacity factor fixes it; "rank" has no meaning
        # when experts pick tokens.
        super().check_override(mode, value)
        if self.config.capacity_factor is not None:
            raise ConfigError(
                f"routing override: router 'expert_choice' with capacity_factor={self.config.capacity_factor} "
                f"cannot honour topk={value} (k sets the capacity only when capacity_factor is None)"
            )

    def __init__(self, config: ExpertChoiceConfig) -> None:
        super().__init__(config)
        self.gate = nn.Linear(config.d_model, config.num_experts, bias=config.bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.gate.weight, std=self.d_model**-0.5)
        if self.gate.bias is not None:
            nn.init.zeros_(self.gate.bias)

    def expert_capacity(self, num_tokens: int) -> int:
        """Tokens each expert takes: ``ceil(N * cf / E)`` clipped to ``[min(1, N), N]``."""
        cf = self.config.capacity_factor if self.config.capacity_factor is not None else self.active_top_k
        return min(num_tokens, max(min(1, num_tokens), math.ceil(num_tokens * cf / self.num_experts)))

    def forward(self, x: Tensor, **ctx: Any) -> RouterOutput:
        logits = self.gate(self.jitter_input(x))
        probs = softmax_probs(logits)
        num_tokens = x.shape[0]
        cap = self.expert_capacity(num_tokens)
        gates, tokens = probs.t().topk(cap, dim=-1)  # [E, c]: expert-major choice
        experts = torch.arange(self.num_experts, device=x.device).repeat_interleave(cap)
        weights, indices = expert_major_to_token_major(
            tokens.reshape(-1), experts, gates.reshape(-1), num_tokens
        )
        aux = self.standard_losses(logits, probs, indices, weights)
        return RouterOutput(logits=logits, probs=probs, weights=weights, indices=indices, aux_losses=aux)


def expert_major_to_token_major(
    tokens: Tensor, experts: Tensor, gates: Tensor, num_tokens: int
) -> tuple[Tensor, Tensor]:
    """Turn (token, expert, gate) triples into token-major ``weights, indices [N, m]`` padded with ``-1``.

    One stable sort by token gives each pair its slot; ``m`` is the largest count of pairs of one token.
    """
    order = torch.sort(tokens, stable=True).indices
    tokens, experts, gates = tokens[order], experts[order], gates[order]
    counts = torch.bincount(tokens, minlength=num_tokens)
    width = max(int(counts.max().item()) if num_tokens else 0, 1)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(tokens.numel(), device=tokens.device) - starts[tokens]
    indices = torch.full((num_tokens, width), -1, dtype=torch.long, device=tokens.device)
    indices[tokens, slot] = experts
    weights = gates.new_zeros(num_tokens, width).index_put((tokens, slot), gates)
    return weights, indices
