"""RMoE: a layerwise recurrent router, a GRU state carried across the MoE layers (Qiu et al. 2023)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from circuitml.moe.config import RouterConfig
from circuitml.moe.registry import register_router
from circuitml.moe.router import Router, RouterOutput, softmax_probs
from torch import Tensor, nn

from circuitml.errors import ConfigError


@dataclass
class RMoEConfig(RouterConfig):
    """Options of :class:`RecurrentRouter`.

    Args:
        proj_dim: width of the per-layer input projection fed to the GRU (``None``: ``min(d_model, 128)``).
        state_dim: width of the GRU state carried between layers (``None``: ``proj_dim``).
    """

    proj_dim: int | None = None
    state_dim: int | None = None

    def validate(self) -> None:
        super().validate()
        for key in ("proj_dim", "state_dim"):
            value = getattr(self, key)
            if value is not None and value <= 0:
                raise ConfigError(f"router config: {key}: expected a positive int or None, got {value}")


@register_router("rmoe")
class RecurrentRouter(Router):
    r"""Layerwise recurrent router of Qiu et al. 2023/2024, "Layerwise Recurrent Router for Mixture-of-Experts"
    (arXiv:2408.06793).

    The router of MoE layer ``l`` sees both its own tokens and the routing state of layer ``l-1``:

    .. math::
        r_l = \mathrm{GRU}(x_l W^{proj}_l,\; r_{l-1}), \qquad
        p_l = \mathrm{softmax}(r_l W^{gate}_l), \qquad
        (w, I) = \mathrm{TopK}(p_l, k)

    ``r_{l-1}`` comes in ctx ``layer_state`` (``[N, state_dim]``; zeros at the first layer, i.e. when absent) and
    ``r_l`` goes out in ``RouterOutput.state``, so a model passes ``state`` of one block to the next. Gradients
    flow through the state, so later layers' losses train earlier routers. Each layer owns its projection,
    GRU cell and gate; capacity, noise-free top-k and the balancing / z-losses follow the base config.
    """

    config_class = RMoEConfig

    def __init__(self, config: RMoEConfig) -> None:
        super().__init__(config)
        proj = config.proj_dim or min(config.d_model, 128)
        self.state_dim = config.state_dim or proj
        self.proj = nn.Linear(config.d_model, proj, bias=False)
        self.cell = nn.GRUCell(proj, self.state_dim)
        self.gate = nn.Linear(self.state_dim, config.num_experts, bias=config.bias)

    def initial_state(self, x: Tensor) -> Tensor:
        return x.new_zeros(x.shape[0], self.state_dim)

    def forward(self, x: Tensor, **ctx: Any) -> RouterOutput:
        prev = ctx.get("layer_state")
        if prev is None:
            prev = self.initial_state(x)
        elif prev.shape != (x.shape[0], self.state_dim):
            raise ConfigError(
                f"rmoe router: ctx layer_state: expected shape {(x.shape[0], self.state_dim)}, got {tuple(prev.shape)}"
            )
        state = self.cell(self.proj(self.jitter_input(x)), prev.to(x.dtype))
        logits = self.gate(state)
        probs = softmax_probs(logits)
        weights, indices = self.select_topk(probs)
        if self.config.normalize_weights:
            weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-20)
        aux = self.standard_losses(logits, probs, indices, weights)
        indices, weights = self.apply_capacity(indices, weights)
        return RouterOutput(
            logits=logits, probs=probs, weights=weights, indices=indices, aux_losses=aux, state=state
        )
