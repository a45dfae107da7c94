r"""Adapter guidance distillation (AGD): one forward pass that reproduces classifier-free guidance.

Jensen et al., "Efficient Distillation of Classifier-Free Guidance using Adapters", arXiv:2503.07274, 2025.
Classifier-free guidance (Ho & Salimans, 2022) needs a conditional and an unconditional pass per step,

.. math:: \hat\epsilon_w(x_t, c) = \epsilon(x_t, \varnothing) + w\,\bigl(\epsilon(x_t, c) - \epsilon(x_t, \varnothing)\bigr).

AGD keeps the denoiser frozen and trains small adapters, conditioned on the guidance scale ``w``, so that one
conditional pass of the adapted model gives :math:`\hat\epsilon_w`; the training pairs come from CFG-guided
sampling trajectories (not from noised data), which removes the train/inference mismatch of earlier guidance
distillation.

:class:`AdapterGuidance` works with any conditional denoiser ``f(x_t, t, c)``: it attaches a bottleneck adapter
to the output of each named submodule (a forward hook adds ``U act(D y + E w_emb)`` to its output ``y``, ``U``
zero-initialized, so the wrapper starts as the frozen model) and sets the guidance scale for a call.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from circuitml.errors import ConfigError

__all__ = ["AdapterGuidance", "cfg_output", "guidance_embedding"]


def guidance_embedding(w: Tensor, dim: int) -> Tensor:
    """Sinusoidal features ``[B, dim]`` of the guidance scale (as for diffusion timesteps)."""
    half = dim // 2
    freqs = torch.exp(-math.log(1000.0) * torch.arange(half, device=w.device, dtype=torch.float32) / half)
    arg = w.float()[:, None] * 10.0 * freqs[None]
    return torch.cat([arg.sin(), arg.cos()], dim=-1)


def cfg_output(
    denoiser: Callable[..., Tensor], x: Tensor, t: Tensor, c: Tensor, null: Tensor, w: Tensor
) -> Tensor:
    """Classifier-free guidance with two network evaluations (run as one batch of ``2B``)."""
    both = denoiser(torch.cat([x, x]), torch.cat([t, t]), torch.cat([c, null]))
    cond, uncond = both.chunk(2)
    return uncond + w.view(-1, *([1] * (x.dim() - 1))) * (cond - uncond)


class _GuidedAdapter(nn.Module):
    def __init__(self, width: int, bottleneck: int, emb_dim: int) -> None:
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.scale = nn.Linear(emb_dim, bottleneck)
        self.up = nn.Linear(bottleneck, width)
        nn.init.zeros_(self.up.weight)  # start as the frozen model
        nn.init.zeros_(self.up.bias)

    def forward(self, y: Tensor, emb: Tensor) -> Tensor:
        e = self.scale(emb)
        while e.dim() < y.dim():  # broadcast the per-sample embedding over any token/spatial axes
            e = e.unsqueeze(1)
        return y + self.up(torch.nn.functional.silu(self.down(y) + e))


class AdapterGuidance(nn.Module):
    """A frozen conditional denoiser plus guidance-scale-conditioned adapters on chosen submodules.

    Args:
        denoiser: any ``nn.Module`` called as ``denoiser(x, t, c)``; frozen here.
        targets: dotted names of submodules whose (last-axis) output gets an adapter.
        bottleneck: adapter width.
        emb_dim: width of the guidance-scale embedding.

    ``forward(x, t, c, w)`` is one network evaluation that approximates :func:`cfg_output` at scale ``w [B]``.
    """

    def __init__(
        self, denoiser: nn.Module, targets: Sequence[str], bottleneck: int = 32, emb_dim: int = 32
    ) -> None:
        super().__init__()
        self.denoiser = denoiser
        for p in denoiser.parameters():
            p.requires_grad_(False)
        if not targets:
            raise ConfigError("AdapterGuidance: targets: expected at least one submodule name")
        modules = dict(denoiser.named_modules())
        self.adapters = nn.ModuleDict()
        self._hooks = []
        self._emb: Tensor | None = None
        self.emb_dim = emb_dim
        for name in targets:
            if name not in modules or not isinstance(modules[name], nn.Linear):
                raise ConfigError(
                    f"AdapterGuidance: target {name!r}: expected the name of an nn.Linear in the denoiser"
                )
            key = name.replace(".", "__")
            self.adapters[key] = _GuidedAdapter(modules[name].out_features, bottleneck, emb_dim)
            self._hooks.append(modules[name].register_forward_hook(self._hook(key)))

    def _hook(self, key: str):
        def add_adapter(_module: nn.Module, _inputs: tuple, out: Tensor) -> Tensor | None:
            if self._emb is None:  # called as the plain denoiser (e.g. by CFG): no adapter
                return None
            return self.adapters[key](out, self._emb)

        return add_adapter

    def forward(self, x: Tensor, t: Tensor, c: Tensor, w: Tensor) -> Tensor:
        self._emb = guidance_embedding(w.to(x.device).expand(x.shape[0]), self.emb_dim)
        try:
            return self.denoiser(x, t, c)
        finally:
            self._emb = None
