"""Level-wise DAG encoder in the spirit of DeepGate2 (Shi et al., ICCAD 2023, arXiv:2305.16373).

Each node keeps a functional state ``hf`` and a structural state ``hs``. One iteration runs a forward sweep
(levels 1 .. L, fanins → node) and then a reverse sweep (reverse levels, fanouts → node). At a level, for target
``v`` with message sources ``u``:

.. math::
    m^s_v = \\sum_u \\operatorname{softmax}_u\\big(a_s^\\top[W_s h^s_u \\,\\|\\, W_s h^s_v]\\big)\\, W_s h^s_u, \\qquad
    m^f_v = \\sum_u \\operatorname{softmax}_u\\big(a_f^\\top[W_f z_u \\,\\|\\, W_q h^f_v]\\big)\\, W_f z_u,
    \\quad z_u = [h^f_u \\,\\|\\, h^s_u \\,(\\|\\, c_{uv})]

    h^s_v \\leftarrow \\mathrm{GRU}_s([m^s_v \\,\\|\\, x_v],\\, h^s_v), \\qquad
    h^f_v \\leftarrow \\mathrm{GRU}_f([m^f_v \\,\\|\\, x_v],\\, h^f_v)

with ``x_v`` the node-type embedding and ``c_uv`` the complement bit when edges carry it. Forward and reverse
sweeps have their own cells, shared across the ``num_layers`` iterations (DeepGate shares weights across
iterations). The node output is ``W_o [h^f \\| h^s]``. Sweeps run through :func:`level_sweep`, so memory stays
O(N + E) for any depth.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch_geometric.data import Data

from circuitml.encoders.base import Encoder
from circuitml.encoders.builder import register_encoder
from circuitml.encoders.config import EncoderConfig
from circuitml.encoders.propagation import level_sweep, segment_attention, sweep_plan
from circuitml.graph import level_schedule


class DagCell(nn.Module):
    """One level update of both states (the :data:`~circuitml.encoders.propagation.LevelCell` contract).

    Args:
        hidden: width ``h`` of ``hf`` and of ``hs`` (the state row is ``[hf | hs]``, ``2h`` wide).
        edge_dim: width of edge features (0 when edges carry none).
    """

    def __init__(self, hidden: int, edge_dim: int = 0) -> None:
        super().__init__()
        self.hidden = hidden
        self.edge_dim = edge_dim
        self.w_s = nn.Linear(hidden, hidden, bias=False)
        self.att_s = nn.Parameter(torch.empty(2, hidden))
        self.w_f = nn.Linear(2 * hidden + edge_dim, hidden, bias=False)
        self.w_q = nn.Linear(hidden, hidden, bias=False)
        self.att_f = nn.Parameter(torch.empty(2, hidden))
        self.gru_s = nn.GRUCell(2 * hidden, hidden)
        self.gru_f = nn.GRUCell(2 * hidden, hidden)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for lin in (self.w_s, self.w_f, self.w_q):
            lin.reset_parameters()
        nn.init.xavier_uniform_(self.att_s)
        nn.init.xavier_uniform_(self.att_f)
        self.gru_s.reset_parameters()
        self.gru_f.reset_parameters()

    def forward(
        self, src: Tensor, tgt: Tensor, x: Tensor, edge_feat: Tensor | None, local: Tensor, num_targets: int
    ) -> Tensor:
        h = self.hidden
        hf_v, hs_v = tgt[:, :h], tgt[:, h:]
        # Structural attention: projected source states scored against the projected target state.
        ks = self.w_s(src[:, h:])
        qs = self.w_s(hs_v)
        score_s = F.leaky_relu((ks * self.att_s[0]).sum(-1) + (qs * self.att_s[1]).sum(-1)[local], 0.2)
        m_s = segment_attention(score_s, ks, local, num_targets)
        # Functional attention: messages see both states of the source (and the complement bit).
        z = src if edge_feat is None else torch.cat([src, edge_feat.to(src.dtype)], dim=-1)
        kf = self.w_f(z)
        qf = self.w_q(hf_v)
        score_f = F.leaky_relu((kf * self.att_f[0]).sum(-1) + (qf * self.att_f[1]).sum(-1)[local], 0.2)
        m_f = segment_attention(score_f, kf, local, num_targets)
        hs_new = self.gru_s(torch.cat([m_s, x], dim=-1), hs_v)
        hf_new = self.gru_f(torch.cat([m_f, x], dim=-1), hf_v)
        return torch.cat([hf_new, hs_new], dim=-1)


@register_encoder
class DagEncoder(Encoder):
    """DeepGate2-style level-wise encoder: ``num_layers`` iterations of forward + reverse sweeps.

    Options:
        reverse (bool, True): run the reverse (fanout → fanin) sweep after each forward sweep.
        checkpoint (bool, True): per-level recomputation in backward (O(N + E) memory); False uses plain
            autograd (O(N·L) memory, only for small graphs).

    Shapes: input graph with ``edge_index`` ``[2, E]``, ``level``/``rev_level`` ``[N]``; output ``[N, hidden]``.
    """

    kind: ClassVar[str] = "dag"
    OPTIONS: ClassVar[dict[str, Any]] = {"reverse": True, "checkpoint": True}

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)
        h = config.hidden
        edge_dim = 1 if config.use_edge_attr else 0
        self.init_state = nn.Linear(h, 2 * h)
        self.forward_cell = DagCell(h, edge_dim)
        self.reverse_cell = DagCell(h, edge_dim) if self.opt("reverse") else None
        self.out = nn.Linear(2 * h, h)
        self.dropout = nn.Dropout(config.dropout)

    def encode_nodes(self, data: Data, h: Tensor) -> Tensor:
        sched = level_schedule(data)
        n = h.size(0)
        fwd = sweep_plan(data.edge_index, n, sched)
        rev = sweep_plan(data.edge_index, n, sched, reverse=True) if self.reverse_cell is not None else None
        edge_feat = self.edge_attr(data)
        ckpt = bool(self.opt("checkpoint"))
        state = self.init_state(h)
        for _ in range(self.config.num_layers):
            state = level_sweep(self.forward_cell, fwd, state, h, edge_feat, checkpoint=ckpt)
            if rev is not None:
                state = level_sweep(self.reverse_cell, rev, state, h, edge_feat, checkpoint=ckpt)
        return self.out(self.dropout(state))
