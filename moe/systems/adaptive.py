r"""Tutel's adaptive MoE runtime: dynamic capacity factor, run-time EP/DP switching, adaptive pipelining degree.

Tutel (Hwang et al. 2023, "Tutel: Adaptive Mixture-of-Experts at Scale", MLSys 2023). Three knobs are chosen
at run time, each without changing what the layer computes:

* **Dynamic capacity** — the capacity factor of a step is the smallest that drops no token, bounded:
  :math:`f_t = \mathrm{clip}\big(\max_e c_e \cdot E / (N k),\ f_{min},\ f_{max}\big)` with :math:`c_e` the
  (all-reduced, so every rank agrees) tokens routed to expert :math:`e`.
* **EP <-> DP switching** — one weight layout (rank ``r`` stores experts ``rE/W ..``) serves both expert
  parallelism (tokens travel by all-to-all) and ZeRO-style data parallelism (expert weights are all-gathered,
  tokens stay; the gradient goes back by the transpose, a reduce-scatter), so the layer can switch per step.
* **Adaptive pipelining degree** — the EP all-to-all is cut into ``d`` chunks (each (rank, expert) segment
  split ``d`` ways) so chunk ``c+1`` travels while chunk ``c`` computes; ``d`` is picked by measurement.

Outputs and gradients are the same under every setting (the chunks and the two parallel forms only reorder
the same sums), which the tests check.
"""

from __future__ import annotations

import dataclasses
import math
import time

import torch
import torch.distributed as dist
from circuitml.moe.dispatch import combine_outputs, gather_tokens, make_plan
from circuitml.moe.parallel import AllToAll, ExpertParallelFFN, _exchange, _local_plan
from circuitml.moe.router import Router, RouterOutput
from circuitml.moe.systems.fssdp import (
    exchange_expert_rows,
    flatten_experts,
    run_materialized,
    unflatten_experts,
)
from torch import Tensor, nn

from circuitml.errors import ConfigError

MODES = ("ep", "dp")


class DynamicCapacityRouter(nn.Module):
    """Wraps a dropless router; each step drops only beyond the capacity factor the observed load needs.

    Args:
        router: a :class:`Router` built with ``capacity_factor=None``.
        min_factor, max_factor: bounds of the per-step factor (``max_factor`` caps memory as in Tutel).
        group: ranks whose loads are combined (the max over ranks, so every rank uses one capacity), or
            ``None`` for the world when ``torch.distributed`` is initialized, else this process alone.

    ``last_factor`` is the factor used by the last forward.
    """

    def __init__(
        self,
        router: Router,
        min_factor: float = 1.0,
        max_factor: float = 4.0,
        group: dist.ProcessGroup | None = None,
    ) -> None:
        super().__init__()
        if router.config.capacity_factor is not None:
            raise ConfigError(
                "DynamicCapacityRouter: expected a dropless router (capacity_factor=None), "
                f"got capacity_factor={router.config.capacity_factor}"
            )
        if not 0 < min_factor <= max_factor:
            raise ConfigError(
                f"DynamicCapacityRouter: expected 0 < min_factor <= max_factor, got {min_factor}, {max_factor}"
            )
        self.router, self.min_factor, self.max_factor, self.group = router, min_factor, max_factor, group
        self.last_factor = float("nan")

    @property
    def num_experts(self) -> int:
        return self.router.num_experts

    def needed_factor(self, indices: Tensor) -> float:
        """Smallest capacity factor that keeps every (token, slot) pair of ``indices`` (max over the group)."""
        num_tokens, k = indices.shape
        counts = torch.bincount(indices[indices >= 0], minlength=self.num_experts).double()
        need = counts.max() * self.num_experts / max(1, num_tokens * k)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(need, op=dist.ReduceOp.MAX, group=self.group)
        return float(need)

    def forward(self, x: Tensor, **ctx) -> RouterOutput:
        out = self.router(x, **ctx)
        factor = min(self.max_factor, max(self.min_factor, self.needed_factor(out.indices)))
        self.last_factor = factor
        num_tokens, k = out.indices.shape
        capacity = max(self.router.config.min_capacity, math.ceil(factor * num_tokens * k / self.num_experts))
        indices, weights = self.router.apply_capacity(out.indices, out.weights, capacity=capacity)
        return dataclasses.replace(out, indices=indices, weights=weights)


def _chunk_order(plan_counts: Tensor, degree: int) -> tuple[Tensor, Tensor]:
    """Split every expert segment of expert-sorted rows into ``degree`` near-equal parts.

    Returns the chunk-major row order (chunk, expert, position) and ``counts[degree, E]`` per chunk.
    """
    num_rows, device = int(plan_counts.sum()), plan_counts.device
    expert = torch.repeat_interleave(
        torch.arange(plan_counts.numel(), device=device), plan_counts, output_size=num_rows
    )
    starts = torch.cumsum(plan_counts, 0) - plan_counts
    pos = torch.arange(num_rows, device=device) - starts.index_select(0, expert)
    chunk = pos * degree // plan_counts.index_select(0, expert).clamp_min(1)
    order = torch.argsort(chunk * plan_counts.numel() + expert, stable=True)
    counts = torch.bincount(chunk * plan_counts.numel() + expert, minlength=degree * plan_counts.numel())
    return order, counts.view(degree, plan_counts.numel())


class _Start(torch.autograd.Function):
    """Launch an asynchronous all-to-all; the result is valid after :class:`_Wait`. Backward: the reverse
    exchange, synchronous."""

    @staticmethod
    def forward(ctx, inp: Tensor, send: list[int], recv: list[int], group, works: list) -> Tensor:  # type: ignore[override]
        ctx.splits, ctx.group = (send, recv), group
        inp = inp.contiguous()
        out = inp.new_empty((sum(recv),) + tuple(inp.shape[1:]))
        works.append((dist.all_to_all_single(out, inp, recv, send, group=group, async_op=True), inp))
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        send, recv = ctx.splits
        return _exchange(grad.contiguous(), recv, send, ctx.group), None, None, None, None


class _Wait(torch.autograd.Function):
    @staticmethod
    def forward(ctx, out: Tensor, works: list) -> Tensor:  # type: ignore[override]
        work, _ = works.pop(0)
        work.wait()
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad: Tensor):  # type: ignore[override]
        return grad, None


class AdaptiveParallelFFN(nn.Module):
    """FFN experts sharded as in :class:`ExpertParallelFFN`, run as EP (pipelined, degree ``d``) or DP.

    Args:
        num_experts, d_model, d_hidden, activation, bias, group: as :class:`ExpertParallelFFN`.
        mode: ``"ep"`` or ``"dp"``; ``degree``: EP pipelining degree (``>= 1``).

    :meth:`tune` measures every (mode, degree) candidate on a batch and keeps the fastest (the max over ranks,
    so all ranks agree). ``forward(x, indices, weights)`` as :class:`ExpertParallelFFN`.
    """

    def __init__(
        self,
        num_experts: int,
        d_model: int,
        d_hidden: int,
        activation: str = "swiglu",
        bias: bool = False,
        group: dist.ProcessGroup | None = None,
        mode: str = "ep",
        degree: int = 1,
    ) -> None:
        super().__init__()
        self.ep = ExpertParallelFFN(num_experts, d_model, d_hidden, activation, bias, group)
        self.set_mode(mode, degree)

    def set_mode(self, mode: str, degree: int = 1) -> None:
        if mode not in MODES:
            raise ConfigError(f"AdaptiveParallelFFN: mode: expected one of {MODES}, got {mode!r}")
        if degree < 1:
            raise ConfigError(f"AdaptiveParallelFFN: degree: expected >= 1, got {degree}")
        self.mode, self.degree = mode, degree

    def load_from_full(self, full) -> None:
        self.ep.load_from_full(full)

    def forward(self, x: Tensor, indices: Tensor, weights: Tensor) -> Tensor:
        if self.mode == "dp":
            return self._forward_dp(x, indices, weights)
        return self._forward_ep(x, indices, weights)

    def _forward_dp(self, x: Tensor, indices: Tensor, weights: Tensor) -> Tensor:
        ep = self.ep
        every = torch.arange(ep.num_experts, device=x.device)
        want = torch.ones(ep.world_size, ep.num_experts, dtype=torch.bool, device=x.device)
        placement = every // ep.num_local
        rows = flatten_experts(ep.local)
        flat = exchange_expert_rows(
            rows, every[ep.first_expert : ep.first_expert + ep.num_local], placement, want, ep.group
        )
        shapes = [(name, tuple(p.shape[1:])) for name, p in ep.local.named_parameters()]
        return run_materialized(
            x, indices, weights, every, unflatten_experts(flat, shapes), ep.local.activation
        )

    def _forward_ep(self, x: Tensor, indices: Tensor, weights: Tensor) -> Tensor:
        ep, degree = self.ep, self.degree
        world, n_local = ep.world_size, ep.num_local
        plan = make_plan(indices, ep.num_experts)
        xs = gather_tokens(x, plan)
        order, chunk_counts = _chunk_order(plan.counts, degree)
        send_counts = chunk_counts.view(degree, world, n_local).transpose(0, 1).contiguous()  # [W, d, n]
        recv_counts = torch.empty_like(send_counts)
        dist.all_to_all_single(recv_counts, send_counts, group=ep.group)
        xs = xs.index_select(0, order)  # chunk-major: chunk c's rows, grouped by (rank, expert)
        chunk_rows = chunk_counts.sum(1).tolist()
        outs, works = [], []
        pieces = list(torch.split(xs, chunk_rows))
        splits = [
            (send_counts[:, c].sum(1).tolist(), recv_counts[:, c].sum(1).tolist()) for c in range(degree)
        ]
        started = [_Start.apply(pieces[0], *splits[0], ep.group, works)]
        for c in range(degree):
            if c + 1 < degree:  # the next chunk travels while this one computes
                started.append(_Start.apply(pieces[c + 1], *splits[c + 1], ep.group, works))
            received = _Wait.apply(started[c], works)
            counts_c = recv_counts[:, c]  # [W, n]: rows from each source rank per local expert
            local_ids = torch.repeat_interleave(
                torch.arange(n_local, device=x.device).repeat(world), counts_c.reshape(-1)
            )
            perm = torch.argsort(local_ids, stable=True)
            inverse = torch.empty_like(perm)
            inverse[perm] = torch.arange(perm.numel(), device=perm.device)
            y_local = ep.local.experts_sorted(received.index_select(0, perm), _local_plan(counts_c.sum(0)))
            send, recv = splits[c]
            outs.append(AllToAll.apply(y_local[:-1].index_select(0, inverse), recv, send, ep.group))
        y = torch.cat(outs)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        return combine_outputs(y.index_select(0, inverse), weights, plan)

    @torch.no_grad()
    def tune(
        self,
        x: Tensor,
        indices: Tensor,
        weights: Tensor,
        degrees: tuple[int, ...] = (1, 2, 4),
        repeats: int = 2,
    ) -> dict[tuple[str, int], float]:
        """Time ``("dp", 1)`` and ``("ep", d)`` for each ``d`` on this batch (best of ``repeats``, max over
        ranks), switch to the fastest and return every time in seconds."""
        times: dict[tuple[str, int], float] = {}
        for mode, degree in [("dp", 1)] + [("ep", d) for d in degrees]:
            self.set_mode(mode, degree)
            best = float("inf")
            for _ in range(repeats):
                dist.barrier(group=self.ep.group)
                t0 = time.perf_counter()
                self(x, indices, weights)
                best = min(best, time.perf_counter() - t0)
            t = torch.tensor(best)
            dist.all_reduce(t, op=dist.ReduceOp.MAX, group=self.ep.group)
            times[(mode, degree)] = float(t)
        self.set_mode(*min(times, key=times.get))
        return times
