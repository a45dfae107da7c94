r"""Channel-subset convolution experts: the MoE layer of AdvMoE's MoE-CNNs.

Zhang, Chen, Liu et al. 2023, "Robust Mixture-of-Expert Training for Convolutional Neural Networks" (ICCV,
arXiv:2308.10110): an expert is a *pathway of the backbone CNN* — a subset of the output channels of its
convolution layer — and a per-layer router picks ``k`` of the ``E`` channel groups for each sample, so a sample
runs a ``k/E`` slice of every MoE layer (the paper's inference saving). With the layer's filters
:math:`W \in \mathbb{R}^{C_{out} \times C_{in} \times s \times s}` split into ``E`` groups
:math:`W^{[g_e]}` of ``C_out / E`` filters each, a sample ``x`` routed to experts
:math:`e_1 < \dots < e_k` with weights :math:`w_{e}` gives

.. math::
    y(x) = \big\Vert_{j=1}^{k}\; w_{e_j}\, \big(W^{[g_{e_j}]} * x + b^{[g_{e_j}]}\big)

— the selected groups' feature maps stacked in channel order, ``k C_out / E`` channels (the next layer reads
that many, as in the authors' code, which keeps the selected channels and drops the others). Scaling by the
router weight gives the router its task gradient. Samples are sorted by expert
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

    Shapes: ``x [B, C_in, H, W]`` → ``[B, k * C_out / E, H, W]`` (:attr:`out_width` channels).
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
        self.out_width = top_k * self.group
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default
        self.build_router(in_channels, top_k, router, router_options)

    def forward(self, x: Tensor) -> Tensor:
        routing = self.route(x)
        idx = routing.indices
        # Place of each selected group in the output: its rank among the sample's groups in channel order
        # (a dropped slot, -1, ranks last and writes nothing).
        key = torch.where(idx >= 0, idx, self.num_experts)
        rank = key.argsort(dim=-1).argsort(dim=-1).reshape(-1)
        plan = make_plan(idx, self.num_experts)
        b, _, h, w = x.shape
        out = x.new_zeros(b, self.top_k, self.group, h, w)
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
            out = out.index_put((samples, rank[pairs]), flat_w[pairs].to(y.dtype)[:, None, None, None] * y)
        return out.reshape(b, self.out_width, h, w)
