"""MixDA: domain adapters in parallel with a frozen FFN, mixed by a gate over {FFN, adapters}.

Diao et al., "Mixture-of-Domain-Adapters: Decoupling and Injecting Domain Knowledge to Pre-trained Language
Models' Memories", ACL 2023. Each wrapped FFN sublayer computes

.. math:: y = w_0(x)\\, f(x) + \\sum_{a \\ge 1} w_a(x) \\bigl(f(x) + \\Delta_a(x)\\bigr) = f(x) + \\sum_{a\\ge1} w_a(x) \\Delta_a(x)

with ``f`` the frozen FFN, ``Δ_a(x) = U_a act(D_a x)`` bottleneck adapters that read the FFN's *input* ``x``
(in parallel with ``f``, the core's :class:`~circuitml.moe.AdapterExperts` of kind ``"parallel"``) and
``w = softmax`` of a dense router from the core's registry (top-k over all 1 + A slots). Stages:

0. *self-supervised head*: the task's label-free head (masked gate types for circuits, the MLM head for text)
   trains alone on the frozen model over source data, so stage 1's loss goes through a trained head;
1. *domain adaptation*: only the domain adapter trains, on unlabeled target-domain data with that
   self-supervised loss (head frozen), plus a knowledge-retention loss keeping the layer's output on source data
   close to the frozen FFN's;
2. *task adaptation*: a task adapter, the gates and the task head train on labeled data; domain adapters frozen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from circuitml.moe import build_router
from circuitml.moe.experts.adapters import AdapterExperts
from circuitml.tasks.shift.base import ShiftTask, fit, module_device
from torch import Tensor, nn

__all__ = ["MixDAFFN", "apply_mixda", "mixda_layers", "run_mixda"]


class MixDAFFN(nn.Module):
    """A frozen FFN ``[.., d] -> [.., d]`` with ``num_adapters`` parallel adapters and a mixture gate.

    Adapter 0 is the domain adapter, adapter 1 the task adapter (when ``num_adapters >= 2``).
    """

    def __init__(self, ffn: nn.Module, d_model: int, num_adapters: int = 2, bottleneck: int = 16) -> None:
        super().__init__()
        self.ffn = ffn
        for p in ffn.parameters():
            p.requires_grad_(False)
        # around the identity: only the corrections Δ_a(x) are taken from it (mixed_delta), f runs here once
        self.adapters = AdapterExperts(None, num_adapters, d_model, kind="parallel", rank=bottleneck)
        # a dense gate over {FFN, adapter_1..A}: a top-k router keeping every slot, weights renormalized
        self.gate = build_router(
            "topk", d_model=d_model, num_experts=num_adapters + 1, top_k=num_adapters + 1, balance_loss=None
        )
        self.num_adapters = num_adapters
        self.to(module_device(ffn))  # the wrapped FFN may already live on a GPU
        self.last_retention: Tensor | None = None
        self.track_retention = False

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        h = self.ffn(flat)
        routing = self.gate(flat)
        # weights in expert order (the router returns them sorted by score)
        w = torch.zeros(flat.shape[0], self.num_adapters + 1, dtype=flat.dtype, device=flat.device)
        w = w.scatter(1, routing.indices.clamp_min(0), routing.weights.to(flat.dtype))
        n = flat.shape[0]
        idx = torch.arange(self.num_adapters, device=flat.device).expand(n, -1)
        # the slots' weights sum to 1, so w_0 f + sum_a w_a (f + Δ_a) = f + sum_a w_a Δ_a(x)
        y = h + self.adapters.mixed_delta(flat, idx, w[:, 1:])
        if self.track_retention:
            self.last_retention = F.mse_loss(y, h.detach())
        return y.reshape(shape)


def apply_mixda(
    model: nn.Module, names: Sequence[str], d_model: int, num_adapters: int = 2, bottleneck: int = 16
) -> list[MixDAFFN]:
    """Replace the named FFN submodules of ``model`` by :class:`MixDAFFN` wrappers; freezes the rest."""
    for p in model.parameters():
        p.requires_grad_(False)
    wrapped = []
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        layer = MixDAFFN(getattr(parent, child), d_model, num_adapters, bottleneck)
        setattr(parent, child, layer)
        wrapped.append(layer)
    return wrapped


def mixda_layers(model: nn.Module) -> list[MixDAFFN]:
    return [m for m in model.modules() if isinstance(m, MixDAFFN)]


def _set_trainable(
    model: nn.Module, layers: list[MixDAFFN], stage: int, head: nn.Module | None
) -> list[nn.Parameter]:
    """Stage 1: the adapter stacks (gradient-masked to the domain adapter). Stage 2: adapters (masked to the
    task adapter), the gates and the head."""
    for p in model.parameters():
        p.requires_grad_(False)
    params: list[nn.Parameter] = []
    for layer in layers:
        for p in layer.adapters.parameters():
            p.requires_grad_(True)
        if stage == 2:
            for p in layer.gate.parameters():
                p.requires_grad_(True)
        params += [p for p in layer.parameters() if p.requires_grad]
    if stage == 2 and head is not None:
        for p in head.parameters():
            p.requires_grad_(True)
        params += list(head.parameters())
    return params


def _mask_adapter_grads(layers: list[MixDAFFN], keep: int) -> list[Any]:
    """Zero the gradients of every adapter but ``keep`` (adapters share stacked tensors)."""
    handles = []
    for layer in layers:
        for t in (layer.adapters.down, layer.adapters.up, layer.adapters.down_bias):
            mask = torch.zeros_like(t)
            if keep >= 0:
                mask[keep] = 1.0
            handles.append(t.register_hook(lambda g, m=mask: g * m))
    return handles


def _train_unsup_head(
    task: ShiftTask, model: nn.Module, source: Sequence[Any], steps: int, lr: float, seed: int
) -> list[float]:
    """Stage 0: the task's self-supervised head alone, on the frozen model (adapters still zero) over source data."""
    head = task.unsup_head(model)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in head.parameters():
        p.requires_grad_(True)
    curve = fit(model, task.unsup_loss, source, steps, lr=lr, params=list(head.parameters()), seed=seed)
    for p in head.parameters():
        p.requires_grad_(False)
    return curve


def run_mixda(
    task: ShiftTask,
    model: nn.Module,
    head: nn.Module | None,
    d_model: int,
    source: Sequence[Any],
    target_unlabeled: Sequence[Any],
    steps: tuple[int, int] = (100, 100),
    retention_weight: float = 1.0,
    lr: float = 3e-3,
    bottleneck: int = 16,
    seed: int = 0,
    head_steps: int | None = None,
) -> tuple[nn.Module, dict[str, list[float]]]:
    """The MixDA stages on a model already trained on ``source``; returns the adapted model and loss curves.

    Stage 0 trains ``task.unsup_head(model)`` for ``head_steps`` (default ``steps[0]``) on ``source`` with
    ``task.unsup_loss``; stage 1 adapts the domain adapter on ``target_unlabeled`` with ``task.unsup_loss`` plus
    ``retention_weight`` times the layers' distance to the frozen FFN on ``source``; stage 2 trains the task
    adapter, the gates and ``head`` on labeled ``source``.
    """
    layers = apply_mixda(model, task.ffn_names(model), d_model, num_adapters=2, bottleneck=bottleneck)
    curve0 = _train_unsup_head(task, model, source, steps[0] if head_steps is None else head_steps, lr, seed)

    def stage1_loss(m: nn.Module, pair: tuple[Any, Any]) -> Tensor:
        tgt, src = pair
        loss = task.unsup_loss(m, tgt)
        for layer in layers:
            layer.track_retention = True
        m(src)
        retention = sum(layer.last_retention for layer in layers)
        for layer in layers:
            layer.track_retention = False
        return loss + retention_weight * retention

    params = _set_trainable(model, layers, 1, head)
    hooks = _mask_adapter_grads(layers, keep=0)
    pairs = [
        (target_unlabeled[k % len(target_unlabeled)], source[k % len(source)])
        for k in range(max(len(target_unlabeled), len(source)))
    ]
    curve1 = fit(model, stage1_loss, pairs, steps[0], lr=lr, params=params, seed=seed)
    for h in hooks:
        h.remove()

    params = _set_trainable(model, layers, 2, head)
    hooks = _mask_adapter_grads(layers, keep=1)
    curve2 = fit(
        model, lambda m, b: task.loss(m(b), b), source, steps[1], lr=lr, params=params, seed=seed + 1
    )
    for h in hooks:
        h.remove()
    model.eval()
    return model, {"stage0": curve0, "stage1": curve1, "stage2": curve2}
