"""Union-of-Experts (issue 14, item 5): the equivalent decompositions are exact before routing; hierarchical
routing keeps the group limit; routed blocks equal their per-token definition."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from circuitml.moe.uoe import HierarchicalRouter, SelectiveMultiHeadAttention, UnionOfMLPExperts
from torch import nn

from circuitml.errors import ConfigError


def test_mlp_decomposition_is_exact_before_routing() -> None:
    torch.manual_seed(0)
    lin1, lin2 = nn.Linear(16, 64), nn.Linear(64, 16)
    uoe = UnionOfMLPExperts.from_linear(lin1, lin2, num_experts=8, top_k=8)
    x = torch.randn(30, 16)
    torch.testing.assert_close(uoe(x), lin2(F.gelu(lin1(x))), rtol=0, atol=1e-6)


def _dense_attention(
    qkv: nn.Linear, out: nn.Linear, x: torch.Tensor, heads: int, mask: torch.Tensor
) -> torch.Tensor:
    b, t, d = x.shape
    q, k, v = qkv(x).view(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
    bias = torch.zeros(b, 1, 1, t).masked_fill(~mask[:, None, None, :], float("-inf"))
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return out(a.transpose(1, 2).reshape(b, t, d))


def test_attention_decomposition_is_exact_before_routing() -> None:
    torch.manual_seed(0)
    qkv, out = nn.Linear(16, 48), nn.Linear(16, 16)
    smha = SelectiveMultiHeadAttention.from_qkv(qkv, out, num_heads=4, num_experts=4, top_k=4)
    x = torch.randn(2, 5, 16)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    got = smha(x, mask)
    torch.testing.assert_close(got, _dense_attention(qkv, out, x, 4, mask), rtol=0, atol=1e-6)
    causal = SelectiveMultiHeadAttention.from_qkv(qkv, out, num_heads=4, num_experts=2, top_k=2, causal=True)
    q, k, v = qkv(x).view(2, 5, 3, 4, 4).permute(2, 0, 3, 1, 4)
    want = out(F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 5, 16))
    torch.testing.assert_close(causal(x), want, rtol=0, atol=1e-6)


def test_hierarchical_routing_selects_groups_then_experts() -> None:
    torch.manual_seed(0)
    router = HierarchicalRouter(8, num_experts=8, top_k=2, num_groups=4, top_groups=1)
    nn.init.normal_(router.gate.weight)
    x = torch.randn(50, 8)
    w, idx = router(x)
    assert (idx // 2 == idx[:, :1] // 2).all()  # both experts inside one group
    scores = router.gate(x).view(50, 4, 2)
    assert torch.equal(idx[:, 0] // 2, scores.topk(2, dim=-1).values.sum(-1).argmax(-1))
    torch.testing.assert_close(w.sum(-1), torch.full((50,), 2.0))
    with pytest.raises(ConfigError, match="top_k"):
        HierarchicalRouter(8, num_experts=8, top_k=3, num_groups=4, top_groups=1)


def test_routed_blocks_equal_their_per_token_definition() -> None:
    torch.manual_seed(0)
    uoe = UnionOfMLPExperts(8, 32, num_experts=4, top_k=2, num_groups=2, top_groups=2).double()
    smha = SelectiveMultiHeadAttention(8, 4, num_experts=4, top_k=2).double()
    for m in (uoe, smha):
        nn.init.normal_(m.router.gate.weight)
    x = torch.randn(3, 4, 8, dtype=torch.float64)
    flat = x.reshape(-1, 8)
    w, idx = uoe.router(flat)
    want = torch.stack(
        [
            uoe.b2
            + sum(
                w[n, j] * (F.gelu(uoe.w1[e] @ flat[n] + uoe.b1[e]) @ uoe.w2[e].t())
                for j, e in enumerate(idx[n].tolist())
            )
            for n in range(12)
        ]
    )
    torch.testing.assert_close(uoe(flat), want)
    # SMHA: each query token mixes only the head groups it selected.
    w, idx = smha.router(flat)
    q, k, v = smha.qkv(x).view(3, 4, 3, 4, 2).permute(2, 0, 3, 1, 4)
    per_head = torch.softmax(q @ k.transpose(-1, -2) / 2**0.5, -1) @ v  # [B, H, T, hd]
    w_out = smha.out.weight.view(8, 4, 2)
    want = torch.stack(
        [
            smha.out.bias
            + sum(w[n, j] * (w_out[:, e] @ per_head[n // 4, e, n % 4]) for j, e in enumerate(idx[n].tolist()))
            for n in range(12)
        ]
    ).view(3, 4, 8)
    torch.testing.assert_close(smha(x), want)
    assert smha.flops_per_token(4) < SelectiveMultiHeadAttention(8, 4, 4, top_k=4).flops_per_token(4)


def _qa_config(**kw):
    from circuitml.tasks.qa.model import SwitchQAConfig

    return SwitchQAConfig(
        vocab_size=40, max_position=12, d_model=16, num_layers=3, num_heads=4, d_ff=32, dropout=0.0, **kw
    )


@pytest.mark.parametrize("moe_layers", [[], [1]])
def test_uoe_qa_model_with_every_expert_selected_equals_the_dense_qa_model(moe_layers: list[int]) -> None:
    from circuitml.tasks.qa.model import MoEFFN, SwitchTransformerQA, decompose_to_uoe

    torch.manual_seed(0)
    dense = SwitchTransformerQA(_qa_config(moe_layers=moe_layers)).eval()
    uoe = decompose_to_uoe(dense, attn_experts=4, attn_top_k=4, mlp_experts=4, mlp_top_k=4).eval()
    assert all(hasattr(layer, "attn") for layer in uoe.layers)
    assert [isinstance(layer.ffn, MoEFFN) for layer in uoe.layers] == [i in moe_layers for i in range(3)]
    ids = torch.randint(0, 40, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0
    want, got = dense(ids, mask), uoe(ids, mask)
    real = mask.bool()
    for a, b in ((want.start_logits, got.start_logits), (want.end_logits, got.end_logits)):
        torch.testing.assert_close(b[real], a[real], rtol=0, atol=1e-6)
    torch.testing.assert_close(got.hidden[real], want.hidden[real], rtol=0, atol=1e-6)
    # The zero-initialised routers still get the task gradient (k * softmax over the selected experts).
    uoe.train()
    uoe(ids, mask).start_logits.logsumexp(-1).sum().backward()
    assert uoe.layers[0].attn.router.gate.weight.grad.abs().sum() > 0
    assert uoe.layers[2].ffn.uoe.router.gate.weight.grad.abs().sum() > 0
    # A smaller budget costs fewer multiply-adds per token.
    half = decompose_to_uoe(dense, attn_experts=4, attn_top_k=2, mlp_experts=4, mlp_top_k=2)
    assert half.flops_per_token(10) < dense.flops_per_token(10) < uoe.flops_per_token(10)


def test_uoe_qa_options_are_checked_and_parsed() -> None:
    from circuitml.tasks.qa.model import SwitchTransformerQA, parse_uoe

    assert parse_uoe("attn=2/4,mlp=4/8,groups=1/2") == {
        "attn_top_k": 2,
        "attn_experts": 4,
        "mlp_top_k": 4,
        "mlp_experts": 8,
        "mlp_top_groups": 1,
        "mlp_groups": 2,
    }
    with pytest.raises(ConfigError, match="expected attn=K/E"):
        parse_uoe("attn=2")
    with pytest.raises(ConfigError, match="unknown key 'heads'"):
        SwitchTransformerQA(_qa_config(uoe={"heads": 2}))
    with pytest.raises(ConfigError, match="scratch backbone"):
        _qa_config(uoe={}, init_from="somewhere").resolved_uoe()


@pytest.mark.slow
def test_qa_cli_trains_and_reloads_a_uoe_model(tmp_path) -> None:
    from circuitml.tasks.qa.model import SwitchTransformerQA
    from circuitml.tasks.qa.train import load_qa_model

    from cli import main
    from tests.test_qa import _squad

    data, out = _squad(tmp_path), tmp_path / "model"
    args = ["qa", "train", "--data", str(data), "--eval-data", str(data), "--out", str(out), "--epochs", "2"]
    args += ["--d-model", "32", "--layers", "2", "--max-length", "48", "--stride", "8", "--threads", "1"]
    assert main([*args, "--uoe", "attn=1/1,mlp=2/4"]) == 0
    model, _, cfg = load_qa_model(out)
    assert isinstance(model, SwitchTransformerQA) and cfg.model.uoe["mlp_top_k"] == 2
    assert model.layers[1].ffn.uoe.router.top_k == 2 and model.layers[0].attn.num_experts == 1
    assert main(["qa", "eval", "--model", str(out), "--data", str(data)]) == 0
    assert main([*args, "--uoe", "attn=3/2"]) == 2  # top_k above the experts: one line, exit 2
