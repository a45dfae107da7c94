"""Permutation-based local search around any router (COMET, Ibrahim et al. 2023, Sec. 4)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from circuitml.moe.config import RouterConfig
from circuitml.moe.registry import build_router, register_router
from circuitml.moe.router import Router, RouterOutput
from circuitml.moe.routers._gating import entropy, log_sinkhorn
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from circuitml.errors import ConfigError


@dataclass
class LocalSearchConfig(RouterConfig):
    """Options of :class:`PermutationLocalSearchRouter`.

    Args:
        inner: registry name of the wrapped router (``topk``, ``hash``, ``dselect_k``, ``comet``, ...).
        inner_config: extra options of the wrapped router (``d_model``, ``num_experts``, ``top_k`` come from
            this config).
        search_steps: training steps during which the permutation is learned; then it is hardened and fixed.
        tau_start, tau_end: Gumbel-Sinkhorn temperature, annealed log-linearly over the search.
        sinkhorn_iters: Sinkhorn iterations per forward during the search.
        gumbel_noise: scale of the Gumbel noise added to the permutation log-weights during the search.
        search_width: candidate experts per routed slot while searching (``E`` mixes every expert as the
            reference code does; smaller keeps only the largest entries of the soft permutation row).
        permutation_entropy_weight: entropy penalty on the soft permutation (pushes it to a hard one).
    """

    inner: str = "topk"
    inner_config: dict[str, Any] = field(default_factory=dict)
    search_steps: int = 1000
    tau_start: float = 1.0
    tau_end: float = 1e-2
    sinkhorn_iters: int = 20
    gumbel_noise: float = 0.01
    search_width: int = 2
    permutation_entropy_weight: float = 0.0
    balance_loss: str | None = None

    def validate(self) -> None:
        super().validate()
        if self.inner == "local_search":
            raise ConfigError("router config: inner: local_search cannot wrap itself")
        if self.search_steps < 0 or self.search_width < 1:
            raise ConfigError("router config: search_steps >= 0 and search_width >= 1 expected")
        if not (self.tau_start > 0 and self.tau_end > 0):
            raise ConfigError("router config: tau_start, tau_end: expected > 0")


@register_router("local_search")
class PermutationLocalSearchRouter(Router):
    r"""Permutation-based local search of Ibrahim et al. 2023, "COMET: Learning Cardinality Constrained Mixture
    of Experts with Trees and Local Search" (KDD), wrapping any router.

    A sparse gate trained by first-order methods can get stuck with tokens routed to the "wrong" experts. The
    local search learns a permutation ``\pi`` of the experts on top of the wrapped gate ``g``:

    .. math::
        \tilde g(x)_{e'} = \sum_e g(x)_e \, P_{e e'}, \qquad
        P = \mathrm{Sinkhorn}\big((\log W + \epsilon\, G) / \tau\big)

    with learnable ``log W [E, E]``, Gumbel noise ``G`` and ``\tau`` annealed from ``tau_start`` to ``tau_end``
    over ``search_steps`` (Gumbel-Sinkhorn, Mena et al. 2018). ``P`` is doubly stochastic, so the expert mass
    is only moved, never lost. After the search, ``P`` is hardened by the linear assignment
    ``\pi = \arg\max_\pi \sum_e \log W_{e, \pi(e)}`` (Hungarian algorithm) and routing becomes
    ``indices = \pi[g\text{'s indices}]`` at no extra cost.

    The step counts optimizer steps (advanced by :func:`circuitml.moe.schedule.step_routers`, never by a
    forward), or is read from ctx ``step``. Overrides are the
    wrapped router's: it honours what that router honours.
    """

    config_class = LocalSearchConfig

    def check_override(self, mode: str, value: int) -> None:
        self.inner.check_override(mode, value)

    def top_k_config(self, k: int) -> RouterConfig:
        self.inner.top_k_config(k)  # raises when the wrapped router cannot change k
        return super().top_k_config(k)

    def __init__(self, config: LocalSearchConfig) -> None:
        super().__init__(config)
        shared = {"d_model": config.d_model, "num_experts": config.num_experts, "top_k": config.top_k}
        self.inner = build_router(config.inner, {**shared, **config.inner_config})
        self.log_weights = nn.Parameter(torch.empty(config.num_experts, config.num_experts))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("permutation", torch.arange(config.num_experts))
        self.register_buffer("hardened", torch.zeros((), dtype=torch.bool))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.uniform_(self.log_weights, 0.0, 1.0)

    def example_ctx(self, num_tokens: int, generator: torch.Generator | None = None) -> dict[str, Any]:
        return self.inner.example_ctx(num_tokens, generator)

    def temperature(self, step: int) -> float:
        """Log-linear anneal of ``tau`` from ``tau_start`` (step 0) to ``tau_end`` (step ``search_steps``)."""
        cfg = self.config
        frac = min(1.0, step / max(cfg.search_steps, 1))
        return math.exp((1 - frac) * math.log(cfg.tau_start) + frac * math.log(cfg.tau_end))

    def soft_permutation(self, step: int, generator: torch.Generator | None = None) -> Tensor:
        """``[E, E]`` doubly-stochastic ``P`` at ``step`` (with Gumbel noise in training)."""
        log_w = self.log_weights
        if self.training and self.config.gumbel_noise > 0:
            u = torch.rand(log_w.shape, generator=generator, device=log_w.device, dtype=log_w.dtype)
            log_w = log_w - self.config.gumbel_noise * torch.log(-torch.log(u.clamp_min(1e-20)) + 1e-20)
        return log_sinkhorn(log_w / self.temperature(step), self.config.sinkhorn_iters).exp()

    @torch.no_grad()
    def harden(self) -> Tensor:
        r"""Fix ``\pi`` to the linear assignment of ``log W`` (Hungarian algorithm); returns it."""
        cost = -self.log_weights.detach().double().cpu().numpy()
        rows, cols = linear_sum_assignment(cost)
        perm = np.empty(self.num_experts, dtype=np.int64)
        perm[rows] = cols
        self.permutation.copy_(torch.from_numpy(perm))
        self.hardened.fill_(True)
        return self.permutation

    def on_optimizer_step(self, experts: nn.Module | None = None) -> None:
        self.step += 1

    def searching(self, step: int) -> bool:
        return self.training and not bool(self.hardened) and step < self.config.search_steps

    def forward(self, x: Tensor, **ctx: Any) -> RouterOutput:
        out = self.inner(x, **ctx)
        step = int(ctx["step"]) if "step" in ctx else int(self.step)
        valid = out.indices >= 0
        if self.searching(step):
            return self._soft(out, valid, step, ctx.get("generator"))
        if not bool(self.hardened) and step >= self.config.search_steps:
            self.harden()
        indices = torch.where(valid, self.permutation[out.indices.clamp_min(0)], out.indices)
        probs = None if out.probs is None else out.probs[:, torch.argsort(self.permutation)]
        return RouterOutput(out.logits, probs, out.weights, indices, out.aux_losses, out.state)

    def _soft(
        self, out: RouterOutput, valid: Tensor, step: int, generator: torch.Generator | None
    ) -> RouterOutput:
        perm = self.soft_permutation(step, generator)
        width = min(self.config.search_width, self.num_experts)
        rows = perm[out.indices.clamp_min(0)]  # [N, k, E]: where each routed slot's mass moves
        cand_w, cand_e = rows.topk(width, dim=-1)
        weights = (out.weights[..., None] * cand_w).masked_fill(~valid[..., None], 0.0).flatten(1)
        indices = cand_e.masked_fill(~valid[..., None], -1).flatten(1)
        probs = None if out.probs is None else out.probs @ perm
        aux = dict(out.aux_losses)
        if self.config.permutation_entropy_weight > 0:
            aux["permutation_entropy"] = self.config.permutation_entropy_weight * entropy(perm).mean()
        return RouterOutput(out.logits, probs, weights, indices, aux, out.state)
