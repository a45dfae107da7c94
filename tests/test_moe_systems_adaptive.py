"""Tutel's adaptive runtime: dynamic capacity, EP<->DP switching and pipelining degree leave results equal."""

from __future__ import annotations

import math

import pytest
import torch
from circuitml.moe import FFNExperts, build_router
from circuitml.moe.parallel import ExpertParallelFFN
from circuitml.moe.systems.adaptive import AdaptiveParallelFFN, DynamicCapacityRouter
from circuitml.moe.systems.launch import spawn_group

from circuitml.errors import ConfigError

E, D, H, N_PER_RANK = 4, 6, 10, 9


def _modes(rank: int, world: int) -> dict:
    torch.manual_seed(0)
    full = FFNExperts(E, D, H, bias=True).double()
    router = DynamicCapacityRouter(build_router("topk", d_model=D, num_experts=E, top_k=2).double(), 1.0, 1.2)
    x_all = torch.randn(world * N_PER_RANK, D, dtype=torch.float64) * 3
    g_all = torch.randn(world * N_PER_RANK, D, dtype=torch.float64)
    rows = slice(rank * N_PER_RANK, (rank + 1) * N_PER_RANK)
    with torch.no_grad():
        r = router(x_all[rows])  # each rank routes its own tokens; the factor is the max over ranks
    factor = router.last_factor

    def run(layer) -> tuple:
        x = x_all[rows].clone().requires_grad_(True)
        w = r.weights.clone().requires_grad_(True)
        y = layer(x, r.indices, w)
        y.backward(g_all[rows])
        local = layer.local if isinstance(layer, ExpertParallelFFN) else layer.ep.local
        return y, x.grad, w.grad, [p.grad.clone() for p in local.parameters()]

    ref_layer = ExpertParallelFFN(E, D, H, bias=True).double()
    ref_layer.load_from_full(full)
    ref = run(ref_layer)
    layer = AdaptiveParallelFFN(E, D, H, bias=True).double()
    layer.load_from_full(full)
    worst = {}
    for mode, degree in [("ep", 1), ("ep", 2), ("ep", 3), ("dp", 1), ("ep", 8)]:
        layer.zero_grad()
        layer.set_mode(mode, degree)
        got = run(layer)
        diffs = [float((a - b).abs().max()) for a, b in zip(got[:3], ref[:3], strict=True)]
        diffs += [float((a - b).abs().max()) for a, b in zip(got[3], ref[3], strict=True)]
        worst[f"{mode}{degree}"] = max(diffs)
    times = layer.tune(x_all[rows], r.indices, r.weights, degrees=(1, 2))
    return {
        "worst": worst,
        "factor": factor,
        "dropped": int((r.indices < 0).sum()),
        "chosen": (layer.mode, layer.degree),
        "times": len(times),
    }


@pytest.mark.slow  # spawning 2 processes that import torch takes > 5 s of wall time
def test_ep_dp_and_pipelining_degrees_give_equal_outputs_and_grads() -> None:
    results = spawn_group(_modes, 2, timeout=60)
    for res in results:
        assert max(res["worst"].values()) < 1e-12, res["worst"]
        assert res["times"] == 3
    assert results[0]["factor"] == results[1]["factor"]  # one capacity on every rank
    assert results[0]["chosen"] == results[1]["chosen"]


def _naive_needed(indices: torch.Tensor, num_experts: int) -> float:
    counts = [int((indices == e).sum()) for e in range(num_experts)]
    return max(counts) * num_experts / indices.numel()


@pytest.mark.parametrize("lo,hi", [(1.0, 8.0), (1.0, 1.1), (3.0, 8.0)])
def test_dynamic_capacity_factor_is_the_needed_one_bounded(lo: float, hi: float) -> None:
    torch.manual_seed(3)
    inner = build_router("topk", d_model=D, num_experts=8, top_k=2)
    router = DynamicCapacityRouter(inner, lo, hi)
    x = torch.randn(40, D) * 3
    out = router(x)
    dropless = inner(x)
    needed = _naive_needed(dropless.indices, 8)
    assert router.last_factor == pytest.approx(min(hi, max(lo, needed)))
    cap = math.ceil(router.last_factor * 40 * 2 / 8)
    # Equals a fixed-capacity router at that factor, and no expert exceeds the capacity.
    fixed = build_router("topk", d_model=D, num_experts=8, top_k=2, capacity_factor=router.last_factor)
    fixed.load_state_dict(inner.state_dict())
    ref = fixed(x)
    torch.testing.assert_close(out.indices, ref.indices, rtol=0, atol=0)
    torch.testing.assert_close(out.weights, ref.weights)
    assert int(torch.bincount(out.indices[out.indices >= 0], minlength=8).max()) <= cap
    if needed <= hi:
        torch.testing.assert_close(out.indices, dropless.indices, rtol=0, atol=0)  # nothing dropped
    else:
        assert (out.indices < 0).any()


def test_dynamic_capacity_rejects_bad_settings() -> None:
    with pytest.raises(ConfigError, match="expected a dropless router"):
        DynamicCapacityRouter(build_router("topk", d_model=D, num_experts=4, top_k=1, capacity_factor=1.0))
    with pytest.raises(ConfigError, match="min_factor <= max_factor"):
        DynamicCapacityRouter(build_router("topk", d_model=D, num_experts=4, top_k=1), 2.0, 1.0)
