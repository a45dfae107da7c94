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
        expert_steps: optimizer steps of the expert-diversify phase before the anneal (0: none): every token
            goes to expert ``source_expert`` alone; at the optimizer step that ends it, the experts of the
            router's layer are spawned from it (:meth:`EvoMoERouter.on_optimizer_step`) and the anneal starts.
        source_expert: the expert trained in that phase.
        diversify_keep: probability that a weight of the source expert survives in a spawned expert.
        diversify_noise: std of Gaussian noise added to spawned experts (0: masks only, as in the paper).
        diversify_seed: seed of the spawning masks.
    """

    tau_start: float = 2.0
    tau_end: float = 0.3
    anneal_steps: int = 1000
    threshold: float = 1e-3
    final_top_k: int = 1
    expert_steps: int = 0
    source_expert: int = 0
    diversify_keep: float = 0.9
    diversify_noise: float = 0.0
    diversify_seed: int = 0

    def validate(self) -> None:
        super().validate()
        if not (self.tau_start > 0 and self.tau_end > 0):
            raise ConfigError("router config: tau_start, tau_end: expected > 0")
        if not 0 < self.diversify_keep <= 1:
            raise ConfigError(
                f"router config: diversify_keep: expected 0 < keep <= 1, got {self.diversify_keep}"
            )
        if self.expert_steps < 0 or not 0 <= self.source_expert < self.num_experts:
            raise ConfigError(
                f"router config: expert_steps >= 0 and source_expert in 0..{self.num_experts - 1} expected"
            )
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

    def __init__(self, config: EvoMoEConfig) -> None:
        super().__init__(config)
        # Set once the experts were spawned from the source expert (saved, so a resumed run knows).
        self.register_buffer("diversified", torch.zeros((), dtype=torch.bool))

    def top_k_fields(self, k: int) -> dict[str, Any]:
        return {"top_k": k, "final_top_k": k}

    @torch.no_grad()
    def on_optimizer_step(self, experts: nn.Module | None = None) -> None:
        """Advance the schedule; the step the expert-diversify phase ends, spawn ``experts`` from the source."""
        super().on_optimizer_step(experts)
        cfg = self.config
        if cfg.expert_steps and int(self.step) >= cfg.expert_steps and not bool(self.diversified):
            if experts is None:
                return  # not called with the layer's experts: the next forward says so
            generator = torch.Generator().manual_seed(cfg.diversify_seed)
            diversify_experts(experts, cfg.source_expert, cfg.diversify_keep, cfg.diversify_noise, generator)
            self.diversified.fill_(True)

    def forward(self, x: Tensor, **ctx: Any) -> RouterOutput:
        step = self.current_step(ctx)
        cfg = self.config
        if step < cfg.expert_steps:  # expert-diversify phase: the dense model, one expert
            indices = torch.full((x.shape[0], 1), cfg.source_expert, dtype=torch.long, device=x.device)
            return RouterOutput(
                None, None, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device), indices
            )
        if cfg.expert_steps and not bool(self.diversified):
            raise ConfigError(
                f"evomoe router: the expert-diversify phase ended at step {cfg.expert_steps} but the experts "
                "were not spawned from the source expert; call circuitml.moe.schedule.step_routers(model) after "
                "each optimizer step"
            )
        step -= cfg.expert_steps
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
    Dividing by ``keep`` preserves the expected activation scale. An ``nn.ModuleList`` of identical expert
    modules (the GNN's convolution experts) is diversified the same way, parameter by parameter. Returns
    ``experts``.
    """
    if not 0 < keep <= 1:
        raise ConfigError(f"diversify_experts: keep: expected 0 < keep <= 1, got {keep}")
    if isinstance(experts, nn.ModuleList):
        if not 0 <= source < len(experts):
            raise ConfigError(f"diversify_experts: source: expected 0..{len(experts) - 1}, got {source}")
        for group in zip(*(m.parameters() for m in experts), strict=True):
            stacked = torch.stack([p.detach() for p in group])
            _spawn(stacked, source, keep, noise_std, generator)
            for p, value in zip(group, stacked, strict=True):
                p.copy_(value)
        return experts
    num_experts = getattr(experts, "num_experts", None)
    if num_experts is None:
        raise ConfigError("diversify_experts: expected an experts module with a num_experts attribute")
    if not 0 <= source < num_experts:
        raise ConfigError(f"diversify_experts: source: expected 0..{num_experts - 1}, got {source}")
    for param in experts.parameters():
        if param.dim() == 0 or param.shape[0] != num_experts:
            continue
        _spawn(param, source, keep, noise_std, generator)
    return experts


def _spawn(
    param: Tensor, source: int, keep: float, noise_std: float, generator: torch.Generator | None
) -> None:
    # In place on a tensor stacked over experts: every row becomes a masked, rescaled copy of row ``source``.
    base = param[source].clone()
    mask = torch.rand(param.shape, generator=generator, device=param.device) < keep
    spawned = base[None] * mask.to(param.dtype) / keep
    if noise_std > 0:
        spawned += noise_std * torch.randn(param.shape, generator=generator, device=param.device)
    spawned[source] = base
    param.copy_(spawned)
