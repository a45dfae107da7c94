"""Defining properties of the assignment routers: expert choice, hash, BASE layers, DSelect-k, COMET."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from circuitml.moe import build_router
from circuitml.moe.routers._gating import smooth_step
from circuitml.moe.routers.base_layers import balanced_assignment
from circuitml.moe.routers.hash import balanced_assignment_table, rendezvous_experts
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import linear_sum_assignment

FAST = settings(max_examples=25, deadline=None)


# -- expert choice ----------------------------------------------------------------------------------------
@FAST
@given(
    n=st.integers(1, 40),
    e=st.integers(1, 8),
    cf=st.sampled_from([0.5, 1.0, 2.0, 3.0]),
    seed=st.integers(0, 99),
)
def test_expert_choice_every_expert_takes_exactly_capacity_tokens(
    n: int, e: int, cf: float, seed: int
) -> None:
    torch.manual_seed(seed)
    router = build_router("expert_choice", d_model=8, num_experts=e, top_k=1, capacity_factor=cf)
    x = torch.randn(n, 8)
    out = router(x)
    cap = min(n, max(1, math.ceil(n * cf / e)))
    counts = torch.bincount(out.indices[out.indices >= 0], minlength=e)
    assert counts.tolist() == [cap] * e
    # Token-major layout is a faithful re-packing of the experts' own top-c choice.
    gates, tokens = out.probs.t().topk(cap, dim=-1)
    for expert in range(e):
        chosen = (out.indices == expert).any(dim=-1).nonzero().squeeze(1)
        assert sorted(chosen.tolist()) == sorted(tokens[expert].tolist())
        rows, slots = (out.indices == expert).nonzero(as_tuple=True)
        torch.testing.assert_close(out.weights[rows, slots], out.probs[rows, expert])
    assert out.indices.shape[1] == int((out.indices >= 0).sum(dim=-1).max().clamp_min(1))


def test_expert_choice_tokens_may_get_zero_or_many_experts() -> None:
    torch.manual_seed(0)
    router = build_router("expert_choice", d_model=8, num_experts=4, top_k=1)
    x = torch.randn(64, 8)
    x[:8] *= 20  # confident tokens are wanted by several experts
    per_token = (router(x).indices >= 0).sum(dim=-1)
    assert per_token.min() == 0 and per_token.max() >= 2


# -- hash -------------------------------------------------------------------------------------------------
def test_hash_routing_is_fixed_parameter_free_and_ignores_x() -> None:
    router = build_router("hash", d_model=8, num_experts=8, top_k=2)
    assert not list(router.parameters())
    ids = torch.tensor([5, 17, 5, 123456789012, 0])
    a = router(torch.randn(5, 8), token_ids=ids)
    b = build_router("hash", d_model=8, num_experts=8, top_k=2)(torch.randn(5, 8), token_ids=ids)
    assert torch.equal(a.indices, b.indices)
    assert torch.equal(a.indices[0], a.indices[2])
    assert (a.indices[:, 0] != a.indices[:, 1]).all()  # k distinct experts
    assert torch.allclose(a.weights, torch.full_like(a.weights, 0.5))
    other_seed = build_router("hash", d_model=8, num_experts=8, top_k=2, seed=1)(
        torch.randn(5, 8), token_ids=ids
    )
    assert not torch.equal(a.indices, other_seed.indices)


def test_hash_spreads_ids_uniformly() -> None:
    counts = torch.bincount(rendezvous_experts(torch.arange(80_000), 16, 1, seed=3).reshape(-1), minlength=16)
    assert (counts - 5000).abs().max() < 300  # ~4.5 sigma of a binomial(80000, 1/16)


@FAST
@given(freq=st.lists(st.integers(0, 1000), min_size=1, max_size=200), e=st.integers(1, 9))
def test_balanced_hash_table_loads_within_one_id_of_the_mean(freq: list[int], e: int) -> None:
    table = balanced_assignment_table(freq, e, 1)
    load = np.bincount(table[:, 0].numpy(), weights=np.asarray(freq, dtype=float), minlength=e)
    # Greedy LPT: the most loaded expert exceeds the least loaded by at most the largest frequency.
    assert load.max() - load.min() <= max(freq)


def test_balanced_hash_fits_frequent_ids_apart_and_round_trips_state() -> None:
    router = build_router("balanced_hash", d_model=8, num_experts=4, top_k=1)
    stream = torch.cat(
        [torch.zeros(100, dtype=torch.long), torch.ones(90, dtype=torch.long), torch.arange(2, 40)]
    )
    router.fit(ids=stream)
    top = router(torch.randn(4, 8), token_ids=torch.tensor([0, 1, 2, 3])).indices[:, 0]
    assert top[0] != top[1]
    clone = build_router("balanced_hash", d_model=8, num_experts=4, top_k=1)
    clone.load_state_dict(router.state_dict())
    ids = torch.arange(0, 60)  # includes ids beyond the fitted table: hashed
    assert torch.equal(
        clone(torch.randn(60, 8), token_ids=ids).indices, router(torch.randn(60, 8), token_ids=ids).indices
    )


# -- BASE layers ------------------------------------------------------------------------------------------
@FAST
@given(n=st.integers(1, 90), e=st.integers(1, 8), seed=st.integers(0, 999))
def test_base_layers_training_assignment_is_balanced(n: int, e: int, seed: int) -> None:
    torch.manual_seed(seed)
    router = build_router("base", d_model=8, num_experts=e).train()
    out = router(torch.randn(n, 8))
    counts = torch.bincount(out.indices[:, 0], minlength=e)
    assert (out.indices >= 0).all() and counts.sum() == n
    assert counts.max() <= math.ceil(n / e)
    if n % e == 0:
        assert counts.tolist() == [n // e] * e


def test_base_layers_assignment_is_near_the_optimal_linear_assignment() -> None:
    torch.manual_seed(0)
    ratios = []
    for n, e in [(64, 8), (256, 8), (512, 16)]:
        scores = torch.randn(n, e, dtype=torch.float64)
        got = scores.gather(1, balanced_assignment(scores)[:, None]).sum().item()
        slots = scores.repeat_interleave(n // e, dim=1).numpy()
        rows, cols = linear_sum_assignment(-slots)
        ratios.append(got / slots[rows, cols].sum())
    assert min(ratios) > 0.97, ratios


def test_base_layers_inference_is_greedy_and_gate_is_sigmoid() -> None:
    torch.manual_seed(0)
    router = build_router("base", d_model=8, num_experts=4).eval()
    x = torch.randn(32, 8)
    out = router(x)
    scores = x @ router.expert_embeddings.t()
    assert torch.equal(out.indices[:, 0], scores.argmax(-1))
    torch.testing.assert_close(out.weights[:, 0], torch.sigmoid(scores.max(-1).values))


# -- DSelect-k and COMET ----------------------------------------------------------------------------------
@FAST
@given(t=st.floats(-10, 10), gamma=st.floats(0.1, 5))
def test_smooth_step_is_exactly_zero_and_one_outside_the_band(t: float, gamma: float) -> None:
    s = float(smooth_step(torch.tensor(t, dtype=torch.float64), gamma))
    if t <= -gamma / 2:
        assert s == 0.0
    elif t >= gamma / 2:
        assert s == 1.0
    else:
        assert 0.0 <= s <= 1.0
    # C1 at the band edges: the cubic meets 0 and 1 with zero slope.
    edge = torch.tensor([-gamma / 2, gamma / 2], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(smooth_step(edge, gamma).sum(), edge)
    assert torch.allclose(grad, torch.zeros(2, dtype=torch.float64))


@pytest.mark.parametrize("name", ["dselect_k", "comet"])
@pytest.mark.parametrize("num_experts", [8, 6])
def test_saturated_gates_are_exactly_k_sparse(name: str, num_experts: int) -> None:
    torch.manual_seed(0)
    k = 3
    router = build_router(name, d_model=8, num_experts=num_experts, top_k=k)
    layer = router.code_layer if name == "dselect_k" else router.split_layer
    with torch.no_grad():  # converged codes: every split saturated, each selector on its own expert
        layer.weight.zero_()
        signs = torch.tensor([1.0, -1.0])[torch.randint(0, 2, layer.bias.shape)]
        layer.bias.copy_(signs * router.config.gamma)
    x = torch.randn(50, 8)
    out = router(x)
    support = (out.probs > 0).sum(dim=-1)
    assert (support <= k).all() and (support >= 1).all()
    assert out.indices.shape[1] <= k
    torch.testing.assert_close(out.probs.sum(-1), torch.ones(50))
    assert float(out.aux_losses["entropy_loss"]) == 0.0


@pytest.mark.parametrize("name", ["dselect_k", "comet"])
def test_entropy_regularization_drives_the_gate_to_k_sparse(name: str) -> None:
    torch.manual_seed(0)
    k, e = 2, 8
    router = build_router(name, d_model=8, num_experts=e, top_k=k, entropy_weight=1.0)
    x = torch.randn(64, 8)
    assert (router(x).probs > 0).sum(-1).float().mean() > k  # dense at initialization
    opt = torch.optim.Adam(router.parameters(), lr=0.1)
    for _ in range(150):
        if (router(x).probs > 0).sum(-1).max() <= k:
            break
        opt.zero_grad()
        router(x).aux_losses["entropy_loss"].backward()
        opt.step()
    support = (router(x).probs > 0).sum(-1)
    assert support.max() <= k


def test_comet_leaf_probabilities_follow_the_tree() -> None:
    torch.manual_seed(0)
    router = build_router("comet", d_model=4, num_experts=4, top_k=1)
    x = torch.randn(5, 4)
    reach = router.leaf_probabilities(x)[:, 0]  # [N, 4] leaves of the single tree
    split = smooth_step(router.split_layer(x), router.config.gamma)  # nodes 0 (root), 1, 2
    want = torch.stack(
        [
            split[:, 0] * split[:, 1],
            split[:, 0] * (1 - split[:, 1]),
            (1 - split[:, 0]) * split[:, 2],
            (1 - split[:, 0]) * (1 - split[:, 2]),
        ],
        dim=-1,
    )
    torch.testing.assert_close(reach, want)
