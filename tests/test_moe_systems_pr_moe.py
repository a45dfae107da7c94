"""DeepSpeed-MoE: PR-MoE (pyramid + residual experts) and Mixture-of-Students distillation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from circuitml.moe import FFNExperts
from circuitml.moe.systems.mos import kd_loss, mos_loss, staged_kd_weight, student_from_teacher
from circuitml.moe.systems.pr_moe import ResidualMoE, build_pr_moe, build_standard_moe, pyramid

from circuitml.errors import ConfigError

D, H = 8, 12


def test_pyramid_puts_more_experts_deeper() -> None:
    assert pyramid(4, [4, 8]) == [4, 4, 8, 8]
    assert pyramid(6, [2, 4, 8]) == [2, 2, 4, 4, 8, 8]
    assert pyramid(5, [4, 8]) == [4, 4, 4, 8, 8]
    with pytest.raises(ConfigError, match="non-decreasing"):
        pyramid(4, [8, 4])
    with pytest.raises(ConfigError, match="need >= 3 layers"):
        pyramid(2, [1, 2, 3])


def test_pr_moe_layers_and_parameter_count() -> None:
    pr = build_pr_moe(D, 4, [2, 4], H)
    std = build_standard_moe(D, 4, 4, H, top_k=2)
    counts = [layer.block.num_experts for layer in pr.layers]
    assert counts == [2, 2, 4, 4]
    assert all(isinstance(layer, ResidualMoE) and layer.block.router.top_k == 1 for layer in pr.layers)
    per_expert = 3 * D * H  # SwiGLU: gate+up [2H, D] and down [D, H]
    norms = (4 + 1) * 2 * D
    expect_pr = sum(e * per_expert + D * e + per_expert + 2 * D + 2 for e in counts) + norms
    expect_std = 4 * (4 * per_expert + D * 4) + norms
    assert sum(p.numel() for p in pr.parameters()) == expect_pr
    assert sum(p.numel() for p in std.parameters()) == expect_std


def test_residual_layer_is_the_coefficient_mixture() -> None:
    torch.manual_seed(0)
    layer = build_pr_moe(D, 1, [3], H).layers[0]
    x = torch.randn(10, D)
    y = layer(x).out
    # Reference: dense MLP and the top-1 expert computed row by row, mixed by softmax(x W_c).
    r = layer.block.router(x)
    experts: FFNExperts = layer.block.experts
    routed = torch.stack(
        [experts.expert(int(r.indices[n, 0]), x[n : n + 1])[0] * r.weights[n, 0] for n in range(10)]
    )
    coef = F.softmax(x @ layer.coefficient.weight.t() + layer.coefficient.bias, dim=-1)
    ref = coef[:, :1] * layer.mlp(x) + coef[:, 1:] * routed
    torch.testing.assert_close(y, ref)


def test_student_copies_teacher_layers_and_kd_losses() -> None:
    torch.manual_seed(1)
    teacher = build_pr_moe(D, 4, [2, 4], H)
    student = student_from_teacher(teacher, [0, 2])
    assert len(student.layers) == 2
    x = torch.randn(5, D)
    torch.testing.assert_close(student.layers[1](x).out, teacher.layers[2](x).out)
    assert student.layers[0] is not teacher.layers[0]
    with pytest.raises(ConfigError, match="keep: expected layer ids in 0..3"):
        student_from_teacher(teacher, [4])
    s, t = torch.randn(6, 5, requires_grad=True), torch.randn(6, 5)
    tau = 2.0
    p_t = F.softmax(t / tau, -1)
    ref = tau**2 * (p_t * (p_t.log() - F.log_softmax(s / tau, -1))).sum(-1).mean()
    torch.testing.assert_close(kd_loss(s, t, tau), ref)
    assert float(kd_loss(t, t)) == pytest.approx(0.0, abs=1e-7)
    torch.testing.assert_close(kd_loss(s, t, kind="mse"), F.mse_loss(s, t))
    kd_loss(s, t).backward()
    assert s.grad is not None
    # Staged KD: mixed until the stop fraction, task loss alone afterwards.
    assert [staged_kd_weight(i, 10, 0.5, 0.3) for i in (0, 2, 3, 9)] == [0.5, 0.5, 0.0, 0.0]
    task = torch.tensor(2.0)
    torch.testing.assert_close(mos_loss(task, s, t, 0, 10), 0.5 * task + 0.5 * kd_loss(s, t))
    torch.testing.assert_close(mos_loss(task, s, t, 9, 10), task)
