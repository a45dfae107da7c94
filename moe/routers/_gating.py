"""Pieces several routers of this folder share: the smooth-step, ragged-support packing, log-space Sinkhorn.

Kept in one small private module so that each router file stays about its own routing rule.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from circuitml.moe.router import Router
from torch import Tensor, nn

from circuitml.errors import ConfigError


def smooth_step(t: Tensor, gamma: float) -> Tensor:
    """Cubic smooth-step of Hazimeh et al. 2020 ("The Tree Ensemble Layer", ICML), used by DSelect-k and COMET.

    ``S(t) = 0`` for ``t <= -gamma/2``, ``1`` for ``t >= gamma/2``, else ``-2 t^3 / gamma^3 + 3 t / (2 gamma) + 1/2``.
    Unlike a sigmoid it reaches exact 0 and 1 (with zero gradient there), which is what lets those gates become
    exactly sparse while staying differentiable.
    """
    cubic = -2.0 / gamma**3 * t**3 + 1.5 / gamma * t + 0.5
    half = gamma / 2.0
    return torch.where(t <= -half, torch.zeros_like(t), torch.where(t >= half, torch.ones_like(t), cubic))


def pack_support(values: Tensor, support: Tensor, min_slots: int = 1) -> tuple[Tensor, Tensor]:
    """Pack the ``True`` entries of ``support[N, E]`` into ``(weights[N, m], indices[N, m])``.

    ``m`` is the largest support size in the batch (at least ``min_slots``); shorter rows are padded with index
    ``-1`` and weight 0. Experts keep increasing id order inside a row. Gradients flow into ``values``.
    """
    num_tokens, num_experts = support.shape
    width = int(support.sum(dim=-1).max().item()) if num_tokens else 0
    width = min(max(width, min_slots), num_experts)
    # Stable descending sort of the 0/1 mask brings supported experts first, in id order.
    order = torch.sort(support.to(torch.int8), dim=-1, descending=True, stable=True).indices[:, :width]
    valid = support.gather(-1, order)
    indices = torch.where(valid, order, torch.full_like(order, -1))
    weights = torch.where(valid, values.gather(-1, order), torch.zeros((), dtype=values.dtype))
    return weights, indices


def truncated_support(router: Router, gate: Tensor, k: int | None = None) -> tuple[Tensor, Tensor]:
    """Keep each token's ``k`` largest gate values (or the router's override), renormalized to sum to 1.

    For gates whose support is not a top-k by construction (DSelect-k, COMET): used for a hard cardinality
    bound and for inference-time overrides. Zero gate values never take a slot (index ``-1``, weight 0).
    """
    if k is None:
        values, indices = router.select_topk(gate)
    else:
        values, indices = gate.topk(min(k, gate.shape[-1]), dim=-1)
    valid = values > 0
    values = torch.where(valid, values, torch.zeros((), dtype=values.dtype))
    values = values / values.sum(dim=-1, keepdim=True).clamp_min(1e-20)
    return values, torch.where(valid, indices, torch.full_like(indices, -1))


def group_limited_mask(scores: Tensor, num_groups: int, top_groups: int, per_group: int = 2) -> Tensor:
    """``[N, E]`` bool: the experts of each token's ``top_groups`` best groups of ``E / num_groups`` consecutive
    experts, a group scoring the sum of its ``per_group`` best ``scores`` (DeepSeek-V3's group-limited routing,
    UoE's group-then-expert selection). All ``True`` with one group."""
    if num_groups == 1:
        return torch.ones_like(scores, dtype=torch.bool)
    grouped = scores.view(scores.shape[0], num_groups, -1)
    group_scores = grouped.topk(min(per_group, grouped.shape[-1]), dim=-1).values.sum(-1)
    best = group_scores.topk(top_groups, dim=-1).indices
    keep = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, best, True)
    return keep[:, :, None].expand_as(grouped).reshape(scores.shape)


def log_sinkhorn(
    log_alpha: Tensor, iters: int, row_mass: Tensor | None = None, col_mass: Tensor | None = None
) -> Tensor:
    """Log-space Sinkhorn-Knopp normalisation (Sinkhorn & Knopp 1967; Cuturi 2013).

    Alternately normalises rows and columns of ``exp(log_alpha)`` so that rows sum to ``row_mass`` and columns
    to ``col_mass`` (defaults: 1 each, a doubly-stochastic matrix for square inputs). Returns the log plan.
    """
    rows, cols = log_alpha.shape[-2:]
    log_r = (
        torch.zeros(rows, dtype=log_alpha.dtype, device=log_alpha.device)
        if row_mass is None
        else row_mass.log()
    )
    log_c = (
        torch.zeros(cols, dtype=log_alpha.dtype, device=log_alpha.device)
        if col_mass is None
        else col_mass.log()
    )
    for _ in range(iters):
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=-1, keepdim=True) + log_r[:, None]
        log_alpha = log_alpha - torch.logsumexp(log_alpha, dim=-2, keepdim=True) + log_c[None, :]
    return log_alpha


def entropy(probs: Tensor, dim: int = -1) -> Tensor:
    """Shannon entropy (nats) along ``dim``; ``0 log 0 = 0`` so exact zeros cost nothing and give no NaN."""
    return -(probs * torch.log(probs.clamp_min(1e-30))).sum(dim=dim)


def token_ids_or_positions(x: Tensor, token_ids: Tensor | None) -> Tensor:
    """The ids a fixed router hashes: ``token_ids[N]`` when given, else the row positions ``0..N-1``."""
    if token_ids is None:
        return torch.arange(x.shape[0], device=x.device)
    token_ids = torch.as_tensor(token_ids, device=x.device).reshape(-1).long()
    if token_ids.shape[0] != x.shape[0]:
        raise ConfigError(
            f"router ctx: token_ids: expected {x.shape[0]} ids (one per row of x), got {token_ids.shape[0]}"
        )
    return token_ids


class AnnealedRouter(Router):
    """A linear gate whose temperature anneals geometrically from ``tau_start`` to ``tau_end`` over
    ``anneal_steps`` (the dense-to-sparse gates: EvoMoE and the activation dense-to-sparse gate).

    The step comes from ``ctx["step"]`` when given, else from a buffer that counts optimizer steps: the trainer
    advances it (:func:`circuitml.moe.schedule.step_routers`), a forward never does — so micro-batches and
    activation recomputation see the same schedule — and it is saved with the model and resumes with it. The
    config must define ``tau_start``, ``tau_end``, ``anneal_steps`` and ``bias``.
    """

    def __init__(self, config) -> None:
        super().__init__(config)
        self.gate = nn.Linear(config.d_model, config.num_experts, bias=config.bias)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.normal_(self.gate.weight, std=self.d_model**-0.5)
        if self.gate.bias is not None:
            nn.init.zeros_(self.gate.bias)

    def set_step(self, step: int) -> None:
        """Move the schedule to ``step`` (e.g. when resuming training)."""
        self.step.fill_(int(step))

    def temperature(self, step: int) -> float:
        cfg = self.config
        frac = min(1.0, step / max(cfg.anneal_steps, 1))
        return math.exp((1 - frac) * math.log(cfg.tau_start) + frac * math.log(cfg.tau_end))

    def current_step(self, ctx: dict[str, Any]) -> int:
        return int(ctx["step"]) if "step" in ctx else int(self.step)

    def on_optimizer_step(self, experts: nn.Module | None = None) -> None:
        self.step += 1
