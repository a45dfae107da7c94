"""The MGVGA backbone: DeeperGCN residual blocks around GENConv.

MGVGA (Wu et al., "Circuit Representation Learning with Masked Gate Modeling and Verilog-AIG Alignment",
ICLR 2025) encodes AIGs with DeeperGCN (Li et al., "DeeperGCN: All You Need to Train Deeper GCNs", 2020,
arXiv:2006.07739): ``num_layers`` (7) pre-activation residual blocks (``res+``),

.. math::
    x^{(l+1)} = x^{(l)} + \\mathrm{GENConv}\\big(\\mathrm{Dropout}(\\mathrm{ReLU}(\\mathrm{Norm}(x^{(l)})))\\big),

where GENConv aggregates fanins with a softmax of learnable temperature ``t``,
:math:`m_v = \\sum_u \\operatorname{softmax}_u(t\\, h_u)\\odot h_u` with :math:`h_u = \\mathrm{ReLU}(x_u + e_{uv}) +
\\epsilon`, followed by an MLP on ``x_v + m_v``. The first block's convolution runs without the residual
(as in PyG's ``DeepGCNLayer`` example and the OGB DeeperGCN code), and the output gets a final norm + ReLU.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torch_geometric.data import Data
from torch_geometric.nn import DeepGCNLayer, GENConv

from circuitml.encoders.base import Encoder
from circuitml.encoders.builder import register_encoder
from circuitml.encoders.config import EncoderConfig
from circuitml.errors import ConfigError


@register_encoder
class DeepGCNEncoder(Encoder):
    """MGVGA's DeeperGCN encoder (``kind="deepgcn"``).

    Options:
        aggr (str, "softmax"): GENConv aggregation (``softmax``, ``powermean``, ``mean``, ``max``, ``add``).
        t (float, 1.0) / learn_t (bool, True): softmax temperature and whether it is learned.
        norm (str, "layer"): ``layer`` or ``batch`` normalization in the blocks and inside GENConv's MLP.
        mlp_layers (int, 2): depth of GENConv's MLP.
        ckpt_grad ("auto"): recompute each block in backward (torch.utils.checkpoint) instead of keeping its
            ``[E, hidden]`` softmax-aggregation intermediates — about 10 per block, 12 GB at 7 blocks on a
            400k-node graph. ``"auto"`` turns it on from ``ckpt_min_edges`` edges (default 200000) up.

    Shapes: ``x`` types ``[N]`` → node ``[N, hidden]``; with ``use_edge_attr`` the complement bit ``[E, 1]``
    enters every GENConv message.
    """

    kind: ClassVar[str] = "deepgcn"
    OPTIONS: ClassVar[dict[str, Any]] = {
        "aggr": "softmax",
        "t": 1.0,
        "learn_t": True,
        "norm": "layer",
        "mlp_layers": 2,
        "ckpt_grad": "auto",
        "ckpt_min_edges": 200_000,
    }

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)
        h = config.hidden
        norm = self.opt("norm")
        if norm not in ("layer", "batch"):
            raise ConfigError(f"encoder config: options.norm must be 'layer' or 'batch', got {norm!r}")
        edge_dim = 1 if config.use_edge_attr else None
        self.layers = nn.ModuleList()
        for _ in range(config.num_layers):
            conv = GENConv(
                h,
                h,
                aggr=self.opt("aggr"),
                t=float(self.opt("t")),
                learn_t=bool(self.opt("learn_t")),
                num_layers=int(self.opt("mlp_layers")),
                norm=norm,
                edge_dim=edge_dim,
            )
            block_norm = nn.LayerNorm(h, elementwise_affine=True) if norm == "layer" else nn.BatchNorm1d(h)
            self.layers.append(
                DeepGCNLayer(
                    conv,
                    block_norm,
                    nn.ReLU(),
                    block="res+",
                    dropout=config.dropout,
                    ckpt_grad=False,  # decided per forward in encode_nodes
                )
            )

    def encode_nodes(self, data: Data, h: Tensor) -> Tensor:
        edge_index = data.edge_index
        edge_attr = self.edge_attr(data)
        ckpt = self.opt("ckpt_grad")
        if ckpt == "auto":
            ckpt = edge_index.size(1) >= int(self.opt("ckpt_min_edges"))
        for layer in self.layers:
            layer.ckpt_grad = bool(ckpt)
        first = self.layers[0]
        if ckpt and torch.is_grad_enabled():
            # The stem convolution runs outside a DeepGCNLayer, so checkpoint it here as well.
            x = checkpoint(first.conv, h, edge_index, edge_attr, use_reentrant=False)
        else:
            x = first.conv(h, edge_index, edge_attr)
        for layer in self.layers[1:]:
            x = layer(x, edge_index, edge_attr)
        x = first.act(first.norm(x))
        return F.dropout(x, p=self.config.dropout, training=self.training)
