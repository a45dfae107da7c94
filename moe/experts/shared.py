"""Shared (always-on) expert of the Pyramid-Residual MoE (PR-MoE, Rajbhandari et al. 2022, DeepSpeed-MoE).

PR-MoE adds a fixed dense MLP to the routed experts, ``y = MLP(x) + MoE(x)``: every token gets the shared
expert and the routed experts act as a correction. ``gated=True`` scales the shared branch by a per-token
``sigmoid(x w)`` gate, the variant of Qwen-MoE / DeepSeekMoE's shared experts.
"""

from __future__ import annotations

import torch
from circuitml.moe.experts.ffn import ACTIVATIONS, apply_activation
from torch import Tensor, nn

from circuitml.errors import ConfigError


class SharedExpert(nn.Module):
    """A dense FFN applied to every token, optionally gated by ``sigmoid(x w)``.

    Args:
        d_model: input/output width.
        d_hidden: hidden width.
        activation: as in :class:`~circuitml.moe.experts.ffn.FFNExperts`.
        gated: scale the output by a learned per-token sigmoid gate.

    Shapes: ``x [N, d]`` → ``[N, d]``.
    """

    def __init__(self, d_model: int, d_hidden: int, activation: str = "swiglu", gated: bool = False) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"SharedExpert: activation: expected one of {ACTIVATIONS}, got {activation!r}")
        self.activation = activation
        up = 2 * d_hidden if activation in ("swiglu", "geglu") else d_hidden
        self.up = nn.Linear(d_model, up, bias=False)
        self.down = nn.Linear(d_hidden, d_model, bias=False)
        self.gate = nn.Linear(d_model, 1, bias=False) if gated else None

    def reset_parameters(self) -> None:
        for m in (self.up, self.down, self.gate):
            if m is not None:
                m.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        y = self.down(apply_activation(self.up(x), self.activation))
        if self.gate is not None:
            y = torch.sigmoid(self.gate(x)) * y
        return y
