r"""MoE²: budgeted selection of heterogeneous experts, then gating among the chosen.

MoE² (Jin et al. 2025, "MoE$^2$: Optimizing Collaborative Inference for Edge Large Language Models",
arXiv:2501.09410). Experts differ in size, latency and energy; inference uses two levels. (1) Offline, choose
the subset :math:`S` of experts that maximizes the gated mixture's quality under the budgets,

.. math::
    \max_{S \subseteq [M]} f(S) \quad \text{s.t.} \quad \max_{i \in S} \ell_i \le L,\ \ \sum_{i \in S} e_i \le B,

where experts run in parallel on their own devices (latency is the slowest chosen one, energy adds up).
The paper shows :math:`f` is monotone (adding an expert to the gate's choices never hurts with an optimal
gate) and solves the problem by discrete monotonic optimization: branch and bound in which a node (chosen
:math:`S`, undecided :math:`R`) is bounded by :math:`f(S \cup R')`, :math:`R'` the undecided experts that
still fit beside :math:`S`, and a node whose :math:`S \cup R'` fits is solved by it outright. (2) Online, the
gate routes each input among the chosen experts only (the others never run).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from circuitml.errors import ConfigError


@dataclass(frozen=True)
class ExpertCost:
    """Measured cost of one expert: ``latency`` (s per batch, wall clock) and ``energy`` (an energy proxy:
    CPU seconds per batch, i.e. joules at one watt per busy core)."""

    latency: float
    energy: float


def measure_cost(expert: nn.Module, example: Tensor, repeats: int = 5) -> ExpertCost:
    """Best-of-``repeats`` wall time and CPU time of ``expert(example)`` (no grad) on this machine."""
    best_wall, best_cpu = float("inf"), float("inf")
    with torch.no_grad():
        expert(example)  # warm-up
        for _ in range(repeats):
            w0, c0 = time.perf_counter(), time.process_time()
            expert(example)
            best_wall = min(best_wall, time.perf_counter() - w0)
            best_cpu = min(best_cpu, time.process_time() - c0)
    return ExpertCost(best_wall, best_cpu)


def feasible(
    subset: Sequence[int], costs: Sequence[ExpertCost], latency_budget: float, energy_budget: float
) -> bool:
    """Whether ``subset`` meets both budgets (latency: slowest chosen; energy: sum)."""
    if not subset:
        return True
    return (
        max(costs[i].latency for i in subset) <= latency_budget
        and sum(costs[i].energy for i in subset) <= energy_budget
    )


@dataclass
class Selection:
    """Result of :func:`select_experts`: the subset, its quality, and how many subsets were evaluated."""

    subset: tuple[int, ...]
    quality: float
    evaluations: int


def select_experts(
    quality: Callable[[tuple[int, ...]], float],
    costs: Sequence[ExpertCost],
    latency_budget: float = float("inf"),
    energy_budget: float = float("inf"),
) -> Selection:
    """The feasible subset of highest ``quality`` (a monotone set function), by branch and bound.

    Ties go to the lower total energy, then to the lexicographically smaller subset. With a monotone
    ``quality`` the answer equals exhaustive search; ``quality`` is memoised, and ``evaluations`` counts calls.
    """
    m = len(costs)
    cache: dict[tuple[int, ...], float] = {}

    def f(s: tuple[int, ...]) -> float:
        if s not in cache:
            cache[s] = float(quality(s))
        return cache[s]

    def key(s: tuple[int, ...]) -> tuple:
        return (f(s), -sum(costs[i].energy for i in s), tuple(-i for i in s))

    best: tuple[int, ...] = ()

    def consider(s: tuple[int, ...]) -> None:
        nonlocal best
        if key(s) > key(best):
            best = s

    def search(chosen: tuple[int, ...], undecided: tuple[int, ...]) -> None:
        fits = tuple(i for i in undecided if feasible(chosen + (i,), costs, latency_budget, energy_budget))
        upper = tuple(sorted(chosen + fits))  # every feasible subset below this node lies inside it
        if feasible(upper, costs, latency_budget, energy_budget):
            consider(upper)
        if f(upper) < f(best):
            return  # bound (monotone f): nothing below reaches the incumbent; ties are still explored
        if not fits:
            consider(chosen)
            return
        i, rest = fits[0], fits[1:]
        search(tuple(sorted(chosen + (i,))), rest)  # branch: take i ...
        search(chosen, rest)  # ... or leave it

    search((), tuple(range(m)))
    return Selection(best, f(best), len(cache))


def brute_force(
    quality: Callable[[tuple[int, ...]], float],
    costs: Sequence[ExpertCost],
    latency_budget: float = float("inf"),
    energy_budget: float = float("inf"),
) -> Selection:
    """Exhaustive reference of :func:`select_experts` (same tie-breaking): every one of the ``2^M`` subsets."""
    m = len(costs)
    best, best_key = (), None
    for mask in range(1 << m):
        s = tuple(i for i in range(m) if mask >> i & 1)
        if not feasible(s, costs, latency_budget, energy_budget):
            continue
        k = (float(quality(s)), -sum(costs[i].energy for i in s), tuple(-i for i in s))
        if best_key is None or k > best_key:
            best, best_key = s, k
    return Selection(best, float(quality(best)), 1 << m)


class BudgetedMoE(nn.Module):
    """Second level of MoE²: a gate over all ``M`` experts, restricted at run time to the selected subset.

    Args:
        experts: ``M`` modules mapping the same input to outputs of one shape (they may differ in size).
        d_model: input width of the gate (``gate: Linear(d_model, M)``).
        top_k: experts mixed per input among the selected ones.

    ``select(subset)`` sets the experts allowed to run; ``forward(x)`` returns ``sum_j w_j expert_j(x)`` over
    each row's top-``k`` selected experts (softmax over the selected logits, renormalized over the k), and
    only the selected experts run, each on the rows routed to it.
    """

    def __init__(self, experts: Sequence[nn.Module], d_model: int, top_k: int = 1) -> None:
        super().__init__()
        self.experts = nn.ModuleList(experts)
        self.gate = nn.Linear(d_model, len(experts))
        self.top_k = top_k
        self.register_buffer("selected", torch.ones(len(experts), dtype=torch.bool))

    def select(self, subset: Sequence[int]) -> None:
        if not subset:
            raise ConfigError("BudgetedMoE.select: expected at least one expert")
        if any(not 0 <= i < len(self.experts) for i in subset):
            raise ConfigError(
                f"BudgetedMoE.select: expert ids must be in 0..{len(self.experts) - 1}, got {list(subset)}"
            )
        self.selected.zero_()
        self.selected[list(subset)] = True

    def gate_logits(self, x: Tensor) -> Tensor:
        return self.gate(x).masked_fill(~self.selected, float("-inf"))

    def forward(self, x: Tensor) -> Tensor:
        logits = self.gate_logits(x)
        k = min(self.top_k, int(self.selected.sum()))
        top, idx = logits.topk(k, dim=-1)
        w = torch.softmax(top, dim=-1)
        out = None
        for e in torch.unique(idx).tolist():  # a loop over the chosen experts, each on its rows
            rows, slot = torch.nonzero(idx == e, as_tuple=True)
            y = self.experts[e](x[rows]) * w[rows, slot].unsqueeze(-1)
            if out is None:
                out = y.new_zeros((x.shape[0],) + tuple(y.shape[1:]))
            out = out.index_add(0, rows, y)
        return out
