"""Read-ME: a pre-gating router decoupled from the backbone that plans every layer's routing at once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from circuitml.moe.config import RouterConfig
from circuitml.moe.losses import tokens_per_expert
from circuitml.moe.registry import register_router
from circuitml.moe.router import Router, RouterOutput, softmax_probs
from torch import Tensor, nn

from circuitml.errors import ConfigError


@dataclass
class ReadMEConfig(RouterConfig):
    """Options of :class:`ReadMERouter`.

    Args:
        num_layers: MoE layers the plan covers.
        layer: which layer of the plan this router instance serves (see :meth:`ReadMERouter.for_layer`).
        hidden: width of the planner's shared trunk.
        input_dim: width of the planner's input features (ctx ``router_input``; ``None``: ``d_model``).
    """

    num_layers: int = 1
    layer: int = 0
    hidden: int = 64
    input_dim: int | None = None

    def validate(self) -> None:
        super().validate()
        if self.num_layers < 1 or not 0 <= self.layer < self.num_layers:
            raise ConfigError(
                f"router config: layer: expected 0..num_layers-1 with num_layers >= 1, got layer={self.layer}, "
                f"num_layers={self.num_layers}"
            )


@dataclass
class RoutingPlan:
    """Routing of every layer, computed before any layer runs.

    Attributes:
        layers: one :class:`RouterOutput` per MoE layer.
        tokens_per_expert: ``[L, E]`` load of each expert in each layer, known ahead of dispatch (what lets a
            serving system prefetch experts and batch by expert, Read-ME Sec. 4).
    """

    layers: list[RouterOutput]
    tokens_per_expert: Tensor

    def dispatch_order(self, layer: int) -> tuple[Tensor, Tensor]:
        """``(order, counts)`` of layer ``layer``: (token, slot) pairs sorted by expert, and counts per expert."""
        idx = self.layers[layer].indices.reshape(-1)
        key = torch.where(idx >= 0, idx, self.tokens_per_expert.shape[1])
        order = torch.sort(key, stable=True).indices
        return order[: int((idx >= 0).sum())], self.tokens_per_expert[layer]


class ReadMEPlanner(nn.Module):
    """The decoupled router network: a shared MLP trunk and one gate head per layer, ``[N, d_in] -> [L, N, E]``."""

    def __init__(self, input_dim: int, hidden: int, num_layers: int, num_experts: int) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(input_dim, hidden), nn.GELU(), nn.LayerNorm(hidden))
        self.heads = nn.Parameter(torch.empty(num_layers, hidden, num_experts))
        nn.init.normal_(self.heads, std=hidden**-0.5)

    def forward(self, features: Tensor) -> Tensor:
        h = self.trunk(features)
        return torch.einsum("nh,lhe->lne", h, self.heads)


@register_router("read_me")
class ReadMERouter(Router):
    r"""Pre-gating router of Cai et al. 2024, "Read-ME: Refactorizing LLMs as Router-Decoupled Mixture of Experts
    with System Co-Design" (NeurIPS).

    One small network ``R`` reads the input features ``u`` (token embeddings, node features: ctx ``router_input``,
    else the first layer's ``x``) and emits the routing of all ``L`` MoE layers at once:

    .. math::
        p^{(l)} = \mathrm{softmax}(R_l(u)), \qquad (w^{(l)}, I^{(l)}) = \mathrm{TopK}(p^{(l)}, k), \quad l = 1..L

    Because routing no longer depends on the hidden states of layer ``l``, the whole :class:`RoutingPlan` is
    known before the backbone runs, so dispatch (and expert loading) can be planned ahead.

    The first router that runs computes the plan and returns it as ``RouterOutput.state``; later layers take it
    from ctx ``layer_state`` (or ``routing_plan``) and only look up their layer. One planner is shared by the
    routers of all layers: build the first with ``num_layers=L`` and get the others with :meth:`for_layer`.
    """

    config_class = ReadMEConfig

    def __init__(self, config: ReadMEConfig, planner: ReadMEPlanner | None = None) -> None:
        super().__init__(config)
        self.layer = config.layer
        if planner is None:
            self.planner = ReadMEPlanner(
                config.input_dim or config.d_model, config.hidden, config.num_layers, config.num_experts
            )
        else:
            # A shared planner is held, not registered: the router that owns it saves it once (a state dict
            # with the same tensors under several names cannot be written as safetensors).
            self.__dict__["planner"] = planner

    def for_layer(self, layer: int) -> ReadMERouter:
        """A router for ``layer`` that shares this router's planner (same parameters, saved by this router)."""
        cfg = self.config_class.from_dict({**self.config.to_dict(), "layer": layer})
        return ReadMERouter(cfg, planner=self.planner)

    @classmethod
    def build_stack(cls, num_layers: int, values: dict[str, Any]) -> list[Router]:
        """The routers of ``num_layers`` MoE layers: one planner for all, owned by the first."""
        first = cls(cls.config_class.from_dict({**values, "num_layers": num_layers, "layer": 0}))
        return [first] + [first.for_layer(i) for i in range(1, num_layers)]

    def plan(self, features: Tensor) -> RoutingPlan:
        """Route every layer from ``features[N, d_in]`` in one pass."""
        logits = self.planner(features)  # [L, N, E]
        probs = softmax_probs(logits)
        layers = []
        for l_logits, l_probs in zip(logits, probs, strict=True):
            weights, indices = self.select_topk(l_probs)
            if self.config.normalize_weights:
                weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-20)
            aux = self.standard_losses(l_logits, l_probs, indices, weights)
            indices, weights = self.apply_capacity(indices, weights)
            layers.append(RouterOutput(l_logits, l_probs, weights, indices, aux))
        load = torch.stack([tokens_per_expert(out.indices, self.num_experts) for out in layers])
        return RoutingPlan(layers=layers, tokens_per_expert=load)

    def forward(self, x: Tensor, **ctx: Any) -> RouterOutput:
        plan = ctx.get("routing_plan")
        if plan is None and isinstance(ctx.get("layer_state"), RoutingPlan):
            plan = ctx["layer_state"]
        if plan is None:
            source = ctx.get("router_input")
            plan = self.plan(x if source is None else source)
        if len(plan.layers) <= self.layer:
            raise ConfigError(
                f"read_me router: layer {self.layer} is outside a plan of {len(plan.layers)} layers"
            )
        out = plan.layers[self.layer]
        if out.indices.shape[0] != x.shape[0]:
            raise ConfigError(
                f"read_me router: the routing plan covers {out.indices.shape[0]} tokens, x has {x.shape[0]}"
            )
        return RouterOutput(out.logits, out.probs, out.weights, out.indices, out.aux_losses, state=plan)
