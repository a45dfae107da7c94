"""Per-optimizer-step router updates: the one call a trainer makes after ``optimizer.step()``.

Routers with a schedule or running statistics — the dense-to-sparse anneals (EvoMoE, the activation
dense-to-sparse gate), the permutation local search, DeepSeek's auxiliary-loss-free balancing bias — advance
here and nowhere else. A forward never advances them, so the schedule counts optimizer steps whatever the
number of micro-batches per step, and activation recomputation (gradient checkpointing) replays exactly the
forward it recomputes.

    loss.backward(); optimizer.step(); step_routers(model)
"""

from __future__ import annotations

from circuitml.moe.inference import routers_of
from torch import nn


def step_routers(model: nn.Module) -> int:
    """Call :meth:`~circuitml.moe.router.Router.on_optimizer_step` on every router of ``model`` (with the
    ``experts`` of the module that holds it as ``router``, when there is one); returns how many routers."""
    experts = {
        id(m.router): m.experts
        for m in model.modules()
        if isinstance(getattr(m, "router", None), nn.Module)
        and isinstance(getattr(m, "experts", None), nn.Module)
    }
    routers = routers_of(model)
    for router in routers:
        router.on_optimizer_step(experts.get(id(router)))
    return len(routers)
