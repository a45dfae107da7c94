"""Sort-and-segment dispatch: (token, slot) pairs sorted by expert, gathered rows, one matmul per segment.

Given router ``indices[N, k]`` (``-1`` = dropped slot) the plan flattens the ``N*k`` pairs, drops the ``-1``
ones, and stably sorts the rest by expert, so expert ``e`` owns the contiguous rows
``offsets[e-1]:offsets[e]`` of the gathered input. There is no dense ``[tokens, experts, capacity]`` one-hot
anywhere (the GShard/Tutel einsum formulation); the cost beyond the expert matmuls is one sort, one gather and
one combine, all ``O(N k d)``.

The combine step un-permutes expert outputs back to ``[N, k, d]`` with an index-select (dropped slots read a
zero row) and contracts the ``k`` slots with the weights in one batched matmul, instead of a weighted
``index_add``. Both backwards are gathers as well (custom autograd functions): on CPU a scatter-add
serializes while a gather runs in parallel.
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
        pair_index: ``[M]`` flat pair id ``n*k + j`` of each kept pair, in expert-sorted order (``M`` kept).
        token_index: ``[M]`` token ``n`` of each kept pair, in the same order.
        slot_position: ``[N*k]`` row of each pair in the sorted order, ``M`` for dropped pairs (a zero row).
        counts: ``[E]`` kept pairs per expert (long, on the input's device).
        offsets: ``[E]`` int32 cumulative ends of the segments (the ``offs`` of ``torch._grouped_mm``).
    """

    num_tokens: int
    top_k: int
    num_experts: int
    pair_index: Tensor
    token_index: Tensor
    slot_position: Tensor
    counts: Tensor
    offsets: Tensor
    _counts_list: list[int] | None = None

    @property
    def num_kept(self) -> int:
        return self.token_index.numel()

    def counts_list(self) -> list[int]:
        """Segment sizes as Python ints (one device sync, cached), for the per-expert loop path."""
        if self._counts_list is None:
            self._counts_list = self.counts.tolist()
        return self._counts_list


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
    pair_index = order[:num_kept]
    token_index = torch.div(pair_index, top_k, rounding_mode="floor")
    slot_position = torch.full_like(flat, num_kept)
    slot_position[pair_index] = torch.arange(num_kept, device=flat.device)
    offsets = torch.cumsum(counts, 0).to(torch.int32)
    return DispatchPlan(
        num_tokens, top_k, num_experts, pair_index, token_index, slot_position, counts, offsets
    )


class _Dispatch(torch.autograd.Function):
    """``x[token_index]`` whose backward is a gather too: ``dx[n] = sum_j dxs[slot_position[n, j]]``.

    The default backward of an index-select is a scatter-add, which serializes on CPU; every token has
    exactly ``k`` slots, so the transpose is a gather of ``k`` rows and a sum.
    """

    @staticmethod
    def forward(ctx, x: Tensor, plan: DispatchPlan) -> Tensor:  # type: ignore[override]
        ctx.plan = plan
        return x.index_select(0, plan.token_index)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        plan: DispatchPlan = ctx.plan
        d = grad.shape[-1]
        padded = torch.cat([grad, grad.new_zeros(1, d)], dim=0)
        per_slot = padded.index_select(0, plan.slot_position).view(plan.num_tokens, plan.top_k, d)
        return per_slot.sum(dim=1) if plan.top_k > 1 else per_slot[:, 0], None


class _Undispatch(torch.autograd.Function):
    """Expert outputs ``y[M + 1, d]`` (last row zero) back to ``[N, k, d]`` slots; backward is a gather."""

    @staticmethod
    def forward(ctx, y_padded: Tensor, plan: DispatchPlan) -> Tensor:  # type: ignore[override]
        ctx.plan = plan
        d = y_padded.shape[-1]
        return y_padded.index_select(0, plan.slot_position).view(plan.num_tokens, plan.top_k, d)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        plan: DispatchPlan = ctx.plan
        d = grad.shape[-1]
        g = grad.reshape(-1, d).index_select(0, plan.pair_index)
        return torch.cat([g, g.new_zeros(1, d)], dim=0), None


def gather_tokens(x: Tensor, plan: DispatchPlan) -> Tensor:
    """Rows of ``x[N, d]`` for every kept pair, grouped by expert: ``[M, d]``."""
    return _Dispatch.apply(x, plan)


def combine_outputs(y: Tensor, weights: Tensor, plan: DispatchPlan, padded: bool = False) -> Tensor:
    """``out[n] = sum_j weights[n, j] * y[pos(n, j)]`` for expert outputs ``y[M, d]`` in sorted order.

    Dropped slots read a zero row appended to ``y`` (or already present as its last row when ``padded``),
    so their weight does not matter.
    """
    if not padded:
        y = torch.cat([y, y.new_zeros(1, y.shape[-1])], dim=0)
    per_slot = _Undispatch.apply(y, plan)
    w = weights.to(y.dtype)
    if plan.top_k == 1:
        return per_slot[:, 0] * w
    return torch.bmm(w.unsqueeze(1), per_slot).squeeze(1)


def grouped_mm_supported(x: Tensor, weight: Tensor) -> bool:
    """Whether ``torch._grouped_mm`` can run ``x @ weight[e]`` segments for these dtypes/devices."""
    if not hasattr(torch, "_grouped_mm"):
        return False
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16) or weight.dtype != x.dtype:
        return False
    # The kernels need every row stride 16-byte aligned (d and the output width multiples of 16 bytes).
    item = x.element_size()
    if any((size * item) % 16 for size in (x.shape[-1], weight.shape[-1], weight.shape[-2])):
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
