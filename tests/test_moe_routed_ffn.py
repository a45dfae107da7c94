"""The fused routed FFN (gather, both matmuls, activation and weighted combine per row tile) against a naive
per-expert loop and against the unfused gather → SegmentFFN → combine path: outputs and every gradient."""

from __future__ import annotations

import pytest
import torch
from circuitml.moe import FFNExperts
from circuitml.moe.dispatch import combine_outputs, gather_tokens, make_plan
from circuitml.moe.experts.segment_ffn import routed_ffn, segment_ffn
from hypothesis import given, settings
from hypothesis import strategies as st

D, H = 8, 6


def naive(ex: FFNExperts, x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    out = torch.zeros_like(x)
    for e in range(ex.num_experts):
        tok, slot = torch.nonzero(idx == e, as_tuple=True)
        if tok.numel():
            out = out.index_add(0, tok, ex.expert(e, x[tok]) * w[tok, slot, None])
    return out


def routing(num_tokens: int, num_experts: int, top_k: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(num_tokens, num_experts, generator=g).argsort(dim=1)[:, :top_k]
    idx[torch.rand(num_tokens, top_k, generator=g) < 0.2] = -1  # dropped slots
    w = torch.rand(num_tokens, top_k, generator=g, dtype=torch.float64)
    return idx, w


def grads(ex: FFNExperts, x: torch.Tensor, w: torch.Tensor, out: torch.Tensor, g: torch.Tensor):
    return torch.autograd.grad(out, [x, w, *ex.parameters()], g)


@pytest.mark.parametrize("activation", ["swiglu", "geglu", "gelu", "relu", "silu"])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("tile_rows", [3, 1024])
def test_routed_ffn_matches_naive_loop(activation: str, bias: bool, tile_rows: int) -> None:
    torch.manual_seed(0)
    ex = FFNExperts(5, D, H, activation=activation, bias=bias).double()
    x = torch.randn(40, D, dtype=torch.float64, requires_grad=True)
    idx, w = routing(40, 5, 2, seed=1)
    idx[idx == 3] = -1  # an expert without rows: its weight gradients must be zero, not garbage
    w.requires_grad_(True)
    plan = make_plan(idx, 5)
    b1, b2 = ex.gate_up_bias, ex.down_bias
    ours = routed_ffn(x, w, ex.gate_up_proj, ex.down_proj, b1, b2, plan, activation, tile_rows)
    ref = naive(ex, x, idx, w)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(ref)
    for a, b in zip(grads(ex, x, w, ours, g), grads(ex, x, w, ref, g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    assert ex.gate_up_proj.grad is None  # autograd.grad, not .backward
    gw1 = torch.autograd.grad(
        routed_ffn(x, w, ex.gate_up_proj, ex.down_proj, b1, b2, plan, activation, tile_rows).sum(),
        ex.gate_up_proj,
    )[0]
    assert gw1[3].abs().max() == 0


@settings(max_examples=25, deadline=None)
@given(
    num_tokens=st.integers(0, 30),
    num_experts=st.integers(1, 6),
    top_k=st.integers(1, 3),
    tile_rows=st.integers(1, 9),
    seed=st.integers(0, 2**16),
)
def test_routed_ffn_equals_unfused_path(
    num_tokens: int, num_experts: int, top_k: int, tile_rows: int, seed: int
) -> None:
    top_k = min(top_k, num_experts)
    torch.manual_seed(seed)
    ex = FFNExperts(num_experts, D, H).double()
    x = torch.randn(num_tokens, D, dtype=torch.float64, requires_grad=True)
    idx, w = routing(num_tokens, num_experts, top_k, seed)
    w.requires_grad_(True)
    plan = make_plan(idx, num_experts)
    w1, w2 = ex.gate_up_proj, ex.down_proj
    fused = routed_ffn(x, w, w1, w2, None, None, plan, "swiglu", tile_rows)
    y = segment_ffn(gather_tokens(x, plan), w1, w2, None, None, plan, "swiglu", tile_rows)
    unfused = combine_outputs(y, w, plan, padded=True)
    torch.testing.assert_close(fused, unfused, rtol=1e-10, atol=1e-12)
    if num_tokens:
        g = torch.randn_like(fused)
        for a, b in zip(grads(ex, x, w, fused, g), grads(ex, x, w, unfused, g), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


def test_ffn_experts_use_the_fused_path_on_cpu_and_agree_in_float32() -> None:
    torch.manual_seed(0)
    ex = FFNExperts(8, 32, 48)
    x = torch.randn(300, 32, requires_grad=True)
    idx, w = routing(300, 8, 2, seed=3)
    w = w.float().requires_grad_(True)
    fused = ex(x, idx, w)
    plan = make_plan(idx, 8)
    unfused = combine_outputs(ex.experts_sorted(gather_tokens(x, plan), plan), w, plan, padded=True)
    torch.testing.assert_close(fused, unfused, rtol=1e-5, atol=1e-6)
    g = torch.randn_like(fused)
    for a, b in zip(grads(ex, x, w, fused, g), grads(ex, x, w, unfused, g), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
