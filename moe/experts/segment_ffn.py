"""A fused expert FFN over expert-sorted rows: one autograd function, per-expert matmuls into preallocated
buffers, the activation and its derivative computed once over all rows.

Autograd through slices (``x[a:b] @ W[e]`` then ``cat``) materializes a zero gradient of the full input and
of the full ``[E, out, in]`` weight per expert and adds them up — ``O(E (M d + E d h))`` of extra memory
traffic. Writing each segment's matmul with ``out=`` into one buffer, forward and backward, removes it; this
is the CPU path of :class:`~circuitml.moe.experts.ffn.FFNExperts` (and of any dtype ``torch._grouped_mm``
does not take, such as float64). MegaBlocks (Gale et al. 2023) fuses the same way with block-sparse kernels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from circuitml.moe.dispatch import DispatchPlan
from torch import Tensor
from torch.autograd.function import once_differentiable

GATED = ("swiglu", "geglu")


def _activation_forward(h: Tensor, activation: str) -> Tensor:
    if activation == "swiglu":
        gate, up = h.chunk(2, dim=-1)
        return F.silu(gate).mul_(up)
    if activation == "geglu":
        gate, up = h.chunk(2, dim=-1)
        return F.gelu(gate).mul_(up)
    if activation == "gelu":
        return F.gelu(h)
    if activation == "relu":
        return F.relu(h)
    return F.silu(h)


def _activation_backward(h: Tensor, grad_a: Tensor, activation: str) -> Tensor:
    """``dL/dh`` from ``dL/da`` where ``a = act(h)``."""
    if activation in GATED:
        gate, up = h.chunk(2, dim=-1)
        grad_h = torch.empty_like(h)
        hidden = gate.shape[-1]
        if activation == "swiglu":
            grad_h[:, :hidden] = torch.ops.aten.silu_backward(grad_a * up, gate)
            torch.mul(grad_a, F.silu(gate), out=grad_h[:, hidden:])
        else:
            grad_h[:, :hidden] = torch.ops.aten.gelu_backward(grad_a * up, gate)
            torch.mul(grad_a, F.gelu(gate), out=grad_h[:, hidden:])
        return grad_h
    if activation == "gelu":
        return torch.ops.aten.gelu_backward(grad_a, h)
    if activation == "relu":
        return grad_a * (h > 0)
    return torch.ops.aten.silu_backward(grad_a, h)


def _empty_with_zero_experts(like: Tensor, counts: list[int]) -> Tensor:
    out = torch.empty(like.shape, dtype=like.dtype, device=like.device)
    for e, c in enumerate(counts):
        if c == 0:
            out[e].zero_()
    return out


class SegmentFFN(torch.autograd.Function):
    """``Y[rows of e] = act(X[rows of e] W1[e]^T + b1[e]) W2[e]^T + b2[e]``, returned with a zero last row.

    Inputs: ``xs [M, d]`` expert-sorted rows, ``w1 [E, u, d]``, ``w2 [E, d, h]``, optional biases, the
    :class:`DispatchPlan` and the activation name. Output ``[M + 1, d]``; row ``M`` is zero (the row dropped
    slots read in :func:`~circuitml.moe.dispatch.combine_outputs`).
    """

    @staticmethod
    def forward(ctx, xs, w1, w2, b1, b2, plan: DispatchPlan, activation: str):  # type: ignore[override]
        counts = plan.counts_list()
        num_rows, d = xs.shape
        h = xs.new_empty(num_rows, w1.shape[1])
        start = 0
        for e, c in enumerate(counts):
            if c:
                torch.mm(xs[start : start + c], w1[e].t(), out=h[start : start + c])
                if b1 is not None:
                    h[start : start + c] += b1[e]
                start += c
        a = _activation_forward(h, activation)
        y = (
            xs.new_zeros(num_rows + 1, w2.shape[1])
            if num_rows == 0
            else xs.new_empty(num_rows + 1, w2.shape[1])
        )
        y[num_rows].zero_()
        start = 0
        for e, c in enumerate(counts):
            if c:
                torch.mm(a[start : start + c], w2[e].t(), out=y[start : start + c])
                if b2 is not None:
                    y[start : start + c] += b2[e]
                start += c
        ctx.save_for_backward(xs, w1, w2, h, a)
        ctx.plan, ctx.activation = plan, activation
        ctx.has_bias = (b1 is not None, b2 is not None)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor):  # type: ignore[override]
        xs, w1, w2, h, a = ctx.saved_tensors
        plan: DispatchPlan = ctx.plan
        counts = plan.counts_list()
        num_rows = xs.shape[0]
        grad_y = grad_y[:num_rows]
        need_x, need_w1, need_w2, need_b1, need_b2 = ctx.needs_input_grad[:5]
        grad_a = torch.empty_like(a)
        # Every expert with rows writes its whole gradient slice with out=; only empty experts need zeros.
        grad_w2 = _empty_with_zero_experts(w2, counts) if need_w2 else None
        grad_b2 = _empty_with_zero_experts(w2[:, :, 0], counts) if need_b2 else None
        start = 0
        for e, c in enumerate(counts):
            if c:
                gy = grad_y[start : start + c]
                torch.mm(gy, w2[e], out=grad_a[start : start + c])
                if grad_w2 is not None:
                    torch.mm(gy.t(), a[start : start + c], out=grad_w2[e])
                if grad_b2 is not None:
                    grad_b2[e] = gy.sum(0)
                start += c
        grad_h = _activation_backward(h, grad_a, ctx.activation)
        grad_x = torch.empty_like(xs) if need_x else None
        grad_w1 = _empty_with_zero_experts(w1, counts) if need_w1 else None
        grad_b1 = _empty_with_zero_experts(w1[:, :, 0], counts) if need_b1 else None
        start = 0
        for e, c in enumerate(counts):
            if c:
                gh = grad_h[start : start + c]
                if grad_x is not None:
                    torch.mm(gh, w1[e], out=grad_x[start : start + c])
                if grad_w1 is not None:
                    torch.mm(gh.t(), xs[start : start + c], out=grad_w1[e])
                if grad_b1 is not None:
                    grad_b1[e] = gh.sum(0)
                start += c
        return grad_x, grad_w1, grad_w2, grad_b1, grad_b2, None, None


def segment_ffn(
    xs: Tensor,
    w1: Tensor,
    w2: Tensor,
    b1: Tensor | None,
    b2: Tensor | None,
    plan: DispatchPlan,
    activation: str,
) -> Tensor:
    """Functional form of :class:`SegmentFFN` (output ``[M + 1, d]`` with a zero last row)."""
    return SegmentFFN.apply(xs, w1, w2, b1, b2, plan, activation)
