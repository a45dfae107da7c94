"""Shared mixture-of-experts core: routers, experts, MoE block, adapters, losses, expert parallelism.

Works on rows ``[N, d]`` (graph nodes, text tokens, samples); nothing here is circuit-specific.

    >>> from circuitml.moe import build_moe
    >>> block = build_moe(d_model=64, num_experts=8, d_hidden=128, top_k=2)
    >>> out = block(x)             # MoEOutput(out, aux_loss, losses, routing, .stats)
    >>> loss = task_loss + out.aux_loss
"""

import circuitml.moe.routers  # noqa: E402,F401,I001  (registers the built-in routers)
from circuitml.moe.block import MoEBlock, MoEOutput, RoutingStats, build_moe  # noqa: E402,I001
from circuitml.moe.config import MoEConfig, RouterConfig
from circuitml.moe.dispatch import DispatchPlan, make_plan  # noqa: E402
from circuitml.moe.experts import (  # noqa: E402
    AdapterExperts,
    BottleneckAdapter,
    FFNExperts,
    LoRALinear,
    SharedExpert,
)
from circuitml.moe.inference import (  # noqa: E402
    contrastive_scores,
    routing_override,
    scmoe_scores,
    set_top_k,
    top_k,
)
from circuitml.moe.mosa import MoSAAdapter  # noqa: E402
from circuitml.moe.parallel import AllToAll, ExpertParallelFFN  # noqa: E402
from circuitml.moe.registry import ROUTERS, build_router, register_router, router_class
from circuitml.moe.router import Router, RouterOutput
from circuitml.moe.systems import *  # noqa: E402,F403  (systems of the seed papers, issue 13)
from circuitml.moe.systems import __all__ as _systems_all  # noqa: E402
from circuitml.moe.schedule import step_routers
from circuitml.moe.stack import ExpertStore, LookaheadExpertCache, MoEStack, build_router_stack

__all__ = [
    "ROUTERS",
    "AllToAll",
    "ExpertParallelFFN",
    "contrastive_scores",
    "routing_override",
    "scmoe_scores",
    "set_top_k",
    "top_k",
    "AdapterExperts",
    "BottleneckAdapter",
    "DispatchPlan",
    "FFNExperts",
    "LoRALinear",
    "LookaheadExpertCache",
    "ExpertStore",
    "MoEBlock",
    "MoEStack",
    "MoEConfig",
    "MoEOutput",
    "MoSAAdapter",
    "Router",
    "RouterConfig",
    "RouterOutput",
    "RoutingStats",
    "SharedExpert",
    "build_moe",
    "build_router",
    "build_router_stack",
    "make_plan",
    "register_router",
    "router_class",
    *_systems_all,
    "step_routers",
]
