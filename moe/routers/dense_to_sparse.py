"""Activation dense-to-sparse gate: softmax of an activation of the logits over a temperature, thresholded."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from circuitml.moe.config import RouterConfig
from circuitml.moe.registry import register_router
from circuitml.moe.router import RouterOutput, softmax_probs
from circuitml.moe.routers._gating import AnnealedRouter, pack_support
from torch import Tensor

from circuitml.errors import ConfigError

ACTIVATIONS = {
    "relu": F.relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "softplus": F.softplus,
    "sigmoid": torch.sigmoid,
    "tanh": torch.tanh,
    "identity": lambda t: t,
}


@dataclass
class DenseToSparseConfig(RouterConfig):
    """Options of :class:`DenseToSparseRouter`.

    Args:
        activation: activation applied to the linear logits (one of :data:`ACTIVATIONS`).
        tau_start, tau_end: temperature at step 0 and from ``anneal_steps`` on (exponential anneal); equal
            values give a fixed temperature.
        anneal_steps: length of the anneal.
        threshold: experts whose weight is below it are dropped (the argmax is always kept).
        max_experts: cap on experts per token (``None``: no cap).
        renormalize: rescale the kept weights to sum to 1.
    """

    activation: str = "relu"
    tau_start: float = 1.0
    tau_end: float = 0.1
    anneal_steps: int = 1000
    threshold: float = 0.05
    max_experts: int | None = None
    renormalize: bool = False

    def validate(self) -> None:
        super().validate()
        if self.activation not in ACTIVATIONS:
            raise ConfigError(
                f"router config: activation: expected one of {sorted(ACTIVATIONS)}, got {self.activation!r}"
            )
        if not (self.tau_start > 0 and self.tau_end > 0):
            raise ConfigError("router config: tau_start, tau_end: expected > 0")
        if not 0 <= self.threshold < 1:
            raise ConfigError(f"router config: threshold: expected 0 <= threshold < 1, got {self.threshold}")


@register_router("dense_to_sparse")
class DenseToSparseRouter(AnnealedRouter):
    r"""Activation dense-to-sparse gate of Nguyen, Akbarian and Ho 2024, "Is Temperature Sample Efficient for
    Softmax Gaussian Mixture of Experts?" (ICML, arXiv:2401.13875).

    The plain dense-to-sparse gate ``softmax((x W) / tau)`` (EvoMoE's DTS gate, :class:`EvoMoERouter`) couples the
    temperature with the gate parameters, which makes parameter estimation slower than any polynomial rate; the
    paper routes the linear logits through an activation ``sigma`` before the softmax, which restores polynomial
    rates when ``sigma`` and its derivatives satisfy a linear-independence condition:

    .. math::
        g(x) = \mathrm{softmax}\big(\sigma(x W) / \tau(t)\big), \qquad
        \mathcal{S}(x) = \{ e : g(x)_e \ge \theta \} \cup \{\arg\max_e g(x)_e\}

    with ``\sigma`` a fixed activation (ReLU by default: negative logits all tie at 0, so experts the gate is
    unsure of share the remaining mass evenly) and ``\tau`` annealed from ``tau_start`` to ``tau_end``. At a
    high temperature ``g`` is flat and every expert is above ``\theta`` (dense); as ``\tau`` falls the weights
    concentrate and the selection becomes sparse. Deterministic (no noise), unlike :class:`EvoMoERouter`.
    A ``top_k`` / rank override selects the gate's top entries; ``set_top_k`` sets ``max_experts``.
    """

    config_class = DenseToSparseConfig

    def top_k_fields(self, k: int) -> dict[str, Any]:
        return {"top_k": k, "max_experts": k}

    def forward(self, x: Tensor, **ctx: Any) -> RouterOutput:
        step = self.current_step(ctx)
        logits = self.gate(self.jitter_input(x))
        gate = softmax_probs(ACTIVATIONS[self.config.activation](logits) / self.temperature(step))
        keep = (gate >= self.config.threshold) | (gate == gate.max(dim=-1, keepdim=True).values)
        cap = self.config.max_experts
        if self.routing_override is not None:
            # The override picks the slots (top-k' or the r-th ranked expert), by index as below.
            keep = torch.zeros_like(keep).scatter_(-1, self.select_topk(gate)[1], True)
        elif cap is not None and cap < self.num_experts:
            # By index, not by value: tied weights (ReLU zeros) must not let more than ``cap`` through.
            top = torch.zeros_like(keep).scatter_(-1, gate.topk(cap, dim=-1).indices, True)
            keep &= top
        weights, indices = pack_support(gate, keep)
        if self.config.renormalize:
            weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-20)
        aux = self.standard_losses(logits, gate, indices, weights)
        indices, weights = self.apply_capacity(indices, weights)
        return RouterOutput(logits=logits, probs=gate, weights=weights, indices=indices, aux_losses=aux)
