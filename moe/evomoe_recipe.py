r"""EvoMoE's two training phases, driven by optimizer steps.

Nie et al. 2021, "EvoMoE: An Evolutional Mixture-of-Experts Training Framework via Dense-To-Sparse Gate"
(arXiv:2112.14397):

1. **expert-diversify**: for ``expert_steps`` optimizer steps every token goes to one expert (the dense
   model); then the ``E`` experts are spawned from it, :math:`W_e = W_{src} \odot M_e / p` with random masks
   ``M_e ~ Bernoulli(p)`` (:func:`~circuitml.moe.routers.evomoe.diversify_experts`);
2. **gate-sparsify**: the dense-to-sparse gate :math:`g = \mathrm{softmax}((xW + G)/\tau(t))` anneals
   ``tau`` over ``anneal_steps`` from routing to every expert down to top-``final_top_k``.

Both phases live in the :class:`~circuitml.moe.routers.evomoe.EvoMoERouter` config (``expert_steps``,
``anneal_steps``, ``diversify_keep``) and count optimizer steps. Any training loop that calls
:func:`~circuitml.moe.schedule.step_routers` after ``optimizer.step()`` (the project's trainers do) runs both
phases; :func:`evomoe_options` gives the router options and :func:`evomoe_phase` reports where a model is.
"""

from __future__ import annotations

from typing import Any

from circuitml.moe.routers.evomoe import EvoMoERouter
from torch import nn

from circuitml.errors import ConfigError


def evomoe_options(
    total_steps: int, expert_fraction: float = 0.2, anneal_fraction: float = 0.5
) -> dict[str, Any]:
    """Router options splitting a budget of ``total_steps`` optimizer steps into EvoMoE's phases: the first
    ``expert_fraction`` trains one expert, the next ``anneal_fraction`` anneals the gate, the rest is sparse."""
    if not (0 <= expert_fraction and 0 <= anneal_fraction and expert_fraction + anneal_fraction <= 1):
        raise ConfigError("evomoe options: fractions must be >= 0 and sum to at most 1")
    expert_steps = int(total_steps * expert_fraction)
    return {"expert_steps": expert_steps, "anneal_steps": max(1, int(total_steps * anneal_fraction))}


def evomoe_phase(model: nn.Module) -> str:
    """``"expert-diversify"``, ``"gate-sparsify"`` (annealing) or ``"sparse"``, of the model's first EvoMoE layer."""
    routers = [m for m in model.modules() if isinstance(m, EvoMoERouter)]
    if not routers:
        raise ConfigError("EvoMoE: the model has no 'evomoe' router")
    step, cfg = int(routers[0].step), routers[0].config
    if step < cfg.expert_steps:
        return "expert-diversify"
    return "gate-sparsify" if step < cfg.expert_steps + cfg.anneal_steps else "sparse"
