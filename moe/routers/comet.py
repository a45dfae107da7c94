"""COMET: a tree-based cardinality-constrained gate (Ibrahim et al. 2023)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from circuitml.moe.registry import register_router
from circuitml.moe.router import Router, RouterOutput
from circuitml.moe.routers._gating import entropy, pack_support, smooth_step, truncated_support
from circuitml.moe.routers.dselect_k import DSelectKConfig
from torch import Tensor, nn

from circuitml.errors import ConfigError

CARDINALITY = ("soft", "hard")


@dataclass
class CometConfig(DSelectKConfig):
    """Options of :class:`CometRouter`: DSelect-k's (smooth-step ``gamma`` at every split of the trees, entropy
    regulariser weight on each tree's leaf distribution, no balance loss by default), and

    Args:
        cardinality: ``"soft"`` (the paper: at most ``k`` experts once the splits saturate, dense before) or
            ``"hard"`` (at most ``k`` experts per token at every step: the ``k`` largest gate values are kept
            and renormalized, so compute is sparse from the first step).
    """

    cardinality: str = "soft"

    def validate(self) -> None:
        super().validate()
        if self.cardinality not in CARDINALITY:
            raise ConfigError(
                f"router config: cardinality: expected one of {CARDINALITY}, got {self.cardinality!r}"
            )


@register_router("comet")
class CometRouter(Router):
    r"""COMET gate of Ibrahim et al. 2023, "COMET: Learning Cardinality Constrained Mixture of Experts with
    Trees and Local Search" (KDD).

    ``k`` soft binary trees of depth ``m = ceil(log2 E)``. Internal node ``n`` of tree ``i`` routes left with
    probability ``S(w_{i,n} \cdot x)`` (cubic smooth-step, exactly 0/1 outside ``[-gamma/2, gamma/2]``); the
    probability of reaching leaf ``l`` is the product along its path, ``P_{i,l}(x)``. Leaf ``l`` of every tree
    maps to expert ``l mod E``, scored by ``a_{i,l}(x) = u_{i,l} \cdot x + b_{i,l}``. The gate is

    .. math::
        g(x) = \sum_{i=1}^{k} \sum_{l} \mathrm{softmax}_{(i,l)}\big(a_{i,l}(x) + \log P_{i,l}(x)\big)\, e_{l \bmod E}

    (softmax jointly over all trees' leaves, ``log 0 = -inf``, as in the reference code). Once every split is
    saturated each tree reaches one leaf, so at most ``k`` experts are non-zero: the cardinality constraint.
    The entropy of each tree's leaf distribution, weighted by ``entropy_weight``, is returned as
    ``aux_losses["entropy_loss"]`` to push the splits there. Slots are the support of ``g`` (``-1`` padded).

    The soft constraint holds only at convergence (early on a token can reach every expert). With
    ``cardinality="hard"`` the slots are the ``k`` largest entries of ``g``, renormalized to sum to 1
    (:math:`\tilde g = g \odot m / \lVert g \odot m \rVert_1`, ``m`` the top-k mask), at every step; once the
    trees saturate ``g`` has at most ``k`` non-zeros and the two modes coincide. Inference overrides
    (``top_k``, SCMoE's rank routing) take the largest entries the same way.
    """

    config_class = CometConfig
    top_k_shapes_parameters = True  # k trees

    def __init__(self, config: CometConfig) -> None:
        super().__init__(config)
        self.depth = max(1, math.ceil(math.log2(config.num_experts)))
        self.num_trees = config.top_k
        self.num_leaves = 2**self.depth
        self.split_layer = nn.Linear(config.d_model, self.num_trees * (self.num_leaves - 1))
        self.leaf_layer = nn.Linear(config.d_model, self.num_trees * self.num_leaves)
        self.register_buffer(
            "leaf_expert", torch.arange(self.num_leaves) % config.num_experts, persistent=False
        )
        self.reset_parameters()

    def reset_parameters(self) -> None:
        # Reference initialisation: near-zero splits (every leaf reachable), small leaf scores.
        g = self.config.gamma
        nn.init.uniform_(self.split_layer.weight, -g / 100, g / 100)
        nn.init.uniform_(self.split_layer.bias, -g / 100, g / 100)
        nn.init.uniform_(self.leaf_layer.weight, -0.05, 0.05)
        nn.init.zeros_(self.leaf_layer.bias)

    def leaf_probabilities(self, x: Tensor) -> Tensor:
        """``[N, k, 2^m]`` probability of reaching each leaf of each tree (rows sum to 1).

        Nodes are numbered breadth-first (root 0, children of ``n`` are ``2n+1``, ``2n+2``); the loop runs over
        the ``m`` levels, each level vectorised over tokens, trees and nodes.
        """
        split = smooth_step(
            self.split_layer(x).view(-1, self.num_trees, self.num_leaves - 1), self.config.gamma
        )
        reach = x.new_ones(x.shape[0], self.num_trees, 1)
        for level in range(self.depth):
            first = 2**level - 1
            left = split[:, :, first : first + 2**level]
            # Interleave children so position p at the next level is child (p // 2), side (p % 2).
            reach = torch.stack((reach * left, reach * (1.0 - left)), dim=-1).flatten(-2)
        return reach

    def forward(self, x: Tensor, **ctx: Any) -> RouterOutput:
        reach = self.leaf_probabilities(x)
        leaf_scores = self.leaf_layer(x).view(-1, self.num_trees, self.num_leaves)
        log_reach = torch.where(reach > 0, torch.log(reach.clamp_min(1e-30)), float("-inf"))
        joint = torch.softmax((leaf_scores + log_reach).flatten(1), dim=-1).view_as(reach)
        per_leaf = joint.sum(dim=1)  # [N, 2^m]
        if self.num_leaves == self.num_experts:
            gate = per_leaf
        else:
            gate = per_leaf.new_zeros(x.shape[0], self.num_experts).index_add(-1, self.leaf_expert, per_leaf)
        if self.routing_override is not None:
            weights, indices = truncated_support(self, gate)
        elif self.config.cardinality == "hard":
            weights, indices = truncated_support(self, gate, self.top_k)
        else:
            weights, indices = pack_support(gate, gate > 0)
        aux = self.standard_losses(None, gate, indices, weights)
        if self.config.entropy_weight > 0 and x.shape[0]:
            aux["entropy_loss"] = self.config.entropy_weight * entropy(reach).sum(dim=-1).mean()
        return RouterOutput(logits=None, probs=gate, weights=weights, indices=indices, aux_losses=aux)
