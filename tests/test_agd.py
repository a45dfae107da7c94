"""AGD: the wrapper starts as the frozen denoiser and, trained on CFG trajectories, approaches the two-pass CFG."""

from __future__ import annotations

import pytest
import torch
from circuitml.moe.agd import AdapterGuidance, cfg_output
from circuitml.tasks.guidance.digits import (
    NULL,
    Schedule,
    frechet_distance,
    load_digits_tensors,
    train_agd,
    train_denoiser,
)
from torch import nn

from circuitml.errors import ConfigError

pytest.importorskip("sklearn")


class _TokenDenoiser(nn.Module):
    """Any conditional denoiser: here one over token sequences ``[B, T, d]``."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(4, 6)
        self.proj = nn.Linear(6, 6)

    def forward(self, x, t, c):
        return self.proj(x + self.emb(c)[:, None] + t.float()[:, None, None] / 10)


def test_wrapper_starts_as_the_frozen_denoiser_and_cfg_is_two_evaluations() -> None:
    den = _TokenDenoiser()
    agd = AdapterGuidance(den, ["proj"], bottleneck=3, emb_dim=8)
    x, t, c = torch.randn(2, 5, 6), torch.tensor([3, 7]), torch.tensor([1, 2])
    w = torch.tensor([2.0, 4.0])
    torch.testing.assert_close(agd(x, t, c, w), den(x, t, c))  # zero-initialized adapters
    calls = []
    den.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    got = cfg_output(den, x, t, c, torch.zeros_like(c), w)
    assert calls == [4]  # one batched call of 2B rows: two network evaluations per sample
    want = den(x, t, torch.zeros_like(c)) + w[:, None, None] * (den(x, t, c) - den(x, t, torch.zeros_like(c)))
    torch.testing.assert_close(got, want)
    assert all(not p.requires_grad for p in den.parameters())
    with pytest.raises(ConfigError, match="nn.Linear"):
        AdapterGuidance(den, ["emb"])


def test_agd_one_pass_approaches_cfg_as_training_proceeds() -> None:
    torch.set_num_threads(1)
    xtr, ytr, _, _ = load_digits_tensors(0)
    schedule = Schedule()
    den = train_denoiser(xtr, ytr, schedule, steps=300, seed=0)
    agd, curve = train_agd(den, schedule, steps=150, sample_steps=10, seed=0, eval_every=50)
    assert len(curve) == 4
    # the gap to two-pass CFG on held-out trajectory points shrinks at every evaluation
    assert all(b < a for a, b in zip(curve, curve[1:], strict=False)) and curve[-1] < 0.8 * curve[0], curve
    x, t = torch.randn(8, 64), torch.full((8,), 50)
    c, w = torch.arange(8), torch.full((8,), 3.0)
    with torch.no_grad():
        gap_agd = (agd(x, t, c, w) - cfg_output(den, x, t, c, torch.full_like(c, NULL), w)).pow(2).mean()
        gap_cond = (den(x, t, c) - cfg_output(den, x, t, c, torch.full_like(c, NULL), w)).pow(2).mean()
    assert gap_agd < gap_cond  # closer to CFG than the unguided pass it started from


def test_frechet_distance_matches_closed_form_for_gaussians() -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4000, 3, generator=g)
    b = torch.randn(4000, 3, generator=g) * 2 + 1  # N(1, 4I): d = |mu|^2 + tr(I + 4I - 2*2I) = 3 + 3
    assert frechet_distance(a, b) == pytest.approx(6.0, rel=0.1)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
