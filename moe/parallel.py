"""Expert parallelism over ``torch.distributed``: experts sharded across ranks, tokens exchanged by all-to-all.

As in GShard (Lepikhin et al. 2020) and DeepSpeed-MoE (Rajbhandari et al. 2022): rank ``r`` of ``W`` holds
experts ``r*E/W .. (r+1)*E/W - 1``. Each rank routes its own tokens, sorts its (token, slot) pairs by global
expert — which groups them by destination rank — and sends them with one ``all_to_all_single``; the received
rows are re-sorted by local expert, run through the local experts, and sent back by the reverse all-to-all.
Both exchanges are autograd functions whose backward is the opposite exchange, so gradients flow to the
tokens of every rank and each rank's expert gradients cover the tokens of all ranks.

Works with any backend that has ``all_to_all_single`` (gloo on CPU, NCCL on GPU); where it is missing the
exchange falls back to paired ``isend``/``irecv``.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from circuitml.moe.dispatch import DispatchPlan, combine_outputs, gather_tokens, make_plan
from circuitml.moe.experts.ffn import FFNExperts
from torch import Tensor, nn

from circuitml.errors import ConfigError


def _exchange(inp: Tensor, send_splits: list[int], recv_splits: list[int], group) -> Tensor:
    out = inp.new_empty((sum(recv_splits),) + tuple(inp.shape[1:]))
    try:
        dist.all_to_all_single(out, inp.contiguous(), recv_splits, send_splits, group=group)
    except RuntimeError as exc:  # backends without all_to_all: exchange pairwise
        if "all_to_all" not in str(exc) and "not supported" not in str(exc).lower():
            raise
        _pairwise_exchange(out, inp.contiguous(), send_splits, recv_splits, group)
    return out


def _pairwise_exchange(
    out: Tensor, inp: Tensor, send_splits: list[int], recv_splits: list[int], group
) -> None:
    rank = dist.get_rank(group)
    send_off = [0]
    recv_off = [0]
    for s, r in zip(send_splits, recv_splits, strict=True):
        send_off.append(send_off[-1] + s)
        recv_off.append(recv_off[-1] + r)
    reqs = []
    for peer in range(len(send_splits)):
        peer_global = dist.get_global_rank(group, peer) if group is not None else peer
        if peer == rank:
            out[recv_off[peer] : recv_off[peer + 1]] = inp[send_off[peer] : send_off[peer + 1]]
            continue
        if send_splits[peer]:
            reqs.append(dist.isend(inp[send_off[peer] : send_off[peer + 1]], peer_global, group=group))
        if recv_splits[peer]:
            reqs.append(dist.irecv(out[recv_off[peer] : recv_off[peer + 1]], peer_global, group=group))
    for req in reqs:
        req.wait()


class AllToAll(torch.autograd.Function):
    """Differentiable ``all_to_all_single``: the backward sends gradients back along the reverse splits."""

    @staticmethod
    def forward(ctx, inp: Tensor, send_splits: list[int], recv_splits: list[int], group) -> Tensor:  # type: ignore[override]
        ctx.splits, ctx.group = (send_splits, recv_splits), group
        return _exchange(inp, send_splits, recv_splits, group)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        send_splits, recv_splits = ctx.splits
        return _exchange(grad.contiguous(), recv_splits, send_splits, ctx.group), None, None, None


def _local_plan(counts: Tensor) -> DispatchPlan:
    # The local experts only read counts/offsets of a plan (rows are already grouped by expert).
    empty = counts.new_empty(0)
    return DispatchPlan(
        num_tokens=int(counts.sum()),
        top_k=1,
        num_experts=counts.numel(),
        pair_index=empty,
        token_index=counts.new_empty(int(counts.sum())),
        slot_position=empty,
        counts=counts,
        offsets=torch.cumsum(counts, 0).to(torch.int32),
    )


def expert_shards(owner: str, num_experts: int, group: dist.ProcessGroup | None) -> tuple[int, int]:
    """``(world_size, rank)`` of ``group`` for a layer that splits ``num_experts`` evenly over its ranks.

    Raises:
        ConfigError: torch.distributed is not initialized, or the experts do not divide over the ranks.
    """
    if not dist.is_available() or not dist.is_initialized():
        raise ConfigError(f"{owner}: torch.distributed is not initialized (call init_process_group)")
    world_size, rank = dist.get_world_size(group), dist.get_rank(group)
    if num_experts % world_size:
        raise ConfigError(f"{owner}: num_experts={num_experts} is not divisible by world size {world_size}")
    return world_size, rank


class ExpertParallelFFN(nn.Module):
    """FFN experts sharded across the ranks of a process group (drop-in for :class:`FFNExperts`).

    Args:
        num_experts: global number of experts ``E`` (divisible by the world size ``W``).
        d_model, d_hidden, activation, bias: as in :class:`FFNExperts`.
        group: the process group (default: the world).

    ``self.local`` holds this rank's ``E/W`` experts; ``self.first_expert`` is the global id of the first.
    ``forward(x, indices, weights)`` takes this rank's tokens and *global* expert ids and returns ``[N, d]``;
    every rank must call it (collectives), even with zero tokens.
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
        self.world_size, self.rank = expert_shards("ExpertParallelFFN", num_experts, group)
        self.num_experts = num_experts
        self.num_local = num_experts // self.world_size
        self.first_expert = self.rank * self.num_local
        self.local = FFNExperts(self.num_local, d_model, d_hidden, activation=activation, bias=bias)

    @torch.no_grad()
    def load_from_full(self, full: FFNExperts) -> None:
        """Copy this rank's slice of a full :class:`FFNExperts` (e.g. to shard a trained model)."""
        sl = slice(self.first_expert, self.first_expert + self.num_local)
        self.local.gate_up_proj.copy_(full.gate_up_proj[sl])
        self.local.down_proj.copy_(full.down_proj[sl])
        if full.gate_up_bias is not None and self.local.gate_up_bias is not None:
            self.local.gate_up_bias.copy_(full.gate_up_bias[sl])
            self.local.down_bias.copy_(full.down_bias[sl])

    def forward(self, x: Tensor, indices: Tensor, weights: Tensor) -> Tensor:
        world, n_local = self.world_size, self.num_local
        plan = make_plan(indices, self.num_experts)
        xs = gather_tokens(x, plan)  # sorted by global expert = grouped by destination rank
        # counts[r, e]: rows this rank sends to local expert e of rank r; exchange so each rank knows its inputs.
        send_counts = plan.counts.view(world, n_local)
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts.contiguous(), group=self.group)
        send_splits = send_counts.sum(1).tolist()
        recv_splits = recv_counts.sum(1).tolist()
        received = AllToAll.apply(xs, send_splits, recv_splits, self.group)
        # Received rows are ordered (source rank, local expert); the local experts want expert-major order.
        local_ids = torch.repeat_interleave(
            torch.arange(n_local, device=x.device).repeat(world), recv_counts.reshape(-1)
        )
        perm = torch.argsort(local_ids, stable=True)
        inverse = torch.empty_like(perm)
        inverse[perm] = torch.arange(perm.numel(), device=perm.device)
        local_plan = _local_plan(recv_counts.sum(0))
        y_local = self.local.experts_sorted(received.index_select(0, perm), local_plan)
        y_back = y_local[:-1].index_select(0, inverse)
        returned = AllToAll.apply(y_back, recv_splits, send_splits, self.group)
        return combine_outputs(returned, weights, plan)
