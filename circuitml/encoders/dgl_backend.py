"""DGL-backed GCN and GraphSAGE encoders (``kind="dgl_gcn"``, ``"dgl_sage"``), equal to the PyG stacks.

They take the same PyG input (converted with :func:`circuitml.graph.to_dgl`), use ``dgl.nn.GraphConv`` /
``dgl.nn.SAGEConv``, and compute exactly what :class:`~circuitml.encoders.pyg_stacks.GCNEncoder` /
:class:`~circuitml.encoders.pyg_stacks.SAGEEncoder` compute (conv → ReLU → dropout between layers, none after
the last). PyG's GCN normalizes with the *in*-degrees at both ends of an edge (self-loops included), while DGL's
``norm="both"`` uses the source's *out*-degree; on a directed AIG these differ, so the PyG weights
:math:`\\hat d_u^{-1/2}\\hat d_v^{-1/2}` are computed here on the DGL graph and passed as edge weights.

:meth:`DGLStackEncoder.load_pyg_state_dict` maps a PyG encoder's weights (``Linear`` ``[out, in]`` →
DGL ``[in, out]``), so both backends can be compared or swapped with the same parameters.
"""

from __future__ import annotations

from typing import Any, ClassVar

import dgl
import torch
import torch.nn.functional as F
from dgl.nn import GraphConv, SAGEConv
from torch import Tensor, nn
from torch_geometric.data import Data

from circuitml.encoders.base import Encoder
from circuitml.encoders.builder import register_encoder
from circuitml.encoders.config import EncoderConfig
from circuitml.errors import ConfigError
from circuitml.graph import to_dgl


class DGLStackEncoder(Encoder):
    """Shared body of the DGL stacks. Options: ``undirected`` (False) adds reverse edges."""

    OPTIONS: ClassVar[dict[str, Any]] = {"undirected": False}

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)
        if config.use_edge_attr:
            raise ConfigError(f"encoder config: use_edge_attr is not supported by kind {config.kind!r}")
        self.convs = nn.ModuleList(self.make_conv(config.hidden) for _ in range(config.num_layers))

    def make_conv(self, hidden: int) -> nn.Module:
        raise NotImplementedError

    def dgl_graph(self, data: Data) -> dgl.DGLGraph:
        g = to_dgl(Data(edge_index=data.edge_index, num_nodes=int(data.num_nodes))).to(data.edge_index.device)
        if self.opt("undirected"):
            g = dgl.to_bidirected(g)  # drops duplicate edges like PyG's to_undirected (coalesce)
        return g

    def run_conv(self, conv: nn.Module, g: dgl.DGLGraph, x: Tensor, edge_weight: Tensor | None) -> Tensor:
        raise NotImplementedError

    def edge_weight(self, g: dgl.DGLGraph, dtype: torch.dtype) -> Tensor | None:
        return None

    def prepare(self, g: dgl.DGLGraph) -> dgl.DGLGraph:
        return g

    def encode_nodes(self, data: Data, h: Tensor) -> Tensor:
        g = self.prepare(self.dgl_graph(data))
        weight = self.edge_weight(g, h.dtype)
        x = h
        for i, conv in enumerate(self.convs):
            x = self.run_conv(conv, g, x, weight)
            if i < len(self.convs) - 1:
                x = F.dropout(F.relu(x), p=self.config.dropout, training=self.training)
        return x

    def load_pyg_state_dict(self, state: dict[str, Tensor]) -> None:
        """Load the weights of the PyG encoder of the same kind and config."""
        mapped = {"type_embedding.weight": state["type_embedding.weight"]}
        if "pi_projection.weight" in state:  # random input features (EncoderConfig.pi_features)
            mapped["pi_projection.weight"] = state["pi_projection.weight"]
        for i in range(len(self.convs)):
            mapped.update(self.map_conv(state, f"gnn.convs.{i}.", f"convs.{i}."))
        if "attention_pool.gate_nn.weight" in state:
            mapped.update({k: v for k, v in state.items() if k.startswith("attention_pool.")})
        self.load_state_dict(mapped, strict=True)

    def map_conv(self, state: dict[str, Tensor], src: str, dst: str) -> dict[str, Tensor]:
        raise NotImplementedError


@register_encoder
class DGLGCNEncoder(DGLStackEncoder):
    """GCN on DGL (``kind="dgl_gcn"``): ``GraphConv`` with PyG's symmetric in-degree normalization."""

    kind: ClassVar[str] = "dgl_gcn"

    def make_conv(self, hidden: int) -> nn.Module:
        return GraphConv(hidden, hidden, norm="none", weight=True, bias=True, allow_zero_in_degree=True)

    def prepare(self, g: dgl.DGLGraph) -> dgl.DGLGraph:
        return dgl.add_self_loop(dgl.remove_self_loop(g))

    def edge_weight(self, g: dgl.DGLGraph, dtype: torch.dtype) -> Tensor:
        src, dst = g.edges()
        inv_sqrt = g.in_degrees().to(dtype).clamp(min=1).pow(-0.5)
        return inv_sqrt[src] * inv_sqrt[dst]

    def run_conv(self, conv: nn.Module, g: dgl.DGLGraph, x: Tensor, edge_weight: Tensor | None) -> Tensor:
        return conv(g, x, edge_weight=edge_weight.to(x.dtype))

    def map_conv(self, state: dict[str, Tensor], src: str, dst: str) -> dict[str, Tensor]:
        return {f"{dst}weight": state[f"{src}lin.weight"].t().contiguous(), f"{dst}bias": state[f"{src}bias"]}


@register_encoder
class DGLSAGEEncoder(DGLStackEncoder):
    """GraphSAGE with mean aggregation on DGL (``kind="dgl_sage"``)."""

    kind: ClassVar[str] = "dgl_sage"

    def make_conv(self, hidden: int) -> nn.Module:
        return SAGEConv(hidden, hidden, "mean")

    def run_conv(self, conv: nn.Module, g: dgl.DGLGraph, x: Tensor, edge_weight: Tensor | None) -> Tensor:
        return conv(g, x)

    def map_conv(self, state: dict[str, Tensor], src: str, dst: str) -> dict[str, Tensor]:
        # PyG: lin_l(mean of neighbours) + lin_r(self), bias on lin_l; DGL 1.1: fc_neigh + fc_self (biased).
        return {
            f"{dst}fc_neigh.weight": state[f"{src}lin_l.weight"],
            f"{dst}fc_self.weight": state[f"{src}lin_r.weight"],
            f"{dst}fc_self.bias": state[f"{src}lin_l.bias"],
        }
