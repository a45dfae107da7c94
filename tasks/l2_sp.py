"""L2-SP: fine-tuning that decays a pretrained encoder toward its starting point, not toward zero.

Li, Grandvalet and Davoine, "Explicit Inductive Bias for Transfer Learning with Convolutional Networks",
ICML 2018. Plain weight decay pulls every weight toward 0, which for a pretrained encoder means *away* from what
pretraining learned; L2-SP replaces it, for the pretrained weights ``w_S``, by

.. math::
    \\Omega(w) = \\frac{\\alpha}{2}\\,\\lVert w_S - w_S^0\\rVert_2^2 + \\frac{\\beta}{2}\\,\\lVert w_{\\bar S}\\rVert_2^2

where ``w_S^0`` are the pretrained values and ``w_{\\bar S}`` the new head (which keeps ordinary decay ``beta``).

The paper trains with SGD, where the penalty's gradient ``alpha (w - w0)`` is simply added. Under Adam that
gradient would be rescaled per coordinate by the second-moment estimate, so a coordinate with small gradients
would be pulled back hardest; we apply it decoupled from the adaptive step instead, as AdamW does for ordinary
decay (Loshchilov and Hutter, "Decoupled Weight Decay Regularization", ICLR 2019):
``w <- w - lr * alpha * (w - w0)`` after each optimizer step.
"""

from __future__ import annotations

import math

import torch

from circuitml.errors import ConfigError

__all__ = ["anchor_group", "pull_toward_anchors"]


def anchor_group(group: dict, alpha: float) -> dict:
    """Turn the pretrained encoder's parameter group into an L2-SP group: ordinary decay off, and the current
    (pretrained) values recorded as the anchors that ``alpha`` pulls toward."""
    if not (math.isfinite(alpha) and alpha >= 0):
        raise ConfigError(f"L2-SP: alpha must be a finite number >= 0, got {alpha}")
    group["weight_decay"] = 0.0
    group["sp_alpha"] = float(alpha)
    group["sp_anchors"] = [p.detach().clone() for p in group["params"]]
    return group


@torch.no_grad()
def pull_toward_anchors(optimizer: torch.optim.Optimizer) -> None:
    """After ``optimizer.step()``: ``w <- w - lr * alpha * (w - w0)`` for every L2-SP group."""
    for group in optimizer.param_groups:
        alpha = group.get("sp_alpha", 0.0)
        if not alpha:
            continue
        rate = group["lr"] * alpha
        params = [p for p in group["params"] if p.requires_grad]
        anchors = [a for p, a in zip(group["params"], group["sp_anchors"], strict=True) if p.requires_grad]
        if params:
            diff = torch._foreach_sub(params, anchors)
            torch._foreach_add_(params, diff, alpha=-rate)
