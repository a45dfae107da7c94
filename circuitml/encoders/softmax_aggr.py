"""GENConv's softmax aggregation fused over a CSR of incoming edges: one pass per node, no ``[E, hidden]`` tensors.

DeeperGCN (Li, Xiong, Thabet, Ghanem, "DeeperGCN: All You Need to Train Deeper GCNs", arXiv:2006.07739, 2020)
aggregates the messages :math:`h_u = \\mathrm{ReLU}(x_u) + \\epsilon` of the fanins ``u`` of ``v`` channel-wise as

.. math::
    m_v = \\sum_{u \\to v} \\alpha_{uv} \\odot h_u, \\qquad
    \\alpha_{uv} = \\frac{\\exp(t\\, h_u)}{\\sum_{w \\to v} \\exp(t\\, h_w)},

with backward :math:`\\partial m_v / \\partial h_u = \\alpha_{uv} (1 + t (h_u - m_v))` and
:math:`\\partial m_v / \\partial t = \\sum_u \\alpha_{uv} h_u (h_u - m_v)`.

PyG composes this from a gather, a segment max, an exp, a segment sum and another gather: about ten ``[E, hidden]``
temporaries per layer kept for backward, which is what makes a 7-layer DeeperGCN page-fault and checkpoint on
large AIGs. Here the CPU path is two compiled loops (numba) over the edges sorted by target: the forward keeps
only ``m``, the per-node maxima and denominators (``[N, hidden]`` each) and the backward recomputes each
``\\alpha`` from them. Nodes with one fanin (NOT and PO nodes, a third of an AIG) take ``m_v = h_u`` directly.
The torch path (CUDA, or no numba) computes the same numbers with segment operations; both are tested against
PyG's ``GENConv`` for outputs and gradients.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from circuitml import kernels
from circuitml.encoders.graph_cache import graph_cached
from circuitml.kernels import njit

__all__ = [
    "IncomingCSR",
    "aggregate_rows_plus_self",
    "double_backward",
    "incoming_csr",
    "softmax_aggregate",
    "uses_fused_kernel",
]

_CACHE_ATTR = "_incoming_csr_cache"


class IncomingCSR:
    """Edges grouped by target: ``rowptr`` ``[N + 1]``, ``col`` (each edge's source) ``[E]``, ``perm`` ``[E]``
    (original edge ids in that order)."""

    def __init__(self, rowptr: Tensor, col: Tensor, perm: Tensor) -> None:
        self.rowptr, self.col, self.perm = rowptr, col, perm


def incoming_csr(edge_index: Tensor, num_nodes: int, data: object | None = None) -> IncomingCSR:
    """The :class:`IncomingCSR` of ``edge_index`` (a stable sort by target), cached on ``data`` when given."""
    return graph_cached(
        data, _CACHE_ATTR, edge_index, num_nodes, lambda: _incoming_csr(edge_index, num_nodes)
    )


def _incoming_csr(edge_index: Tensor, num_nodes: int) -> IncomingCSR:
    dst = edge_index[1]
    if kernels.HAVE_NUMBA and dst.device.type == "cpu":
        perm_np, ptr_np = kernels.counting_sort(dst.numpy(), num_nodes)
        perm, rowptr = torch.from_numpy(perm_np), torch.from_numpy(ptr_np)
    else:
        perm = torch.sort(dst, stable=True).indices
        rowptr = torch.zeros(num_nodes + 1, dtype=torch.long, device=dst.device)
        torch.cumsum(torch.bincount(dst, minlength=num_nodes), dim=0, out=rowptr[1:])
    return IncomingCSR(rowptr, edge_index[0][perm].contiguous(), perm)


# Reassociation and contraction let LLVM vectorize the channel loops; no-NaN/no-inf are NOT assumed (a
# two-fanin softmax below relies on 1 / (1 + inf) = 0).
_FAST = {"nsz", "arcp", "contract", "afn", "reassoc"}


@njit(cache=True, nogil=True, fastmath=_FAST)
def _aggregate_node(
    x: np.ndarray,
    rowptr: np.ndarray,
    col: np.ndarray,
    v: int,
    tt: float,
    ep: float,
    out: np.ndarray,
    o: int,
    mx: np.ndarray,
    den: np.ndarray,
    r: int,
    acc: np.ndarray,
) -> None:
    """``out[o] = m_v``; ``mx[r]`` / ``den[r]`` get what the backward needs (alpha_1 for two fanins)."""
    hid = x.shape[1]
    zero = x.dtype.type(0.0)
    one = x.dtype.type(1.0)
    s, e = rowptr[v], rowptr[v + 1]
    if e - s == 1:  # softmax over one message is 1: m_v = h_u
        u = col[s]
        for c in range(hid):
            out[o, c] = max(x[u, c], zero) + ep
        return
    if e - s == 2:  # two messages (AND gates): alpha_1 = sigmoid(t (h_1 - h_2)), one exp per channel
        u1, u2 = col[s], col[s + 1]
        for c in range(hid):
            h1 = max(x[u1, c], zero) + ep
            h2 = max(x[u2, c], zero) + ep
            a1 = one / (one + math.exp(tt * (h2 - h1)))
            out[o, c] = h2 + a1 * (h1 - h2)
            mx[r, c] = a1  # two-fanin nodes keep alpha_1 here instead of a maximum: no exp in backward
        return
    if e == s:
        for c in range(hid):
            out[o, c] = zero
        return
    u = col[s]
    for c in range(hid):
        mx[r, c] = tt * (max(x[u, c], zero) + ep)
    for p in range(s + 1, e):
        u = col[p]
        for c in range(hid):
            mx[r, c] = max(mx[r, c], tt * (max(x[u, c], zero) + ep))
    acc[:] = zero
    for c in range(hid):
        den[r, c] = zero
    for p in range(s, e):
        u = col[p]
        for c in range(hid):
            h = max(x[u, c], zero) + ep
            w = math.exp(tt * h - mx[r, c])
            den[r, c] += w
            acc[c] += w * h
    for c in range(hid):
        out[o, c] = acc[c] / den[r, c]


@njit(cache=True, nogil=True, fastmath=_FAST)
def _forward_kernel(
    x: np.ndarray, rowptr: np.ndarray, col: np.ndarray, t: float, eps: float, keep: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n, hid = x.shape
    out = np.empty((n, hid), dtype=x.dtype)
    # Maxima and denominators for the backward (nodes with three or more fanins; alpha_1 for two fanins);
    # without a backward (``keep`` false) one scratch row serves every node.
    rows = n if keep else 1
    mx = np.zeros((rows, hid), dtype=x.dtype)
    den = np.ones((rows, hid), dtype=x.dtype)
    tt = x.dtype.type(t)
    ep = x.dtype.type(eps)
    acc = np.empty(hid, dtype=x.dtype)
    for v in range(n):
        _aggregate_node(x, rowptr, col, v, tt, ep, out, v, mx, den, v if keep else 0, acc)
    return out, mx, den


@njit(cache=True, nogil=True, fastmath=_FAST)
def _rows_plus_self_kernel(
    x: np.ndarray, rowptr: np.ndarray, col: np.ndarray, t: float, eps: float, start: int, out: np.ndarray
) -> None:
    """``out[i] = m_{start+i} + x_{start+i}`` for the rows of ``out`` (no backward state)."""
    hid = x.shape[1]
    mx = np.zeros((1, hid), dtype=x.dtype)
    den = np.ones((1, hid), dtype=x.dtype)
    tt = x.dtype.type(t)
    ep = x.dtype.type(eps)
    acc = np.empty(hid, dtype=x.dtype)
    for i in range(out.shape[0]):
        v = start + i
        _aggregate_node(x, rowptr, col, v, tt, ep, out, i, mx, den, 0, acc)
        for c in range(hid):
            out[i, c] += x[v, c]


@njit(cache=True, nogil=True, fastmath=_FAST)
def _backward_kernel(
    x: np.ndarray,
    rowptr: np.ndarray,
    col: np.ndarray,
    t: float,
    eps: float,
    out: np.ndarray,
    mx: np.ndarray,
    den: np.ndarray,
    grad_out: np.ndarray,
) -> tuple[np.ndarray, float]:
    n, hid = x.shape
    grad_x = np.zeros((x.shape[0], hid), dtype=x.dtype)
    tt = x.dtype.type(t)
    ep = x.dtype.type(eps)
    zero = x.dtype.type(0.0)
    one = x.dtype.type(1.0)
    grad_t = 0.0
    for v in range(n):
        s, e = rowptr[v], rowptr[v + 1]
        if e - s == 1:  # alpha = 1: the gradient passes straight through (and none reaches t)
            u = col[s]
            for c in range(hid):
                if x[u, c] > zero:
                    grad_x[u, c] += grad_out[v, c]
            continue
        if e - s == 2:
            u1, u2 = col[s], col[s + 1]
            gt = zero
            for c in range(hid):
                h1 = max(x[u1, c], zero) + ep
                h2 = max(x[u2, c], zero) + ep
                a1 = mx[v, c]
                m = out[v, c]
                g = grad_out[v, c]
                d1, d2 = h1 - m, h2 - m
                if x[u1, c] > zero:
                    grad_x[u1, c] += g * a1 * (one + tt * d1)
                if x[u2, c] > zero:
                    grad_x[u2, c] += g * (one - a1) * (one + tt * d2)
                gt += g * (a1 * h1 * d1 + (one - a1) * h2 * d2)
            grad_t += gt
            continue
        for p in range(s, e):
            u = col[p]
            gt = zero
            for c in range(hid):
                h = max(x[u, c], zero) + ep
                a = math.exp(tt * h - mx[v, c]) / den[v, c]
                ga = grad_out[v, c] * a
                d = h - out[v, c]
                if x[u, c] > zero:
                    grad_x[u, c] += ga * (one + tt * d)
                gt += ga * h * d
            grad_t += gt
    return grad_x, grad_t


class _FusedSoftmaxAggr(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, t: Tensor, rowptr: Tensor, col: Tensor, eps: float, keep: bool) -> Tensor:  # noqa: ANN001
        xc = x.detach().contiguous()
        out, mx, den = _forward_kernel(xc.numpy(), rowptr.numpy(), col.numpy(), float(t), eps, keep)
        out_t = torch.from_numpy(out)
        ctx.eps = eps
        ctx.save_for_backward(xc, t, rowptr, col, out_t, torch.from_numpy(mx), torch.from_numpy(den))
        return out_t

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):  # noqa: ANN001
        x, t, rowptr, col, out, mx, den = ctx.saved_tensors
        g = grad_out.detach().to(x.dtype).contiguous().numpy()
        args = (
            x.numpy(),
            rowptr.numpy(),
            col.numpy(),
            float(t),
            ctx.eps,
            out.numpy(),
            mx.numpy(),
            den.numpy(),
        )
        grad_x, grad_t = _backward_kernel(*args, g)
        grad_t_out = torch.tensor(grad_t, dtype=t.dtype).reshape(t.shape) if ctx.needs_input_grad[1] else None
        return torch.from_numpy(grad_x), grad_t_out, None, None, None, None


def _softmax_aggregate_torch(x: Tensor, t: Tensor, csr: IncomingCSR, eps: float) -> Tensor:
    """The same aggregation from segment operations (any device; autograd through torch)."""
    n = csr.rowptr.numel() - 1
    h = torch.relu(x[csr.col]) + eps  # [E, hidden]
    z = t * h
    index = torch.repeat_interleave(torch.arange(n, device=x.device), csr.rowptr[1:] - csr.rowptr[:-1])
    idx = index.unsqueeze(-1).expand_as(z)
    zmax = torch.full((n, x.size(1)), float("-inf"), dtype=z.dtype, device=x.device)
    zmax = zmax.scatter_reduce(0, idx, z.detach(), reduce="amax", include_self=True)
    w = torch.exp(z - zmax[index])
    den = torch.zeros((n, x.size(1)), dtype=z.dtype, device=x.device).index_add_(0, index, w)
    num = torch.zeros((n, x.size(1)), dtype=z.dtype, device=x.device).index_add_(0, index, w * h)
    has_edges = (csr.rowptr[1:] > csr.rowptr[:-1]).unsqueeze(-1)
    return torch.where(has_edges, num / den.clamp_min(torch.finfo(z.dtype).tiny), torch.zeros_like(num))


_TORCH_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("softmax_aggr_torch_only", default=False)


@contextlib.contextmanager
def double_backward() -> Iterator[None]:
    """Within this block :func:`softmax_aggregate` runs the torch path, which can be differentiated twice.

    The compiled backward is a single numba pass (``once_differentiable``), so second-order methods — MAML-style
    meta-learning (Meta-DMoE's ``create_graph=True`` inner step), gradient penalties — must use this block, as they
    use ``sdpa_kernel([SDPBackend.MATH])`` for attention."""
    token = _TORCH_ONLY.set(True)
    try:
        yield
    finally:
        _TORCH_ONLY.reset(token)


def uses_fused_kernel(x: Tensor) -> bool:
    """Whether :func:`softmax_aggregate` runs the compiled kernels for states like ``x``: numba installed, a
    float32/64 or bf16 (computed in float32) CPU tensor, and not inside :func:`double_backward`."""
    return (
        kernels.HAVE_NUMBA
        and not _TORCH_ONLY.get()
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64, torch.bfloat16)
    )


def softmax_aggregate(
    x: Tensor, t: Tensor, csr: IncomingCSR, eps: float = 1e-7, *, fused: bool | None = None
) -> Tensor:
    """``m_v = Σ_{u→v} softmax_u(t h_u) ⊙ h_u`` with ``h_u = ReLU(x_u) + eps`` (GENConv, no edge features).

    Args:
        x: ``[N, hidden]`` node states (sources and targets are the same node set).
        t: the (learnable) inverse temperature, a one-element tensor.
        csr: from :func:`incoming_csr`.
        fused: use the compiled CPU kernels (default: :func:`uses_fused_kernel`); ``False`` runs the torch path.
    """
    if fused is None:
        fused = uses_fused_kernel(x)
    if fused:
        # Under CPU autocast the matmuls around run in bf16; the aggregation itself stays float32.
        keep = torch.is_grad_enabled() and (x.requires_grad or t.requires_grad)  # a backward will follow
        x32 = x.float() if x.dtype == torch.bfloat16 else x
        return _FusedSoftmaxAggr.apply(x32, t, csr.rowptr, csr.col, eps, keep)
    return _softmax_aggregate_torch(x, t, csr, eps)


def aggregate_rows_plus_self(
    x: Tensor, t: float, csr: IncomingCSR, eps: float, start: int, out: Tensor
) -> Tensor:
    """``out[i] = m_{start+i} + x_{start+i}`` (GENConv's MLP input) for one block of target rows, no autograd.

    The inference path of DeeperGCN runs its blocks over row chunks that stay in cache; the fanins of a chunk
    may be anywhere in ``x``. ``x`` and ``out`` are contiguous float32/64 CPU tensors (``out``: ``[rows, hidden]``,
    overwritten; a reused buffer). Needs the compiled kernels (:func:`uses_fused_kernel`).
    """
    _rows_plus_self_kernel(x.numpy(), csr.rowptr.numpy(), csr.col.numpy(), t, eps, start, out.numpy())
    return out
