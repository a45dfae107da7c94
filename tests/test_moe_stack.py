"""The MoE stack carries router state across layers (issue 14, item 1): RMoE's GRU state, Read-ME's pre-computed
plan, and a lookahead expert cache that reads the plan ahead and hits."""

from __future__ import annotations

import pytest
import torch
from circuitml.moe import FFNExperts, MoEBlock, set_top_k
from circuitml.moe.stack import ExpertStore, LookaheadExpertCache, MoEStack, build_router_stack

from circuitml.encoders import build_encoder
from circuitml.errors import CheckpointError, ConfigError
from tests.test_encoders_circuits import circuit_batch


def _capture(module: torch.nn.Module, store: list) -> None:
    module.register_forward_hook(lambda m, args, kwargs, out: store.append((kwargs, out)), with_kwargs=True)


@pytest.mark.parametrize("ckpt", [False, True])
def test_rmoe_state_flows_from_layer_to_layer_in_moe_gnn(ckpt: bool) -> None:
    batch = circuit_batch(with_prob=False)
    torch.manual_seed(0)
    options = {"router": "rmoe", "num_experts": 4, "top_k": 2, "ckpt_grad": ckpt}
    enc = build_encoder("moe_gnn", hidden=8, num_layers=3, options=options)
    calls: list[list] = [[], [], []]
    for i, layer in enumerate(enc.layers):
        _capture(layer.router, calls[i])
    out = enc(batch).node
    # Layer l's router got exactly the state layer l-1's router produced (layer 0 starts from zeros).
    assert "layer_state" not in calls[0][0][0]
    for i in (1, 2):
        assert calls[i][0][0]["layer_state"] is calls[i - 1][0][1].state
    # Layer 2's routing changes when layer 1's router changes (only the GRU that makes its state).
    logits = calls[2][0][1].logits.detach().clone()
    out.sum().backward()
    assert enc.layers[1].router.cell.weight_hh.grad.abs().sum() > 0  # trained through the carried state
    with torch.no_grad():
        enc.layers[1].router.cell.weight_hh.add_(0.5)
    enc(batch)
    assert not torch.allclose(calls[2][-1][1].logits, logits)


def test_read_me_plans_once_before_the_stack_and_layers_follow_it() -> None:
    batch = circuit_batch(with_prob=False)
    torch.manual_seed(0)
    enc = build_encoder(
        "moe_gnn",
        hidden=8,
        num_layers=3,
        options={"router": "read_me", "num_experts": 4, "top_k": 2, "expert": "ffn"},
    )
    routers = [layer.moe.router for layer in enc.layers]
    assert all(r.planner is routers[0].planner for r in routers)
    # The planner is saved once (by the first router), so the state dict has no aliased tensors.
    assert sum(".planner." in k for k in enc.state_dict()) == len(routers[0].planner.state_dict())
    inputs, calls = [], [[] for _ in routers]
    enc.norms[0].register_forward_hook(lambda m, args, out: inputs.append(args[0]))
    for r, store in zip(routers, calls, strict=True):
        _capture(r, store)
    enc.eval()
    enc(batch)
    plan = routers[0].plan(inputs[0])  # the stack input: node embeddings before any layer
    for i, store in enumerate(calls):
        kwargs, out = store[0]
        assert kwargs["routing_plan"] is calls[0][0][0]["routing_plan"]  # one plan for every layer
        assert torch.equal(out.indices, plan.layers[i].indices)
    clone = build_encoder(enc.config)
    clone.load_state_dict(enc.state_dict())
    assert clone.layers[2].moe.router.planner is clone.layers[0].moe.router.planner


def _read_me_blocks(layers: int, e: int, d: int) -> tuple[list[MoEBlock], MoEStack]:
    routers = build_router_stack("read_me", layers, d_model=d, num_experts=e, top_k=2)
    blocks = [MoEBlock(r, FFNExperts(e, d, 16)) for r in routers]
    return blocks, MoEStack(routers)


def _forward(
    blocks: list[MoEBlock], stack: MoEStack, x: torch.Tensor, cache=None
) -> tuple[torch.Tensor, object]:
    run = stack.start(router_input=x, cache=cache)
    h = x
    for i, block in enumerate(blocks):
        out = block(h, **run.ctx(i))
        run.record(i, out.routing)
        h = h + out.out
    return h, run


@torch.no_grad()
def test_lookahead_cache_feeds_the_expert_computation_and_hits(tmp_path) -> None:
    torch.manual_seed(0)
    layers, e, d = 4, 8, 8
    blocks, stack = _read_me_blocks(layers, e, d)
    x = torch.randn(6, d)  # 6 tokens x 2 slots: at most 12 <= 2 * 8 experts per layer, some unused
    want, run = _forward(blocks, stack, x)  # every expert resident in the modules
    used = [set(run.plan.layers[i].indices.flatten().tolist()) for i in range(layers)]
    demands = sum(len(u) for u in used)

    # Slow tier: a memory-mapped safetensors file. The modules' own expert weights are then destroyed, so
    # equal outputs mean the computation used the weights the cache served.
    ExpertStore.save(tmp_path / "experts.safetensors", [b.experts for b in blocks])
    store = ExpertStore.open(tmp_path / "experts.safetensors")
    (tmp_path / "bad.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="bad.safetensors: expected an expert store"):
        ExpertStore.open(tmp_path / "bad.safetensors")
    for b in blocks:
        for p in b.experts.parameters():
            p.fill_(float("nan"))
    cache = LookaheadExpertCache(slots=layers * e, fetch=store.fetch, lookahead=1)
    got, run = _forward(blocks, stack, x, cache)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert cache.misses == 0 and cache.hits == demands == store.reads == cache.prefetches
    # Layer i+1's experts were fetched while layer i was the one computing: read ahead from the plan.
    ahead = [(at, layer) for at, layer, _ in cache.log if layer > 0]
    assert ahead and all(at == layer - 1 for at, layer in ahead)
    assert {(layer, ex) for _, layer, ex in cache.log} == {(i, ex) for i in range(layers) for ex in used[i]}
    again, _ = _forward(blocks, stack, x, cache)  # warm: every expert already resident, nothing read
    torch.testing.assert_close(again, want, rtol=0, atol=1e-6)
    assert cache.hits == 2 * demands and store.reads == demands and cache.misses == 0

    # The baseline without a plan fetches every expert on demand: every demand of a forward misses.
    demand = LookaheadExpertCache(slots=2 * e, fetch=store.fetch, lookahead=None)
    got, _ = _forward(blocks, stack, x, demand)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert demand.hits == 0 and demand.misses == demands and demand.prefetches == 0


@torch.no_grad()
@pytest.mark.parametrize("lookahead", [None, 0, 2])
def test_expert_cache_never_exceeds_its_capacity(lookahead) -> None:
    torch.manual_seed(1)
    layers, e, d = 3, 8, 8
    blocks, stack = _read_me_blocks(layers, e, d)
    store = ExpertStore.from_experts([b.experts for b in blocks])
    cache = LookaheadExpertCache(slots=3, fetch=store.fetch, lookahead=lookahead)
    for seed in range(3):
        x = torch.randn(10, d, generator=torch.Generator().manual_seed(seed))
        want, _ = _forward(blocks, stack, x)
        got, _ = _forward(blocks, stack, x, cache)
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        assert len(cache.resident) <= 3
    assert cache.peak == 3 and cache.misses > 0  # 3 slots hold fewer experts than a layer uses


def test_stack_rejects_mixed_or_unshared_read_me_routers() -> None:
    routers = build_router_stack("read_me", 2, d_model=8, num_experts=4)
    other = build_router_stack("topk", 1, d_model=8, num_experts=4)
    with pytest.raises(ConfigError, match="every MoE layer"):
        MoEStack([routers[0], other[0]])
    lone = build_router_stack("read_me", 2, d_model=8, num_experts=4)
    with pytest.raises(ConfigError, match="planner"):
        MoEStack([routers[0], lone[1]])
    with pytest.raises(ConfigError, match="pre-gated"):
        MoEStack(other).start(torch.randn(3, 8), cache=LookaheadExpertCache(2, lambda i, e: None))


def test_set_top_k_on_an_encoder_keeps_its_saved_options_in_step() -> None:
    batch = circuit_batch(with_prob=False)
    torch.manual_seed(0)
    enc = build_encoder(
        "moe_gnn", hidden=8, num_layers=2, options={"router": "dense_to_sparse", "num_experts": 4}
    ).eval()
    set_top_k(enc, 1)
    assert enc.config.options["top_k"] == 1 and enc.config.options["router_options"]["max_experts"] == 1
    clone = build_encoder(enc.config).eval()
    clone.load_state_dict(enc.state_dict())
    torch.testing.assert_close(clone(batch).node, enc(batch).node)


def _tiny_qa(router: str):
    """A 4-layer QA transformer with 2 Switch layers, and a batch of 2 (the second padded)."""
    from circuitml.tasks.qa.model import SwitchQAConfig, SwitchTransformerQA

    torch.manual_seed(0)
    cfg = SwitchQAConfig(
        vocab_size=50,
        max_position=16,
        d_model=16,
        num_layers=4,
        num_heads=2,
        d_ff=32,
        dropout=0.0,
        router=router,
        top_k=2,
        capacity_factor=None,
        normalize_weights=True,
    )
    ids = torch.randint(0, 50, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    return SwitchTransformerQA(cfg).eval(), ids, mask


@pytest.mark.parametrize("router", ["rmoe", "read_me"])
def test_qa_transformer_routes_through_the_stack(router: str) -> None:
    model, ids, mask = _tiny_qa(router)
    routers = [m.block.router for m in model.moe_layers()]
    calls: list[list] = [[] for _ in routers]
    for r, store in zip(routers, calls, strict=True):
        _capture(r, store)
    model(ids, mask)
    if router == "rmoe":
        assert calls[1][0][0]["layer_state"] is calls[0][0][1].state
        assert calls[1][0][1].state.shape[0] == int(mask.sum())  # padding is not routed
    else:
        emb = model.norm(model.tok(ids) + model.pos(torch.arange(7))[None])
        plan = routers[0].plan(emb.reshape(-1, 16)[mask.reshape(-1).bool()])
        for i, store in enumerate(calls):
            assert torch.equal(store[0][1].indices, plan.layers[i].indices)


def test_qa_transformer_computes_its_switch_layers_through_an_expert_cache() -> None:
    model, ids, mask = _tiny_qa("read_me")
    with torch.no_grad():
        want = model(ids, mask).start_logits
        store = ExpertStore.from_experts([m.block.experts for m in model.moe_layers()])
        for m in model.moe_layers():
            m.block.experts.down_proj.zero_()  # the cache's copies, not these, must be used
        model.expert_cache = LookaheadExpertCache(slots=8, fetch=store.fetch, lookahead=1)
        got = model(ids, mask).start_logits
    torch.testing.assert_close(got[mask.bool()], want[mask.bool()], rtol=0, atol=1e-6)
    assert model.expert_cache.hits > 0 and model.expert_cache.misses == 0
    with pytest.raises(ConfigError, match="inference"):
        model(ids, mask)  # under autograd the cached copies could not be trained
