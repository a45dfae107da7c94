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
from circuitml.encoders.softmax_aggr import incoming_csr, softmax_aggregate, uses_fused_kernel
from circuitml.errors import ConfigError

_FUSED_CKPT_SCALE = 8


@register_encoder
class DeepGCNEncoder(Encoder):
    """MGVGA's DeeperGCN encoder (``kind="deepgcn"``).

    Options:
        aggr (str, "softmax"): GENConv aggregation (``softmax``, ``powermean``, ``mean``, ``max``, ``add``).
        t (float, 1.0) / learn_t (bool, True): softmax temperature and whether it is learned.
        norm (str, "layer"): ``layer`` or ``batch`` normalization in the blocks and inside GENConv's MLP.
        mlp_layers (int, 2): depth of GENConv's MLP.
        fused ("auto"): run the softmax aggregation through :func:`~circuitml.encoders.softmax_aggr.softmax_aggregate`
            (one compiled pass over the incoming edges on CPU, no ``[E, hidden]`` tensors; segment operations
            elsewhere) instead of PyG's message passing. Same parameters, same numbers; ``"auto"`` uses it for
            ``aggr="softmax"`` without edge features, ``False`` keeps PyG's ``GENConv.forward``.
        ckpt_grad ("auto"): recompute each block in backward (torch.utils.checkpoint) instead of keeping its
            ``[E, hidden]`` softmax-aggregation intermediates — about 10 per block, 12 GB at 7 blocks on a
            400k-node graph. ``"auto"`` turns it on from ``ckpt_min_edges`` edges (default 200000) up, or from
            8x that when the fused CPU kernel runs (it keeps three ``[N, hidden]`` tensors per block instead).

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
        "fused": "auto",
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
                    ckpt_grad=False,  # encode_nodes runs the blocks (and decides checkpointing) itself
                )
            )

    def encode_nodes(self, data: Data, h: Tensor) -> Tensor:
        edge_index = data.edge_index
        edge_attr = self.edge_attr(data)
        fused = self.opt("fused")
        if fused == "auto":
            fused = self.opt("aggr") == "softmax" and edge_attr is None
        elif fused and (self.opt("aggr") != "softmax" or edge_attr is not None):
            raise ConfigError(
                "encoder config: options.fused needs aggr='softmax' and no edge features (use_edge_attr=false)"
            )
        csr = incoming_csr(edge_index, h.size(0), data) if fused else None
        ckpt = self.opt("ckpt_grad")
        if ckpt == "auto":
            # The fused kernel keeps three [N, hidden] tensors per block where PyG keeps ~10 [E, hidden] ones.
            scale = _FUSED_CKPT_SCALE if fused and uses_fused_kernel(h) else 1
            ckpt = edge_index.size(1) >= scale * int(self.opt("ckpt_min_edges"))
        ckpt = bool(ckpt) and torch.is_grad_enabled()

        def conv(layer: DeepGCNLayer, x: Tensor) -> Tensor:
            if csr is None:
                return layer.conv(x, edge_index, edge_attr)
            gen: GENConv = layer.conv
            t = gen.aggr_module.t
            t = t if isinstance(t, Tensor) else x.new_tensor([float(t)])
            # GENConv with in == out channels and no edge features: MLP(x_v + softmax-aggregated fanins).
            return gen.mlp(softmax_aggregate(x, t, csr, gen.eps) + x)

        def run(layer: DeepGCNLayer, x: Tensor) -> Tensor:
            return checkpoint(conv, layer, x, use_reentrant=False) if ckpt else conv(layer, x)

        first = self.layers[0]
        x = run(first, h)  # the stem convolution runs without the residual block around it
        for layer in self.layers[1:]:
            # DeepGCNLayer's res+ block: x + conv(dropout(act(norm(x)))).
            y = F.dropout(layer.act(layer.norm(x)), p=layer.dropout, training=self.training)
            x = x + run(layer, y)
        x = first.act(first.norm(x))
        return F.dropout(x, p=self.config.dropout, training=self.training)
