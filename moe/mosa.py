r"""MoSA: a standard adapter split into non-overlapping sparse modules, trained sparsely, merged back.

Zhang et al., "MoSA: Mixture of Sparse Adapters for Visual Efficient Tuning" (Split & Merge: Unlocking the
Potential of Visual Adapters via Sparse Training), arXiv:2312.02923, 2023.

The adapter is the standard bottleneck ``h + W_u act(W_d h + b_d) + b_u`` (:class:`BottleneckAdapter`). *Split*:
every entry of ``W_d, b_d, W_u, b_u`` is assigned to exactly one of ``N`` modules by a fixed random partition
``M_1 + ... + M_N = 1`` (masks of equal density, non-overlapping). *Sparse training*: each step activates a random
subset ``S`` of the modules and the adapter runs with the weights

.. math:: \tilde W = \frac{N}{|S|}\, W \odot \textstyle\sum_{i \in S} M_i

(rescaled like DropConnect so its expectation is ``W``), so a step trains only the active modules' entries.
*Merge*: with every module active ``\tilde W = W``, a plain :class:`BottleneckAdapter` of the standard adapter's
shape, parameters and FLOPs — no inference cost. Subset strategies:

* ``"stochastic"`` — a uniformly random subset of ``k`` modules per step;
* ``"hierarchical"`` — the modules are the leaves of a binary tree (``N`` a power of two); each step picks a
  level uniformly, then one node of that level, and activates the leaves under it, so steps mix coarse and fine
  sparsity. This is our reading of the paper's hierarchical sparse strategy (the abstract does not give its
  exact rule); it is meant for small training sets.
"""

from __future__ import annotations

import math

import torch
from circuitml.moe.experts.adapters import BottleneckAdapter
from torch import Tensor, nn

from circuitml.errors import ConfigError

__all__ = ["MoSAAdapter", "MOSA_STRATEGIES"]

MOSA_STRATEGIES = ("stochastic", "hierarchical")


class MoSAAdapter(nn.Module):
    """A bottleneck adapter trained as ``num_modules`` sparse modules; :meth:`merge` returns the dense adapter.

    Args:
        d_model: width of ``h``.
        bottleneck: inner width ``r`` (the standard adapter's).
        num_modules: ``N`` non-overlapping modules.
        active: modules per step for ``"stochastic"`` (default ``N // 2``).
        strategy: ``"stochastic"`` or ``"hierarchical"``.
        activation: the adapter's activation.
        seed: seed of the partition (the per-step subsets use the global torch RNG or ``generator``).

    Shapes: ``h [..., d] -> [..., d]``. In eval mode every module is active (the merged adapter).
    """

    def __init__(
        self,
        d_model: int,
        bottleneck: int,
        num_modules: int = 4,
        active: int | None = None,
        strategy: str = "stochastic",
        activation: str = "relu",
        seed: int = 0,
    ) -> None:
        super().__init__()
        if strategy not in MOSA_STRATEGIES:
            raise ConfigError(f"MoSA: strategy: expected one of {MOSA_STRATEGIES}, got {strategy!r}")
        if num_modules < 1:
            raise ConfigError(f"MoSA: num_modules: expected a positive int, got {num_modules}")
        if strategy == "hierarchical" and num_modules & (num_modules - 1):
            raise ConfigError(f"MoSA: hierarchical: num_modules must be a power of two, got {num_modules}")
        active = max(1, num_modules // 2) if active is None else active
        if not 1 <= active <= num_modules:
            raise ConfigError(f"MoSA: active: expected 1..{num_modules}, got {active}")
        self.adapter = BottleneckAdapter(d_model, bottleneck, activation)
        self.num_modules, self.active, self.strategy = num_modules, active, strategy
        gen = torch.Generator().manual_seed(seed)
        # module id of every entry: a random permutation of a balanced assignment, so modules have equal size
        for name, p in self.adapter.named_parameters():
            owner = torch.arange(p.numel()) % num_modules
            owner = owner[torch.randperm(p.numel(), generator=gen)].reshape(p.shape)
            self.register_buffer(f"owner_{name.replace('.', '_')}", owner, persistent=True)
        self.last_subset: Tensor | None = None

    def owner(self, name: str) -> Tensor:
        """Module id ``[same shape as the parameter]`` of each entry of the adapter parameter ``name``."""
        return getattr(self, f"owner_{name.replace('.', '_')}")

    def sample_subset(self, generator: torch.Generator | None = None) -> Tensor:
        """Boolean ``[N]`` mask of the modules active this step."""
        n = self.num_modules
        mask = torch.zeros(n, dtype=torch.bool)
        if self.strategy == "stochastic":
            mask[torch.randperm(n, generator=generator)[: self.active]] = True
            return mask
        levels = int(math.log2(n)) + 1  # level 0: the root (all modules) ... last level: single modules
        level = int(torch.randint(levels, (1,), generator=generator))
        width = n >> level
        node = int(torch.randint(n // width, (1,), generator=generator))
        mask[node * width : (node + 1) * width] = True
        return mask

    def _weights(self, subset: Tensor | None) -> dict[str, Tensor]:
        params = dict(self.adapter.named_parameters())
        if subset is None:
            return params
        scale = self.num_modules / int(subset.sum())
        return {k: p * subset.to(p.device)[self.owner(k)].to(p.dtype) * scale for k, p in params.items()}

    def forward(
        self, h: Tensor, subset: Tensor | None = None, generator: torch.Generator | None = None
    ) -> Tensor:
        """In training a fresh subset is drawn per call unless ``subset`` is given; in eval all modules run."""
        if subset is None and self.training:
            subset = self.sample_subset(generator)
        self.last_subset = subset
        w = self._weights(subset)
        z = self.adapter.act(torch.nn.functional.linear(h, w["down.weight"], w["down.bias"]))
        return h + torch.nn.functional.linear(z, w["up.weight"], w["up.bias"])

    @torch.no_grad()
    def merge(self) -> BottleneckAdapter:
        """The merged adapter: a :class:`BottleneckAdapter` holding the sum of all modules (the full weights)."""
        down = self.adapter.down
        merged = BottleneckAdapter(down.in_features, down.out_features)
        merged.act = self.adapter.act
        total = {k: torch.zeros_like(p) for k, p in self.adapter.named_parameters()}
        for i in range(self.num_modules):  # sum of the N sparse modules: each entry comes from its one owner
            for k, p in self.adapter.named_parameters():
                total[k] += torch.where(self.owner(k) == i, p, torch.zeros_like(p))
        merged.load_state_dict(total)
        return merged
