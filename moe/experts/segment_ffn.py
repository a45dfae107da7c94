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


def _gate_activation(gate: Tensor, activation: str) -> Tensor:
    return F.silu(gate) if activation == "swiglu" else F.gelu(gate)


def _activation_forward(h: Tensor, activation: str) -> Tensor:
    if activation in GATED:
        gate, up = h.chunk(2, dim=-1)
        return _gate_activation(gate, activation).mul_(up)
    if activation == "gelu":
        return F.gelu(h)
    if activation == "relu":
        return F.relu(h)
    return F.silu(h)


def _activation_recompute(h: Tensor, activation: str) -> tuple[Tensor, Tensor | None]:
    """``act(h)`` and, for the gated activations, ``act(gate)`` too (the backward needs it again)."""
    if activation not in GATED:
        return _activation_forward(h, activation), None
    gate, up = h.chunk(2, dim=-1)
    gate_act = _gate_activation(gate, activation)
    return gate_act * up, gate_act


def _activation_backward(
    h: Tensor, grad_a: Tensor, activation: str, gate_act: Tensor | None = None
) -> Tensor:
    """``dL/dh`` from ``dL/da`` where ``a = act(h)``; ``gate_act`` is ``act(gate)`` when already computed."""
    if activation in GATED:
        gate, up = h.chunk(2, dim=-1)
        grad_h = torch.empty_like(h)
        hidden = gate.shape[-1]
        if gate_act is None:
            gate_act = _gate_activation(gate, activation)
        if activation == "swiglu":
            grad_h[:, :hidden] = torch.ops.aten.silu_backward(grad_a * up, gate)
        else:
            grad_h[:, :hidden] = torch.ops.aten.gelu_backward(grad_a * up, gate)
        torch.mul(grad_a, gate_act, out=grad_h[:, hidden:])
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


class RoutedFFN(torch.autograd.Function):
    r"""The whole routed FFN of :class:`~circuitml.moe.experts.ffn.FFNExperts` in one pass over row tiles:

    .. math::
        \mathrm{out}_n = \sum_{(n, j)\ \mathrm{kept}} w_{nj}\, \mathrm{FFN}_{i_{nj}}(x_n)

    Each tile gathers its tokens' rows of ``x`` into a cache-sized buffer, runs both matmuls and the
    activation, scales by the pair weights and adds the rows into ``out`` (``index_add_``) while they are still
    in cache. Compared with gather → :class:`SegmentFFN` → combine this never writes the gathered ``[M, d]``
    input, the ``[M + 1, d]`` expert outputs or the ``[N, k, d]`` slots to memory, forward or backward.

    The backward needs no saved expert output for the pair-weight gradient:
    ``dL/dw_{nj} = <g_n, a W_2^T + b_2> = <g_n W_2, a> + <g_n, b_2>`` and ``g_n W_2`` is computed anyway
    for the activation gradient.

    Inputs: ``x [N, d]``, ``pair_weight [M]`` (the combine weight of every kept pair in ``plan``'s sorted
    order), ``w1 [E, u, d]``, ``w2 [E, d, h]``, optional biases, the plan, the activation and the tile size.
    Output ``[N, d]`` (zero for tokens without a kept pair).
    """

    @staticmethod
    def forward(ctx, x, pair_weight, w1, w2, b1, b2, plan: DispatchPlan, activation: str, tile_rows: int):  # type: ignore[override]
        tiles = list(_tiles(plan.counts_list(), tile_rows))
        sizes = [t - s for _, s, t in tiles]
        out = x.new_zeros(x.shape[0], w2.shape[1])
        h = x.new_empty(plan.num_kept, w1.shape[1])
        xbuf = x.new_empty(max(sizes, default=0), x.shape[1])
        # Per-tile views made in a few C++ calls: with many small segments the Python work per tile counts.
        w1t, w2t = w1.transpose(1, 2).unbind(0), w2.transpose(1, 2).unbind(0)
        views = zip(
            tiles,
            plan.token_index.split(sizes),
            h.split(sizes),
            pair_weight[:, None].split(sizes),
            strict=True,
        )
        for (e, _, _), tok, ht, wcol in views:
            xt = torch.index_select(x, 0, tok, out=xbuf[: tok.numel()])
            if b1 is None:
                torch.mm(xt, w1t[e], out=ht)
            else:
                torch.addmm(b1[e], xt, w1t[e], out=ht)
            a = _activation_forward(ht, activation)
            y = torch.mm(a, w2t[e]) if b2 is None else torch.addmm(b2[e], a, w2t[e])
            out.index_add_(0, tok, y.mul_(wcol))
        ctx.save_for_backward(x, pair_weight, w1, w2, b2, h)
        ctx.plan, ctx.activation, ctx.tiles, ctx.sizes = plan, activation, tiles, sizes
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        x, pair_weight, w1, w2, b2, h = ctx.saved_tensors
        plan: DispatchPlan = ctx.plan
        counts, sizes = plan.counts_list(), ctx.sizes
        grad_out = grad_out.contiguous()
        need_x, need_pw, need_w1, need_w2, need_b1, need_b2 = ctx.needs_input_grad[:6]
        grad_x = torch.zeros_like(x) if need_x else None
        grad_pw = torch.empty_like(pair_weight) if need_pw else None
        grad_w1 = _empty_with_zero_experts(w1, counts) if need_w1 else None
        grad_w2 = _empty_with_zero_experts(w2, counts) if need_w2 else None
        grad_b1 = _empty_with_zero_experts(w1[:, :, 0], counts) if need_b1 else None
        grad_b2 = _empty_with_zero_experts(w2[:, :, 0], counts) if need_b2 else None
        rows = max(sizes, default=0)
        gbuf = grad_out.new_empty(rows, grad_out.shape[1])
        xbuf = x.new_empty(rows, x.shape[1]) if need_w1 else None
        w1s, w2s = w1.unbind(0), w2.unbind(0)
        grad_pws = grad_pw.split(sizes) if grad_pw is not None else [None] * len(sizes)
        views = zip(
            ctx.tiles,
            plan.token_index.split(sizes),
            h.split(sizes),
            pair_weight[:, None].split(sizes),
            grad_pws,
            strict=True,
        )
        first = -1
        for (e, _, _), tok, ht, wcol, gpw in views:
            beta = 0.0 if e != first else 1.0
            first = e
            go = torch.index_select(grad_out, 0, tok, out=gbuf[: tok.numel()])
            a, gate_act = _activation_recompute(ht, ctx.activation)
            grad_a = torch.mm(go, w2s[e])  # dL/da before the pair weight
            if gpw is not None:
                torch.sum(grad_a * a, dim=1, out=gpw)
                if b2 is not None:
                    gpw += go @ b2[e]
            if grad_b2 is not None:
                grad_b2[e] = wcol[:, 0] @ go if beta == 0 else grad_b2[e] + wcol[:, 0] @ go
            if grad_w2 is not None:
                grad_w2[e].addmm_(go.t(), a.mul_(wcol), beta=beta)
            grad_h = _activation_backward(ht, grad_a.mul_(wcol), ctx.activation, gate_act)
            if grad_w1 is not None:
                xt = torch.index_select(x, 0, tok, out=xbuf[: tok.numel()])
                grad_w1[e].addmm_(grad_h.t(), xt, beta=beta)
            if grad_b1 is not None:
                grad_b1[e] = grad_h.sum(0) if beta == 0 else grad_b1[e] + grad_h.sum(0)
            if grad_x is not None:
                grad_x.index_add_(0, tok, torch.mm(grad_h, w1s[e]))
        return grad_x, grad_pw, grad_w1, grad_w2, grad_b1, grad_b2, None, None, None


def routed_ffn(
    x: Tensor,
    weights: Tensor,
    w1: Tensor,
    w2: Tensor,
    b1: Tensor | None,
    b2: Tensor | None,
    plan: DispatchPlan,
    activation: str,
    tile_rows: int | None = None,
) -> Tensor:
    """Functional form of :class:`RoutedFFN` for router ``weights [N, k]``: ``[N, d]`` out."""
    if tile_rows is None:
        tile_rows = default_tile_rows(x.shape[-1], w1.shape[1], x.element_size())
    pair_weight = weights.reshape(-1).to(x.dtype).index_select(0, plan.pair_index)
    return RoutedFFN.apply(x.contiguous(), pair_weight, w1, w2, b1, b2, plan, activation, tile_rows)
