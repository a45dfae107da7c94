"""MoE²: the branch-and-bound selection equals brute force, never exceeds a budget; the gate uses only the chosen."""

from __future__ import annotations

import pytest
import torch
from circuitml.moe.systems.moe2 import (
    BudgetedMoE,
    ExpertCost,
    brute_force,
    feasible,
    measure_cost,
    select_experts,
)
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from circuitml.errors import ConfigError


def _coverage(weights: list[list[float]]):
    """A monotone quality: sum over inputs of the best chosen expert's score (oracle-in-subset accuracy)."""
    t = torch.tensor(weights)

    def f(s: tuple[int, ...]) -> float:
        return float(t[:, list(s)].max(dim=1).values.sum()) if s else 0.0

    return f


@settings(max_examples=60, deadline=None)
@given(
    m=st.integers(1, 9),
    seed=st.integers(0, 10_000),
    lat_q=st.floats(0.0, 1.0),
    en_q=st.floats(0.0, 1.0),
    ties=st.booleans(),
)
def test_selection_equals_brute_force_and_respects_budgets(
    m: int, seed: int, lat_q: float, en_q: float, ties: bool
) -> None:
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(12, m, generator=g)
    if ties:
        scores = (scores * 3).round() / 3  # plateaus: many subsets of equal quality
    costs = [ExpertCost(float(a), float(b)) for a, b in torch.rand(m, 2, generator=g)]
    lat = lat_q * max(c.latency for c in costs)
    en = en_q * sum(c.energy for c in costs)
    f = _coverage(scores.tolist())
    got = select_experts(f, costs, lat, en)
    ref = brute_force(f, costs, lat, en)
    assert got.subset == ref.subset
    assert got.quality == ref.quality
    assert feasible(got.subset, costs, lat, en)
    assert got.evaluations <= 2**m


def test_bound_prunes_on_additive_quality() -> None:
    # Additive quality with one binding energy budget: far fewer than 2^10 subsets are evaluated.
    values = [0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.4, 0.6, 0.05]
    costs = [ExpertCost(1.0, e) for e in (5, 1, 3, 2, 4, 1, 5, 2, 3, 1)]
    f = lambda s: sum(values[i] for i in s)  # noqa: E731
    got = select_experts(f, costs, energy_budget=10.0)
    assert got.subset == brute_force(f, costs, energy_budget=10.0).subset
    assert got.evaluations < 2**10 // 2


class _Scaled(nn.Module):
    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += x.shape[0]
        return x * self.c


def test_gate_runs_only_the_selected_experts_and_matches_a_dense_reference() -> None:
    torch.manual_seed(0)
    experts = [_Scaled(float(c)) for c in range(1, 6)]
    moe = BudgetedMoE(experts, d_model=4, top_k=2)
    moe.select([1, 3, 4])
    x = torch.randn(30, 4)
    y = moe(x)
    # Dense reference: every expert on every row, softmax over the selected logits' top-2.
    logits = moe.gate(x)
    mask = torch.tensor([False, True, False, True, True])
    top, idx = logits.masked_fill(~mask, float("-inf")).topk(2, dim=-1)
    w = torch.softmax(top, -1)
    all_out = torch.stack([e.c * x for e in experts], dim=1)
    ref = (all_out.gather(1, idx[..., None].expand(-1, -1, 4)) * w[..., None]).sum(1)
    torch.testing.assert_close(y, ref)
    assert experts[0].calls == 0 and experts[2].calls == 0
    with pytest.raises(ConfigError, match="at least one expert"):
        moe.select([])
    with pytest.raises(ConfigError, match="must be in 0..4"):
        moe.select([7])


def test_measured_costs_are_positive_and_grow_with_width() -> None:
    torch.manual_seed(0)
    x = torch.randn(256, 64)
    small = measure_cost(nn.Sequential(nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 64)), x)
    big = measure_cost(nn.Sequential(nn.Linear(64, 2048), nn.ReLU(), nn.Linear(2048, 64)), x)
    assert 0 < small.latency < big.latency
    assert big.energy > 0
