"""The MoE stack carries router state across layers (issue 14, item 1): RMoE's GRU state, Read-ME's pre-computed
plan, and a lookahead expert cache that reads the plan ahead and hits."""

from __future__ import annotations

import pytest
import torch
from circuitml.moe import FFNExperts, MoEBlock, set_top_k
from circuitml.moe.stack import LookaheadExpertCache, MoEStack, build_router_stack

from circuitml.encoders import build_encoder
from circuitml.errors import ConfigError
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


def test_lookahead_cache_reads_the_plan_ahead_and_hits() -> None:
    torch.manual_seed(0)
    layers, e, d = 4, 8, 8
    blocks, stack = _read_me_blocks(layers, e, d)
    fetched: list[tuple[int, int]] = []

    def fetch(layer: int, expert: int) -> torch.Tensor:
        fetched.append((layer, expert))
        return blocks[layer].experts.down_proj[expert].detach().clone()

    x = torch.randn(6, d)  # 6 tokens x 2 slots: at most 12 <= 2 * 8 experts per layer, some unused
    cache = LookaheadExpertCache(slots=2 * e, fetch=fetch, lookahead=1)
    run = stack.start(router_input=x, cache=cache)
    h = x
    for i, block in enumerate(blocks):
        out = block(h, **run.ctx(i))
        run.record(i, out.routing)
        assert torch.equal(out.routing.indices, run.plan.layers[i].indices)
        h = h + out.out
    used = [set(run.plan.layers[i].indices.flatten().tolist()) for i in range(layers)]
    assert cache.misses == 0 and cache.hits == sum(len(u) for u in used)
    # Layer i+1's experts were fetched while layer i was the one computing: read ahead from the plan.
    ahead = [(at, layer) for at, layer, _ in cache.log if layer > 0]
    assert ahead and all(at == layer - 1 for at, layer in ahead)
    assert set(fetched) == {(i, ex) for i in range(layers) for ex in used[i]}
    torch.testing.assert_close(
        cache.get(layers - 1, next(iter(used[-1]))), blocks[-1].experts.down_proj[next(iter(used[-1]))]
    )

    # The baseline without a plan fetches every expert on demand: one miss per (layer, expert).
    demand = LookaheadExpertCache(slots=2 * e, fetch=fetch, lookahead=0)
    for i in range(layers):
        for ex in sorted(used[i]):
            demand.get(i, ex)
    assert demand.hits == 0 and demand.misses == sum(len(u) for u in used)


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


@pytest.mark.parametrize("router", ["rmoe", "read_me"])
def test_qa_transformer_routes_through_the_stack(router: str) -> None:
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
    model = SwitchTransformerQA(cfg).eval()
    routers = [m.block.router for m in model.moe_layers()]
    calls: list[list] = [[] for _ in routers]
    for r, store in zip(routers, calls, strict=True):
        _capture(r, store)
    ids = torch.randint(0, 50, (2, 7))
    mask = torch.ones(2, 7, dtype=torch.long)
    mask[1, 5:] = 0
    model(ids, mask)
    if router == "rmoe":
        assert calls[1][0][0]["layer_state"] is calls[0][0][1].state
        assert calls[1][0][1].state.shape[0] == int(mask.sum())  # padding is not routed
    else:
        emb = model.norm(model.tok(ids) + model.pos(torch.arange(7))[None])
        plan = routers[0].plan(emb.reshape(-1, 16)[mask.reshape(-1).bool()])
        for i, store in enumerate(calls):
            assert torch.equal(store[0][1].indices, plan.layers[i].indices)
