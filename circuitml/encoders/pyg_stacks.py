"""Standard PyG convolution stacks on AIGs: GCN, GraphSAGE, GIN and GAT (``torch_geometric.nn.models``).

Each wraps PyG's :class:`~torch_geometric.nn.models.basic_gnn.BasicGNN` model (conv → norm → act → dropout per
layer, no activation after the last) on the node-type embedding:

* GCN — Kipf & Welling, ICLR 2017: :math:`X' = \\hat D^{-1/2} \\hat A \\hat D^{-1/2} X W`;
* GraphSAGE — Hamilton et al., NeurIPS 2017: :math:`x'_v = W_1 x_v + W_2\\, \\mathrm{mean}_{u \\to v} x_u`;
* GIN — Xu et al., ICLR 2019: :math:`x'_v = \\mathrm{MLP}((1+\\epsilon) x_v + \\sum_{u \\to v} x_u)`;
* GAT — Veličković et al., ICLR 2018 (GATv2, Brody et al., ICLR 2022, with ``v2``).

Messages follow AIG edges (fanin → fanout) unless ``undirected`` is set.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch_geometric.data import Data
from torch_geometric.nn.conv import GCNConv, MessagePassing
from torch_geometric.nn.conv.gcn_conv import gcn_norm
from torch_geometric.nn.models import GAT, GCN, GIN, GraphSAGE
from torch_geometric.utils import to_undirected

from circuitml.encoders.base import Encoder
from circuitml.encoders.builder import register_encoder
from circuitml.encoders.config import EncoderConfig
from circuitml.encoders.csr_matmul import csr_matmul, csr_pair, uses_csr_kernel
from circuitml.encoders.graph_cache import graph_cached
from circuitml.errors import ConfigError

_ADJ_CACHE = "_gcn_adjacency_cache"
_PAIR_ATTR = "_circuitml_csr_pair"
_COMMON: dict[str, Any] = {"norm": None, "jk": None, "act": "relu", "undirected": False}


class PygStackEncoder(Encoder):
    """Shared body: builds ``MODEL(hidden, hidden, num_layers, ...)`` and runs it on the type embedding."""

    MODEL: ClassVar[type] = GCN
    EDGE_ATTR: ClassVar[bool] = False

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)
        if config.use_edge_attr and not self.EDGE_ATTR:
            raise ConfigError(f"encoder config: use_edge_attr is not supported by kind {config.kind!r}")
        h = config.hidden
        self.gnn = self.MODEL(
            h,
            h,
            config.num_layers,
            dropout=config.dropout,
            act=self.opt("act"),
            norm=self.opt("norm"),
            jk=self.opt("jk"),
            **self.conv_kwargs(),
        )

    def conv_kwargs(self) -> dict[str, Any]:
        return {}

    def graph_edges(self, data: Data) -> tuple[Tensor, Tensor | None]:
        edge_index, edge_attr = data.edge_index, self.edge_attr(data)
        if self.opt("undirected"):
            if edge_attr is None:
                edge_index = to_undirected(edge_index, num_nodes=data.num_nodes)
            else:
                edge_index, edge_attr = to_undirected(
                    edge_index, edge_attr, num_nodes=data.num_nodes, reduce="max"
                )
        return edge_index, edge_attr

    def encode_nodes(self, data: Data, h: Tensor) -> Tensor:
        edge_index, edge_attr = self.graph_edges(data)
        batch = getattr(data, "batch", None)
        if edge_attr is not None:
            return self.gnn(h, edge_index, edge_attr=edge_attr, batch=batch)
        return self.gnn(h, edge_index, batch=batch)


def gcn_adjacency(edge_index: Tensor, num_nodes: int, dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """``D^-1/2 (A + I) D^-1/2`` (PyG's ``gcn_norm``, self loops added where missing) as the edges with self
    loops, their weights, and a sparse CSR ``[target, source]`` matrix, so that each GCN layer aggregates with
    one sparse matmul."""
    ei, weight = gcn_norm(edge_index, None, num_nodes, add_self_loops=True, dtype=dtype)
    # Parallel edges (an AND reading one node twice) are summed by the conversion, as message passing sums them.
    adj = torch.sparse_coo_tensor(ei.flip(0), weight, (num_nodes, num_nodes), check_invariants=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        adj = adj.coalesce().to_sparse_csr()
        if adj.device.type == "cpu" and uses_csr_kernel(weight):
            # PyG hands the adjacency object itself to message_and_aggregate, so the compiled pair rides on it
            setattr(adj, _PAIR_ATTR, csr_pair(adj))
    return ei, weight, adj


class CSRGCNConv(GCNConv):
    """PyG's ``GCNConv`` whose sparse propagation runs :func:`~circuitml.encoders.csr_matmul.csr_matmul` when the
    adjacency carries its :class:`~circuitml.encoders.csr_matmul.CSRPair` (same parameters, same numbers)."""

    def message_and_aggregate(self, adj_t: Tensor, x: Tensor) -> Tensor:
        pair = getattr(adj_t, _PAIR_ATTR, None)
        if pair is not None and self.aggr == "add" and uses_csr_kernel(x):
            return csr_matmul(pair, x)
        return super().message_and_aggregate(adj_t, x)


class _CSRGCN(GCN):
    def init_conv(self, in_channels: int, out_channels: int, **kwargs: Any) -> MessagePassing:
        return CSRGCNConv(in_channels, out_channels, **kwargs)


@register_encoder
class GCNEncoder(PygStackEncoder):
    """GCN stack (``kind="gcn"``). Options: norm, jk, act, undirected.

    The normalization is computed once per graph (:func:`gcn_adjacency`, cached on the ``Data``) and each
    layer runs ``lin`` and one sparse matmul: the same numbers as PyG's ``GCNConv``, which would renormalize in
    every layer and gather, scale and scatter ``[E, hidden]`` messages (2x the time and 1.5x the memory of a
    1M-AND forward). On the CPU in float32/64 the sparse matmul is the compiled CSR loop of
    :mod:`~circuitml.encoders.csr_matmul`, with ``Â^T`` cached for the backward (1.4-1.6x a fwd+bwd step at
    100k-1M ANDs against torch's CSR matmul, which re-transposes in every backward). Under autocast (the sparse CPU
    kernel has no bf16) the layers pass the cached edge weights as messages instead, again without renormalizing.
    """

    kind: ClassVar[str] = "gcn"
    OPTIONS: ClassVar[dict[str, Any]] = dict(_COMMON)
    MODEL = _CSRGCN

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)
        for conv in self.gnn.convs:
            conv.normalize = False  # encode_nodes passes the already normalized adjacency

    def encode_nodes(self, data: Data, h: Tensor) -> Tensor:
        def build() -> tuple[Tensor, Tensor, Tensor]:
            edge_index, _ = self.graph_edges(data)
            return gcn_adjacency(edge_index.to(h.device), h.size(0), h.dtype)

        key = (h.size(0), bool(self.opt("undirected")), h.dtype, h.device)
        ei, weight, adj = graph_cached(data, _ADJ_CACHE, data.edge_index, key, build)
        batch = getattr(data, "batch", None)
        if torch.is_autocast_enabled(h.device.type):
            return self.gnn(h, ei, edge_weight=weight, batch=batch)
        return self.gnn(h, adj, batch=batch)


@register_encoder
class SAGEEncoder(PygStackEncoder):
    """GraphSAGE stack with mean aggregation (``kind="sage"``). Options: aggr, norm, jk, act, undirected."""

    kind: ClassVar[str] = "sage"
    OPTIONS: ClassVar[dict[str, Any]] = {**_COMMON, "aggr": "mean"}
    MODEL = GraphSAGE

    def conv_kwargs(self) -> dict[str, Any]:
        return {"aggr": self.opt("aggr")}


@register_encoder
class GINEncoder(PygStackEncoder):
    """GIN stack (``kind="gin"``; 2-layer MLP per layer, learnable ε off as in PyG). Options: norm, jk, act,
    undirected, train_eps."""

    kind: ClassVar[str] = "gin"
    OPTIONS: ClassVar[dict[str, Any]] = {**_COMMON, "train_eps": False}
    MODEL = GIN

    def conv_kwargs(self) -> dict[str, Any]:
        return {"train_eps": bool(self.opt("train_eps"))}


@register_encoder
class GATEncoder(PygStackEncoder):
    """GAT stack (``kind="gat"``). Options: heads (4; concatenated, so hidden must divide by it), v2 (False),
    norm, jk, act, undirected. Takes the complement bit as edge feature with ``use_edge_attr``."""

    kind: ClassVar[str] = "gat"
    OPTIONS: ClassVar[dict[str, Any]] = {**_COMMON, "heads": 4, "v2": False}
    MODEL = GAT
    EDGE_ATTR = True

    def conv_kwargs(self) -> dict[str, Any]:
        heads = int(self.opt("heads"))
        if heads <= 0 or self.config.hidden % heads:
            raise ConfigError(
                f"encoder config: options.heads must divide hidden={self.config.hidden}, got {heads!r}"
            )
        kwargs: dict[str, Any] = {"heads": heads, "v2": bool(self.opt("v2"))}
        if self.config.use_edge_attr:
            kwargs["edge_dim"] = 1
        return kwargs
