"""EvoMoE's two phases as a recipe, and router schedules that count optimizer steps (issue 14, item 2)."""

from __future__ import annotations

import pytest
import torch
from circuitml.moe import FFNExperts, MoEBlock, build_router
from circuitml.moe.evomoe_recipe import evomoe_options, evomoe_phase
from circuitml.moe.schedule import step_routers

from circuitml.encoders import build_encoder
from circuitml.errors import ConfigError
from tests.test_encoders_circuits import circuit_batch


@pytest.mark.parametrize("router", ["evomoe", "dense_to_sparse"])
def test_anneal_counts_optimizer_steps_not_forwards_or_recomputation(router: str) -> None:
    """Two micro-batches per step under gradient checkpointing: the schedule moves once per optimizer step
    (it used to move on every forward and recomputation, and a short anneal then crashed the recomputation)."""
    batch = circuit_batch(with_prob=False)
    torch.manual_seed(0)
    options = {"router": router, "num_experts": 4, "ckpt_grad": True, "router_options": {"anneal_steps": 1}}
    enc = build_encoder("moe_gnn", hidden=8, num_layers=2, options=options).train()
    opt = torch.optim.SGD(enc.parameters(), lr=1e-2)
    for step in range(3):
        for _ in range(2):  # gradient accumulation
            (enc(batch).node.square().mean() + enc.aux_loss()).backward()
        assert all(int(layer.router.step) == step for layer in enc.layers)
        opt.step()
        opt.zero_grad()
        step_routers(enc)
    assert all(int(layer.router.step) == 3 for layer in enc.layers)


def _block(expert_steps: int, anneal_steps: int, keep: float = 0.9) -> MoEBlock:
    router = build_router(
        "evomoe",
        d_model=8,
        num_experts=4,
        expert_steps=expert_steps,
        anneal_steps=anneal_steps,
        tau_end=0.05,
        diversify_keep=keep,
    )
    return MoEBlock(router, FFNExperts(4, 8, 16))


def test_recipe_trains_one_expert_then_spawns_the_others_then_sparsifies() -> None:
    torch.manual_seed(0)
    assert evomoe_options(10, 0.3, 0.4) == {"expert_steps": 3, "anneal_steps": 4}
    block = _block(**evomoe_options(10, 0.3, 0.4), keep=0.5)
    opt = torch.optim.Adam(block.parameters(), lr=1e-2)
    x, target = torch.randn(32, 8), torch.randn(32, 8)
    phases, widths = [], []
    for _ in range(9):
        out = block(x)
        phases.append(evomoe_phase(block))
        widths.append(int((out.routing.indices >= 0).sum(-1).max()))
        if phases[-1] == "expert-diversify":
            assert torch.equal(out.routing.indices, torch.zeros(32, 1, dtype=torch.long))
        opt.zero_grad()
        ((out.out - target).square().mean() + out.aux_loss).backward()
        if phases[-1] == "expert-diversify":  # only the source expert learns in the first phase
            grad = block.experts.down_proj.grad
            assert grad[0].abs().sum() > 0 and grad[1:].abs().sum() == 0
        opt.step()
        step_routers(block)  # what every trainer calls after optimizer.step()
        if int(block.router.step) == 3:  # spawned right after the last expert-diversify step
            src = block.experts.down_proj[0]
            for e in (1, 2, 3):
                spawned = block.experts.down_proj[e]
                kept = spawned != 0
                assert 0.3 < kept.float().mean() < 0.7  # a Bernoulli(0.5) sub-network of the source
                torch.testing.assert_close(spawned[kept], src[kept] / 0.5)
    assert phases == ["expert-diversify"] * 3 + ["gate-sparsify"] * 4 + ["sparse"] * 2
    assert widths[3] > 1 and widths[-1] == 1  # dense gate after spawning, top-1 at the end


def test_recipe_spawns_gnn_convolution_experts() -> None:
    torch.manual_seed(0)
    options = {
        "router": "evomoe",
        "num_experts": 3,
        "router_options": {"expert_steps": 1, "diversify_keep": 0.8},
    }
    enc = build_encoder("moe_gnn", hidden=8, num_layers=1, options=options)
    step_routers(enc)
    experts = enc.layers[0].experts
    w0, w1 = experts[0].lin_l.weight, experts[1].lin_l.weight
    kept = w1 != 0
    torch.testing.assert_close(w1[kept], w0[kept] / 0.8)
    enc(circuit_batch(with_prob=False))


def test_missing_diversify_is_an_error_not_a_silent_random_expert_init() -> None:
    block = _block(expert_steps=1, anneal_steps=2)
    step_routers(block.router)  # advanced without its layer's experts: nothing to spawn them from
    with pytest.raises(ConfigError, match="step_routers"):
        block(torch.randn(4, 8))
    with pytest.raises(ConfigError, match="evomoe"):
        evomoe_phase(MoEBlock(build_router("topk", d_model=8, num_experts=4), FFNExperts(4, 8, 8)))
