"""Every router of moe/routers (this area) composes with the core's FFNExperts and MoEBlock.

Reference: a naive loop over experts and slots (float64), forward and gradients, with the same routing.
"""

from __future__ import annotations

import pytest
import torch
from circuitml.moe import FFNExperts, MoEBlock, build_router

ROUTER_NAMES = [
    "expert_choice",
    "hash",
    "balanced_hash",
    "base",
    "stablemoe",
    "dselect_k",
    "comet",
    "local_search",
    "evomoe",
    "dense_to_sparse",
    "rmoe",
    "read_me",
    "deepseek",
]
D, E, K, N = 12, 6, 2, 30


def naive_moe(
    experts: FFNExperts, x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor
) -> torch.Tensor:
    """Plain definition ``y_n = sum_j w_nj * expert_{i_nj}(x_n)``: a loop over experts and slots, no sorting."""
    y = torch.zeros_like(x)
    for e in range(experts.num_experts):
        for j in range(indices.shape[1]):
            hit = indices[:, j] == e
            if hit.any():
                y = y + torch.where(hit[:, None], weights[:, j : j + 1] * experts.expert(e, x), 0.0)
    return y


@pytest.mark.parametrize("name", ROUTER_NAMES)
@pytest.mark.parametrize("training", [True, False])
def test_router_block_matches_naive_loop(name: str, training: bool) -> None:
    torch.manual_seed(1)
    router = build_router(name, d_model=D, num_experts=E, top_k=K).double()
    experts = FFNExperts(E, D, 16).double()
    block = MoEBlock(router, experts).train(training)
    ctx = {**router.example_ctx(N, torch.Generator().manual_seed(3)), "step": 0}
    x = torch.randn(N, D, dtype=torch.float64, requires_grad=True)

    torch.manual_seed(7)  # same noise draws (EvoMoE Gumbel, local-search Gumbel) in both runs
    out = block(x, **ctx)
    loss = (out.out * torch.linspace(-1, 1, D, dtype=torch.float64)).sum() + out.aux_loss
    params = [x, *experts.parameters(), *[p for p in router.parameters() if p.requires_grad]]
    grads = torch.autograd.grad(loss, params, allow_unused=True)

    torch.manual_seed(7)
    routing = router(x, **ctx)
    assert torch.equal(routing.indices, out.routing.indices)
    ref = naive_moe(experts, x, routing.indices, routing.weights)
    ref_loss = (ref * torch.linspace(-1, 1, D, dtype=torch.float64)).sum() + sum(
        routing.aux_losses.values(), x.new_zeros(())
    )
    ref_grads = torch.autograd.grad(ref_loss, params, allow_unused=True)

    torch.testing.assert_close(out.out, ref, rtol=1e-10, atol=1e-10)
    for got, want in zip(grads, ref_grads, strict=True):
        if want is None:
            assert got is None or torch.count_nonzero(got) == 0
        else:
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
    assert routing.indices.dtype == torch.long
    assert routing.weights.shape == routing.indices.shape
    assert ((routing.indices >= -1) & (routing.indices < E)).all()
    assert (routing.weights[routing.indices < 0] == 0).all()


@pytest.mark.parametrize("name", ROUTER_NAMES)
def test_router_reachable_by_name_and_config_dict(name: str) -> None:
    router = build_router({"name": name, "d_model": D, "num_experts": E, "top_k": K})
    assert router.name == name
    rebuilt = build_router(name, router.config.to_dict())
    assert rebuilt.config == router.config


@pytest.mark.parametrize("name", ROUTER_NAMES)
def test_router_handles_a_batch_of_one(name: str) -> None:
    router = build_router(name, d_model=D, num_experts=E, top_k=K).eval()
    out = router(torch.randn(1, D), **router.example_ctx(1))
    assert out.indices.shape[0] == 1 and (out.indices >= 0).any()
