"""A fused expert FFN over expert-sorted rows: one autograd function, per-expert matmuls into preallocated
buffers, processed in cache-sized row tiles.

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


def default_tile_rows(d_model: int, up_width: int, element_size: int) -> int:
    """Rows per tile so one tile's hidden activations (``rows x up_width``) stay near 1 MiB (in L2 cache),
    but at least 1024 rows so the matmuls stay efficient and the weight-gradient accumulation is rare."""
    return max(1024, (1 << 20) // max(1, up_width * element_size))


def _tiles(counts: list[int], tile_rows: int):
    """``(expert, start, stop)`` row ranges: each expert's segment cut into tiles of ``tile_rows``."""
    start = 0
    for e, c in enumerate(counts):
        for s in range(start, start + c, tile_rows):
            yield e, s, min(s + tile_rows, start + c)
        start += c


class SegmentFFN(torch.autograd.Function):
    """``Y[rows of e] = act(X[rows of e] W1[e]^T + b1[e]) W2[e]^T + b2[e]``, returned with a zero last row.

    Inputs: ``xs [M, d]`` expert-sorted rows, ``w1 [E, u, d]``, ``w2 [E, d, h]``, optional biases, the
    :class:`DispatchPlan`, the activation name and the tile size. Output ``[M + 1, d]``; row ``M`` is zero (the
    row dropped slots read in :func:`~circuitml.moe.dispatch.combine_outputs`).

    Each expert segment is processed in row tiles — matmul, activation, matmul while the tile is still in
    cache — forward and backward (the activation is recomputed per tile from the saved pre-activation).
    The weight gradients accumulate over the tiles of an expert with ``addmm_``.
    """

    @staticmethod
    def forward(ctx, xs, w1, w2, b1, b2, plan: DispatchPlan, activation: str, tile_rows: int):  # type: ignore[override]
        counts = plan.counts_list()
        num_rows = xs.shape[0]
        h = xs.new_empty(num_rows, w1.shape[1])
        y = xs.new_empty(num_rows + 1, w2.shape[1])
        y[num_rows].zero_()
        for e, s, t in _tiles(counts, tile_rows):
            if b1 is None:
                torch.mm(xs[s:t], w1[e].t(), out=h[s:t])
            else:
                torch.addmm(b1[e], xs[s:t], w1[e].t(), out=h[s:t])
            a = _activation_forward(h[s:t], activation)
            if b2 is None:
                torch.mm(a, w2[e].t(), out=y[s:t])
            else:
                torch.addmm(b2[e], a, w2[e].t(), out=y[s:t])
        ctx.save_for_backward(xs, w1, w2, h)
        ctx.plan, ctx.activation, ctx.tile_rows = plan, activation, tile_rows
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_y: Tensor):  # type: ignore[override]
        xs, w1, w2, h = ctx.saved_tensors
        plan: DispatchPlan = ctx.plan
        counts = plan.counts_list()
        need_x, need_w1, need_w2, need_b1, need_b2 = ctx.needs_input_grad[:5]
        grad_x = torch.empty_like(xs) if need_x else None
        # Experts without rows get zero gradients; the others are overwritten by their first tile.
        grad_w1 = _empty_with_zero_experts(w1, counts) if need_w1 else None
        grad_w2 = _empty_with_zero_experts(w2, counts) if need_w2 else None
        grad_b1 = _empty_with_zero_experts(w1[:, :, 0], counts) if need_b1 else None
        grad_b2 = _empty_with_zero_experts(w2[:, :, 0], counts) if need_b2 else None
        first = -1
        for e, s, t in _tiles(counts, ctx.tile_rows):
            beta = 0.0 if e != first else 1.0
            first = e
            gy = grad_y[s:t]
            a = _activation_forward(h[s:t], ctx.activation)
            grad_a = torch.mm(gy, w2[e])
            if grad_w2 is not None:
                grad_w2[e].addmm_(gy.t(), a, beta=beta)
            if grad_b2 is not None:
                grad_b2[e] = gy.sum(0) if beta == 0 else grad_b2[e] + gy.sum(0)
            grad_h = _activation_backward(h[s:t], grad_a, ctx.activation)
            if grad_w1 is not None:
                grad_w1[e].addmm_(grad_h.t(), xs[s:t], beta=beta)
            if grad_b1 is not None:
                grad_b1[e] = grad_h.sum(0) if beta == 0 else grad_b1[e] + grad_h.sum(0)
            if grad_x is not None:
                torch.mm(grad_h, w1[e], out=grad_x[s:t])
        return grad_x, grad_w1, grad_w2, grad_b1, grad_b2, None, None, None


def segment_ffn(
    xs: Tensor,
    w1: Tensor,
    w2: Tensor,
    b1: Tensor | None,
    b2: Tensor | None,
    plan: DispatchPlan,
    activation: str,
    tile_rows: int | None = None,
) -> Tensor:
    """Functional form of :class:`SegmentFFN` (output ``[M + 1, d]`` with a zero last row)."""
    if tile_rows is None:
        tile_rows = default_tile_rows(xs.shape[-1], w1.shape[1], xs.element_size())
    return SegmentFFN.apply(xs, w1, w2, b1, b2, plan, activation, tile_rows)
