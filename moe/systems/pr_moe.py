r"""DeepSpeed-MoE's PR-MoE: a pyramid of expert counts with residual experts.

DeepSpeed-MoE (Rajbhandari et al. 2022, "DeepSpeed-MoE: Advancing Mixture-of-Experts Inference and Training to
Power Next-Generation AI Scale", ICML 2022), section 4.1. Two observations give the architecture:

* **Pyramid** — deeper layers benefit more from experts, so the expert count grows with depth (the paper
  uses 32 experts in the first half of the layers and 64 in the second).
* **Residual-MoE** — a dense MLP every token goes through, plus one routed (top-1) expert as a correction,
  mixed per token by a learned coefficient:

.. math::
    y = \alpha_0(x)\, \mathrm{MLP}(x) + \alpha_1(x)\, E_{i(x)}(x), \qquad
    (\alpha_0, \alpha_1) = \mathrm{softmax}(x W_c),

which matches top-2 quality at top-1 communication (DeepSpeed's ``use_residual`` layer).
:func:`build_pr_moe` builds such a stack; :func:`build_standard_moe` the same-shaped reference stack.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from circuitml.moe.block import MoEBlock, MoEOutput, build_moe
from circuitml.moe.experts.shared import SharedExpert
from torch import Tensor, nn

from circuitml.errors import ConfigError


class ResidualMoE(nn.Module):
    """One Residual-MoE layer: a routed block (top-1) and a dense MLP mixed by a learned per-token coefficient.

    Args:
        block: the routed :class:`MoEBlock` (without a shared expert).
        mlp: the dense branch ``[N, d] -> [N, d]``.
        d_model: width of the coefficient projection.

    Returns a :class:`MoEOutput` whose ``out`` is the mixture (aux losses are the block's).
    """

    def __init__(self, block: MoEBlock, mlp: nn.Module, d_model: int) -> None:
        super().__init__()
        if block.shared_expert is not None:
            raise ConfigError("ResidualMoE: expected a block without its own shared expert")
        self.block, self.mlp = block, mlp
        self.coefficient = nn.Linear(d_model, 2)

    def forward(self, x: Tensor, **ctx: Any) -> MoEOutput:
        routed = self.block(x, **ctx)
        coef = torch.softmax(self.coefficient(x), dim=-1)
        routed.out = coef[..., :1] * self.mlp(x) + coef[..., 1:] * routed.out
        return routed


class PreNormMoEStack(nn.Module):
    """Pre-norm residual stack of MoE layers: ``x <- x + layer(LayerNorm(x)).out``, then a final LayerNorm.

    ``forward(x)`` returns ``(y, aux_loss)``; ``layers`` are :class:`MoEBlock` or :class:`ResidualMoE`.
    """

    def __init__(self, layers: Sequence[nn.Module], d_model: int) -> None:
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.norms = nn.ModuleList(nn.LayerNorm(d_model) for _ in layers)
        self.final_norm = nn.LayerNorm(d_model)

    def forward(self, x: Tensor, **ctx: Any) -> tuple[Tensor, Tensor]:
        aux = x.new_zeros(())
        for norm, layer in zip(self.norms, self.layers, strict=True):
            out = layer(norm(x), **ctx)
            x = x + out.out
            aux = aux + out.aux_loss
        return self.final_norm(x), aux


def pyramid(num_layers: int, experts: Sequence[int]) -> list[int]:
    """Expert count per layer: ``experts`` (non-decreasing) spread over equal consecutive groups of layers,
    e.g. ``pyramid(4, [4, 8]) == [4, 4, 8, 8]`` (the paper's first half / second half)."""
    if not experts or list(experts) != sorted(experts) or min(experts) < 1:
        raise ConfigError(
            f"PR-MoE: pyramid: expected non-decreasing positive expert counts, got {list(experts)}"
        )
    if num_layers < len(experts):
        raise ConfigError(
            f"PR-MoE: pyramid: {len(experts)} stages need >= {len(experts)} layers, got {num_layers}"
        )
    return [experts[i * len(experts) // num_layers] for i in range(num_layers)]


def build_pr_moe(
    d_model: int,
    num_layers: int,
    experts: Sequence[int],
    d_hidden: int,
    mlp_hidden: int | None = None,
    activation: str = "swiglu",
    router_options: dict[str, Any] | None = None,
) -> PreNormMoEStack:
    """A PR-MoE stack: :func:`pyramid` expert counts, each layer a :class:`ResidualMoE` (top-1 expert + dense
    MLP of width ``mlp_hidden``, default ``d_hidden``)."""
    layers = []
    for e in pyramid(num_layers, experts):
        block = build_moe(
            d_model=d_model,
            num_experts=e,
            d_hidden=d_hidden,
            top_k=1,
            activation=activation,
            router_options=dict(router_options or {}),
        )
        mlp = SharedExpert(d_model, mlp_hidden or d_hidden, activation)
        layers.append(ResidualMoE(block, mlp, d_model))
    return PreNormMoEStack(layers, d_model)


def build_standard_moe(
    d_model: int,
    num_layers: int,
    num_experts: int,
    d_hidden: int,
    top_k: int = 2,
    activation: str = "swiglu",
    router_options: dict[str, Any] | None = None,
) -> PreNormMoEStack:
    """The reference: the same stack with ``num_experts`` top-``k`` experts in every layer."""
    layers = [
        build_moe(
            d_model=d_model,
            num_experts=num_experts,
            d_hidden=d_hidden,
            top_k=top_k,
            activation=activation,
            router_options=dict(router_options or {}),
        )
        for _ in range(num_layers)
    ]
    return PreNormMoEStack(layers, d_model)
