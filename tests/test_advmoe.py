"""AdvMoE on load_digits (issue 14, item 6): MoE-CNN layer against a per-sample loop, PGD, the alternation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from circuitml.moe.experts.conv import MoEConv2d
from circuitml.tasks.advmoe import AdvConfig, DigitCNN, load_digits_split, pgd, split_parameters, train

from circuitml.errors import ConfigError


def test_moe_conv_equals_a_per_sample_loop() -> None:
    torch.manual_seed(0)
    layer = MoEConv2d(3, 5, num_experts=4, top_k=2).double()
    x = torch.randn(7, 3, 6, 6, dtype=torch.float64)
    got = layer(x)
    routing = layer.last_routing
    for b in range(7):
        want = sum(
            routing.weights[b, j] * F.conv2d(x[b : b + 1], layer.weight[e], layer.bias[e], padding=1)[0]
            for j, e in enumerate(routing.indices[b].tolist())
        )
        torch.testing.assert_close(got[b], want)
    got.sum().backward()
    assert layer.router.gate.weight.grad.abs().sum() > 0


def test_pgd_stays_in_the_ball_and_raises_the_loss() -> None:
    torch.manual_seed(0)
    x, y, _, _ = load_digits_split(0)
    x, y = x[:64], y[:64]
    assert x.min() >= 0 and x.max() <= 1 and x.shape[1:] == (1, 8, 8)
    model = DigitCNN(moe=True)
    train(model, "moe_at", x, y, AdvConfig(epochs=1, train_steps=1))
    adv = pgd(model.eval(), x, y, 0.1, 5, torch.Generator().manual_seed(1))
    assert (adv - x).abs().max() <= 0.1 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        assert F.cross_entropy(model(adv), y) > F.cross_entropy(model(x), y)


def test_advmoe_alternates_router_and_expert_updates() -> None:
    torch.manual_seed(0)
    x, y, _, _ = load_digits_split(0)
    model = DigitCNN(moe=True)
    routers, others = split_parameters(model)
    assert len(routers) == 2 and {id(p) for p in routers}.isdisjoint(id(p) for p in others)
    before = [p.detach().clone() for p in model.parameters()]
    train(model, "advmoe", x[:64], y[:64], AdvConfig(epochs=1, train_steps=1))
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    with pytest.raises(ConfigError, match="router"):
        train(DigitCNN(moe=False), "advmoe", x[:8], y[:8], AdvConfig(epochs=1))
