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


def test_channel_experts_equal_a_per_sample_loop_over_the_dense_layer() -> None:
    from circuitml.moe.experts.channel_conv import ChannelMoEConv2d

    torch.manual_seed(0)
    layer = ChannelMoEConv2d(3, 8, num_experts=4, top_k=2).double()
    torch.nn.init.normal_(layer.router.gate.weight)
    x = torch.randn(9, 3, 5, 5, dtype=torch.float64)
    got = layer(x)
    assert got.shape == (9, 8, 5, 5)
    routing = layer.last_routing
    full = F.conv2d(x, layer.weight, layer.bias, padding=1)  # the dense layer: every group
    for b in range(9):
        chosen = dict(zip(routing.indices[b].tolist(), routing.weights[b], strict=True))
        want = torch.cat(
            [chosen[e] * full[b, 2 * e : 2 * e + 2] if e in chosen else 0 * full[b, :2] for e in range(4)]
        )
        torch.testing.assert_close(got[b], want)
    assert len({tuple(sorted(r)) for r in routing.indices.tolist()}) > 1  # samples take different pathways
    got.square().sum().backward()
    assert layer.router.gate.weight.grad.abs().sum() > 0
    # Every group selected: the dense convolution, each group scaled by its router weight.
    every = ChannelMoEConv2d(3, 8, num_experts=2, top_k=2).double()
    every.weight.data.copy_(layer.weight)
    every.bias.data.copy_(layer.bias)
    out = every(x)
    scale = torch.zeros(9, 2, dtype=torch.float64).scatter(
        1, every.last_routing.indices, every.last_routing.weights
    )
    torch.testing.assert_close(out, full * scale.repeat_interleave(4, -1)[..., None, None])
    with pytest.raises(ConfigError, match="multiple of num_experts"):
        ChannelMoEConv2d(3, 6, num_experts=4)


def test_advmoe_trains_the_channel_expert_cnn() -> None:
    x, y, _, _ = load_digits_split(0)
    torch.manual_seed(0)
    model = DigitCNN(moe=True, expert="channels")
    dense = DigitCNN(moe=False)
    # The paper's MoE-CNN: the dense CNN's filters split into experts (+ routers), half of them run per sample.
    n_router = sum(p.numel() for p in split_parameters(model)[0])
    assert model.conv2.weight.shape == dense.conv2.weight.shape
    assert sum(p.numel() for p in model.parameters()) - n_router == sum(p.numel() for p in dense.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    train(model, "advmoe", x[:64], y[:64], AdvConfig(epochs=1, train_steps=1, expert="channels"))
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    with pytest.raises(ConfigError, match="expert"):
        DigitCNN(moe=True, expert="rows")
