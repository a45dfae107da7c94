"""Adapter modules and adapter experts around a frozen module.

* :class:`BottleneckAdapter` — Houlsby et al. 2019 ("Parameter-Efficient Transfer Learning for NLP"):
  ``h + W_up act(W_down h)``, ``W_up`` zero-initialized so the adapter starts as the identity.
* :class:`LoRALinear` — Hu et al. 2021 ("LoRA"): a frozen ``nn.Linear`` plus ``(alpha / r) B A x``, ``B`` zero
  at start (eq. 3: ``h = W0 x + B A x``).
* :class:`AdapterExperts` — ``E`` adapters used as the expert set of an MoE block around one frozen module
  (mixture of adapters / MoLoRA, Zadouri et al. 2023): the frozen module runs once on every token; each
  routed pair adds its expert's low-rank correction, computed by the same sort-and-segment dispatch as the
  FFN experts.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from circuitml.moe.dispatch import (
    DispatchPlan,
    combine_outputs,
    gather_tokens,
    make_plan,
    segment_matmul,
)
from torch import Tensor, nn

from circuitml.errors import ConfigError


def _act(name: str) -> nn.Module:
    acts = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU, "tanh": nn.Tanh}
    if name not in acts:
        raise ConfigError(f"adapter: activation: expected one of {sorted(acts)}, got {name!r}")
    return acts[name]()


class BottleneckAdapter(nn.Module):
    """Bottleneck adapter ``h + W_up act(W_down h)`` (Houlsby et al. 2019).

    Args:
        d_model: width of ``h``.
        bottleneck: inner width ``r``.
        activation: ``"relu"``, ``"gelu"``, ``"silu"`` or ``"tanh"``.
        residual: add ``h`` back (the standard adapter); ``False`` returns only the correction.
    """

    def __init__(
        self, d_model: int, bottleneck: int, activation: str = "relu", residual: bool = True
    ) -> None:
        super().__init__()
        self.down = nn.Linear(d_model, bottleneck)
        self.up = nn.Linear(bottleneck, d_model)
        self.act = _act(activation)
        self.residual = residual
        self.reset_parameters()

    def reset_parameters(self) -> None:
        self.down.reset_parameters()
        nn.init.zeros_(
            self.up.weight
        )  # start as the identity so inserting it does not disturb the frozen model
        nn.init.zeros_(self.up.bias)

    def forward(self, h: Tensor) -> Tensor:
        delta = self.up(self.act(self.down(h)))
        return h + delta if self.residual else delta


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` with a trainable low-rank update ``(alpha / r) B A`` (Hu et al. 2021, eq. 3).

    Args:
        base: the linear layer to wrap (its parameters are frozen).
        rank: ``r``.
        alpha: scaling numerator (the update is scaled by ``alpha / r``).
        dropout: dropout on the input of the low-rank path.
    """

    def __init__(self, base: nn.Linear, rank: int = 8, alpha: float = 16.0, dropout: float = 0.0) -> None:
        super().__init__()
        if rank <= 0:
            raise ConfigError(f"LoRALinear: rank: expected a positive int, got {rank}")
        self.base = base
        for p in self.base.parameters():
            p.requires_grad_(False)
        self.rank = rank
        self.scaling = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features, dtype=base.weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=base.weight.dtype))
        self.dropout = nn.Dropout(dropout)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        nn.init.zeros_(self.lora_B)

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + self.scaling * F.linear(F.linear(self.dropout(x), self.lora_A), self.lora_B)

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the update folded in (for inference)."""
        out = nn.Linear(self.base.in_features, self.base.out_features, bias=self.base.bias is not None)
        out = out.to(self.base.weight.dtype)
        out.weight.copy_(self.base.weight + self.scaling * self.lora_B @ self.lora_A)
        if self.base.bias is not None:
            out.bias.copy_(self.base.bias)
        return out


class AdapterExperts(nn.Module):
    r"""``E`` adapter experts around one frozen module ``f`` (``d_in -> d_out``).

    ``kind="lora"``: expert ``e`` is ``f(x) + s B_e A_e x`` — LoRA when ``f`` is linear, a parallel
    low-rank adapter around ``f`` otherwise. ``kind="bottleneck"``: expert ``e`` is
    ``h + U_e act(D_e h)`` with ``h = f(x)`` (Houlsby adapter on the frozen output; needs ``d_in`` and
    ``d_out`` equal only through ``f``). ``kind="glu"``: expert ``e`` is ``h + U_e (silu(G_e h) * D_e h)``,
    PILL's improved adapter (a SwiGLU bottleneck without biases; Zhang et al., "PILL: Plug Into LLM with Adapter
    Expert and Attention Gate", arXiv:2311.02126, 2023). ``kind="parallel"``: expert ``e`` is ``f(x) + U_e act(D_e x)``, a
    bottleneck adapter beside ``f`` reading its input (He et al., "Towards a Unified View of
    Parameter-Efficient Transfer Learning", ICLR 2022; the domain adapters of MixDA). Since ``f`` is shared,
    the block computes

    .. math:: y_n = (\textstyle\sum_j w_{nj})\, f(x_n) + \sum_j w_{nj}\, \Delta_{i_{nj}}(x_n)

    so the frozen module runs once per token, not once per routed pair.

    Args:
        base: the frozen module (parameters get ``requires_grad=False``); ``None`` means identity
            (``d_in == d_out``).
        num_experts: ``E``.
        d_in, d_out: widths of ``f``.
        kind: ``"lora"``, ``"bottleneck"``, ``"glu"`` or ``"parallel"``.
        rank: LoRA rank / bottleneck width.
        alpha: LoRA scaling numerator (scale ``alpha / rank``).
        activation: bottleneck activation.
    """

    def __init__(
        self,
        base: nn.Module | None,
        num_experts: int,
        d_in: int,
        d_out: int | None = None,
        kind: str = "lora",
        rank: int = 8,
        alpha: float = 16.0,
        activation: str = "relu",
    ) -> None:
        super().__init__()
        if kind not in ("lora", "bottleneck", "glu", "parallel"):
            raise ConfigError(
                f"AdapterExperts: kind: expected 'lora', 'bottleneck', 'glu' or 'parallel', got {kind!r}"
            )
        d_out = d_in if d_out is None else d_out
        if base is None and d_in != d_out:
            raise ConfigError(f"AdapterExperts: base=None needs d_in == d_out, got {d_in} and {d_out}")
        self.base = base
        if base is not None:
            for p in base.parameters():
                p.requires_grad_(False)
        self.num_experts, self.d_in, self.d_out = num_experts, d_in, d_out
        self.kind, self.rank = kind, rank
        self.scaling = alpha / rank if kind == "lora" else 1.0
        self.reads_input = kind in ("lora", "parallel")  # the correction reads x, not f(x)
        first_in = d_in if self.reads_input else d_out
        self.down = nn.Parameter(torch.empty(num_experts, rank, first_in))  # A_e / D_e as [E, out, in]
        self.up = nn.Parameter(torch.zeros(num_experts, d_out, rank))  # B_e / U_e, zero: start at f
        # glu: the gate projection G_e; like PILL's GLUAdapter it has no biases and no other activation
        self.gate = nn.Parameter(torch.empty(num_experts, rank, first_in)) if kind == "glu" else None
        self.down_bias = (
            nn.Parameter(torch.zeros(num_experts, rank)) if kind in ("bottleneck", "parallel") else None
        )
        self.act = _act(activation) if kind in ("bottleneck", "parallel") else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / math.sqrt(self.down.shape[-1])
        nn.init.uniform_(self.down, -bound, bound)
        if self.gate is not None:
            nn.init.uniform_(self.gate, -bound, bound)
        nn.init.zeros_(self.up)
        if self.down_bias is not None:
            nn.init.zeros_(self.down_bias)

    def frozen(self, x: Tensor) -> Tensor:
        return x if self.base is None else self.base(x)

    def delta(self, e: int, x: Tensor, h: Tensor | None = None) -> Tensor:
        """Correction of expert ``e`` for rows ``x`` (``h = f(x)`` may be passed when already computed)."""
        src = x if self.reads_input else (self.frozen(x) if h is None else h)
        z = F.linear(src, self.down[e], None if self.down_bias is None else self.down_bias[e])
        if self.act is not None:
            z = self.act(z)
        if self.gate is not None:
            z = F.silu(F.linear(src, self.gate[e])) * z
        return self.scaling * F.linear(z, self.up[e])

    def expert(self, e: int, x: Tensor) -> Tensor:
        """Expert ``e`` on every row of ``x`` (plain definition, for references and tests)."""
        h = self.frozen(x)
        return h + self.delta(e, x, h)

    def forward(
        self, x: Tensor, indices: Tensor, weights: Tensor, plan: DispatchPlan | None = None
    ) -> Tensor:
        h = self.frozen(x)
        kept_weight = torch.where(indices >= 0, weights, torch.zeros_like(weights)).sum(dim=-1, keepdim=True)
        return kept_weight.to(h.dtype) * h + self.mixed_delta(x, indices, weights, plan, h)

    def mixed_delta(
        self,
        x: Tensor,
        indices: Tensor,
        weights: Tensor,
        plan: DispatchPlan | None = None,
        h: Tensor | None = None,
    ) -> Tensor:
        """``sum_j w_nj Delta_{i_nj}(x_n)`` alone, without the frozen path (``h = f(x)`` when already known)."""
        if plan is None:
            plan = make_plan(indices, self.num_experts)
        if self.reads_input:
            src = gather_tokens(x, plan)
        else:
            src = gather_tokens(self.frozen(x) if h is None else h, plan)
        z = segment_matmul(src, self.down.transpose(1, 2), plan)
        if self.down_bias is not None:
            expert_of_row = torch.repeat_interleave(
                torch.arange(self.num_experts, device=x.device), plan.counts, output_size=plan.num_kept
            )
            z = z + self.down_bias.index_select(0, expert_of_row)
        if self.act is not None:
            z = self.act(z)
        if self.gate is not None:
            z = F.silu(segment_matmul(src, self.gate.transpose(1, 2), plan)) * z
        delta = self.scaling * segment_matmul(z, self.up.transpose(1, 2), plan)
        return combine_outputs(delta, weights, plan)
