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

from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.autograd.profiler import record_function
from torch.utils.checkpoint import checkpoint
from torch_geometric.data import Data
from torch_geometric.nn import DeepGCNLayer, GENConv
from torch_geometric.nn import Linear as PygLinear

from circuitml.encoders.base import Encoder
from circuitml.encoders.builder import register_encoder
from circuitml.encoders.config import EncoderConfig
from circuitml.encoders.rowwise import layer_norm_relu, layer_norm_relu_fn, parallel_rows
from circuitml.encoders.softmax_aggr import (
    aggregate_rows_plus_self,
    incoming_csr,
    softmax_aggregate,
    uses_fused_kernel,
)
from circuitml.errors import ConfigError

# With the fused kernel a block keeps three [N, hidden] tensors instead of ~10 [E, hidden] ones, so checkpointing
# pays later: measured (1 thread, fwd+bwd) at 300k ANDs / 784k edges, 12.6 s and 8.3 GiB with it against 23.2 s
# and 13.3 GiB (2.2M page faults per step) without; at 100k ANDs / 261k edges 4.1 s with against 3.2 s without.
_FUSED_CKPT_SCALE = 2
# Rows per chunk of the no-grad path: the [rows, 2*hidden] MLP intermediates stay in L2 (measured at 323k nodes,
# hidden 64: the MLP runs 2.3x faster in 1024-row chunks than on the whole [N, 128]).
_INFER_ROWS = 1024


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
            2x that when the fused CPU kernel runs (it keeps three ``[N, hidden]`` tensors per block instead).

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
            scale = _FUSED_CKPT_SCALE if fused and uses_fused_kernel(h) else 1
            ckpt = edge_index.size(1) >= scale * int(self.opt("ckpt_min_edges"))
        ckpt = bool(ckpt) and torch.is_grad_enabled()
        if csr is not None and self._chunked_inference_applies(h):
            return self._encode_chunked(h, csr)

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

    def _chunked_inference_applies(self, h: Tensor) -> bool:
        """No autograd, the compiled kernels, and every op row-wise (no batch statistics, no dropout masks)."""
        rowwise = not self.training or (self.config.dropout == 0 and self.opt("norm") == "layer")
        return not torch.is_grad_enabled() and rowwise and uses_fused_kernel(h) and h.dtype != torch.bfloat16

    def _encode_chunked(self, h: Tensor, csr) -> Tensor:  # noqa: ANN001
        """The same blocks without autograd, in three ``[N, hidden]`` buffers reused by every block: ``x`` (the
        residual stream), ``y`` (its normalized, activated copy that the aggregation reads) and ``m`` (GENConv's
        MLP input). The compiled passes (aggregation, LayerNorm + ReLU) run on row ranges in parallel; the MLP
        runs over row chunks whose ``[rows, 2 hidden]`` intermediates stay in cache, and its second matmul adds
        into ``x`` in place. Nothing is allocated per block at graph size (the page faults and heap growth of the
        full-tensor path)."""
        n = h.size(0)
        threads = torch.get_num_threads()
        h = h.contiguous()
        x, y, m = torch.empty_like(h), torch.empty_like(h), torch.empty_like(h)

        def conv_into(layer: DeepGCNLayer, inp: Tensor, residual: bool) -> None:
            gen: GENConv = layer.conv
            t = float(gen.aggr_module.t)  # read here: worker threads do not inherit no_grad
            with record_function("deepgcn.softmax_aggregate"):  # labels the compiled passes in torch.profiler
                parallel_rows(
                    lambda s, e: aggregate_rows_plus_self(inp, t, csr, gen.eps, s, m[s:e]), n, threads
                )

            mlp = _mlp_plan(gen.mlp, h.dtype)

            def mlp_rows(start: int, stop: int) -> None:
                with torch.no_grad():  # worker threads do not inherit the caller's grad mode
                    for s in range(start, stop, _INFER_ROWS):
                        e = min(stop, s + _INFER_ROWS)
                        mlp(m[s:e], x[s:e], residual)

            # One single-threaded chunk loop per core, on parallel_rows' workers: the caller's thread count (the
            # user's setting) is never changed, during the call either.
            with record_function("deepgcn.mlp_chunks"):
                parallel_rows(mlp_rows, n, threads, one_thread_ops=True)

        def norm_act_into(layer: DeepGCNLayer, out: Tensor) -> None:
            if isinstance(layer.norm, nn.LayerNorm) and isinstance(layer.act, nn.ReLU):
                with record_function("deepgcn.layer_norm_relu"):
                    parallel_rows(lambda s, e: layer_norm_relu(x[s:e], layer.norm, out[s:e]), n, threads)
                return
            for s in range(0, n, _INFER_ROWS):  # eval-mode BatchNorm: a row-wise affine map
                out[s : s + _INFER_ROWS] = layer.act(layer.norm(x[s : s + _INFER_ROWS]))

        first = self.layers[0]
        conv_into(first, h, residual=False)
        for layer in self.layers[1:]:
            norm_act_into(layer, y)  # eval-mode dropout is the identity
            conv_into(layer, y, residual=True)
        norm_act_into(first, x)
        return x


def _mlp_plan(mlp: nn.Sequential, dtype: torch.dtype) -> Callable[[Tensor, Tensor, bool], None]:
    """``run(z, out, residual)``: ``out (+)= mlp(z)`` for one chunk, the per-module decisions and weight
    conversions made once per layer rather than once per chunk. LayerNorm + ReLU pairs run as one compiled pass in
    place; the last linear layer's matmul accumulates straight into ``out``."""
    mods = [mod for mod in mlp if not isinstance(mod, nn.Dropout)]  # p = 0 in GENConv's MLP, or eval mode
    steps: list[Callable[[Tensor, bool], Tensor]] = []
    i = 0
    while i < len(mods) - 1:
        mod = mods[i]
        if isinstance(mod, nn.LayerNorm) and isinstance(mods[i + 1], nn.ReLU):
            fused = layer_norm_relu_fn(mod, dtype)

            def ln_relu(z: Tensor, first: bool, fused=fused) -> Tensor:  # noqa: ANN001
                if z.dtype != dtype:  # a bf16 autocast matmul before: normalize in float32, as autocast does
                    z = z.to(dtype)
                    return fused(z, z)
                return fused(z, torch.empty_like(z) if first else z)  # never overwrite the caller's rows

            steps.append(ln_relu)
            i += 2
            continue
        steps.append(lambda z, first, mod=mod: mod(z))
        i += 1
    last = mods[-1]
    direct = isinstance(last, nn.Linear | PygLinear) and last.weight.dtype == dtype
    weight_t = last.weight.detach().t() if direct else None
    bias = last.bias.detach() if direct and last.bias is not None else None

    def run(z: Tensor, out: Tensor, residual: bool) -> None:
        for k, step in enumerate(steps):
            z = step(z, k == 0)
        if not direct or z.dtype != out.dtype:
            z = last(z)
            out.add_(z) if residual else out.copy_(z)
            return
        if residual:
            out.addmm_(z, weight_t)
        else:
            torch.mm(z, weight_t, out=out)
        if bias is not None:
            out.add_(bias)

    return run
