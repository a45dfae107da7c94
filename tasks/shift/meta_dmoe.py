"""Meta-DMoE: test-time adaptation by distillation from a mixture of domain experts.

Zhong et al., "Meta-DMoE: Adapting to Domain Shift by Meta-Distillation from Mixture-of-Experts", NeurIPS 2022.

* one expert per source domain, trained on that domain, then frozen (the teachers);
* an aggregator — a small transformer encoder over the ``K`` teachers' features of a row, read out through a learned
  query token — produces the knowledge the student should hold;
* meta-training: for a source domain taken as pseudo-target (its own teacher masked out, as in the paper), the
  student takes an inner gradient step on the distillation loss ``||phi_student(x) - agg(x)||^2`` computed on
  *unlabeled* rows, and the outer loss is the task loss of the adapted student on labeled rows; gradients flow
  through the inner step (``create_graph=True``) into the aggregator and the student's initialization;
* test time: the student adapts to the unlabeled target data by the same distillation steps, then predicts.

The meta-gradient is second order, so the student's layers must support double backward: dense layers, GNN
convolutions and MoE layers whose experts are GNN convolutions (``moe_gnn``'s default) do; the core's fused FFN
experts are differentiable once, so a student with FFN-expert MoE layers is not supported here (teachers may have
any architecture). A student's routers advance their schedules (anneals, balancing biases) once per meta-optimizer
step (:func:`~circuitml.moe.schedule.step_routers`); test-time adaptation leaves the student module untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from circuitml.moe.experts.ffn import FFNExperts
from circuitml.moe.schedule import step_routers
from circuitml.tasks.shift.base import ShiftOutput, ShiftTask, cycle, module_device
from torch import Tensor, nn
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel

from circuitml.encoders.softmax_aggr import double_backward
from circuitml.errors import ConfigError

__all__ = ["TeacherAggregator", "MetaDMoE"]


class TeacherAggregator(nn.Module):
    """Transformer encoder over the teachers' features of each row: ``[N, K, d] -> [N, d]``."""

    def __init__(self, d_model: int, num_teachers: int, num_heads: int = 4, num_layers: int = 1) -> None:
        super().__init__()
        heads = (
            max(1, min(num_heads, d_model // 16))
            if d_model % max(1, min(num_heads, d_model // 16)) == 0
            else 1
        )
        layer = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward=2 * d_model, dropout=0.0, batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.query = nn.Parameter(torch.zeros(1, 1, d_model))
        self.teacher_embedding = nn.Parameter(torch.zeros(1, num_teachers, d_model))
        nn.init.normal_(self.query, std=0.02)
        nn.init.normal_(self.teacher_embedding, std=0.02)

    def forward(self, feats: Tensor, mask: Tensor | None = None) -> Tensor:
        """``feats [N, K, d]``; ``mask [K]`` True for teachers to ignore (the pseudo-target's own expert)."""
        n = feats.shape[0]
        tokens = torch.cat([self.query.expand(n, -1, -1), feats + self.teacher_embedding], dim=1)
        pad = None
        if mask is not None:
            pad = torch.cat([torch.zeros(1, dtype=torch.bool, device=feats.device), mask]).expand(n, -1)
        return self.encoder(tokens, src_key_padding_mask=pad)[:, 0]


class MetaDMoE(nn.Module):
    """Teachers (frozen), aggregator and student; ``student(batch) -> ShiftOutput``.

    Args:
        teachers: one trained model per source domain (frozen here).
        student: the model to adapt (same contract: ``forward(batch) -> ShiftOutput``).
        d_model: feature width.
        adapt_names: prefixes of the student parameters adapted by distillation (default: all but the head).
        inner_lr: step size of the inner (adaptation) gradient step.
    """

    def __init__(
        self,
        teachers: Sequence[nn.Module],
        student: nn.Module,
        d_model: int,
        adapt_exclude: Sequence[str] = ("head",),
        inner_lr: float = 0.05,
    ) -> None:
        super().__init__()
        if any(isinstance(m, FFNExperts) for m in student.modules()):
            raise ConfigError(
                "meta_dmoe: the student has FFN-expert MoE layers, which are differentiable once; the "
                "meta-gradient needs double backward (use convolution experts, moe_gnn expert='conv')"
            )
        self.teachers = nn.ModuleList(teachers)
        for p in self.teachers.parameters():
            p.requires_grad_(False)
        self.student = student
        self.aggregator = TeacherAggregator(d_model, len(teachers)).to(module_device(student))
        self.adapt_exclude = tuple(adapt_exclude)
        self.inner_lr = inner_lr

    def _adapted_names(self) -> list[str]:
        return [
            n
            for n, p in self.student.named_parameters()
            if p.requires_grad and not n.startswith(self.adapt_exclude)
        ]

    def teacher_knowledge(self, batch: Any, mask: Tensor | None = None) -> Tensor:
        with torch.no_grad():
            feats = torch.stack([t(batch).features for t in self.teachers], dim=1)
        return self.aggregator(feats, mask)

    def inner_step(
        self, batch: Any, params: dict[str, Tensor], mask: Tensor | None, create_graph: bool
    ) -> dict[str, Tensor]:
        """One distillation step of the student on an unlabeled ``batch``; returns the adapted parameters."""
        target = self.teacher_knowledge(batch, mask)
        if not create_graph:
            target = target.detach()
        out: ShiftOutput = functional_call(self.student, params, (batch,))
        loss = F.mse_loss(out.features, target)
        names = self._adapted_names()
        grads = torch.autograd.grad(
            loss, [params[n] for n in names], create_graph=create_graph, allow_unused=True
        )
        new = dict(params)
        for n, g in zip(names, grads, strict=True):
            if g is not None:
                new[n] = params[n] - self.inner_lr * g
        return new

    def meta_train(
        self,
        task: ShiftTask,
        domains: Sequence[Sequence[Any]],
        steps: int = 100,
        lr: float = 1e-3,
        seed: int = 0,
    ) -> list[float]:
        """Meta-distillation over the source ``domains`` (one batch list per domain, aligned with teachers)."""
        params_to_train = [p for p in self.aggregator.parameters()] + [
            p for p in self.student.parameters() if p.requires_grad
        ]
        opt = torch.optim.Adam(params_to_train, lr=lr)
        gen = torch.Generator().manual_seed(seed)
        iters = [cycle(batches, seed + k) for k, batches in enumerate(domains)]
        losses = []
        self.student.train()
        for _ in range(steps):
            d = int(torch.randint(len(domains), (1,), generator=gen))
            support, query = next(iters[d]), next(iters[d])
            mask = torch.zeros(len(self.teachers), dtype=torch.bool, device=module_device(self.student))
            if len(self.teachers) > 1:
                mask[d] = True  # hide the pseudo-target's own expert, as the paper does
            params = dict(self.student.named_parameters())
            # second-order gradients need the differentiable kernels: attention's math kernel and the torch path of
            # the GNN's softmax aggregation (the fused kernels have no double backward)
            with sdpa_kernel([SDPBackend.MATH]), double_backward():
                adapted = self.inner_step(support, params, mask, create_graph=True)
                out = functional_call(self.student, adapted, (query,))
                loss = task.loss(out, query)
            opt.zero_grad(set_to_none=True)
            with sdpa_kernel([SDPBackend.MATH]), double_backward():
                loss.backward()
            torch.nn.utils.clip_grad_norm_(params_to_train, 1.0)
            opt.step()
            step_routers(
                self.student
            )  # the student's router anneals count optimizer steps (teachers are frozen)
            losses.append(loss.item())
        return losses

    def adapt(self, target_unlabeled: Sequence[Any], steps: int = 5) -> dict[str, Tensor]:
        """Test-time adaptation on unlabeled target batches; returns the adapted student parameters."""
        self.student.eval()
        params = {n: p.detach().clone().requires_grad_(True) for n, p in self.student.named_parameters()}
        for k in range(steps):
            batch = target_unlabeled[k % len(target_unlabeled)]
            params = {
                n: t.detach().requires_grad_(True)
                for n, t in self.inner_step(batch, params, None, False).items()
            }
        return {n: t.detach() for n, t in params.items()}

    @torch.no_grad()
    def predict(self, params: dict[str, Tensor], batch: Any) -> Tensor:
        return functional_call(self.student, params, (batch,)).preds
