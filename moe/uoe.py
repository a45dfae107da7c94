r"""Union-of-Experts: an MLP and a multi-head attention decomposed *equivalently* into experts, then routed.

Yang et al. 2025, "Union of Experts: Adapting Hierarchical Routing to Equivalently Decomposed Transformer"
(arXiv:2503.02495). Tensor-parallel matrix partition splits a dense block into ``E`` experts whose sum is the
block, exactly:

* **MLP** (:class:`UnionOfMLPExperts`): ``W_1`` by rows (hidden units) and ``W_2`` by the matching columns,

  .. math:: W_2\,\sigma(W_1 x + b_1) + b_2 = \sum_{e=1}^{E} W_2^{[:, g_e]}\,\sigma(W_1^{[g_e]} x + b_1^{[g_e]}) + b_2

  for an element-wise ``sigma``;
* **attention** (:class:`SelectiveMultiHeadAttention`): heads in ``E`` groups, ``W_O`` by the matching columns,

  .. math:: \mathrm{MHA}(x) = \sum_{e=1}^{E} \Big(\big\Vert_{h \in g_e} \mathrm{softmax}(q_h k_h^\top/\sqrt{d_h})\, v_h\Big)\, W_O^{[g_e]} + b_O.

Routing then keeps a subset per token (UoE's expert selection), hierarchically: the experts form
``num_groups`` groups, a token picks its ``top_groups`` best groups, then its ``top_k`` best experts inside them
(:func:`~circuitml.moe.routers._gating.group_limited_mask`). A selected expert's output is scaled by
:math:`w_e = k \cdot \mathrm{softmax}_{e \in S}(s_e)`, so with a zero-initialised router and every expert
selected the block is the dense block (the decomposition test), and the router still gets gradients. The
attention version is UoE's Selective Multi-Head Attention (SMHA): a query token attends only with the head
groups it selected (keys and values of those groups are computed for every token).

``flops_per_token`` counts multiply-adds of a forward, to weigh compute against quality.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from circuitml.moe.dispatch import make_plan
from circuitml.moe.routers._gating import group_limited_mask
from torch import Tensor, nn

from circuitml.errors import ConfigError


class HierarchicalRouter(nn.Module):
    """Group-then-expert top-k over ``E`` experts with weights ``k * softmax`` over the selected ones.

    Args:
        d_model, num_experts, top_k: as usual; ``top_k = E`` selects every expert.
        num_groups, top_groups: expert groups and groups a token may use.
    """

    def __init__(
        self, d_model: int, num_experts: int, top_k: int, num_groups: int = 1, top_groups: int = 1
    ) -> None:
        super().__init__()
        if num_experts % num_groups or not 1 <= top_groups <= num_groups:
            raise ConfigError(
                f"UoE router: expected num_groups dividing num_experts={num_experts} and 1 <= top_groups <= "
                f"num_groups, got num_groups={num_groups}, top_groups={top_groups}"
            )
        if not 1 <= top_k <= top_groups * (num_experts // num_groups):
            raise ConfigError(f"UoE router: top_k={top_k} exceeds the experts of {top_groups} groups")
        self.num_experts, self.top_k = num_experts, top_k
        self.num_groups, self.top_groups = num_groups, top_groups
        self.gate = nn.Linear(d_model, num_experts, bias=False)
        nn.init.zeros_(
            self.gate.weight
        )  # every expert equal at the start: the block starts as the dense block

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(weights [N, k], indices [N, k])``."""
        scores = self.gate(x)
        mask = group_limited_mask(scores.detach(), self.num_groups, self.top_groups)
        chosen = scores.masked_fill(~mask, float("-inf")).topk(self.top_k, dim=-1)
        return self.top_k * torch.softmax(chosen.values, dim=-1), chosen.indices


class UnionOfMLPExperts(nn.Module):
    """A two-layer MLP split into ``E`` hidden-unit groups (experts), routed hierarchically (UoME).

    Shapes: ``x [N, d]`` → ``[N, d]``. Build it from a trained MLP with :meth:`from_linear`.
    """

    def __init__(
        self,
        d_model: int,
        d_hidden: int,
        num_experts: int,
        top_k: int,
        num_groups: int = 1,
        top_groups: int = 1,
        activation: str = "gelu",
    ) -> None:
        super().__init__()
        if d_hidden % num_experts:
            raise ConfigError(f"UoE MLP: d_hidden={d_hidden} must be a multiple of num_experts={num_experts}")
        if activation not in ("gelu", "relu"):
            raise ConfigError(f"UoE MLP: activation: expected gelu or relu, got {activation!r}")
        self.num_experts, self.activation = num_experts, activation
        h = d_hidden // num_experts
        self.w1 = nn.Parameter(torch.empty(num_experts, h, d_model))
        self.b1 = nn.Parameter(torch.zeros(num_experts, h))
        self.w2 = nn.Parameter(torch.empty(num_experts, d_model, h))
        self.b2 = nn.Parameter(torch.zeros(d_model))
        nn.init.normal_(self.w1, std=d_model**-0.5)
        nn.init.normal_(self.w2, std=d_hidden**-0.5)
        self.router = HierarchicalRouter(d_model, num_experts, top_k, num_groups, top_groups)

    @classmethod
    def from_linear(
        cls, lin1: nn.Linear, lin2: nn.Linear, num_experts: int, top_k: int, **kw
    ) -> UnionOfMLPExperts:
        """The exact decomposition of ``lin2(act(lin1(x)))`` (biases included) into ``num_experts`` experts."""
        d, hidden = lin1.in_features, lin1.out_features
        uoe = cls(d, hidden, num_experts, top_k, **kw)
        with torch.no_grad():
            uoe.w1.copy_(lin1.weight.view(num_experts, hidden // num_experts, d))
            uoe.b1.copy_((lin1.bias if lin1.bias is not None else torch.zeros(hidden)).view(num_experts, -1))
            uoe.w2.copy_(lin2.weight.view(d, num_experts, hidden // num_experts).transpose(0, 1))
            uoe.b2.copy_(lin2.bias if lin2.bias is not None else torch.zeros(d))
        return uoe

    def forward(self, x: Tensor) -> Tensor:
        weights, indices = self.router(x)
        plan = make_plan(indices, self.num_experts)
        act = F.gelu if self.activation == "gelu" else F.relu
        out = x.new_zeros(x.shape)
        flat_w = weights.reshape(-1)
        start = 0
        for e, count in enumerate(plan.counts_list()):
            if count == 0:
                continue
            pairs = plan.pair_index[start : start + count]
            tokens = plan.token_index[start : start + count]
            start += count
            y = act(x[tokens] @ self.w1[e].t() + self.b1[e]) @ self.w2[e].t()
            out = out.index_add(0, tokens, flat_w[pairs, None] * y)
        return out + self.b2

    def flops_per_token(self) -> int:
        """Multiply-adds per token of the selected experts (router included)."""
        _, h, d = self.w1.shape
        return self.router.top_k * 2 * h * d + d * self.num_experts


class SelectiveMultiHeadAttention(nn.Module):
    """Multi-head self-attention whose head groups are experts routed per query token (UoE's SMHA).

    Args:
        d_model, num_heads: the attention shape; ``num_experts`` head groups of ``num_heads / num_experts``.
        top_k, num_groups, top_groups: the hierarchical routing of :class:`HierarchicalRouter`.
        causal: a query attends only to keys at or before its position (decoder attention).
        dropout: dropout on the attention probabilities in training (as a dense attention's ``dropout_p``).

    Shapes: ``x [B, T, d]``, optional boolean ``key_padding_mask [B, T]`` (``True`` = real token) → ``[B, T, d]``.
    Build it from a dense attention with :meth:`from_qkv`.
    """

    def __init__(
        self,
        d_model: int,
        num_heads: int,
        num_experts: int,
        top_k: int,
        num_groups: int = 1,
        top_groups: int = 1,
        causal: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.causal, self.dropout = causal, dropout
        if d_model % num_heads or num_heads % num_experts:
            raise ConfigError(
                f"SMHA: expected num_heads | d_model and num_experts | num_heads, got d_model={d_model}, "
                f"num_heads={num_heads}, num_experts={num_experts}"
            )
        self.num_heads, self.num_experts = num_heads, num_experts
        self.head_dim = d_model // num_heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)
        self.router = HierarchicalRouter(d_model, num_experts, top_k, num_groups, top_groups)

    @classmethod
    def from_qkv(cls, qkv: nn.Linear, out: nn.Linear, num_heads: int, num_experts: int, top_k: int, **kw):
        """Same weights as a dense attention with a fused ``qkv`` projection (q, k, v blocks, heads in order)."""
        smha = cls(out.in_features, num_heads, num_experts, top_k, **kw)
        smha.qkv.load_state_dict(qkv.state_dict())
        smha.out.load_state_dict(out.state_dict())
        return smha

    def forward(self, x: Tensor, key_padding_mask: Tensor | None = None) -> Tensor:
        b, t, d = x.shape
        per = self.num_heads // self.num_experts
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        weights, indices = self.router(x.reshape(-1, d))
        plan = make_plan(indices, self.num_experts)
        flat_w = weights.reshape(-1)
        w_out = self.out.weight.view(d, self.num_experts, per * self.head_dim)
        keys = None if key_padding_mask is None else key_padding_mask.bool()
        out = x.new_zeros(b * t, d)
        start = 0
        for e, count in enumerate(plan.counts_list()):
            if count == 0:
                continue
            pairs = plan.pair_index[start : start + count]
            rows = plan.token_index[start : start + count]  # flat (batch, position) of the routed queries
            start += count
            heads = slice(e * per, (e + 1) * per)
            ctx = self._attend(q[:, heads], k[:, heads], v[:, heads], rows, keys)
            out = out.index_add(0, rows, flat_w[pairs, None] * (ctx @ w_out[:, e].t()))
        return (out + self.out.bias).view(b, t, d)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, rows: Tensor, keys: Tensor | None) -> Tensor:
        """Attention of the routed query ``rows`` over all keys of their sequence, with one head group's
        ``q, k, v [B, h, T, hd]``: ``[M, h * hd]``.

        The routed queries are packed per sequence into ``[B, h, width, hd]`` (``width`` = most queries any
        sequence routed here), so only they are scored, by one fused attention call, and no per-query copy of
        the keys is made."""
        b, h, t, hd = q.shape
        bi, ti = rows // t, rows % t
        # An expert segment keeps token order (stable sort), so each sequence's queries are contiguous.
        per_seq = torch.bincount(bi, minlength=b)
        slot = torch.arange(rows.numel(), device=rows.device) - (torch.cumsum(per_seq, 0) - per_seq)[bi]
        width = int(per_seq.max())
        packed = q.new_zeros(b, width, h, hd).index_put((bi, slot), q.transpose(1, 2)[bi, ti])
        mask = None
        if keys is not None or self.causal:
            real = torch.zeros(b, width, dtype=torch.bool, device=q.device).index_put(
                (bi, slot), torch.ones_like(bi, dtype=torch.bool)
            )
            allowed = torch.ones(b, width, t, dtype=torch.bool, device=q.device)
            if keys is not None:
                allowed = allowed & keys[:, None, :]
            if self.causal:
                pos = torch.zeros(b, width, dtype=torch.long, device=q.device).index_put((bi, slot), ti)
                allowed = allowed & (torch.arange(t, device=q.device)[None, None, :] <= pos[:, :, None])
            # Packing slots attend anywhere: they are discarded, and no all-masked row puts NaN in the backward.
            mask = (allowed | ~real[:, :, None])[:, None]
        ctx = F.scaled_dot_product_attention(
            packed.transpose(1, 2), k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )
        return ctx.transpose(1, 2)[bi, slot].reshape(rows.numel(), h * hd)

    def flops_per_token(self, seq_len: int) -> int:
        """Multiply-adds per query token: projections, the selected groups' scores and mixing, the router."""
        d = self.out.in_features
        group = (self.num_heads // self.num_experts) * self.head_dim
        return 3 * d * d + self.router.top_k * (2 * seq_len * group + group * d) + d * self.num_experts
