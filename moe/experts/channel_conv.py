r"""Channel-subset convolution experts: the MoE layer of AdvMoE's MoE-CNNs.

Zhang, Chen, Liu et al. 2023, "Robust Mixture-of-Expert Training for Convolutional Neural Networks" (ICCV,
arXiv:2308.10110): an expert is a *pathway of the backbone CNN* — a subset of the output channels of its
convolution layer — and a per-layer router picks ``k`` of the ``E`` channel groups for each sample, so a sample
runs a ``k/E`` slice of every MoE layer (the paper's inference saving). With the layer's filters
:math:`W \in \mathbb{R}^{C_{out} \times C_{in} \times s \times s}` split into ``E`` groups
:math:`W^{[g_e]}` of ``C_out / E`` filters each, a sample ``x`` routed to experts
:math:`e_1 < \dots < e_k` with weights :math:`w_{e}` gives

.. math::
    y^{[g_e]}(x) = w_e\, \big(W^{[g_e]} * x + b^{[g_e]}\big) \ \text{for a selected } e, \qquad
    y^{[g_e]}(x) = 0 \ \text{otherwise}

— every channel keeps its place, so the next layer reads the same filter's map in the same channel whatever the
routing. (The authors' code instead stacks the selected channels into ``k C_out / E``; with one router per layer,
as here, that hands the next layer a different filter's map in a channel from one sample to the next, and on
``load_digits`` it reached 0.61 (AT) and 0.71 (AdvMoE) standard accuracy against 0.99 for the dense CNN.)
Scaling by the router weight gives the router its task gradient. Samples are sorted by expert
(:func:`~circuitml.moe.dispatch.make_plan`) and each group convolves only its own samples.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from circuitml.moe.dispatch import make_plan
from circuitml.moe.experts.conv import RoutedConv
from torch import Tensor, nn

from circuitml.errors import ConfigError


class ChannelMoEConv2d(RoutedConv):
    """One convolution whose ``out_channels`` filters form ``E`` experts; ``k`` are run per sample.

    Args:
        in_channels, out_channels, kernel_size, padding: the full convolution (stride 1).
        num_experts, top_k: ``E`` channel groups (``E`` must divide ``out_channels``) and ``k`` per sample.
        router: registered router name; ``router_options`` are its further config fields.

    Shapes: ``x [B, C_in, H, W]`` → ``[B, C_out, H, W]``, the unselected groups' channels zero.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        padding: int = 1,
        num_experts: int = 4,
        top_k: int = 2,
        router: str = "topk",
        **router_options: Any,
    ) -> None:
        super().__init__()
        if out_channels % num_experts:
            raise ConfigError(
                f"channel MoE conv: out_channels={out_channels} must be a multiple of num_experts={num_experts}"
            )
        self.num_experts, self.top_k, self.padding = num_experts, top_k, padding
        self.group = out_channels // num_experts
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default
        self.build_router(in_channels, top_k, router, router_options)

    def forward(self, x: Tensor) -> Tensor:
        routing = self.route(x)
        plan = make_plan(routing.indices, self.num_experts)
        b, _, h, w = x.shape
        out = x.new_zeros(b, self.num_experts, self.group, h, w)
        flat_w = routing.weights.reshape(-1)
        start = 0
        for e, count in enumerate(plan.counts_list()):
            if count == 0:
                continue  # a channel group no sample chose is not computed
            pairs = plan.pair_index[start : start + count]
            samples = plan.token_index[start : start + count]
            start += count
            rows = slice(e * self.group, (e + 1) * self.group)
            y = F.conv2d(x[samples], self.weight[rows], self.bias[rows], padding=self.padding)
            group = torch.full_like(samples, e)
            out = out.index_put((samples, group), flat_w[pairs].to(y.dtype)[:, None, None, None] * y)
        return out.reshape(b, self.num_experts * self.group, h, w)
