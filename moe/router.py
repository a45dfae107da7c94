"""The router contract: tokens ``[N, d]`` in, ``RouterOutput(logits, probs, weights, indices, aux_losses)`` out.

Every router of ``circuitml.moe.routers`` subclasses :class:`Router` and registers itself by name with
:func:`circuitml.moe.registry.register_router`. The base class holds the pieces routers share, so each router
file only says how it scores and picks experts:

* :meth:`Router.select_topk` — top-k selection that honours inference-time overrides (``set_top_k``, SCMoE's
  weak routing), see :mod:`circuitml.moe.inference`; :attr:`Router.overrides` says which of them a router
  honours, :meth:`Router.check_override` raises for the others and :meth:`Router.reconfigure_top_k` changes
  ``k`` for good through the config (so the saved model reloads) or raises when ``k`` shapes the parameters;
* :meth:`Router.apply_capacity` — expert capacity with token dropping in token order or by priority;
* :meth:`Router.standard_losses` — z-loss and the configured balancing loss, already weighted;
* :meth:`Router.jitter_input` / :meth:`Router.noisy_logits` — Switch jitter and (noisy) top-k noise.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from circuitml.moe import losses as L
from circuitml.moe.config import RouterConfig
from torch import Tensor, nn

from circuitml.errors import ConfigError

OVERRIDE_MODES = ("topk", "rank")


@dataclass
class RouterOutput:
    """What a router returns for ``N`` tokens and ``E`` experts.

    Attributes:
        logits: ``[N, E]`` raw scores, or ``None`` for routers without them (hash routing).
        probs: ``[N, E]`` router probabilities (rows sum to 1), or ``None``.
        weights: ``[N, k]`` combine weights of the chosen experts (0 in dropped slots).
        indices: ``[N, k]`` long expert ids; ``-1`` marks a dropped or unused slot.
        aux_losses: named auxiliary losses, **already multiplied by their weights**; the MoE block sums them.
        state: router state to carry to the next layer (recurrent / pre-gating routers), else ``None``.
    """

    logits: Tensor | None
    probs: Tensor | None
    weights: Tensor
    indices: Tensor
    aux_losses: dict[str, Tensor] = field(default_factory=dict)
    state: Any = None

    @property
    def top_k(self) -> int:
        return self.indices.shape[-1]


class Router(nn.Module):
    """Base class of every router.

    Subclasses set ``config_class`` (a :class:`RouterConfig` subclass when they need more options), build
    their parameters in ``__init__(config)`` and implement ``forward(x, **ctx) -> RouterOutput``.

    ``ctx`` may carry ``token_ids`` (hash routing), ``layer_state`` (recurrent routers), ``step`` (annealing),
    ``generator`` (a ``torch.Generator`` for noise). Routers that need ctx keys to run declare them in
    ``required_ctx`` and override :meth:`example_ctx`, which the registry-wide tests call.

    Attributes:
        name: registry name (set by ``register_router``).
        overrides: the inference-time routing overrides the router honours (``"topk"``: route with ``k'``
            experts, ``"rank"``: only the ``r``-th ranked expert); :meth:`check_override` raises for the others.
        routes_one_expert: ``True`` for routers that always route to exactly one expert (BASE, StableMoE):
            only ``top_k=1`` is accepted, as a no-op.
        top_k_shapes_parameters: ``True`` when ``top_k`` sizes the parameters (DSelect-k's selectors, COMET's
            trees, a balanced hash table): ``k`` can then not be changed for good (:meth:`reconfigure_top_k`).
    """

    name: ClassVar[str] = "?"
    config_class: ClassVar[type[RouterConfig]] = RouterConfig
    required_ctx: ClassVar[tuple[str, ...]] = ()
    overrides: ClassVar[frozenset[str]] = frozenset(OVERRIDE_MODES)
    top_k_shapes_parameters: ClassVar[bool] = False
    routes_one_expert: ClassVar[bool] = False  # always exactly one expert per token: top_k=1 is a no-op

    def __init__(self, config: RouterConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} expects a {self.config_class.__name__}")
        self.config = config
        self.d_model = config.d_model
        self.num_experts = config.num_experts
        self.top_k = config.top_k
        # Inference-time routing override: None, ("topk", k) or ("rank", r); see circuitml.moe.inference.
        self.routing_override: tuple[str, int] | None = None

    # -- contract ---------------------------------------------------------------------------------------
    def forward(self, x: Tensor, **ctx: Any) -> RouterOutput:  # pragma: no cover - abstract
        raise NotImplementedError

    def example_ctx(self, num_tokens: int, generator: torch.Generator | None = None) -> dict[str, Any]:
        """A valid ``ctx`` for ``num_tokens`` tokens, used by the registry-wide tests (default: none needed)."""
        return {}

    def extra_repr(self) -> str:
        return (
            f"name={self.name!r}, d_model={self.d_model}, num_experts={self.num_experts}, top_k={self.top_k}"
        )

    @classmethod
    def build_stack(cls, num_layers: int, values: dict[str, Any]) -> list[Router]:
        """Routers for ``num_layers`` consecutive MoE layers from config ``values`` (independent by default;
        routers that share parameters across layers, such as Read-ME's planner, override this)."""
        return [cls(cls.config_class.from_dict(dict(values))) for _ in range(num_layers)]

    def on_optimizer_step(self, experts: nn.Module | None = None) -> None:
        """Advance per-step schedules (anneals, search steps) and statistics (load-balancing biases) once per
        optimizer step; trainers call it through :func:`circuitml.moe.schedule.step_routers`, which passes the
        ``experts`` of the router's layer (EvoMoE spawns them). Forwards never advance anything, so gradient
        accumulation and activation recomputation leave schedules alone."""

    # -- overrides --------------------------------------------------------------------------------------
    def check_override(self, mode: str, value: int) -> None:
        """Raise :class:`ConfigError` unless this router can route under override ``(mode, value)``."""
        if mode not in OVERRIDE_MODES:
            raise ConfigError(f"routing override: mode: expected one of {OVERRIDE_MODES}, got {mode!r}")
        if not 1 <= value <= self.num_experts:
            raise ConfigError(
                f"routing override: {mode}={value} is outside 1..{self.num_experts} for router {self.name!r}"
            )
        if self.routes_one_expert and mode == "topk" and value == 1:
            return
        if mode not in self.overrides:
            raise ConfigError(
                f"routing override: router {self.name!r} cannot honour {mode}={value} "
                f"(it honours {sorted(self.overrides) or 'no override'})"
            )

    def top_k_fields(self, k: int) -> dict[str, Any]:
        """Config fields that make this router route with ``k`` experts for good (default: ``top_k``)."""
        return {"top_k": k}

    def top_k_config(self, k: int) -> RouterConfig:
        """The validated config of this router routing with ``k`` experts for good (nothing is changed).

        Raises :class:`ConfigError` when the router cannot honour ``k`` (see :attr:`overrides`), when ``k``
        sizes its parameters (a model saved with the new config would not reload), or when the new config is
        invalid for the router (e.g. Switch, which is top-1 by definition).
        """
        self.check_override("topk", k)
        if self.top_k_shapes_parameters and k != self.top_k:
            raise ConfigError(
                f"set_top_k: router {self.name!r}: top_k={self.top_k} sizes its parameters, so a model saved "
                f"with top_k={k} would not reload; evaluate with `with top_k(model, {k})` instead"
            )
        values = {**self.config.to_dict(), **self.top_k_fields(k)}
        return self.config_class.from_dict(values, where=f"set_top_k: router {self.name!r} config")

    def reconfigure_top_k(self, k: int, config: RouterConfig | None = None) -> None:
        """Route with ``k`` experts from now on (``config``: the result of :meth:`top_k_config`)."""
        self.config = self.top_k_config(k) if config is None else config
        self.top_k = k
        self.routing_override = None

    # -- shared helpers ---------------------------------------------------------------------------------
    @property
    def active_top_k(self) -> int:
        """Slots per token under the current override (``rank`` routing uses one slot)."""
        if self.routing_override is None:
            return self.top_k
        mode, value = self.routing_override
        return value if mode == "topk" else 1

    def select_topk(self, scores: Tensor, k: int | None = None) -> tuple[Tensor, Tensor]:
        """Top-``k`` values and indices of ``scores[N, E]`` along experts, honouring ``routing_override``.

        With override ``("rank", r)`` only the ``r``-th ranked expert is returned (the weak routing of SCMoE,
        Shi et al. 2024); with ``("topk", k')`` the top ``k'``.
        """
        if self.routing_override is not None:
            mode, value = self.routing_override
            value = min(value, scores.shape[-1])
            if mode == "rank":
                vals, idx = scores.topk(value, dim=-1)
                return vals[:, value - 1 : value], idx[:, value - 1 : value]
            k = value
        k = self.top_k if k is None else k
        return scores.topk(k, dim=-1)

    def jitter_input(self, x: Tensor) -> Tensor:
        """Multiplicative jitter ``x * U(1-eps, 1+eps)`` in training (Switch Transformer, Fedus et al. 2021)."""
        eps = self.config.jitter
        if not self.training or eps <= 0:
            return x
        return x * torch.empty_like(x).uniform_(1.0 - eps, 1.0 + eps)

    def gaussian_noise(self, like: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Standard normal noise shaped like ``like`` (optionally from ``generator`` for reproducibility)."""
        if generator is None:
            return torch.randn_like(like)
        return torch.randn(like.shape, generator=generator, device=like.device, dtype=like.dtype)

    def capacity(self, num_tokens: int, k: int | None = None) -> int | None:
        """Expert capacity ``max(min_capacity, ceil(cf * N * k / E))``, or ``None`` when dropless."""
        cf = self.config.capacity_factor
        if cf is None:
            return None
        k = self.active_top_k if k is None else k
        return max(self.config.min_capacity, math.ceil(cf * num_tokens * k / self.num_experts))

    def apply_capacity(
        self, indices: Tensor, weights: Tensor, priority: Tensor | None = None, capacity: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Drop (token, slot) pairs beyond each expert's capacity; dropped slots get index -1 and weight 0.

        Pairs are admitted slot-major (every token's first choice before any second choice, as in GShard),
        within a slot in token order (``drop_policy="position"``) or by decreasing ``priority[N]``
        (``"priority"``; default priority is the token's largest weight, batch-prioritized routing of V-MoE,
        Riquelme et al. 2021). Vectorized: one stable sort by expert gives each pair its rank in its expert.
        """
        num_tokens, k = indices.shape
        cap = self.capacity(num_tokens, k) if capacity is None else capacity
        if cap is None or indices.numel() == 0:
            return indices, weights
        token_order = None
        if self.config.drop_policy == "priority":
            if priority is None:
                priority = weights.detach().max(dim=-1).values
            token_order = torch.argsort(priority, descending=True, stable=True)
        keep = capacity_mask(indices, self.num_experts, cap, token_order)
        return torch.where(keep, indices, -1), torch.where(keep, weights, torch.zeros_like(weights))

    def standard_losses(
        self,
        logits: Tensor | None,
        probs: Tensor | None,
        indices: Tensor,
        weights: Tensor | None = None,
        load: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Z-loss and the configured balancing loss, multiplied by their weights (training or not).

        ``indices`` are the router's choices *before* capacity dropping. For ``cv2`` the importance is the sum
        of ``weights`` per expert and ``load`` defaults to the hard token count.
        """
        cfg = self.config
        out: dict[str, Tensor] = {}
        if cfg.z_loss_weight > 0 and logits is not None:
            out["z_loss"] = cfg.z_loss_weight * L.router_z_loss(logits)
        if cfg.balance_loss == "switch" and probs is not None:
            out["balance_loss"] = cfg.balance_loss_weight * L.switch_balance_loss(
                probs, indices, self.num_experts
            )
        elif cfg.balance_loss == "cv2" and weights is not None:
            imp = L.importance(weights, indices, self.num_experts)
            if load is None:
                load = L.tokens_per_expert(indices, self.num_experts).to(weights.dtype)
            out["balance_loss"] = cfg.balance_loss_weight * L.cv2_balance_loss(imp, load)
        return out


def capacity_mask(
    indices: Tensor, num_experts: int, capacity: int, token_order: Tensor | None = None
) -> Tensor:
    """Boolean ``[N, k]`` mask of the (token, slot) pairs an expert of size ``capacity`` admits.

    Admission order is slot-major, then ``token_order`` (a permutation of tokens; default ``0..N-1``).
    ``-1`` slots are never admitted.
    """
    num_tokens, k = indices.shape
    ordered = indices if token_order is None else indices[token_order]
    flat = ordered.t().reshape(-1)  # slot-major admission order
    key = torch.where(flat >= 0, flat, num_experts)  # unused slots go to a bucket past the last expert
    sorted_key, order = torch.sort(key, stable=True)
    counts = torch.bincount(key, minlength=num_experts + 1)
    starts = torch.cumsum(counts, 0) - counts
    rank_sorted = torch.arange(flat.numel(), device=flat.device) - starts[sorted_key]
    rank = torch.empty_like(rank_sorted)
    rank[order] = rank_sorted
    keep = ((rank < capacity) & (flat >= 0)).reshape(k, num_tokens).t()
    if token_order is not None:
        unpermuted = torch.empty_like(keep)
        unpermuted[token_order] = keep
        keep = unpermuted
    return keep


def softmax_probs(logits: Tensor) -> Tensor:
    """Router probabilities, computed in float32 at least for stability and returned in the logits' dtype."""
    return F.softmax(
        logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits, dim=-1
    ).to(logits.dtype)
