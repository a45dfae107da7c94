"""The MoE block: router + experts (+ an optional shared expert), returning output, losses and statistics.

Like HF transformers' ``MixtralSparseMoeBlock`` it only composes its parts, so each can be swapped alone.
Tokens are any rows: ``[N, d]`` or ``[B, T, d]`` (flattened for routing and reshaped back).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from circuitml.moe import losses as L
from circuitml.moe.config import MoEConfig
from circuitml.moe.dispatch import make_plan
from circuitml.moe.experts.ffn import FFNExperts
from circuitml.moe.experts.shared import SharedExpert
from circuitml.moe.registry import build_router
from circuitml.moe.router import Router, RouterOutput
from torch import Tensor, nn

RESIDUAL_MODES = ("add", "none")


@dataclass
class RoutingStats:
    """Detached routing statistics of one forward.

    Attributes:
        tokens_per_expert: ``[E]`` kept (token, slot) pairs per expert.
        dropped_slots: (token, slot) pairs dropped by capacity or left unused.
        dropped_tokens: tokens with no kept slot at all (their routed output is zero).
        entropy: mean per-token entropy (nats) of the router probabilities (of the normalized weights when
            the router has no probabilities).
    """

    tokens_per_expert: Tensor
    dropped_slots: int
    dropped_tokens: int
    entropy: float

    @classmethod
    def from_routing(cls, routing: RouterOutput, num_experts: int) -> RoutingStats:
        with torch.no_grad():
            idx = routing.indices
            kept = idx >= 0
            counts = L.tokens_per_expert(idx, num_experts)
            if routing.probs is not None:
                ent = L.routing_entropy(routing.probs.float())
            else:
                w = torch.where(kept, routing.weights.float(), 0.0)
                w = w / w.sum(-1, keepdim=True).clamp_min(1e-20)
                ent = L.routing_entropy(w)
            return cls(
                tokens_per_expert=counts,
                dropped_slots=int((~kept).sum()),
                dropped_tokens=int((~kept.any(dim=-1)).sum()) if idx.shape[-1] else int(idx.shape[0]),
                entropy=float(ent),
            )

    def load_imbalance(self) -> float:
        """``max / mean`` of tokens per expert (1 = perfectly balanced)."""
        counts = self.tokens_per_expert.float()
        return float(counts.max() / counts.mean().clamp_min(1e-20)) if counts.numel() else 1.0


@dataclass
class MoEOutput:
    """Output of :class:`MoEBlock`.

    Attributes:
        out: the block output, same shape as the input.
        aux_loss: sum of the router's (already weighted) auxiliary losses, a scalar to add to the task loss.
        losses: those losses by name.
        routing: the raw :class:`RouterOutput` (its ``state`` feeds the next layer of recurrent routers).
        stats: :class:`RoutingStats`, computed on first access (it syncs with the device, so a training
            loop that never reads it does not pay for it).
    """

    out: Tensor
    aux_loss: Tensor
    losses: dict[str, Tensor] = field(default_factory=dict)
    routing: RouterOutput | None = None
    num_experts: int = 0
    _stats: RoutingStats | None = field(default=None, repr=False)

    @property
    def stats(self) -> RoutingStats | None:
        if self._stats is None and self.routing is not None:
            self._stats = RoutingStats.from_routing(self.routing, self.num_experts)
        return self._stats

    @property
    def state(self) -> Any:
        return None if self.routing is None else self.routing.state


def _flatten_ctx(ctx: dict[str, Any], lead: tuple[int, ...]) -> dict[str, Any]:
    # Per-token ctx tensors (e.g. token_ids [B, T]) follow the tokens when [B, T, d] is flattened to [B*T, d].
    if len(lead) == 1:
        return ctx
    out = {}
    for key, value in ctx.items():
        if isinstance(value, Tensor) and tuple(value.shape[: len(lead)]) == lead:
            value = value.reshape(-1, *value.shape[len(lead) :])
        out[key] = value
    return out


class MoEBlock(nn.Module):
    """Router + experts + optional shared expert (PR-MoE, Rajbhandari et al. 2022).

    ``out = experts(x, router(x)) + shared(x)`` (``residual_mode="add"``); ``"none"`` ignores the shared
    expert's slot. The input's own residual connection belongs to the caller (as in a transformer layer).

    Args:
        router: any registered :class:`~circuitml.moe.router.Router`.
        experts: a module with ``forward(x, indices, weights) -> [N, d]`` (``FFNExperts``, ``AdapterExperts``,
            ``ExpertParallelFFN``).
        shared_expert: an always-on module ``[N, d] -> [N, d]``, or ``None``.
        residual_mode: ``"add"`` or ``"none"``.

    Shapes: ``x [N, d]`` or ``[B, T, d]`` → ``MoEOutput.out`` of the same shape.
    """

    def __init__(
        self,
        router: Router,
        experts: nn.Module,
        shared_expert: nn.Module | None = None,
        residual_mode: str = "add",
    ) -> None:
        super().__init__()
        if residual_mode not in RESIDUAL_MODES:
            raise ValueError(
                f"MoEBlock: residual_mode: expected one of {RESIDUAL_MODES}, got {residual_mode!r}"
            )
        self.router = router
        self.experts = experts
        self.shared_expert = shared_expert
        self.residual_mode = residual_mode

    @property
    def num_experts(self) -> int:
        return self.router.num_experts

    def forward(self, x: Tensor, **ctx: Any) -> MoEOutput:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        source = ctx.pop("expert_source", None)  # expert weights from a cache (circuitml.moe.stack)
        routing = self.router(flat, **_flatten_ctx(ctx, tuple(shape[:-1])))
        plan = make_plan(routing.indices, self.num_experts)
        if source is not None:
            y = source(self.experts, flat, routing.indices, routing.weights, plan)
        elif isinstance(self.experts, FFNExperts):
            y = self.experts(flat, routing.indices, routing.weights, plan=plan)
        else:
            y = self.experts(flat, routing.indices, routing.weights)
        if self.shared_expert is not None and self.residual_mode == "add":
            y = y + self.shared_expert(flat)
        aux = sum(routing.aux_losses.values(), flat.new_zeros(()))
        return MoEOutput(y.reshape(shape), aux, dict(routing.aux_losses), routing, self.num_experts)


def build_moe(config: MoEConfig | dict[str, Any] | None = None, **overrides: Any) -> MoEBlock:
    """Build a :class:`MoEBlock` with FFN experts from a :class:`MoEConfig` (or dict / keyword fields).

    Example::

        block = build_moe(d_model=64, num_experts=8, d_hidden=128, top_k=2, router="topk",
                          router_options={"capacity_factor": 1.25}, shared_hidden=128)
    """
    if config is None:
        config = MoEConfig.from_dict(overrides)
    elif isinstance(config, dict):
        config = MoEConfig.from_dict({**config, **overrides})
    elif overrides:
        config = MoEConfig.from_dict({**config.to_dict(), **overrides})
    router = build_router(
        config.router,
        d_model=config.d_model,
        num_experts=config.num_experts,
        top_k=config.top_k,
        **config.router_options,
    )
    experts = FFNExperts(
        config.num_experts,
        config.d_model,
        config.d_hidden,
        activation=config.activation,
        bias=config.expert_bias,
    )
    shared = None
    if config.shared_hidden:
        shared = SharedExpert(
            config.d_model, config.shared_hidden, config.activation, gated=config.shared_gated
        )
    return MoEBlock(router, experts, shared)
