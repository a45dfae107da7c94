"""The contract the domain-shift methods share, so each works with circuit encoders and the QA transformer alike.

A *shift model* is an ``nn.Module`` whose ``forward(batch)`` returns :class:`ShiftOutput` — per-row features
``[N, d]`` (graph nodes or text tokens) and predictions ``[N, ...]`` — and a *shift task* says how to score them:
the supervised loss, the metric, and a label-free loss for unlabeled target-domain data (masked gate-type
prediction for circuits, masked-token prediction for text). The methods only ever call these.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from circuitml.moe.schedule import step_routers
from torch import Tensor, nn

__all__ = ["ShiftOutput", "ShiftTask", "fit", "evaluate", "cycle", "frozen_copy", "module_device"]


@dataclass
class ShiftOutput:
    features: Tensor  # [N, d]: what teachers, students and gates look at
    preds: Tensor  # [N, ...]: the task's predictions for the same rows


class ShiftTask(Protocol):
    """What a domain-shift method needs to know about a task."""

    def make_model(self) -> nn.Module: ...

    def loss(self, out: ShiftOutput, batch: Any) -> Tensor: ...

    def metric(self, preds: Tensor, batch: Any) -> float:
        """Error to minimize (mean absolute error, 100 - F1, ...)."""
        ...

    def unsup_loss(self, model: nn.Module, batch: Any) -> Tensor:
        """A loss that uses no labels, for unlabeled target-domain data."""
        ...

    def unsup_head(self, model: nn.Module) -> nn.Module:
        """The head that :meth:`unsup_loss` reads the features with (trained by MixDA's stage 0)."""
        ...

    def ffn_names(self, model: nn.Module) -> list[str]:
        """Dotted names of the ``[N, d] -> [N, d]`` FFN sublayers that MixDA may wrap."""
        ...


def cycle(batches: Sequence[Any], seed: int = 0) -> Iterator[Any]:
    """Endless shuffled passes over ``batches`` (reproducible)."""
    gen = torch.Generator().manual_seed(seed)
    while True:
        for k in torch.randperm(len(batches), generator=gen).tolist():
            yield batches[k]


def fit(
    model: nn.Module,
    loss_fn: Callable[[nn.Module, Any], Tensor],
    batches: Sequence[Any],
    steps: int,
    lr: float = 3e-3,
    params: Sequence[nn.Parameter] | Sequence[dict[str, Any]] | None = None,
    seed: int = 0,
    weight_decay: float = 0.0,
) -> list[float]:
    """Adam on ``loss_fn(model, batch)`` for ``steps`` steps over shuffled ``batches``; returns the losses.
    ``params`` may also be AdamW parameter groups (dicts with their own ``lr``)."""
    given = list(params if params is not None else model.parameters())
    if given and isinstance(given[0], dict):
        groups = [{**g, "params": [p for p in g["params"] if p.requires_grad]} for g in given]
        groups = [g for g in groups if g["params"]]
        params = [p for g in groups for p in g["params"]]
    else:
        params = groups = [p for p in given if p.requires_grad]
    if not params or not batches or steps <= 0:
        return []
    opt = torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay)
    model.train()
    losses = []
    it = cycle(batches, seed)
    for _ in range(steps):
        loss = loss_fn(model, next(it))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        step_routers(model)  # router anneals count optimizer steps
        losses.append(loss.item())
    return losses


@torch.no_grad()
def evaluate(task: ShiftTask, predict: Callable[[Any], Tensor], batches: Sequence[Any]) -> float:
    """Row-weighted mean of ``task.metric`` over ``batches`` with predictions from ``predict(batch)``."""
    total, rows = 0.0, 0
    for batch in batches:
        preds = predict(batch)
        n = int(preds.shape[0])
        total += task.metric(preds, batch) * n
        rows += n
    return total / max(rows, 1)


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s parameters (CPU for a module without any), where new parts of it must live."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def frozen_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode with every parameter frozen (teachers, global experts)."""
    twin = copy.deepcopy(model).eval()
    for p in twin.parameters():
        p.requires_grad_(False)
    return twin
