"""Dataclass configuration of routers (one base class; router-specific configs subclass it).

In the spirit of MegaBlocks' single ``Arguments`` dataclass: every knob a router reads lives here with its
default, so a router is fully described by ``(name, config)`` and can be rebuilt from JSON.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

from circuitml.errors import ConfigError

C = TypeVar("C", bound="RouterConfig")

BALANCE_LOSSES = ("switch", "cv2", None)
NOISE_KINDS = ("none", "gaussian", "learned")
DROP_POLICIES = ("position", "priority")


@dataclass
class RouterConfig:
    """Options shared by every router.

    Args:
        d_model: width of the token rows routed.
        num_experts: number of experts ``E``.
        top_k: experts chosen per token ``k``.
        capacity_factor: expert capacity ``ceil(cf * N * k / E)``; ``None`` is dropless (no token dropped).
        min_capacity: lower bound on the capacity when a capacity factor is set.
        drop_policy: which tokens an over-full expert keeps: ``"position"`` (first in token order, slot-major
            as in GShard) or ``"priority"`` (highest router weight first, batch-prioritized routing of V-MoE,
            Riquelme et al. 2021).
        z_loss_weight: weight of the router z-loss (ST-MoE, Zoph et al. 2022); 0 disables it.
        balance_loss: ``"switch"`` (Fedus et al. 2021 / GShard), ``"cv2"`` (Shazeer et al. 2017) or ``None``.
        balance_loss_weight: weight of the balancing loss.
        noise: ``"none"``, ``"gaussian"`` (fixed std ``noise_std``) or ``"learned"`` (Shazeer's noisy top-k,
            std ``softplus(x W_noise)``) added to the logits during training.
        noise_std: standard deviation for ``noise="gaussian"``.
        normalize_weights: renormalize the k kept probabilities to sum to 1 (Mixtral); Switch keeps the raw
            probability of its single expert.
        jitter: multiplicative input jitter ``x * U(1-eps, 1+eps)`` during training (Switch Transformer).
        bias: whether the router's linear layer has a bias.
    """

    d_model: int = 64
    num_experts: int = 8
    top_k: int = 2
    capacity_factor: float | None = None
    min_capacity: int = 1
    drop_policy: str = "position"
    z_loss_weight: float = 0.0
    balance_loss: str | None = "switch"
    balance_loss_weight: float = 0.01
    noise: str = "none"
    noise_std: float = 1.0
    normalize_weights: bool = True
    jitter: float = 0.0
    bias: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the key when a value is out of range."""
        if self.d_model <= 0:
            raise ConfigError(f"router config: d_model: expected a positive int, got {self.d_model}")
        if self.num_experts <= 0:
            raise ConfigError(f"router config: num_experts: expected a positive int, got {self.num_experts}")
        if not 1 <= self.top_k <= self.num_experts:
            raise ConfigError(
                f"router config: top_k: expected 1..num_experts={self.num_experts}, got {self.top_k}"
            )
        if self.capacity_factor is not None and self.capacity_factor <= 0:
            raise ConfigError(
                f"router config: capacity_factor: expected > 0 or None, got {self.capacity_factor}"
            )
        if self.balance_loss not in BALANCE_LOSSES:
            raise ConfigError(
                f"router config: balance_loss: expected one of {BALANCE_LOSSES}, got {self.balance_loss!r}"
            )
        if self.noise not in NOISE_KINDS:
            raise ConfigError(f"router config: noise: expected one of {NOISE_KINDS}, got {self.noise!r}")
        if self.drop_policy not in DROP_POLICIES:
            raise ConfigError(
                f"router config: drop_policy: expected one of {DROP_POLICIES}, got {self.drop_policy!r}"
            )
        if not 0 <= self.jitter < 1:
            raise ConfigError(f"router config: jitter: expected 0 <= jitter < 1, got {self.jitter}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls: type[C], values: dict[str, Any], *, where: str = "router config") -> C:
        """Build from a dict, raising :class:`ConfigError` on an unknown key (named with ``where``)."""
        names = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in names:
                raise ConfigError(
                    f"{where}: unknown key {key!r} for {cls.__name__} (expected one of {sorted(names)})"
                )
        try:
            return cls(**values)
        except TypeError as exc:  # wrong types that the dataclass itself rejects
            raise ConfigError(f"{where}: {exc}") from exc


@dataclass
class MoEConfig:
    """Everything :func:`circuitml.moe.build_moe` needs to build a :class:`~circuitml.moe.block.MoEBlock`.

    Args:
        d_model: token width.
        num_experts: ``E``.
        d_hidden: hidden width of each FFN expert.
        top_k: experts per token.
        router: registered router name.
        router_options: further :class:`RouterConfig` (or subclass) fields for the router.
        activation: expert activation (``"swiglu"``, ``"geglu"``, ``"gelu"``, ``"relu"``, ``"silu"``).
        expert_bias: per-expert biases.
        shared_hidden: hidden width of a shared PR-MoE expert, or ``None`` for none.
        shared_gated: gate the shared expert by ``sigmoid(x w)``.
    """

    d_model: int = 64
    num_experts: int = 8
    d_hidden: int = 128
    top_k: int = 2
    router: str = "topk"
    router_options: dict[str, Any] = field(default_factory=dict)
    activation: str = "swiglu"
    expert_bias: bool = False
    shared_hidden: int | None = None
    shared_gated: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], *, where: str = "moe config") -> MoEConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        for key in values:
            if key not in names:
                raise ConfigError(f"{where}: unknown key {key!r} (expected one of {sorted(names)})")
        return cls(**values)
