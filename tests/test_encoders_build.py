"""Every encoder kind builds from a config and learns signal probability on a batch of real circuits."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from circuitml.encoders import EncoderConfig, available_encoders, build_encoder
from circuitml.errors import ConfigError
from circuitml.graph import MASK_TYPE, NUM_NODE_TYPES
from tests.test_encoders_circuits import circuit_batch

# Small but real settings per kind, so each trains in a couple of seconds on 2 cores.
KINDS = {
    "deepgcn": {"num_layers": 3},
    "dag": {"num_layers": 1},
    "gcn": {"num_layers": 3},
    "sage": {"num_layers": 3},
    "gin": {"num_layers": 3},
    "gat": {"num_layers": 3, "options": {"heads": 2}},
    "moe_gnn": {"num_layers": 2},
    "moe_gnn/ffn": {"num_layers": 2, "options": {"expert": "ffn", "router": "switch", "top_k": 1}},
    "moe_gnn/hash": {"num_layers": 2, "options": {"router": "hash", "top_k": 1, "conv": "gen"}},
    "dgl_gcn": {"num_layers": 3},
    "dgl_sage": {"num_layers": 3},
}


def _config(name: str) -> EncoderConfig:
    kind = name.split("/")[0]
    return EncoderConfig(kind=kind, hidden=32, **KINDS[name])


def test_config_round_trip_and_errors() -> None:
    cfg = EncoderConfig(kind="gat", hidden=32, options={"heads": 2})
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.in_types == NUM_NODE_TYPES + 1
    with pytest.raises(ConfigError, match="'layers'"):
        EncoderConfig.from_dict({"kind": "gcn", "layers": 3})
    with pytest.raises(ConfigError, match="pool"):
        EncoderConfig(pool="median")
    with pytest.raises(ConfigError, match="hidden"):
        build_encoder("gcn", hidden=0)
    with pytest.raises(ConfigError, match="kind 'transformer' is unknown"):
        build_encoder("transformer")
    with pytest.raises(ConfigError, match="options.heads"):
        build_encoder("gcn", options={"heads": 2})
    with pytest.raises(ConfigError, match="use_edge_attr"):
        build_encoder("sage", use_edge_attr=True)
    assert set(available_encoders()) >= {"deepgcn", "dag", "gcn", "sage", "gin", "gat", "moe_gnn"}


def test_mgvga_backbone_defaults() -> None:
    enc = build_encoder("deepgcn")
    assert enc.config.hidden == 64 and len(enc.layers) == 7
    conv = enc.layers[1].conv
    assert enc.layers[1].block == "res+" and conv.aggr == "softmax" and conv.aggr_module.learn


@pytest.mark.parametrize("name", list(KINDS))
def test_encoder_learns_signal_probability(name: str) -> None:
    if name.startswith("dgl"):
        pytest.importorskip("dgl")
    batch = circuit_batch()
    enc = build_encoder(_config(name))
    head = nn.Linear(enc.out_dim, 1)
    opt = torch.optim.Adam(list(enc.parameters()) + list(head.parameters()), lr=1e-2)
    losses = []
    for _ in range(12 if name == "dag" else 40):
        out = enc(batch)
        assert out.node.shape == (batch.num_nodes, 32) and out.graph.shape == (batch.num_graphs, 32)
        pred = torch.sigmoid(head(out.node)).squeeze(-1)
        loss = nn.functional.mse_loss(pred, batch.prob)
        opt.zero_grad()
        (loss + enc.aux_loss()).backward()
        opt.step()
        losses.append(loss.item())
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    # Directed GCN/GAT average types over in-degree-normalized fanins and learn slowest (about 0.65-0.75x).
    assert last < 0.8 * first, f"{name}: loss {first:.4f} -> {last:.4f}"


@pytest.mark.parametrize("pool", ["mean", "sum", "max", "attention"])
def test_pools_and_mask_type(pool: str) -> None:
    batch = circuit_batch(with_prob=False)
    enc = build_encoder("gcn", hidden=16, num_layers=2, pool=pool)
    out = enc(batch)
    assert out.graph.shape == (batch.num_graphs, 16) and torch.isfinite(out.graph).all()
    masked = batch.x.clone()
    masked[::3] = MASK_TYPE
    out_masked = enc(batch, node_type=masked)
    assert not torch.allclose(out_masked.node, out.node)
    # One graph alone gives the same graph embedding as inside the batch.
    single = enc(batch.get_example(1)).graph
    torch.testing.assert_close(single[0], out.graph[1], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["deepgcn", "gat", "dag"])
def test_edge_attr_encoders(kind: str) -> None:
    batch = circuit_batch(explicit_not=False, with_prob=False)
    opts = {"heads": 2} if kind == "gat" else {}
    enc = build_encoder(kind, hidden=16, num_layers=2, use_edge_attr=True, explicit_not=False, options=opts)
    out = enc(batch)
    flipped = batch.clone()
    flipped.edge_attr = 1.0 - batch.edge_attr
    assert not torch.allclose(enc(flipped).node, out.node)
    with pytest.raises(ConfigError, match="edge_attr"):
        enc(circuit_batch(explicit_not=True, with_prob=False))


def test_deepgcn_checkpointing_changes_nothing() -> None:
    batch = circuit_batch(with_prob=False)
    results = []
    for ckpt in (True, False):
        torch.manual_seed(0)
        enc = build_encoder("deepgcn", hidden=16, num_layers=3, options={"ckpt_grad": ckpt})
        out = enc(batch).node
        out.square().sum().backward()
        results.append((out.detach(), [p.grad.clone() for p in enc.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=0, atol=0)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)


def test_oversized_configs_are_refused_before_anything_is_allocated() -> None:
    import resource

    from circuitml.encoders.builder import MAX_PARAMETERS, encoder_size

    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(
        ConfigError, match=r"^encoder config: key 'hidden': expected at most 16384, got 1000000000$"
    ):
        build_encoder("deepgcn", hidden=10**9)  # 24 GB of weights before the bound
    with pytest.raises(ConfigError, match=r"key 'num_layers': expected at most 1024, got 2000000000$"):
        build_encoder("gcn", num_layers=2 * 10**9)
    with pytest.raises(ConfigError, match=r"key 'options.num_experts': expected at most 4096"):
        build_encoder("moe_gnn", options={"num_experts": 10**6})
    # within every per-setting bound, over the parameter bound: the message gives the count and the settings
    elements, size = encoder_size(EncoderConfig(kind="deepgcn", hidden=16384, num_layers=8))
    assert elements > MAX_PARAMETERS and size == 4 * elements
    with pytest.raises(ConfigError) as err:
        build_encoder("deepgcn", hidden=16384, num_layers=8)
    assert str(err.value) == (
        f"encoder config: kind 'deepgcn' with hidden=16384, num_layers=8: {elements:,} parameters "
        f"({size / 2**30:.1f} GiB), expected at most {MAX_PARAMETERS:,}"
    )
    assert (
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 200 * 1024
    )  # KiB: nothing was allocated
    # the probe counts what a real build holds
    enc = build_encoder("gat", hidden=24, num_layers=2, options={"heads": 3})
    assert encoder_size(enc.config) == (
        sum(t.numel() for t in enc.state_dict().values()),
        sum(t.numel() * t.element_size() for t in enc.state_dict().values()),
    )
