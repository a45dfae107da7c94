"""The MoE block as-is inside a transformer FFN and a GNN layer; shared expert, stats, adapters, SCMoE."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from circuitml.moe import (
    BottleneckAdapter,
    LoRALinear,
    MoEBlock,
    MoEConfig,
    build_moe,
    build_router,
)
from circuitml.moe.experts import FFNExperts, SharedExpert
from circuitml.moe.inference import contrastive_scores, routers_of, scmoe_scores, set_top_k, top_k
from torch import nn

from circuitml.errors import ConfigError


class TinyMoETransformer(nn.Module):
    """Pre-norm transformer whose FFN is an MoEBlock used unchanged on [B, T, d]."""

    def __init__(self, vocab: int, d: int, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.zeros(1, 16, d))
        self.attn = nn.ModuleList(nn.MultiheadAttention(d, 2, batch_first=True) for _ in range(layers))
        self.norm1 = nn.ModuleList(nn.LayerNorm(d) for _ in range(layers))
        self.norm2 = nn.ModuleList(nn.LayerNorm(d) for _ in range(layers))
        self.moe = nn.ModuleList(
            build_moe(
                d_model=d, num_experts=4, d_hidden=2 * d, top_k=2, router_options={"z_loss_weight": 1e-3}
            )
            for _ in range(layers)
        )
        self.head = nn.Linear(d, vocab)

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.embed(tokens) + self.pos[:, : tokens.shape[1]]
        aux = h.new_zeros(())
        for attn, n1, n2, moe in zip(self.attn, self.norm1, self.norm2, self.moe, strict=True):
            a = n1(h)
            h = h + attn(a, a, a, need_weights=False)[0]
            out = moe(n2(h))
            h = h + out.out
            aux = aux + out.aux_loss
        return self.head(h), aux


def test_moe_block_in_transformer_ffn_learns() -> None:
    torch.manual_seed(0)
    vocab, d = 12, 32
    model = TinyMoETransformer(vocab, d)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    # Task: predict the token reversed in the sequence (needs attention + FFN).
    data = torch.randint(0, vocab, (64, 8))
    target = data.flip(1)
    losses = []
    for _ in range(60):
        logits, aux = model(data)
        loss = F.cross_entropy(logits.reshape(-1, vocab), target.reshape(-1))
        opt.zero_grad()
        (loss + aux).backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.6 * losses[0]
    stats = model.moe[0](torch.randn(2, 8, d)).stats
    assert int(stats.tokens_per_expert.sum()) == 2 * 8 * 2 and stats.dropped_slots == 0


def test_moe_block_as_gnn_node_update() -> None:
    """A message-passing layer (PyG) whose node update is the MoE block applied to node rows."""
    from torch_geometric.data import Batch, Data
    from torch_geometric.nn import MessagePassing

    class MoEGraphConv(MessagePassing):
        def __init__(self, d: int) -> None:
            super().__init__(aggr="mean")
            self.moe = build_moe(d_model=2 * d, num_experts=4, d_hidden=d, top_k=2)
            self.proj = nn.Linear(2 * d, d)

        def forward(self, x, edge_index):
            agg = self.propagate(edge_index, x=x)
            out = self.moe(torch.cat([x, agg], dim=-1))
            return self.proj(out.out), out

    torch.manual_seed(0)
    graphs = [
        Data(x=torch.randn(n, 8), edge_index=torch.randint(0, n, (2, 2 * n)), y=torch.tensor([float(n % 2)]))
        for n in (5, 7, 9, 6)
    ]
    batch = Batch.from_data_list(graphs)
    layer = MoEGraphConv(8)
    h, out = layer(batch.x, batch.edge_index)
    assert h.shape == (batch.num_nodes, 8)
    assert int(out.stats.tokens_per_expert.sum()) == 2 * batch.num_nodes
    (h.sum() + out.aux_loss).backward()
    assert layer.moe.experts.gate_up_proj.grad is not None and layer.moe.router.gate.weight.grad is not None


def test_block_shared_expert_stats_and_shapes() -> None:
    torch.manual_seed(0)
    router = build_router("topk", d_model=6, num_experts=3, top_k=2, capacity_factor=0.5)
    experts = FFNExperts(3, 6, 10)
    shared = SharedExpert(6, 4, gated=True)
    block = MoEBlock(router, experts, shared)
    x = torch.randn(4, 5, 6)
    out = block(x)
    assert out.out.shape == x.shape
    flat = x.reshape(-1, 6)
    r = out.routing
    want = experts(flat, r.indices, r.weights) + shared(flat)
    torch.testing.assert_close(out.out.reshape(-1, 6), want)
    kept = int((r.indices >= 0).sum())
    assert int(out.stats.tokens_per_expert.sum()) == kept
    assert out.stats.dropped_slots == 20 * 2 - kept > 0
    assert out.stats.dropped_tokens == int((r.indices < 0).all(-1).sum())
    assert 0 <= out.stats.entropy <= float(torch.log(torch.tensor(3.0))) + 1e-6
    torch.testing.assert_close(out.aux_loss, sum(out.losses.values()))


def test_block_flattens_per_token_ctx() -> None:
    seen = {}

    class Probe(nn.Module):
        def forward(self, x, indices, weights):
            return x

    router = build_router("topk", d_model=4, num_experts=2, top_k=1)
    original = router.forward

    def spy(x, **ctx):
        seen.update(ctx)
        return original(x, **ctx)

    router.forward = spy
    MoEBlock(router, Probe())(torch.randn(2, 3, 4), token_ids=torch.arange(6).view(2, 3), step=5)
    assert seen["token_ids"].shape == (6,) and seen["step"] == 5


def test_build_moe_from_config_and_errors() -> None:
    cfg = MoEConfig(d_model=8, num_experts=4, d_hidden=8, top_k=1, router="switch", shared_hidden=4)
    block = build_moe(cfg)
    assert block.router.name == "switch" and block.shared_expert is not None
    assert build_moe(cfg.to_dict()).router.num_experts == 4
    with pytest.raises(ConfigError, match="unknown key 'experts'"):
        build_moe(d_model=8, experts=3)
    with pytest.raises(ConfigError, match="activation"):
        FFNExperts(2, 4, 4, activation="tanhh")


def test_adapters_start_as_identity_and_lora_merges() -> None:
    torch.manual_seed(0)
    x = torch.randn(5, 6)
    adapter = BottleneckAdapter(6, 3)
    torch.testing.assert_close(adapter(x), x)
    lora = LoRALinear(nn.Linear(6, 4), rank=2)
    assert not lora.base.weight.requires_grad
    nn.init.normal_(lora.lora_B)
    torch.testing.assert_close(lora.merged()(x), lora(x), rtol=1e-5, atol=1e-6)


def test_top_k_override_and_rank_routing() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(build_moe(d_model=8, num_experts=4, d_hidden=8, top_k=2))
    block = model[0]
    x = torch.randn(10, 8)
    base = block.router(x)
    with top_k(model, 1):
        one = block.router(x)
        assert one.indices.shape == (10, 1)
        torch.testing.assert_close(one.indices[:, 0], base.indices[:, 0])
    from circuitml.moe.inference import routing_override

    with routing_override(model, "rank", 2):
        second = block.router(x)
        assert torch.equal(second.indices[:, 0], base.indices[:, 1])
    assert block.router(x).indices.shape == (10, 2)  # restored
    with pytest.raises(ConfigError, match="outside"):
        with top_k(model, 5):
            pass
    set_top_k(model, 3)
    assert block.router(x).indices.shape == (10, 3) and routers_of(model)[0].config.top_k == 3


def test_contrastive_scores_formula_and_mask() -> None:
    strong = torch.tensor([[2.0, 1.0, -3.0, 0.5]])
    weak = torch.tensor([[1.0, 2.0, 0.0, 0.5]])
    beta, alpha = 0.5, 0.2
    scores = contrastive_scores(strong, weak, beta=beta, alpha=alpha)
    ps, pw = F.softmax(strong, -1), F.softmax(weak, -1)
    for v in range(4):
        if ps[0, v] >= alpha * ps.max():
            want = (1 + beta) * ps[0, v].log() - beta * pw[0, v].log()
            assert scores[0, v].item() == pytest.approx(want.item(), rel=1e-5)
        else:
            assert scores[0, v] == float("-inf")
    # beta = 0 keeps the strong model's argmax.
    assert contrastive_scores(strong, weak, beta=0.0).argmax() == strong.argmax()


def test_scmoe_runs_model_under_both_routings() -> None:
    torch.manual_seed(0)
    model = TinyMoETransformer(10, 16).eval()
    tokens = torch.randint(0, 10, (1, 6))
    scores = scmoe_scores(model, tokens, logits_fn=lambda out: out[0][:, -1], beta=0.5, alpha=0.1)
    with torch.no_grad():
        strong = model(tokens)[0][:, -1]
        for r in routers_of(model):
            r.routing_override = ("rank", 2)
        weak = model(tokens)[0][:, -1]
        for r in routers_of(model):
            r.routing_override = None
    torch.testing.assert_close(scores, contrastive_scores(strong, weak, beta=0.5, alpha=0.1))
    assert not torch.allclose(strong, weak)
