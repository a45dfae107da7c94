"""MoE-gated GNN layers: each node is routed (by any router of :mod:`circuitml.moe`) to k expert layers.

Two expert kinds (option ``expert``):

* ``"conv"`` — every expert is a GNN convolution. Node ``v`` routed to experts ``e_1..e_k`` with weights
  ``w`` gets :math:`x'_v = x_v + \\sum_j w_j\\, \\mathrm{conv}_{e_j}(x, \\mathcal{N}^{in}(v))_v`. As in
  Graph Mixture of Experts (Wang et al., NeurIPS 2023, arXiv:2304.02806) — but where the released GMoE code runs
  every expert convolution on the whole graph and masks afterwards, here only the chosen experts compute, and
  each only on the edges whose *target* was routed to it: the (node, slot) pairs are sorted by expert
  (:func:`circuitml.moe.make_plan`), each expert's targets collect their incoming edges from a CSR index
  (edges sorted by target once per forward), and the expert runs as a bipartite convolution from all nodes to
  its ``N_e`` targets, costing O(E_e + N_e) instead of O(E + N).
* ``"ffn"`` — a transformer-style layer: a shared convolution for message passing, then the core's
  :class:`~circuitml.moe.MoEBlock` with :class:`~circuitml.moe.FFNExperts` on the node states
  (sort-and-segment FFN experts, as in GraphMETRO / MoE transformers).

Router losses (balancing, z-loss) of the last forward are collected into :meth:`Encoder.aux_loss`.

The layers' routers form a :class:`~circuitml.moe.stack.MoEStack`: RMoE's GRU state goes from each layer's
router to the next, and Read-ME's routers share one planner that routes every layer once, from the input node
embeddings, before the first layer runs (pre-gating).
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from torch_geometric.data import Data
from torch_geometric.nn import GENConv, GraphConv, SAGEConv

from circuitml.encoders.base import Encoder
from circuitml.encoders.builder import register_encoder
from circuitml.encoders.config import EncoderConfig
from circuitml.errors import ConfigError
from circuitml.moe import FFNExperts, MoEBlock, make_plan
from circuitml.moe.stack import MoEStack, build_router_stack

CONV_EXPERTS = ("sage", "graph", "gen")


def make_conv(name: str, hidden: int) -> nn.Module:
    """A convolution that accepts bipartite input ``((x_src, x_dst), edge_index, size)`` and whose cost is
    proportional to the edges and targets it is given (no per-source transform over all nodes)."""
    if name == "sage":
        return SAGEConv(hidden, hidden, aggr="mean")
    if name == "graph":
        return GraphConv(hidden, hidden, aggr="add")
    if name == "gen":
        return GENConv(hidden, hidden, aggr="softmax", learn_t=True, num_layers=1, norm="layer")
    raise ConfigError(f"encoder config: options.conv must be one of {', '.join(CONV_EXPERTS)}, got {name!r}")


class InEdgeIndex:
    """Incoming edges grouped by target (one stable sort), for gathering the in-edges of any node set."""

    def __init__(self, edge_index: Tensor, num_nodes: int) -> None:
        src, dst = edge_index
        order = torch.sort(dst, stable=True).indices
        self.src_sorted = src[order]
        self.degree = torch.bincount(dst, minlength=num_nodes)
        self.ptr = torch.zeros(num_nodes + 1, dtype=torch.long, device=dst.device)
        torch.cumsum(self.degree, 0, out=self.ptr[1:])

    def gather(self, targets: Tensor) -> tuple[Tensor, Tensor]:
        """Sources of the in-edges of ``targets`` and each edge's target position in ``targets`` (CSR gather)."""
        deg = self.degree[targets]
        local = torch.repeat_interleave(torch.arange(targets.numel(), device=targets.device), deg)
        starts = self.ptr[targets]
        # Edge position = start of its target's run + rank inside the run.
        run_start = torch.cumsum(deg, 0) - deg
        rank = torch.arange(local.numel(), device=targets.device) - run_start[local]
        return self.src_sorted[starts[local] + rank], local


class MoEConvLayer(nn.Module):
    """Per-node routing to ``num_experts`` convolutions; only the chosen experts run, on their targets' in-edges.

    Args:
        hidden: node width.
        router: a :class:`~circuitml.moe.Router` over ``hidden``-wide rows.
        conv: expert convolution kind (``sage``, ``graph``, ``gen``).
    """

    def __init__(self, hidden: int, router: nn.Module, conv: str) -> None:
        super().__init__()
        self.router = router
        self.experts = nn.ModuleList(make_conv(conv, hidden) for _ in range(router.num_experts))

    def forward(
        self, x: Tensor, in_edges: InEdgeIndex, return_routing: bool = False, **ctx: Any
    ) -> tuple[Tensor, ...]:
        routing = self.router(x, **ctx)
        plan = make_plan(routing.indices, len(self.experts))
        outputs = []
        start = 0
        for expert, count in zip(self.experts, plan.counts_list(), strict=True):
            if count == 0:
                continue  # an expert no node chose does no work at all
            targets = plan.token_index[start : start + count]
            start += count
            sources, local = in_edges.gather(targets)
            edge_index = torch.stack([sources, local])
            outputs.append(expert((x, x[targets]), edge_index, size=(x.size(0), count)))
        y = torch.cat(outputs, dim=0) if outputs else x.new_zeros(0, x.size(1))
        from circuitml.moe.dispatch import combine_outputs

        out = combine_outputs(y, routing.weights, plan)
        return (out, dict(routing.aux_losses), routing) if return_routing else (out, dict(routing.aux_losses))


class MoEFFNLayer(nn.Module):
    """A shared GENConv for message passing followed by the core MoE block of FFN experts on node states."""

    def __init__(self, hidden: int, router: nn.Module, ffn_hidden: int, activation: str) -> None:
        super().__init__()
        self.conv = GENConv(hidden, hidden, aggr="softmax", learn_t=True, num_layers=1, norm="layer")
        self.norm = nn.LayerNorm(hidden)
        self.moe = MoEBlock(router, FFNExperts(router.num_experts, hidden, ffn_hidden, activation))

    def forward(
        self, x: Tensor, edge_index: Tensor, return_routing: bool = False, **ctx: Any
    ) -> tuple[Tensor, ...]:
        x = x + self.conv(x, edge_index)
        out = self.moe(self.norm(x), **ctx)
        return (out.out, dict(out.losses), out.routing) if return_routing else (out.out, dict(out.losses))


@register_encoder
class MoEGNNEncoder(Encoder):
    """Stack of ``num_layers`` pre-norm residual MoE-gated GNN layers (``kind="moe_gnn"``).

    Options:
        expert ("conv"): ``conv`` (convolution experts) or ``ffn`` (FFN experts after a shared convolution).
        conv ("sage"): convolution kind of conv experts (``sage``, ``graph``, ``gen``).
        router ("topk"): any name registered in :data:`circuitml.moe.ROUTERS`.
        num_experts (4), top_k (2): experts and experts per node.
        router_options ({}): further router config fields (e.g. ``capacity_factor``, ``balance_loss_weight``).
        ffn_hidden (2 * hidden), activation ("swiglu"): FFN expert shape.
        ckpt_grad ("auto"): recompute each layer in backward (torch.utils.checkpoint, RNG state preserved so
            noisy routers route the same) instead of keeping its ``[E, hidden]`` message intermediates; "auto"
            turns it on from ``ckpt_min_edges`` (200000) edges up.

    Each layer: :math:`x \\leftarrow x + \\mathrm{Dropout}(\\mathrm{MoE}(\\mathrm{LayerNorm}(x)))`, then a final
    LayerNorm. Routers that hash token ids (``hash``) route by node type.
    """

    kind: ClassVar[str] = "moe_gnn"
    OPTIONS: ClassVar[dict[str, Any]] = {
        "expert": "conv",
        "conv": "sage",
        "router": "topk",
        "num_experts": 4,
        "top_k": 2,
        "router_options": {},
        "ffn_hidden": None,
        "activation": "swiglu",
        "ckpt_grad": "auto",
        "ckpt_min_edges": 200_000,
    }

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__(config)
        h = config.hidden
        expert = self.opt("expert")
        if expert not in ("conv", "ffn"):
            raise ConfigError(f"encoder config: options.expert must be 'conv' or 'ffn', got {expert!r}")
        router_options = self.opt("router_options")
        if not isinstance(router_options, dict):
            raise ConfigError("encoder config: options.router_options must be a JSON object")
        self.norms = nn.ModuleList()
        self.layers = nn.ModuleList()
        routers = build_router_stack(
            self.opt("router"),
            config.num_layers,
            d_model=h,
            num_experts=int(self.opt("num_experts")),
            top_k=int(self.opt("top_k")),
            **router_options,
        )
        for router in routers:
            if expert == "conv":
                layer: nn.Module = MoEConvLayer(h, router, self.opt("conv"))
            else:
                ffn_hidden = self.opt("ffn_hidden") or 2 * h
                layer = MoEFFNLayer(h, router, int(ffn_hidden), self.opt("activation"))
            self.norms.append(nn.LayerNorm(h))
            self.layers.append(layer)
        self.final_norm = nn.LayerNorm(h)
        self.dropout = nn.Dropout(config.dropout)
        self.stack = MoEStack(routers)

    def routing_top_k_changed(self, k: int) -> None:
        """Keep the saved options in step with :func:`circuitml.moe.set_top_k` so the encoder reloads as routed."""
        from circuitml.moe.inference import routers_of

        options = dict(self.config.options)
        options["top_k"] = k
        extra = {key: v for key, v in routers_of(self)[0].top_k_fields(k).items() if key != "top_k"}
        if extra:
            options["router_options"] = {**dict(self.opt("router_options")), **extra}
        self.config.options = options

    def encode_nodes(self, data: Data, h: Tensor) -> Tensor:
        types = self.input_types  # the (possibly masked) types of this forward, never the true data.x
        in_edges = InEdgeIndex(data.edge_index, h.size(0)) if self.opt("expert") == "conv" else None
        graph = in_edges if in_edges is not None else data.edge_index
        ckpt = self.opt("ckpt_grad")
        if ckpt == "auto":
            ckpt = data.edge_index.size(1) >= int(self.opt("ckpt_min_edges"))
        ckpt = bool(ckpt) and torch.is_grad_enabled()
        x = h
        # id-based routers (hash) route by node type; Read-ME plans every layer from the input embeddings.
        run = self.stack.start(router_input=h, token_ids=types)
        for i, (norm, layer) in enumerate(zip(self.norms, self.layers, strict=True)):
            ctx = run.ctx(i)
            if ckpt:
                y, losses, routing = checkpoint(_run_layer, norm, layer, x, graph, ctx, use_reentrant=False)
            else:
                y, losses, routing = _run_layer(norm, layer, x, graph, ctx)
            run.record(i, routing)
            x = x + self.dropout(y)
            self.add_aux_losses(losses, prefix=f"layer{i}.")
        return self.final_norm(x)


def _run_layer(norm: nn.Module, layer: nn.Module, x: Tensor, graph: Any, ctx: dict) -> tuple[Tensor, dict]:
    return layer(norm(x), graph, return_routing=True, **ctx)
