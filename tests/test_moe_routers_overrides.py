"""Inference overrides are honest (issue 14, item 4) and COMET's hard cardinality holds at every step (item 3).

Every registered router either honours ``top_k`` / rank routing (the slots change accordingly) or refuses with a
ConfigError; ``set_top_k`` either leaves a config that rebuilds the router and reloads its weights, or refuses
and leaves the model unchanged.
"""

from __future__ import annotations

import pytest
import torch
from circuitml.moe import ROUTERS, build_router, routing_override, set_top_k, top_k
from torch import nn

from circuitml.errors import ConfigError

E, N, D = 6, 24, 8

# The table the report quotes: overrides honoured, and whether set_top_k(1) from k=2 is accepted.
HONOURED = {
    "topk": ({"topk", "rank"}, True),
    "noisy_topk": ({"topk", "rank"}, True),
    "switch": ({"topk", "rank"}, True),  # built with k=1; set_top_k(2) refused (Switch is top-1)
    "rmoe": ({"topk", "rank"}, True),
    "read_me": ({"topk", "rank"}, True),
    "evomoe": ({"topk", "rank"}, True),
    "dense_to_sparse": ({"topk", "rank"}, True),
    "dselect_k": ({"topk", "rank"}, False),  # k selectors size the parameters
    "comet": ({"topk", "rank"}, False),  # k trees size the parameters
    "hash": ({"topk", "rank"}, True),
    "balanced_hash": (set(), False),  # table[V, k] of unranked columns
    "expert_choice": ({"topk"}, True),  # k sets the capacity (no capacity_factor); no rank
    "base": (set(), True),  # one expert per token: only top_k=1, a no-op
    "stablemoe": (set(), True),
    "local_search": ({"topk", "rank"}, True),  # its inner router's (topk)
    "deepseek": ({"topk", "rank"}, True),
}


def _router(name: str) -> nn.Module:
    torch.manual_seed(0)
    k = 1 if name in ("switch", "base", "stablemoe") else 2
    return build_router(name, d_model=D, num_experts=E, top_k=k).eval()


def test_table_covers_every_registered_router() -> None:
    assert set(HONOURED) == set(ROUTERS)


@pytest.mark.parametrize("name", sorted(HONOURED))
def test_override_is_honoured_or_refused(name: str) -> None:
    router = _router(name)
    model = nn.Sequential(router)
    ctx = router.example_ctx(N, torch.Generator().manual_seed(1))
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(2))
    honoured, _ = HONOURED[name]
    for mode, value in (("topk", 3), ("rank", 2)):
        if mode not in honoured:
            with pytest.raises(ConfigError, match="cannot honour"):
                with routing_override(model, mode, value):
                    pass
            assert router.routing_override is None
            continue
        with torch.no_grad(), routing_override(model, mode, value):
            out = router(x, **ctx)
        used = (out.indices >= 0).sum(-1)
        if name == "expert_choice":  # c = ceil(N k / E) tokens per expert
            assert int(used.sum()) == E * -(-N * value // E)
        elif router.config.capacity_factor is not None:  # Switch drops over-capacity tokens
            assert int(used.max()) <= (value if mode == "topk" else 1)
        elif mode == "topk":
            assert int(used.max()) <= value and int(used.min()) >= 1
        else:
            assert torch.equal(used, torch.ones_like(used))


@pytest.mark.parametrize("name", ["topk", "rmoe", "dense_to_sparse", "evomoe", "dselect_k", "comet"])
def test_override_takes_the_top_scores(name: str) -> None:
    """Reference: the override's experts are the naive top-k / r-th ranked of the router's own probs."""
    router = _router(name)
    if name == "dense_to_sparse":  # ReLU ties negative logits at 0: use an activation without ties
        router = build_router(name, d_model=D, num_experts=E, top_k=2, activation="softplus").eval()
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        probs = router(x, step=0).probs
        ranked = torch.sort(probs, dim=-1, descending=True, stable=True).indices
        with top_k(router, 3):
            got = router(x, step=0).indices
        with routing_override(router, "rank", 2):
            second = router(x, step=0).indices
    got = torch.where(got >= 0, got, E)
    assert torch.equal(torch.sort(got, -1).values, torch.sort(ranked[:, :3], -1).values)
    assert torch.equal(second[:, 0], ranked[:, 1])


@pytest.mark.parametrize("name", sorted(HONOURED))
def test_set_top_k_reloads_or_refuses(name: str) -> None:
    router = _router(name)
    ctx = router.example_ctx(N, torch.Generator().manual_seed(1))
    x = torch.randn(N, D, generator=torch.Generator().manual_seed(2))
    _, accepted = HONOURED[name]
    new_k = 2 if name == "switch" else 1
    before = router.config.to_dict()
    if not accepted or name == "switch":
        with pytest.raises(ConfigError):
            set_top_k(router, new_k)
        assert router.config.to_dict() == before
        return
    set_top_k(router, new_k)
    assert router.config.top_k == new_k
    clone = build_router(name, router.config.to_dict()).eval()
    clone.load_state_dict(router.state_dict(), strict=True)
    with torch.no_grad():
        a, b = router(x, **ctx, step=10**6), clone(x, **ctx, step=10**6)
    assert torch.equal(a.indices, b.indices)
    torch.testing.assert_close(a.weights, b.weights)
    if name not in ("expert_choice", "local_search"):
        assert int((a.indices >= 0).sum(-1).max()) == 1


def test_refusal_leaves_every_router_unchanged() -> None:
    model = nn.Sequential(_router("topk"), _router("comet"))
    with pytest.raises(ConfigError, match="sizes its parameters"):
        set_top_k(model, 1)
    assert model[0].top_k == 2 and model[0].config.top_k == 2


def test_comet_hard_cardinality_holds_at_every_step() -> None:
    """Soft COMET uses more than k experts early on; the hard option never does, and still learns."""
    torch.manual_seed(0)
    k, d = 2, 8
    x = torch.randn(256, d)
    target = torch.randn(d, 8)
    y = (x @ target).argmax(-1)  # each token's "right" expert
    counts = {}
    for mode in ("soft", "hard"):
        torch.manual_seed(1)
        router = build_router("comet", d_model=d, num_experts=8, top_k=k, cardinality=mode)
        opt = torch.optim.Adam(router.parameters(), lr=1e-2)
        widest = []
        for _ in range(30):
            out = router(x)
            used = (out.indices >= 0).sum(-1)
            widest.append(int(used.max()))
            if mode == "hard":
                assert int(used.max()) <= k
                assert torch.allclose(out.weights.sum(-1), torch.ones(len(x)))
            gate = torch.zeros(len(x), 8).scatter_add(1, out.indices.clamp_min(0), out.weights)
            loss = -torch.log(gate.gather(1, y[:, None]).clamp_min(1e-6)).mean() + sum(
                out.aux_losses.values()
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
        counts[mode] = max(widest)
    assert counts["soft"] > k  # the soft gate is dense early: the observation
    assert counts["hard"] <= k
    with pytest.raises(ConfigError, match="cardinality"):
        build_router("comet", d_model=d, num_experts=8, top_k=k, cardinality="strict")
