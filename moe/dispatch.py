"""Sort-and-segment dispatch: (token, slot) pairs sorted by expert, gathered rows, one matmul per segment.

Given router ``indices[N, k]`` (``-1`` = dropped slot) the plan flattens the ``N*k`` pairs, drops the ``-1``
ones, and stably sorts the rest by expert, so expert ``e`` owns the contiguous rows
``offsets[e-1]:offsets[e]`` of the gathered input. There is no dense ``[tokens, experts, capacity]`` one-hot
anywhere (the GShard/Tutel einsum formulation); the cost beyond the expert matmuls is one sort, one gather and
one combine, all ``O(N k d)``.

The combine step un-permutes expert outputs back to ``[N, k, d]`` with an index-select (dropped slots read a
zero row) and contracts the ``k`` slots with the weights in one batched matmul, instead of a weighted
``index_add`` — a gather is cheaper than a scatter and its backward is a scatter of the same size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class DispatchPlan:
    """Where every kept (token, slot) pair goes.

    Attributes:
        num_tokens: ``N``.
        top_k: slots per token ``k``.
        num_experts: ``E``.
        token_index: ``[M]`` token of each kept pair, in expert-sorted order (``M`` kept pairs).
        slot_position: ``[N*k]`` row of each pair in the sorted order, ``M`` for dropped pairs (a zero row).
        counts: ``[E]`` kept pairs per expert (long, on the input's device).
        offsets: ``[E]`` int32 cumulative ends of the segments (the ``offs`` of ``torch._grouped_mm``).
    """

    num_tokens: int
    top_k: int
    num_experts: int
    token_index: Tensor
    slot_position: Tensor
    counts: Tensor
    offsets: Tensor

    @property
    def num_kept(self) -> int:
        return self.token_index.numel()

    def counts_list(self) -> list[int]:
        """Segment sizes as Python ints (one device sync), for the per-expert loop path."""
        return self.counts.tolist()


def make_plan(indices: Tensor, num_experts: int) -> DispatchPlan:
    """Build the :class:`DispatchPlan` for ``indices[N, k]`` (long, ``-1`` = dropped)."""
    num_tokens, top_k = indices.shape
    flat = indices.reshape(-1)
    # Dropped pairs get key E so the stable sort puts them after every expert segment; they are cut off.
    key = torch.where(flat >= 0, flat, num_experts)
    order = torch.argsort(key, stable=True)
    counts_all = torch.bincount(key, minlength=num_experts + 1)
    counts = counts_all[:num_experts]
    num_kept = flat.numel() - int(counts_all[num_experts])
    order = order[:num_kept]
    token_index = torch.div(order, top_k, rounding_mode="floor")
    slot_position = torch.full_like(flat, num_kept)
    slot_position[order] = torch.arange(num_kept, device=flat.device)
    offsets = torch.cumsum(counts, 0).to(torch.int32)
    return DispatchPlan(num_tokens, top_k, num_experts, token_index, slot_position, counts, offsets)


def gather_tokens(x: Tensor, plan: DispatchPlan) -> Tensor:
    """Rows of ``x[N, d]`` for every kept pair, grouped by expert: ``[M, d]``."""
    return x.index_select(0, plan.token_index)


def combine_outputs(y: Tensor, weights: Tensor, plan: DispatchPlan) -> Tensor:
    """``out[n] = sum_j weights[n, j] * y[pos(n, j)]`` for expert outputs ``y[M, d]`` in sorted order.

    Dropped slots read an appended zero row, so their weight does not matter.
    """
    d = y.shape[-1]
    y_pad = torch.cat([y, y.new_zeros(1, d)], dim=0)
    per_slot = y_pad.index_select(0, plan.slot_position).view(plan.num_tokens, plan.top_k, d)
    if plan.top_k == 1:
        return per_slot[:, 0] * weights.to(y.dtype)
    return torch.bmm(weights.to(y.dtype).unsqueeze(1), per_slot).squeeze(1)


def grouped_mm_supported(x: Tensor, weight: Tensor) -> bool:
    """Whether ``torch._grouped_mm`` can run ``x @ weight[e]`` segments for these dtypes/devices."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16) or weight.dtype != x.dtype:
        return False
    if x.device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(x.device)
        # The CUDA kernel needs sm90+ (and bf16 on several releases); fall back otherwise.
        return major >= 9 and x.dtype == torch.bfloat16
    return x.device.type == "cpu" and x.dtype == torch.float32


class _ContiguousGrad(torch.autograd.Function):
    """Identity whose backward makes the incoming gradient contiguous (grouped_mm's CPU backward rejects
    stride-0 gradients such as the one of ``y.sum()``)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # type: ignore[override]
        return x

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        return grad.contiguous()


def segment_matmul(
    x: Tensor, weight_t: Tensor, plan: DispatchPlan, use_grouped: bool | None = None
) -> Tensor:
    """``y[rows of e] = x[rows of e] @ weight_t[e]`` for every expert segment; ``weight_t`` is ``[E, in, out]``.

    Uses ``torch._grouped_mm`` when it supports the dtype/device, else one ``mm`` per non-empty segment
    (a loop over experts, never over tokens).
    """
    if use_grouped is None:
        use_grouped = grouped_mm_supported(x, weight_t)
    if x.shape[0] == 0:
        return x.new_zeros(0, weight_t.shape[-1])
    if use_grouped:
        return _ContiguousGrad.apply(torch._grouped_mm(x, weight_t, offs=plan.offsets))
    outs = []
    start = 0
    for e, count in enumerate(plan.counts_list()):
        if count:
            outs.append(x[start : start + count] @ weight_t[e])
            start += count
    return torch.cat(outs, dim=0)
