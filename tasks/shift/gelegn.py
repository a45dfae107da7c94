r"""Global expert / local expert / gating network (GE / LE / GN).

Zhang, Davoodi and Hu, "A Mixture of Expert Approach for Low-Cost Customization of Deep Neural Networks"
(arXiv:1811.00056, 2018): a trained *global expert* (GE) is deployed frozen; a small *local expert* (LE) is
trained on one user's few examples to correct its errors, and a *gating network* (GN) decides, per input, whether
the GE or the LE should handle it. Only the LE and GN are trained on the device, so customization is cheap and the
user's data never leaves it:

.. math:: \hat y(x) = g_0(x)\, \hat y_{GE}(x) + g_1(x)\, \hat y_{LE}(x), \qquad g = \mathrm{softmax}(W \phi_{GE}(x))

The gate is a dense two-expert router from the core's registry reading the global model's features (the paper's
GN reads the input; the GE's features are that input's representation here, so the GN stays small).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from circuitml.moe import build_router
from circuitml.tasks.shift.base import ShiftOutput, ShiftTask, fit, module_device
from torch import Tensor, nn

__all__ = ["GlobalLocalGate", "run_gelegn"]


class GlobalLocalGate(nn.Module):
    """``forward(batch) -> ShiftOutput`` mixing a frozen global model and a trainable local one per row."""

    def __init__(self, global_model: nn.Module, local_model: nn.Module, d_model: int) -> None:
        super().__init__()
        self.global_model = global_model.eval()
        for p in self.global_model.parameters():
            p.requires_grad_(False)
        self.local_model = local_model
        self.gate = build_router("topk", d_model=d_model, num_experts=2, top_k=2, balance_loss=None)
        self.gate.to(module_device(local_model))
        self.last_gate: Tensor | None = None

    def forward(self, batch: Any) -> ShiftOutput:
        with torch.no_grad():
            g = self.global_model(batch)
        loc = self.local_model(batch)
        routing = self.gate(g.features)
        w = torch.zeros(g.features.shape[0], 2, dtype=g.features.dtype, device=g.features.device)
        w = w.scatter(1, routing.indices.clamp_min(0), routing.weights.to(w.dtype))
        self.last_gate = w.detach()
        shape = (-1,) + (1,) * (g.preds.dim() - 1)
        preds = w[:, 0].view(shape) * g.preds + w[:, 1].view(shape) * loc.preds
        return ShiftOutput(features=g.features, preds=preds)


def run_gelegn(
    task: ShiftTask,
    global_model: nn.Module,
    local_model: nn.Module,
    d_model: int,
    local_labeled: Sequence[Any],
    steps: tuple[int, int] = (100, 100),
    lr: float = 3e-3,
    seed: int = 0,
) -> tuple[GlobalLocalGate, dict[str, list[float]]]:
    """Train the local expert on the user's few labeled batches, then the gate (local expert fine-tuned with it)."""
    curve_local = fit(local_model, lambda m, b: task.loss(m(b), b), local_labeled, steps[0], lr=lr, seed=seed)
    mix = GlobalLocalGate(global_model, local_model, d_model)
    curve_gate = fit(mix, lambda m, b: task.loss(m(b), b), local_labeled, steps[1], lr=lr, seed=seed + 1)
    mix.eval()
    return mix, {"local": curve_local, "gate": curve_gate}
