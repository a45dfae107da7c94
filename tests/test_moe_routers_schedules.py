"""Defining properties of the staged / scheduled / multi-layer routers: StableMoE, permutation local search,
EvoMoE (+ expert diversify), activation dense-to-sparse, RMoE, Read-ME."""

from __future__ import annotations

import pytest
import torch
from circuitml.moe import FFNExperts, MoEBlock, build_router
from circuitml.moe.routers.evomoe import diversify_experts
from circuitml.moe.routers.read_me import RoutingPlan
from circuitml.moe.schedule import step_routers

from circuitml.errors import ConfigError


# -- StableMoE --------------------------------------------------------------------------------------------
def test_stablemoe_distills_then_freezes_routing_while_the_model_trains() -> None:
    torch.manual_seed(0)
    vocab, n, d = 20, 60, 8
    router = build_router("stablemoe", d_model=d, num_experts=4, vocab_size=vocab, distill_dim=8)
    block = MoEBlock(router, FFNExperts(4, d, 16))
    embed = torch.nn.Embedding(vocab, d)
    ids = torch.randint(0, vocab, (n,))
    target = torch.randn(n, d)
    opt = torch.optim.Adam([*block.parameters(), *embed.parameters()], lr=0.05)

    def step() -> torch.Tensor:
        out = block(embed(ids), token_ids=ids)
        loss = (out.out - target).square().mean() + out.aux_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        return out.routing

    first = step()
    assert set(first.aux_losses) == {"balance_loss", "distill_loss"}
    start = float(first.aux_losses["distill_loss"])
    for _ in range(50):
        last = step()
    assert float(last.aux_losses["distill_loss"]) < 0.5 * start  # the student learned the teacher
    router.freeze_routing()
    assert not any(p.requires_grad for p in router.distill_features.parameters())
    frozen = step().indices.clone()
    before = router.centroids.detach().clone()
    for _ in range(10):
        routing = step()
        assert torch.equal(routing.indices, frozen)
        assert routing.aux_losses == {}
    assert not torch.equal(router.centroids, before)  # the gate keeps training, the assignment does not move


def test_stablemoe_stage_must_be_one_or_two() -> None:
    with pytest.raises(ConfigError, match="stage"):
        build_router("stablemoe", d_model=8, num_experts=4, stage=3)


# -- permutation local search -----------------------------------------------------------------------------
@pytest.mark.parametrize("inner", ["topk", "hash", "dselect_k", "comet"])
def test_local_search_hardens_to_a_permutation_of_the_inner_routing(inner: str) -> None:
    torch.manual_seed(0)
    router = build_router("local_search", d_model=8, num_experts=4, top_k=2, inner=inner, search_steps=2)
    x = torch.randn(16, 8)
    ctx = router.example_ctx(16)
    router.train()
    searching = router(x, **ctx)
    inner_width = router.inner(x, **ctx).indices.shape[1]
    assert searching.indices.shape[1] == inner_width * router.config.search_width  # candidates per slot
    step_routers(router)
    router(x, **ctx)
    step_routers(router)
    out = router(x, **ctx)  # step 2: the search is over
    assert bool(router.hardened)
    assert sorted(router.permutation.tolist()) == [0, 1, 2, 3]
    router.inner.eval()
    router.eval()
    inner_out = router.inner(x, **ctx)
    out = router(x, **ctx)
    mapped = torch.where(inner_out.indices >= 0, router.permutation[inner_out.indices.clamp_min(0)], -1)
    assert torch.equal(out.indices, mapped)
    torch.testing.assert_close(out.weights, inner_out.weights)


def test_local_search_escapes_a_bad_fixed_routing() -> None:
    """Hash routing sends each token class to the wrong expert; the search finds the planted permutation."""
    torch.manual_seed(0)
    e, d, n = 4, 6, 32
    router = build_router(
        "local_search",
        d_model=d,
        num_experts=e,
        top_k=1,
        inner="hash",
        search_steps=60,
        search_width=e,
        tau_start=1.0,
        tau_end=0.05,
        gumbel_noise=0.0,
    )
    experts = FFNExperts(e, d, 8)
    for p in experts.parameters():
        p.requires_grad_(False)
    ids = torch.randint(0, 1000, (n,))
    x = torch.randn(n, d)
    hashed = router.inner(x, token_ids=ids).indices[:, 0]
    planted = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():  # the target each token needs is the output of expert planted[hash(id)]
        target = torch.stack([experts.expert(int(planted[h]), x[i : i + 1])[0] for i, h in enumerate(hashed)])
    block = MoEBlock(router, experts)
    opt = torch.optim.Adam([router.log_weights], lr=0.2)
    for _ in range(60):
        out = block(x, token_ids=ids)
        loss = (out.out - target).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        step_routers(block)
    block(x, token_ids=ids)  # first forward after the search hardens the permutation
    assert torch.equal(router.permutation, planted)


# -- EvoMoE -----------------------------------------------------------------------------------------------
def test_evomoe_goes_from_dense_to_top1_on_its_schedule() -> None:
    torch.manual_seed(0)
    router = build_router("evomoe", d_model=8, num_experts=8, top_k=2, anneal_steps=100).train()
    x = torch.randn(128, 8)
    assert router.temperature(0) == pytest.approx(2.0) and router.temperature(100) == pytest.approx(0.3)
    dense = router(x, step=0)
    assert (dense.indices >= 0).sum(-1).float().mean() > 7.5  # nearly every expert at the start
    mid = (router(x, step=90).indices >= 0).sum(-1).float().mean()
    assert 1 < mid < 7.5
    sparse = router(x, step=100)
    assert sparse.indices.shape[1] == 1 and (sparse.indices >= 0).all()
    router.set_step(5)
    router(x)
    assert int(router.step) == 5  # a forward never advances the schedule
    step_routers(router)
    assert int(router.step) == 6  # the trainer's optimizer step does


def test_evomoe_gumbel_noise_is_reproducible_with_a_generator() -> None:
    router = build_router("evomoe", d_model=8, num_experts=8, anneal_steps=10).train()
    x = torch.randn(32, 8)
    a = router(x, step=3, generator=torch.Generator().manual_seed(1))
    b = router(x, step=3, generator=torch.Generator().manual_seed(1))
    assert torch.equal(a.indices, b.indices) and torch.equal(a.weights, b.weights)


def test_diversify_spawns_distinct_masked_copies_of_one_expert() -> None:
    torch.manual_seed(0)
    experts = FFNExperts(4, 8, 16)
    trained = {k: v[1].clone() for k, v in experts.state_dict().items()}
    diversify_experts(experts, source=1, keep=0.75, generator=torch.Generator().manual_seed(0))
    for key, param in experts.state_dict().items():
        assert torch.equal(param[1], trained[key])
        for e in (0, 2, 3):
            kept = param[e] != 0
            assert 0.6 < kept.float().mean() < 0.9
            torch.testing.assert_close(param[e][kept], trained[key][kept] / 0.75)
        assert not torch.equal(param[0], param[2])
    with pytest.raises(ConfigError, match="keep"):
        diversify_experts(experts, keep=0.0)


# -- activation dense-to-sparse ---------------------------------------------------------------------------
@pytest.mark.parametrize("activation", ["relu", "gelu", "sigmoid", "identity"])
def test_dense_to_sparse_gate_sparsifies_as_temperature_falls(activation: str) -> None:
    torch.manual_seed(0)
    router = build_router(
        "dense_to_sparse",
        d_model=8,
        num_experts=8,
        activation=activation,
        tau_start=100.0,
        tau_end=1e-3,
        anneal_steps=10,
        threshold=0.05,
    )
    x = torch.randn(64, 8) * 4
    dense = router(x, step=0)
    assert (dense.indices >= 0).all() and dense.indices.shape[1] == 8
    sparse = router(x, step=10)
    assert ((sparse.indices >= 0).sum(-1) <= 2).float().mean() > 0.9
    logits = router.gate(x)
    act = {"relu": torch.relu, "gelu": torch.nn.functional.gelu, "sigmoid": torch.sigmoid}.get(
        activation, lambda t: t
    )
    torch.testing.assert_close(sparse.probs, torch.softmax(act(logits) / 1e-3, dim=-1))


def test_dense_to_sparse_caps_experts_per_token() -> None:
    router = build_router(
        "dense_to_sparse", d_model=8, num_experts=8, max_experts=3, tau_start=50.0, threshold=0.0
    )
    out = router(torch.randn(20, 8), step=0)
    assert ((out.indices >= 0).sum(-1) == 3).all()


# -- RMoE -------------------------------------------------------------------------------------------------
def test_rmoe_carries_a_gru_state_across_layers_with_gradients() -> None:
    torch.manual_seed(0)
    d, e = 8, 4
    blocks = [
        MoEBlock(build_router("rmoe", d_model=d, num_experts=e, top_k=2), FFNExperts(e, d, 16))
        for _ in range(3)
    ]
    x = torch.randn(10, d)
    h, state = x, None
    outs = []
    for block in blocks:
        out = block(h, layer_state=state)
        h, state = h + out.out, out.routing.state
        outs.append(out)
    assert state.shape == (10, blocks[0].router.state_dim)
    # Layer 2's routing depends on layer 1's state, not only on its own input.
    again = blocks[1].router(outs[0].out * 0 + x + outs[0].out, layer_state=torch.zeros_like(state))
    assert not torch.allclose(again.logits, outs[1].routing.logits)
    # A loss on the last layer trains the first router through the carried state.
    outs[-1].out.sum().backward()
    assert blocks[0].router.proj.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="layer_state"):
        blocks[0].router(x, layer_state=torch.zeros(3, 3))


# -- Read-ME ----------------------------------------------------------------------------------------------
def test_read_me_plans_every_layer_once_from_the_input_features() -> None:
    torch.manual_seed(0)
    d, e, layers = 8, 4, 3
    first = build_router("read_me", d_model=d, num_experts=e, top_k=2, num_layers=layers)
    routers = [first] + [first.for_layer(i) for i in range(1, layers)]
    assert all(r.planner is first.planner for r in routers)
    blocks = [MoEBlock(r, FFNExperts(e, d, 16)) for r in routers]
    emb = torch.randn(12, d)
    plan = first.plan(emb)
    assert isinstance(plan, RoutingPlan) and plan.tokens_per_expert.shape == (layers, e)
    assert (plan.tokens_per_expert.sum(-1) == 24).all()
    order, counts = plan.dispatch_order(1)
    flat = plan.layers[1].indices.reshape(-1)
    assert torch.equal(flat[order], torch.sort(flat).values) and torch.equal(
        counts, torch.bincount(flat, minlength=e)
    )
    h, state = emb, None
    for layer, block in enumerate(blocks):
        out = block(h, layer_state=state)
        assert torch.equal(out.routing.indices, plan.layers[layer].indices)  # fixed ahead of the backbone
        h, state = h + 10 * out.out, out.routing.state
    (h.sum()).backward()
    assert first.planner.heads.grad[2].abs().sum() > 0  # the last layer's head trains through the plan


def test_read_me_rejects_a_plan_of_other_tokens() -> None:
    router = build_router("read_me", d_model=8, num_experts=4, num_layers=2)
    plan = router.plan(torch.randn(5, 8))
    with pytest.raises(ConfigError, match="plan"):
        router.for_layer(1)(torch.randn(6, 8), routing_plan=plan)
