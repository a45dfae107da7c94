r"""DeepSpeed-MoE's Mixture-of-Students (MoS): a shallower MoE student distilled from an MoE teacher.

DeepSpeed-MoE (Rajbhandari et al. 2022, ICML 2022), section 4.2. The student keeps the teacher's MoE
architecture with fewer layers (initialized from a subset of the teacher's layers) and trains on

.. math::
    \mathcal{L} = (1 - \lambda_t)\, \mathcal{L}_{task}(s) + \lambda_t\, \tau^2\,
    \mathrm{KL}\big(\mathrm{softmax}(z_T / \tau)\ \|\ \mathrm{softmax}(z_S / \tau)\big),

(mean squared error between outputs for regression heads), with **staged KD**: :math:`\lambda_t = \lambda`
for the first part of training and 0 afterwards, since the paper found that distillation late in training
hurts the smaller student.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from circuitml.moe.systems.pr_moe import PreNormMoEStack
from torch import Tensor

from circuitml.errors import ConfigError


def student_from_teacher(teacher: PreNormMoEStack, keep: Sequence[int]) -> PreNormMoEStack:
    """A student stack made of copies of the teacher's layers ``keep`` (with their norms), in that order."""
    if not keep or any(not 0 <= i < len(teacher.layers) for i in keep):
        raise ConfigError(f"MoS: keep: expected layer ids in 0..{len(teacher.layers) - 1}, got {list(keep)}")
    student = copy.deepcopy(teacher)
    student.layers = torch.nn.ModuleList(copy.deepcopy(teacher.layers[i]) for i in keep)
    student.norms = torch.nn.ModuleList(copy.deepcopy(teacher.norms[i]) for i in keep)
    return student


def kd_loss(student: Tensor, teacher: Tensor, temperature: float = 1.0, kind: str = "kl") -> Tensor:
    """``tau^2 KL(softmax(t/tau) || softmax(s/tau))`` averaged over rows (``kind="kl"``), or the mean squared
    error between the outputs (``kind="mse"``). The teacher side carries no gradient."""
    teacher = teacher.detach()
    if kind == "mse":
        return F.mse_loss(student, teacher)
    if kind != "kl":
        raise ConfigError(f"MoS: kd kind: expected 'kl' or 'mse', got {kind!r}")
    log_s = F.log_softmax(student / temperature, dim=-1)
    log_t = F.log_softmax(teacher / temperature, dim=-1)
    kl = (log_t.exp() * (log_t - log_s)).sum(-1)
    return temperature**2 * kl.mean()


def staged_kd_weight(step: int, total_steps: int, weight: float = 0.5, stop_fraction: float = 0.5) -> float:
    """``lambda_t`` of staged KD: ``weight`` until ``stop_fraction`` of training, then 0."""
    return weight if step < stop_fraction * total_steps else 0.0


def mos_loss(
    task_loss: Tensor,
    student_out: Tensor,
    teacher_out: Tensor,
    step: int,
    total_steps: int,
    weight: float = 0.5,
    stop_fraction: float = 0.5,
    temperature: float = 1.0,
    kind: str = "kl",
) -> Tensor:
    """The MoS objective at ``step``: task loss mixed with the staged KD term."""
    lam = staged_kd_weight(step, total_steps, weight, stop_fraction)
    if lam == 0.0:
        return task_loss
    return (1 - lam) * task_loss + lam * kd_loss(student_out, teacher_out, temperature, kind)
