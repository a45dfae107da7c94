"""MoE-gated GNN layers: only chosen experts compute, the sparse edge dispatch equals running every expert on
the whole graph (the dense Graph-MoE formulation), and router losses reach Encoder.aux_loss."""

from __future__ import annotations

import pytest
import torch
from circuitml.moe import build_router

from circuitml.encoders import build_encoder
from circuitml.encoders.moe_gnn import InEdgeIndex, MoEConvLayer
from tests.test_encoders_circuits import circuit_batch


def _dense_reference(layer: MoEConvLayer, x, edge_index, routing) -> torch.Tensor:
    """Every expert on the full graph, masked and weighted afterwards (what the released GMoE code does)."""
    out = torch.zeros_like(x)
    for slot in range(routing.indices.size(1)):
        for e, expert in enumerate(layer.experts):
            chosen = (routing.indices[:, slot] == e).to(x.dtype).unsqueeze(-1)
            out = out + chosen * routing.weights[:, slot : slot + 1] * expert(x, edge_index)
    return out


@pytest.mark.parametrize("conv", ["sage", "graph", "gen"])
@pytest.mark.parametrize("top_k", [1, 2])
def test_sparse_dispatch_equals_dense(conv: str, top_k: int) -> None:
    batch = circuit_batch(with_prob=False)
    h = 8
    layer = MoEConvLayer(h, build_router("topk", d_model=h, num_experts=4, top_k=top_k), conv).double()
    x = torch.randn(batch.num_nodes, h, dtype=torch.float64)
    got, _ = layer(x, InEdgeIndex(batch.edge_index, batch.num_nodes))
    want = _dense_reference(layer, x, batch.edge_index, layer.router(x))
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


def test_only_chosen_experts_compute() -> None:
    batch = circuit_batch(with_prob=False)
    # Hash routing by node type: at most 5 node types reach 8 experts, so some experts are never chosen.
    enc = build_encoder(
        "moe_gnn", hidden=8, num_layers=1, options={"router": "hash", "num_experts": 8, "top_k": 1}
    )
    layer = enc.layers[0]
    seen: dict[int, int] = {}

    def hook(idx):
        def record(module, args, kwargs, out):
            seen[idx] = seen.get(idx, 0) + out.size(0)

        return record

    for i, expert in enumerate(layer.experts):
        expert.register_forward_hook(hook(i), with_kwargs=True)
    out = enc(batch)
    out.node.square().sum().backward()
    routing = layer.router(enc.norms[0](enc.type_embedding(batch.x)), token_ids=batch.x)
    chosen = set(routing.indices.unique().tolist())
    assert set(seen) == chosen and len(chosen) < 8
    counts = torch.bincount(routing.indices.view(-1), minlength=8)
    for e in range(8):
        grads = [p.grad for p in layer.experts[e].parameters()]
        if e in chosen:
            assert seen[e] == counts[e]  # each expert computed exactly the nodes routed to it
            assert any(g is not None and g.abs().sum() > 0 for g in grads)
        else:
            assert all(g is None for g in grads)


def test_aux_losses_collected_and_trainable() -> None:
    batch = circuit_batch(with_prob=False)
    enc = build_encoder(
        "moe_gnn", hidden=8, num_layers=2, options={"router_options": {"z_loss_weight": 0.001}}
    )
    assert float(enc.aux_loss()) == 0.0
    enc(batch)
    names = set(enc.aux_losses())
    assert {"layer0.balance_loss", "layer1.balance_loss", "layer0.z_loss"} <= names
    aux = enc.aux_loss()
    assert aux.requires_grad and aux > 0
    aux.backward()
    assert enc.layers[0].router.gate.weight.grad.abs().sum() > 0
    # A non-MoE encoder reports zero.
    gcn = build_encoder("gcn", hidden=8, num_layers=1)
    gcn(batch)
    assert float(gcn.aux_loss()) == 0.0


@pytest.mark.parametrize("expert", ["conv", "ffn"])
def test_layer_checkpointing_changes_nothing(expert: str) -> None:
    batch = circuit_batch(with_prob=False)
    results = []
    for ckpt in (True, False):
        torch.manual_seed(0)
        enc = build_encoder(
            "moe_gnn",
            hidden=8,
            num_layers=2,
            options={"expert": expert, "ckpt_grad": ckpt, "router_options": {"noise": "gaussian"}},
        )
        torch.manual_seed(1)
        out = enc(batch).node
        (out.square().sum() + enc.aux_loss()).backward()
        results.append((out.detach(), enc.aux_loss().detach(), [p.grad for p in enc.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    torch.testing.assert_close(results[0][1], results[1][1], rtol=0, atol=0)
    for a, b in zip(results[0][2], results[1][2], strict=True):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
