r"""Hecate's fully sharded sparse data parallelism (FSSDP) for FFN experts over ``torch.distributed``.

Hecate (Qing et al. 2025, "Hecate: Unlocking Efficient Sparse Model Training via Fully Sharded Sparse Data
Parallelism", arXiv:2502.02581). Every rank is a data-parallel worker that keeps only a shard of the expert
set (``E / W`` experts, flattened to rows of one ``[E/W, P]`` parameter, so optimizer states are sharded with
them). A step materializes on rank ``r`` only the experts its own tokens use,

.. math::
    \mathcal{N}_r = \{e : \exists\, n \in \text{tokens}_r,\ e \in \text{topk}(n)\}, \qquad
    \hat W_r = \text{SparseAllGather}(\{W_e : e \in \mathcal{N}_r\}),

runs its tokens locally, and the backward of the exchange is the SparseReduceScatter: each materialized
expert's gradient goes back to its owner, which sums the contributions of every rank. Outside the step a rank
holds ``1 / W`` of the expert parameters. :meth:`FSSDPExperts.reshard` re-places experts by their observed load
(heavy experts spread over owners so no owner serves all the hot ones), moving parameters and optimizer state.

Both collectives are one ``all_to_all_single`` each (through :class:`~circuitml.moe.parallel.AllToAll`).
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from circuitml.moe.dispatch import make_plan
from circuitml.moe.experts.ffn import FFNExperts
from circuitml.moe.experts.segment_ffn import routed_ffn
from circuitml.moe.parallel import AllToAll, expert_shards
from torch import Tensor, nn


def exchange_expert_rows(
    rows: Tensor, row_experts: Tensor, placement: Tensor, want: Tensor, group: dist.ProcessGroup | None
) -> Tensor:
    """Send expert rows to the ranks that want them; returns the rows this rank wants, by ascending expert id.

    Args:
        rows: ``[R, ...]`` this rank's rows, one per expert, ordered by ascending ``row_experts``.
        row_experts: ``[R]`` global expert id of each row.
        placement: ``[E]`` rank that owns each expert (the same on every rank).
        want: ``[W, E]`` bool, ``want[q, e]``: rank ``q`` wants expert ``e`` (the same on every rank).

    Differentiable: the backward sends each row's gradient back to its owner and sums over the ranks that
    wanted it (the SparseReduceScatter of Hecate is the transpose of this SparseAllGather).
    """
    rank = dist.get_rank(group)
    world = want.shape[0]
    send_rows = [torch.nonzero(want[q].index_select(0, row_experts)).flatten() for q in range(world)]
    mine = torch.nonzero(want[rank]).flatten()  # experts this rank wants, ascending
    src = placement.index_select(0, mine)
    send_splits = [int(s.numel()) for s in send_rows]
    recv_splits = torch.bincount(src, minlength=world).tolist()
    received = AllToAll.apply(rows.index_select(0, torch.cat(send_rows)), send_splits, recv_splits, group)
    # Received rows are ordered (source rank, expert id); a stable sort by source maps them to ``mine``.
    order = torch.argsort(src, stable=True)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=order.device)
    return received.index_select(0, inverse)


def flatten_experts(experts: FFNExperts) -> Tensor:
    """``[E, P]``: each expert's parameters (in ``named_parameters`` order) as one row; differentiable."""
    return torch.cat([p.reshape(p.shape[0], -1) for _, p in experts.named_parameters()], dim=1)


def unflatten_experts(flat: Tensor, shapes: list[tuple[str, tuple[int, ...]]]) -> dict[str, Tensor]:
    """Views of rows ``flat [R, P]`` as ``{name: [R, *shape]}`` for ``shapes`` = ``[(name, per-expert shape)]``."""
    out, start = {}, 0
    for name, shape in shapes:
        size = math.prod(shape)
        out[name] = flat[:, start : start + size].reshape(flat.shape[0], *shape)
        start += size
    return out


def run_materialized(
    x: Tensor, indices: Tensor, weights: Tensor, experts: Tensor, w: dict[str, Tensor], activation: str
) -> Tensor:
    """The FFN experts ``experts`` (ascending global ids, weights ``w[name] [len(experts), ...]`` named as in
    :class:`FFNExperts`) applied to ``x`` routed by global ``indices`` (each used id must be in ``experts``)."""
    num_experts = int(experts.max()) + 1 if experts.numel() else 1
    # Re-number the materialized experts 0..len-1 so the plan's segments are dense.
    compact = torch.full((num_experts + 1,), -1, dtype=torch.long, device=indices.device)
    compact[experts] = torch.arange(experts.numel(), device=indices.device)
    local_idx = compact[torch.where((indices >= 0) & (indices < num_experts), indices, num_experts)]
    plan = make_plan(local_idx, max(1, experts.numel()))
    return routed_ffn(
        x,
        weights,
        w["gate_up_proj"],
        w["down_proj"],
        w.get("gate_up_bias"),
        w.get("down_bias"),
        plan,
        activation,
    )


def balanced_placement(load: Tensor, world: int) -> Tensor:
    """Owner rank of each expert: heaviest first to the least-loaded rank that still owns fewer than ``E/W``.

    Every rank keeps exactly ``E / W`` experts (memory stays ``1/W``) while the sum of load per owner is
    balanced greedily (LPT scheduling); ties go to the lower expert id and rank, so every rank agrees.
    """
    num_experts = load.numel()
    per_rank = num_experts // world
    order = sorted(range(num_experts), key=lambda e: (-float(load[e]), e))
    owned = [0] * world
    total = [0.0] * world
    placement = torch.empty(num_experts, dtype=torch.long)
    for e in order:  # a loop over experts, not tokens
        r = min((r for r in range(world) if owned[r] < per_rank), key=lambda r: (total[r], r))
        placement[e] = r
        owned[r] += 1
        total[r] += float(load[e])
    return placement


class FSSDPExperts(nn.Module):
    """FFN experts under fully sharded sparse data parallelism (drop-in for :class:`FFNExperts` in a block).

    Args:
        num_experts: global ``E`` (divisible by the world size ``W``).
        d_model, d_hidden, activation, bias: as in :class:`FFNExperts`.
        group: the process group (default: the world).

    ``self.owned [E/W, P]`` holds the flattened experts ``self.owned_experts`` (ascending global ids) this rank
    owns; ``self.placement [E]`` the owner of every expert; ``self.load [E]`` the global tokens per expert since
    the last :meth:`reshard`. ``forward(x, indices, weights)`` takes this rank's tokens and global expert ids;
    every rank must call it (collectives).
    """

    def __init__(
        self,
        num_experts: int,
        d_model: int,
        d_hidden: int,
        activation: str = "swiglu",
        bias: bool = False,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        super().__init__()
        self.group = group
        self.world_size, self.rank = expert_shards("FSSDPExperts", num_experts, group)
        self.num_experts, self.d_model, self.d_hidden, self.activation = (
            num_experts,
            d_model,
            d_hidden,
            activation,
        )
        # A one-expert template gives the per-expert shapes and the init (nn.Linear's scale, as FFNExperts).
        template = FFNExperts(1, d_model, d_hidden, activation=activation, bias=bias)
        self.shapes = [(name, tuple(p.shape[1:])) for name, p in template.named_parameters()]
        self.num_params = sum(math.prod(s) for _, s in self.shapes)
        n_local = num_experts // self.world_size
        self.register_buffer("placement", torch.arange(num_experts) // n_local)
        self.register_buffer("owned_experts", torch.arange(self.rank * n_local, (self.rank + 1) * n_local))
        self.register_buffer("load", torch.zeros(num_experts))
        self.last_materialized = 0
        self.owned = nn.Parameter(torch.empty(n_local, self.num_params))
        with torch.no_grad():
            for i in range(n_local):
                template.reset_parameters()
                self.owned[i] = flatten_experts(template)[0]

    @torch.no_grad()
    def load_from_full(self, full: FFNExperts) -> None:
        """Copy this rank's experts out of a full :class:`FFNExperts` (e.g. to shard a trained model)."""
        self.owned.copy_(flatten_experts(full).index_select(0, self.owned_experts))

    @torch.no_grad()
    def gather_full(self) -> dict[str, Tensor]:
        """Every expert's weights on every rank (``[E, ...]`` per FFNExperts name), for checks and export."""
        want = torch.ones(self.world_size, self.num_experts, dtype=torch.bool, device=self.owned.device)
        return unflatten_experts(
            exchange_expert_rows(self.owned, self.owned_experts, self.placement, want, self.group),
            self.shapes,
        )

    def forward(self, x: Tensor, indices: Tensor, weights: Tensor) -> Tensor:
        counts = torch.bincount(indices[indices >= 0], minlength=self.num_experts)
        with torch.no_grad():
            stats = torch.cat([counts.to(self.load.dtype), (counts > 0).to(self.load.dtype)])
            gathered = [torch.empty_like(stats) for _ in range(self.world_size)]
            dist.all_gather(gathered, stats, group=self.group)
            table = torch.stack(gathered)
            self.load += table[:, : self.num_experts].sum(0)
            want = table[:, self.num_experts :] > 0
        need = torch.nonzero(want[self.rank]).flatten()
        self.last_materialized = int(need.numel())
        flat = exchange_expert_rows(self.owned, self.owned_experts, self.placement, want, self.group)
        if need.numel() == 0:
            # No token routed here: still connect the exchange, whose backward is a collective every rank joins.
            return x * 0.0 + flat.sum() * 0.0
        return run_materialized(
            x, indices, weights, need, unflatten_experts(flat, self.shapes), self.activation
        )

    @torch.no_grad()
    def reshard(self, optimizer: torch.optim.Optimizer | None = None, load: Tensor | None = None) -> Tensor:
        """Re-place the experts by load (default: ``self.load`` seen since the last reshard) and move them.

        The parameter rows and the optimizer's per-parameter state tensors of the same shape (Adam's moments)
        move to their new owners; every rank must call it with the same ``load``. Returns the new placement.
        """
        load = self.load if load is None else load
        new_placement = balanced_placement(load.cpu(), self.world_size).to(self.placement.device)
        want = nn.functional.one_hot(new_placement, self.world_size).t().bool()
        state = optimizer.state.get(self.owned, {}) if optimizer is not None else {}
        for key, value in list(state.items()):
            if isinstance(value, Tensor) and value.shape == self.owned.shape:
                state[key] = exchange_expert_rows(value, self.owned_experts, self.placement, want, self.group)
        self.owned.copy_(
            exchange_expert_rows(self.owned, self.owned_experts, self.placement, want, self.group)
        )
        self.placement.copy_(new_placement)
        self.owned_experts.copy_(torch.nonzero(new_placement == self.rank).flatten())
        self.load.zero_()
        return new_placement


def allreduce_replicated_grads(model: nn.Module, group: dist.ProcessGroup | None = None) -> None:
    """Sum the gradients of every parameter of ``model`` that is not an FSSDP shard over the ranks (the
    data-parallel half: routers, norms, shared experts). Call after ``backward``; losses are per-rank sums
    scaled by ``1 / global tokens`` so the sum is the global gradient."""
    sharded = {id(m.owned) for m in model.modules() if isinstance(m, FSSDPExperts)}
    for p in model.parameters():
        if p.grad is not None and id(p) not in sharded:
            dist.all_reduce(p.grad, group=group)
