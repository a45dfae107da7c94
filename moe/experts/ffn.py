"""Stacked feed-forward experts with sort-and-segment dispatch.

Weights are 3-D tensors as in HF transformers' Mixtral (``gate_up_proj [E, 2h, d]``, ``down_proj [E, d, h]``),
so checkpoints map one to one. Tokens are dispatched by :mod:`circuitml.moe.dispatch`: pairs sorted by expert,
one (grouped) matmul per expert segment, a gather back — no per-token loop, no dense one-hot.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from circuitml.moe.dispatch import (
    DispatchPlan,
    combine_outputs,
    gather_tokens,
    grouped_mm_supported,
    make_plan,
    segment_matmul,
)
from circuitml.moe.experts.segment_ffn import routed_ffn, segment_ffn
from torch import Tensor, nn

from circuitml.errors import ConfigError

ACTIVATIONS = ("swiglu", "geglu", "gelu", "relu", "silu")


def apply_activation(h: Tensor, activation: str) -> Tensor:
    """Activation of the expert hidden layer; the gated ones (GLU variants, Shazeer 2020) split ``h`` in two."""
    if activation == "swiglu":
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate) * up
    if activation == "geglu":
        gate, up = h.chunk(2, dim=-1)
        return F.gelu(gate) * up
    if activation == "gelu":
        return F.gelu(h)
    if activation == "relu":
        return F.relu(h)
    return F.silu(h)


class FFNExperts(nn.Module):
    r"""``E`` two-layer feed-forward experts applied to routed tokens.

    .. math::
        y_n = \sum_{j<k,\ i_{nj} \ne -1} w_{nj}\, W^{down}_{i_{nj}}\, \sigma(W^{up}_{i_{nj}} x_n)

    with ``sigma`` SwiGLU (``silu(gate) * up``, Shazeer 2020 "GLU Variants Improve Transformer"), GeGLU, GELU,
    ReLU or SiLU.

    Args:
        num_experts: ``E``.
        d_model: input and output width ``d``.
        d_hidden: hidden width ``h`` of each expert.
        activation: one of ``"swiglu"`` (default), ``"geglu"``, ``"gelu"``, ``"relu"``, ``"silu"``.
        bias: add per-expert biases.
        use_grouped_mm: force (``True``/``False``) ``torch._grouped_mm``; ``None`` uses it on CUDA where it
            supports the dtype (bf16 on sm90+), else the fused, cache-tiled per-expert loop
            (:class:`~circuitml.moe.experts.segment_ffn.RoutedFFN`: gather, FFN and weighted combine per row
            tile; on CPU it beats grouped_mm with a separate gather and combine, and takes any dtype and width).

    Shapes: ``x [N, d]``, ``indices [N, k]`` (long, ``-1`` dropped), ``weights [N, k]`` → ``[N, d]``.
    """

    def __init__(
        self,
        num_experts: int,
        d_model: int,
        d_hidden: int,
        activation: str = "swiglu",
        bias: bool = False,
        use_grouped_mm: bool | None = None,
    ) -> None:
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ConfigError(f"FFNExperts: activation: expected one of {ACTIVATIONS}, got {activation!r}")
        self.num_experts = num_experts
        self.d_model = d_model
        self.d_hidden = d_hidden
        self.activation = activation
        self.use_grouped_mm = use_grouped_mm
        up_rows = 2 * d_hidden if activation in ("swiglu", "geglu") else d_hidden
        self.gate_up_proj = nn.Parameter(torch.empty(num_experts, up_rows, d_model))
        self.down_proj = nn.Parameter(torch.empty(num_experts, d_model, d_hidden))
        self.gate_up_bias = nn.Parameter(torch.empty(num_experts, up_rows)) if bias else None
        self.down_bias = nn.Parameter(torch.empty(num_experts, d_model)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Same scale as nn.Linear's default init, expert by expert.
        for w, fan_in in ((self.gate_up_proj, self.d_model), (self.down_proj, self.d_hidden)):
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(w, -bound, bound)
        for b, fan_in in ((self.gate_up_bias, self.d_model), (self.down_bias, self.d_hidden)):
            if b is not None:
                bound = 1.0 / math.sqrt(fan_in)
                nn.init.uniform_(b, -bound, bound)

    def extra_repr(self) -> str:
        return (
            f"num_experts={self.num_experts}, d_model={self.d_model}, d_hidden={self.d_hidden}, "
            f"activation={self.activation!r}, bias={self.gate_up_bias is not None}"
        )

    def expert(self, e: int, x: Tensor) -> Tensor:
        """Expert ``e`` applied to every row of ``x`` (the plain definition, for references and tests)."""
        h = F.linear(x, self.gate_up_proj[e], None if self.gate_up_bias is None else self.gate_up_bias[e])
        h = apply_activation(h, self.activation)
        return F.linear(h, self.down_proj[e], None if self.down_bias is None else self.down_bias[e])

    def experts_sorted(self, xs: Tensor, plan: DispatchPlan) -> Tensor:
        """Expert outputs ``[M + 1, d]`` (zero last row) for rows ``xs[M, d]`` grouped by expert as in ``plan``.

        ``torch._grouped_mm`` where it is supported and enabled, else the fused per-expert loop
        :class:`~circuitml.moe.experts.segment_ffn.SegmentFFN`.
        """
        if not self._use_grouped(xs):
            return segment_ffn(xs, *self._weights(), plan, self.activation)
        h = segment_matmul(xs, self.gate_up_proj.transpose(1, 2), plan, True)
        if self.gate_up_bias is not None:
            h = h + self._row_bias(self.gate_up_bias, plan)
        h = apply_activation(h, self.activation)
        y = segment_matmul(h, self.down_proj.transpose(1, 2), plan, True)
        if self.down_bias is not None:
            y = y + self._row_bias(self.down_bias, plan)
        return torch.cat([y, y.new_zeros(1, y.shape[-1])], dim=0)

    def _weights(self) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        return self.gate_up_proj, self.down_proj, self.gate_up_bias, self.down_bias

    def _use_grouped(self, x: Tensor) -> bool:
        if self.use_grouped_mm is not None:
            return self.use_grouped_mm
        return x.device.type == "cuda" and grouped_mm_supported(x, self.gate_up_proj)

    @staticmethod
    def _row_bias(bias: Tensor, plan: DispatchPlan) -> Tensor:
        expert_of_row = torch.repeat_interleave(
            torch.arange(plan.num_experts, device=bias.device), plan.counts, output_size=plan.num_kept
        )
        return bias.index_select(0, expert_of_row)

    def forward(
        self, x: Tensor, indices: Tensor, weights: Tensor, plan: DispatchPlan | None = None
    ) -> Tensor:
        if plan is None:
            plan = make_plan(indices, self.num_experts)
        if not self._use_grouped(x):
            return routed_ffn(x, weights, *self._weights(), plan, self.activation)
        y = self.experts_sorted(gather_tokens(x, plan), plan)
        return combine_outputs(y, weights, plan, padded=True)
