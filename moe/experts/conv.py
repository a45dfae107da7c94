r"""Convolutional experts routed per sample: the MoE layer of an MoE-CNN.

As in the MoE-CNNs of Zhang et al. 2023, "Robust Mixture-of-Expert Training for Convolutional Neural Networks"
(ICCV, AdvMoE) — following Wang et al. 2020 ("Deep Mixture of Experts via Shallow Embedding") — every MoE layer
has its own router, which reads the globally pooled input feature map of a sample and picks ``k`` of ``E``
convolution experts for it:

.. math::
    y = \sum_{j \le k} w_j(x)\, \mathrm{conv}_{i_j(x)}(x), \qquad (w, i) = \mathrm{TopK}\big(\mathrm{router}(\mathrm{GAP}(x))\big)

The router is any router of the registry (``"topk"`` by default). Samples are sorted by expert (the core's
:func:`~circuitml.moe.dispatch.make_plan`) and each expert convolves only its own samples, once.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from circuitml.moe.dispatch import make_plan
from circuitml.moe.registry import build_router
from circuitml.moe.router import RouterOutput
from torch import Tensor, nn


class RoutedConv(nn.Module):
    """What the MoE convolutions share: a router reading a sample's pooled input, and its last routing."""

    def build_router(self, in_channels: int, top_k: int, router: str, options: dict) -> None:
        """Build the router last in ``__init__`` (after the weights: the random init keeps its order)."""
        self.router = build_router(
            router, d_model=in_channels, num_experts=self.num_experts, top_k=top_k, **options
        )
        self.last_routing: RouterOutput | None = None

    def route(self, x: Tensor) -> RouterOutput:
        """Route each sample of ``x [B, C, H, W]`` by its globally pooled features."""
        self.last_routing = self.router(x.mean(dim=(2, 3)))
        return self.last_routing

    def aux_loss(self) -> Tensor:
        """The router's weighted auxiliary losses of the last forward."""
        if self.last_routing is None:
            return self.weight.new_zeros(())
        return sum(self.last_routing.aux_losses.values(), self.weight.new_zeros(()))


class MoEConv2d(RoutedConv):
    """``E`` 2-D convolutions (same shape) with a per-layer router choosing ``k`` of them per sample.

    Args:
        in_channels, out_channels, kernel_size, padding: the convolution shape (stride 1).
        num_experts, top_k: ``E`` and ``k``.
        router: registered router name; ``router_options`` are its further config fields.

    Shapes: ``x [B, C_in, H, W]`` → ``[B, C_out, H, W]``; :attr:`last_routing` keeps the last routing.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        padding: int = 1,
        num_experts: int = 4,
        top_k: int = 1,
        router: str = "topk",
        **router_options: Any,
    ) -> None:
        super().__init__()
        self.num_experts = num_experts
        self.padding = padding
        self.weight = nn.Parameter(
            torch.empty(num_experts, out_channels, in_channels, kernel_size, kernel_size)
        )
        self.bias = nn.Parameter(torch.zeros(num_experts, out_channels))
        for e in range(num_experts):
            nn.init.kaiming_uniform_(self.weight[e], a=math.sqrt(5))
        self.build_router(in_channels, top_k, router, router_options)

    def forward(self, x: Tensor) -> Tensor:
        routing = self.route(x)
        plan = make_plan(routing.indices, self.num_experts)
        out = x.new_zeros(x.shape[0], self.weight.shape[1], x.shape[2], x.shape[3])
        start = 0
        flat_w = routing.weights.reshape(-1)
        for e, count in enumerate(plan.counts_list()):
            if count == 0:
                continue  # an expert no sample chose does no work
            pairs = plan.pair_index[start : start + count]
            samples = plan.token_index[start : start + count]
            start += count
            y = F.conv2d(x[samples], self.weight[e], self.bias[e], padding=self.padding)
            out = out.index_add(0, samples, flat_w[pairs].to(y.dtype)[:, None, None, None] * y)
        return out
