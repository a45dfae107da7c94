r"""EvoMoE's two training phases as a recipe driven by optimizer steps.

Nie et al. 2021, "EvoMoE: An Evolutional Mixture-of-Experts Training Framework via Dense-To-Sparse Gate"
(arXiv:2112.14397):

1. **expert-diversify**: for ``expert_steps`` optimizer steps every token goes to one expert (the dense
   model); then the ``E`` experts are spawned from it, :math:`W_e = W_{src} \odot M_e / p` with random masks
   ``M_e ~ Bernoulli(p)`` (:func:`~circuitml.moe.routers.evomoe.diversify_experts`);
2. **gate-sparsify**: the dense-to-sparse gate :math:`g = \mathrm{softmax}((xW + G)/\tau(t))` anneals
   ``tau`` over ``anneal_steps`` from routing to every expert down to top-``final_top_k``.

Both phases live in the :class:`~circuitml.moe.routers.evomoe.EvoMoERouter` config (``expert_steps``,
``anneal_steps``) and count optimizer steps; the recipe is the one call a training loop makes after
``optimizer.step()`` — it advances every router (:func:`~circuitml.moe.schedule.step_routers`) and spawns the
experts of each EvoMoE layer the step its expert-diversify phase ends.

    recipe = EvoMoERecipe(model)
    for batch in data:
        loss.backward(); optimizer.step(); recipe.step()
"""

from __future__ import annotations

import torch
from circuitml.moe.routers.evomoe import EvoMoERouter, diversify_experts
from circuitml.moe.schedule import step_routers
from torch import nn

from circuitml.errors import ConfigError


class EvoMoERecipe:
    """Drives the EvoMoE layers of ``model`` (modules with an ``EvoMoERouter`` ``router`` and ``experts``).

    Args:
        model: the model being trained.
        keep: probability ``p`` that a weight of the source expert survives in a spawned expert.
        noise_std: std of Gaussian noise added to spawned experts (0: masks only, as in the paper).
        seed: seed of the masks.
    """

    def __init__(self, model: nn.Module, keep: float = 0.9, noise_std: float = 0.0, seed: int = 0) -> None:
        self.model = model
        self.keep = keep
        self.noise_std = noise_std
        self.generator = torch.Generator().manual_seed(seed)
        self.layers = [
            (m.router, m.experts)
            for m in model.modules()
            if isinstance(getattr(m, "router", None), EvoMoERouter) and hasattr(m, "experts")
        ]
        if not self.layers:
            raise ConfigError("EvoMoE recipe: the model has no MoE layer with an 'evomoe' router")

    def step(self) -> None:
        """After ``optimizer.step()``: advance every router; spawn experts where the first phase just ended."""
        step_routers(self.model)
        for router, experts in self.layers:
            cfg = router.config
            if cfg.expert_steps and int(router.step) >= cfg.expert_steps and not bool(router.diversified):
                diversify_experts(experts, cfg.source_expert, self.keep, self.noise_std, self.generator)
                router.diversified.fill_(True)

    def phase(self) -> str:
        """``"expert-diversify"``, ``"gate-sparsify"`` (annealing) or ``"sparse"`` (of the first layer)."""
        router = self.layers[0][0]
        step, cfg = int(router.step), router.config
        if step < cfg.expert_steps:
            return "expert-diversify"
        return "gate-sparsify" if step < cfg.expert_steps + cfg.anneal_steps else "sparse"
