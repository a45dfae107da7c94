"""DeepSeek-V3 routing (issue 14, item 7): reference comparison, group limits, loss-free bias balancing."""

from __future__ import annotations

import pytest
import torch
from circuitml.moe import build_moe, build_router
from circuitml.moe.schedule import step_routers

from circuitml.errors import ConfigError


def naive_route(router, x: torch.Tensor) -> tuple[list[set[int]], list[dict[int, float]]]:
    """Per-token loops over groups and experts, straight from the paper's equations."""
    cfg = router.config
    size = cfg.num_experts // cfg.n_group
    chosen, weights = [], []
    for t in range(x.shape[0]):
        s = torch.sigmoid(router.gate.weight.double() @ x[t].double())
        b = s + router.e_score_correction_bias.double()
        groups = sorted(
            range(cfg.n_group), key=lambda g: -float(b[g * size : (g + 1) * size].topk(2).values.sum())
        )
        allowed = [e for g in groups[: cfg.topk_group] for e in range(g * size, (g + 1) * size)]
        pick = sorted(allowed, key=lambda e: -float(b[e]))[: cfg.top_k]
        total = sum(float(s[e]) for e in pick)
        chosen.append(set(pick))
        weights.append({e: cfg.routed_scaling_factor * float(s[e]) / total for e in pick})
    return chosen, weights


def test_matches_the_naive_definition_and_group_limits_hold() -> None:
    torch.manual_seed(0)
    router = build_router(
        "deepseek", d_model=8, num_experts=16, top_k=4, n_group=4, topk_group=2, routed_scaling_factor=2.5
    ).eval()
    router.e_score_correction_bias.copy_(torch.randn(16) * 0.1)
    x = torch.randn(40, 8)
    out = router(x)
    chosen, weights = naive_route(router, x)
    for t in range(40):
        got = out.indices[t].tolist()
        assert set(got) == chosen[t]
        assert len({e // 4 for e in got}) <= 2  # at most topk_group groups
        for j, e in enumerate(got):
            assert float(out.weights[t, j]) == pytest.approx(weights[t][e], rel=1e-5)
    torch.testing.assert_close(out.weights.sum(-1), torch.full((40,), 2.5))


def test_bias_balances_a_skewed_stream_without_a_loss() -> None:
    torch.manual_seed(0)
    router = build_router("deepseek", d_model=8, num_experts=8, top_k=2, bias_update_speed=0.01).train()
    skew = torch.randn(8)
    gate_before = router.gate.weight.detach().clone()

    def imbalance() -> float:
        with torch.no_grad():
            idx = router(torch.randn(4096, 8) + 2 * skew).indices
        router.load.zero_()
        counts = torch.bincount(idx.flatten(), minlength=8).float()
        return float(counts.max() / counts.mean())

    start = imbalance()
    for _ in range(400):
        with torch.no_grad():
            out = router(torch.randn(128, 8) + 2 * skew)  # a stream whose tokens all lean one way
        assert out.aux_losses == {}  # no balancing loss at all
        step_routers(router)
    end = imbalance()
    assert start > 2.0 and end < 1.3, (start, end)
    assert torch.equal(router.gate.weight, gate_before)  # only the selection bias moved
    assert "e_score_correction_bias" in router.state_dict() and "load" not in router.state_dict()


def test_fine_grained_block_with_shared_experts_and_bad_configs() -> None:
    block = build_moe(
        d_model=8,
        num_experts=16,
        d_hidden=4,
        top_k=4,
        router="deepseek",
        shared_hidden=2 * 4,
        router_options={"n_group": 4, "topk_group": 2},
    )
    assert block(torch.randn(5, 8)).out.shape == (5, 8)
    with pytest.raises(ConfigError, match="n_group"):
        build_router("deepseek", d_model=8, num_experts=6, n_group=4)
    with pytest.raises(ConfigError, match="topk_group"):
        build_router("deepseek", d_model=8, num_experts=8, n_group=4, topk_group=5)
    with pytest.raises(ConfigError, match="exceeds"):
        build_router("deepseek", d_model=8, num_experts=8, top_k=4, n_group=4, topk_group=1)
