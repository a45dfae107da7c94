"""EvoMoE: a Gumbel dense-to-sparse gate and the expert-diversify step (Nie et al. 2021)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from circuitml.moe.config import RouterConfig
from circuitml.moe.registry import register_router
from circuitml.moe.router import RouterOutput, softmax_probs
from circuitml.moe.routers._gating import AnnealedRouter, pack_support
from torch import Tensor, nn

from circuitml.errors import ConfigError


@dataclass
class EvoMoEConfig(RouterConfig):
    """Options of :class:`EvoMoERouter`.

    Args:
        tau_start, tau_end: Gumbel-softmax temperature at step 0 and from ``anneal_steps`` on.
        anneal_steps: steps of the dense-to-sparse phase (temperature annealed exponentially).
        threshold: during the anneal, a token uses every expert whose gate weight is at least this.
        final_top_k: experts per token once the anneal is over (the paper ends at top-1).
    """

    tau_start: float = 2.0
    tau_end: float = 0.3
    anneal_steps: int = 1000
    threshold: float = 1e-3
    final_top_k: int = 1

    def validate(self) -> None:
        super().validate()
        if not (self.tau_start > 0 and self.tau_end > 0):
            raise ConfigError("router config: tau_start, tau_end: expected > 0")
        if not 1 <= self.final_top_k <= self.num_experts:
            raise ConfigError(
                f"router config: final_top_k: expected 1..{self.num_experts}, got {self.final_top_k}"
            )


@register_router("evomoe")
class EvoMoERouter(AnnealedRouter):
    r"""Dense-to-sparse gate of Nie et al. 2021, "EvoMoE: An Evolutional Mixture-of-Experts Training Framework
    via Dense-To-Sparse Gate" (arXiv:2112.14397).

    .. math::
        g(x) = \mathrm{softmax}\big((x W + G) / \tau(t)\big), \qquad
        \tau(t) = \tau_{start} \, (\tau_{end} / \tau_{start})^{\min(t / T, 1)}

    with Gumbel noise ``G`` in training. While ``t < T`` (``anneal_steps``) a token is sent to every expert
    whose weight is at least ``threshold``: at a high temperature that is all experts (dense), and fewer as
    ``tau`` drops. From ``T`` on, the gate is sparse top-``final_top_k`` (top-1 in the paper). The step is
    read from ctx ``step``, else from an internal counter advanced by each training forward (see
    :meth:`set_step`). Selected weights are the gate values themselves (not renormalised), as in the paper.

    The experts of an EvoMoE model start from one trained expert: see :func:`diversify_experts`. A ``top_k`` /
    rank override routes by the gate's top entries in either phase; ``set_top_k`` sets ``final_top_k``.
    """

    config_class = EvoMoEConfig

    def top_k_fields(self, k: int) -> dict[str, Any]:
        return {"top_k": k, "final_top_k": k}

    def forward(self, x: Tensor, **ctx: Any) -> RouterOutput:
        step = self.current_step(ctx)
        logits = self.gate(self.jitter_input(x))
        noisy = logits
        if self.training:
            u = torch.rand(logits.shape, generator=ctx.get("generator"), device=x.device, dtype=logits.dtype)
            noisy = logits - torch.log(-torch.log(u.clamp_min(1e-20)) + 1e-20)
        gate = softmax_probs(noisy / self.temperature(step))
        if self.routing_override is not None:  # an inference override wins over the anneal's threshold
            weights, indices = self.select_topk(gate)
        elif step < self.config.anneal_steps:
            # The argmax always qualifies, so no token is left without an expert.
            keep = (gate >= self.config.threshold) | (gate == gate.max(dim=-1, keepdim=True).values)
            weights, indices = pack_support(gate, keep)
        else:
            weights, indices = self.select_topk(gate, self.config.final_top_k)
        aux = self.standard_losses(logits, softmax_probs(logits), indices, weights)
        indices, weights = self.apply_capacity(indices, weights)
        return RouterOutput(logits=logits, probs=gate, weights=weights, indices=indices, aux_losses=aux)


@torch.no_grad()
def diversify_experts(
    experts: nn.Module,
    source: int = 0,
    keep: float = 0.9,
    noise_std: float = 0.0,
    generator: torch.Generator | None = None,
) -> nn.Module:
    """EvoMoE's expert-diversify step: spawn all ``E`` experts from one trained expert, in place.

    Every parameter stacked over experts (first dimension ``E``, as in the core's ``FFNExperts``:
    ``gate_up_proj [E, .., d]``, ``down_proj [E, d, h]``, biases) gets ``p[e] = p[source] * M_e / keep +
    noise`` with ``M_e`` an independent Bernoulli(``keep``) mask per expert (expert ``source`` keeps its weights
    unmasked), so the experts start as distinct sub-networks of the trained one (Nie et al. 2021, Sec. 3.1).
    Dividing by ``keep`` preserves the expected activation scale. Returns ``experts``.
    """
    if not 0 < keep <= 1:
        raise ConfigError(f"diversify_experts: keep: expected 0 < keep <= 1, got {keep}")
    num_experts = getattr(experts, "num_experts", None)
    if num_experts is None:
        raise ConfigError("diversify_experts: expected an experts module with a num_experts attribute")
    if not 0 <= source < num_experts:
        raise ConfigError(f"diversify_experts: source: expected 0..{num_experts - 1}, got {source}")
    for param in experts.parameters():
        if param.dim() == 0 or param.shape[0] != num_experts:
            continue
        base = param[source].clone()
        mask = torch.rand(param.shape, generator=generator, device=param.device) < keep
        spawned = base[None] * mask.to(param.dtype) / keep
        if noise_std > 0:
            spawned += noise_std * torch.randn(param.shape, generator=generator, device=param.device)
        spawned[source] = base
        param.copy_(spawned)
    return experts
