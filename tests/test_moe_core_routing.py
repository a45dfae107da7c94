"""Routing invariants (hypothesis) and the balancing / z losses of circuitml.moe."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from circuitml.moe import ROUTERS, build_router
from circuitml.moe import losses as L
from circuitml.moe.router import capacity_mask
from hypothesis import given, settings
from hypothesis import strategies as st

from circuitml.errors import ConfigError

SETTINGS = settings(max_examples=40, deadline=None)


def naive_capacity_keep(indices: torch.Tensor, num_experts: int, cap: int, order: list[int]) -> torch.Tensor:
    keep = torch.zeros_like(indices, dtype=torch.bool)
    used = [0] * num_experts
    for j in range(indices.shape[1]):
        for n in order:
            e = int(indices[n, j])
            if e >= 0 and used[e] < cap:
                used[e] += 1
                keep[n, j] = True
    return keep


@SETTINGS
@given(
    n=st.integers(1, 40),
    e=st.integers(1, 6),
    k=st.integers(1, 3),
    cap=st.integers(1, 10),
    seed=st.integers(0, 10_000),
    by_priority=st.booleans(),
)
def test_capacity_mask_matches_naive_admission(n, e, k, cap, seed, by_priority) -> None:
    g = torch.Generator().manual_seed(seed)
    indices = torch.randint(-1, e, (n, k), generator=g)
    order = torch.randperm(n, generator=g) if by_priority else None
    got = capacity_mask(indices, e, cap, order)
    want = naive_capacity_keep(indices, e, cap, list(range(n)) if order is None else order.tolist())
    assert torch.equal(got, want)


@SETTINGS
@given(
    n=st.integers(1, 50),
    e=st.integers(2, 8),
    k=st.integers(1, 3),
    cf=st.one_of(st.none(), st.floats(0.25, 2.0)),
    policy=st.sampled_from(["position", "priority"]),
    seed=st.integers(0, 10_000),
)
def test_topk_routing_invariants(n, e, k, cf, policy, seed) -> None:
    k = min(k, e)
    torch.manual_seed(seed)
    router = build_router("topk", d_model=6, num_experts=e, top_k=k, capacity_factor=cf, drop_policy=policy)
    out = router(torch.randn(n, 6))
    kept = out.indices >= 0
    counts = L.tokens_per_expert(out.indices, e)
    if cf is None:
        # Dropless: every token keeps k distinct experts and its weights sum to 1.
        assert kept.all()
        assert all(len(set(row)) == k for row in out.indices.tolist())
        torch.testing.assert_close(out.weights.sum(-1), torch.ones(n))
    else:
        cap = max(1, math.ceil(cf * n * k / e))
        assert int(counts.max()) <= cap
        assert (out.weights[~kept] == 0).all()
        # Kept weights never exceed the renormalized top-k weights they came from.
        assert (out.weights <= 1 + 1e-6).all()
    # Chosen experts are the k most probable ones, in decreasing order.
    top = out.probs.topk(k, dim=-1).indices
    assert torch.equal(torch.where(kept, out.indices, top), top)


@SETTINGS
@given(n=st.integers(1, 40), e=st.integers(2, 8), seed=st.integers(0, 1000))
def test_switch_weight_is_router_probability(n, e, seed) -> None:
    torch.manual_seed(seed)
    router = build_router("switch", d_model=5, num_experts=e, capacity_factor=None).eval()
    out = router(torch.randn(n, 5))
    assert out.indices.shape == (n, 1)
    torch.testing.assert_close(out.weights[:, 0], out.probs.max(-1).values)


def test_switch_rejects_top2() -> None:
    with pytest.raises(ConfigError, match="top_k"):
        build_router("switch", d_model=4, num_experts=4, top_k=2)


def test_noisy_topk_noise_only_in_training_and_reproducible() -> None:
    torch.manual_seed(0)
    router = build_router("noisy_topk", d_model=6, num_experts=5, top_k=2)
    x = torch.randn(30, 6)
    router.eval()
    a, b = router(x), router(x)
    assert torch.equal(a.logits, b.logits)  # no noise at inference
    router.train()
    g1, g2 = torch.Generator().manual_seed(1), torch.Generator().manual_seed(1)
    c, d = router(x, generator=g1), router(x, generator=g2)
    assert torch.equal(c.logits, d.logits) and not torch.equal(c.logits, a.logits)
    assert set(c.aux_losses) == {"balance_loss"}


def test_build_router_errors_and_forms() -> None:
    with pytest.raises(ConfigError, match="unknown name"):
        build_router("no_such_router", d_model=4, num_experts=2)
    with pytest.raises(ConfigError, match="unknown key 'topk'"):
        build_router("topk", d_model=4, num_experts=2, topk=1)
    with pytest.raises(ConfigError, match="top_k"):
        build_router("topk", d_model=4, num_experts=2, top_k=3)
    r = build_router({"name": "topk", "d_model": 4, "num_experts": 3, "top_k": 1})
    assert r.name == "topk" and r.top_k == 1
    r2 = build_router("topk", r.config, top_k=2)
    assert r2.top_k == 2 and r2.num_experts == 3
    assert {"topk", "noisy_topk", "switch"} <= set(ROUTERS)


# -- losses ---------------------------------------------------------------------------------------------


def test_router_z_loss_formula() -> None:
    logits = torch.randn(7, 5, dtype=torch.float64)
    want = sum(math.log(sum(math.exp(v) for v in row)) ** 2 for row in logits.tolist()) / 7
    assert L.router_z_loss(logits).item() == pytest.approx(want, rel=1e-12)


def test_switch_balance_loss_bounds() -> None:
    e, n = 4, 400
    uniform_probs = torch.full((n, e), 1.0 / e)
    balanced_idx = torch.arange(n).remainder(e).unsqueeze(1)
    assert L.switch_balance_loss(uniform_probs, balanced_idx, e).item() == pytest.approx(1.0)
    collapsed = F.one_hot(torch.zeros(n, dtype=torch.long), e).float()
    assert L.switch_balance_loss(collapsed, torch.zeros(n, 1, dtype=torch.long), e).item() == pytest.approx(e)


def test_router_balance_loss_uses_softmax_once() -> None:
    """A router whose logits strongly favour one expert must report a loss near E (the maximum).

    Applying softmax a second time to the probabilities (the known bug) squashes them towards uniform,
    giving a value near 1 + (E-1)/E*... well below E; this test fails on that bug."""
    torch.manual_seed(0)
    e = 8
    router = build_router(
        "topk", d_model=4, num_experts=e, top_k=1, balance_loss_weight=1.0, normalize_weights=False
    )
    with torch.no_grad():
        router.gate.weight.zero_()
        router.gate.weight[0] = 20.0  # every token: logit of expert 0 far above the rest
    x = torch.rand(64, 4) + 0.5
    out = router(x)
    assert (out.indices == 0).all()
    torch.testing.assert_close(out.probs, F.softmax(router.gate(x), -1))
    loss = out.aux_losses["balance_loss"].item()
    assert loss == pytest.approx(e * out.probs[:, 0].mean().item(), rel=1e-6)
    assert loss > 0.99 * e
    double_softmax = L.switch_balance_loss(F.softmax(out.probs, -1), out.indices, e).item()
    assert double_softmax < 0.5 * e  # what the bug would report


def test_cv2_loss_and_importance() -> None:
    imp = torch.tensor([1.0, 1.0, 1.0, 1.0])
    assert L.cv2_balance_loss(imp, imp).item() == pytest.approx(0.0, abs=1e-9)
    vals = torch.tensor([4.0, 0.0, 0.0, 0.0], dtype=torch.float64)
    mean = vals.mean().item()
    var = sum((v - mean) ** 2 for v in vals.tolist()) / 3
    assert L.cv_squared(vals).item() == pytest.approx(var / mean**2, rel=1e-9)
    idx = torch.tensor([[0, 1], [1, -1]])
    w = torch.tensor([[0.7, 0.3], [1.0, 0.5]])
    torch.testing.assert_close(L.importance(w, idx, 3), torch.tensor([0.7, 1.3, 0.0]))


def test_noisy_topk_load_matches_monte_carlo() -> None:
    torch.manual_seed(0)
    n, e, k, samples = 6, 5, 2, 20000
    clean = torch.randn(n, e, dtype=torch.float64)
    std = torch.rand(n, e, dtype=torch.float64) + 0.5
    noisy = clean + torch.randn(n, e, dtype=torch.float64) * std
    load = L.noisy_topk_load(clean, noisy, std, k)
    # P(x, i): redraw only expert i's noise, keeping the others' noisy logits fixed.
    mc = torch.zeros(e, dtype=torch.float64)
    for i in range(e):
        redraw = noisy.unsqueeze(0).repeat(samples, 1, 1)
        redraw[:, :, i] = clean[:, i] + torch.randn(samples, n, dtype=torch.float64) * std[:, i]
        in_topk = (redraw.topk(k, dim=-1).indices == i).any(-1).double()
        mc[i] = in_topk.mean(0).sum()
    torch.testing.assert_close(load, mc, atol=0.05, rtol=0)
