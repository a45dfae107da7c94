"""Every registered router x every expert kind matches a naive per-token, per-slot loop (float64, forward and
gradients). Parametrized over the registry, so routers added later are covered automatically."""

from __future__ import annotations

import pytest
import torch
from circuitml.moe import ROUTERS, AdapterExperts, FFNExperts, build_router
from circuitml.moe.router import RouterOutput
from torch import nn

D, E, N = 8, 4, 12
ROUTER_NAMES = sorted(ROUTERS)


def make_experts(kind: str) -> nn.Module:
    if kind == "ffn_swiglu":
        return FFNExperts(E, D, 6, activation="swiglu")
    if kind == "ffn_relu_bias":
        return FFNExperts(E, D, 6, activation="relu", bias=True)
    if kind == "lora_linear":
        ex = AdapterExperts(nn.Linear(D, D), E, D, kind="lora", rank=3)
    else:
        frozen = nn.Sequential(nn.Linear(D, 5), nn.Tanh(), nn.Linear(5, D))
        adapter = "parallel" if kind == "parallel_ffn" else "bottleneck"
        ex = AdapterExperts(frozen, E, D, kind=adapter, rank=3, activation="gelu")
    nn.init.normal_(ex.up)  # the zero init would hide the adapter path from the comparison
    return ex


def naive_mixture(experts: nn.Module, x: torch.Tensor, routing: RouterOutput) -> torch.Tensor:
    rows = []
    for n in range(x.shape[0]):
        acc = torch.zeros(D, dtype=x.dtype)
        for j in range(routing.indices.shape[1]):
            e = int(routing.indices[n, j])
            if e >= 0:
                acc = acc + routing.weights[n, j] * experts.expert(e, x[n : n + 1])[0]
        rows.append(acc)
    return torch.stack(rows)


def check_router_output(out: RouterOutput, num_tokens: int) -> None:
    assert out.indices.dtype == torch.long and out.indices.dim() == 2 and out.indices.shape[0] == num_tokens
    assert out.weights.shape == out.indices.shape
    assert int(out.indices.min()) >= -1 and int(out.indices.max()) < E
    assert torch.isfinite(out.weights).all()
    for name, loss in out.aux_losses.items():
        assert loss.dim() == 0 and torch.isfinite(loss), name
    if out.probs is not None:
        torch.testing.assert_close(out.probs.sum(-1), torch.ones(num_tokens, dtype=out.probs.dtype))


@pytest.mark.parametrize(
    "expert_kind", ["ffn_swiglu", "ffn_relu_bias", "lora_linear", "bottleneck_ffn", "parallel_ffn"]
)
@pytest.mark.parametrize("name", ROUTER_NAMES)
def test_router_x_experts_match_naive_loop(name: str, expert_kind: str) -> None:
    torch.manual_seed(0)
    router = build_router(name, d_model=D, num_experts=E).double().train()
    experts = make_experts(expert_kind).double()
    x = torch.randn(N, D, dtype=torch.float64, requires_grad=True)
    routing = router(x, **router.example_ctx(N))
    check_router_output(routing, N)
    ours = experts(x, routing.indices, routing.weights)
    ref = naive_mixture(experts, x, routing)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)

    params = [p for p in list(experts.parameters()) + list(router.parameters()) if p.requires_grad]
    inputs = [x, *params]
    g = torch.randn_like(ours)
    grads_ours = torch.autograd.grad(ours, inputs, g, retain_graph=True, allow_unused=True)
    grads_ref = torch.autograd.grad(ref, inputs, g, allow_unused=True)
    for a, b in zip(grads_ours, grads_ref, strict=True):
        if a is None or b is None:
            assert a is None and b is None or (a if a is not None else b).abs().max() == 0
        else:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)


@pytest.mark.parametrize("name", ROUTER_NAMES)
def test_router_deterministic_under_seed(name: str) -> None:
    outs = []
    for _ in range(2):
        torch.manual_seed(3)
        router = build_router(name, d_model=D, num_experts=E).double().train()
        x = torch.randn(N, D, dtype=torch.float64)
        out = router(x, **router.example_ctx(N))
        outs.append((out.indices, out.weights.detach()))
    assert torch.equal(outs[0][0], outs[1][0])
    torch.testing.assert_close(outs[0][1], outs[1][1], rtol=0, atol=0)


def test_grouped_mm_and_loop_paths_agree() -> None:
    torch.manual_seed(0)
    ex = FFNExperts(E, D, 16)
    x = torch.randn(64, D, requires_grad=True)
    idx = torch.randint(0, E, (64, 2))
    idx[::7, 1] = -1
    w = torch.rand(64, 2, requires_grad=True)
    outs = []
    for use in (False, True) if hasattr(torch, "_grouped_mm") else (False,):
        ex.use_grouped_mm = use
        y = ex(x, idx, w)
        grads = torch.autograd.grad(y.square().sum(), [x, w, ex.gate_up_proj, ex.down_proj])
        outs.append((y, grads))
    for y, grads in outs[1:]:
        torch.testing.assert_close(y, outs[0][0], rtol=1e-5, atol=1e-5)
        for a, b in zip(grads, outs[0][1], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
