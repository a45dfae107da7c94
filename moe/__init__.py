"""Shared mixture-of-experts core: routers, experts, MoE block, adapters, losses, expert parallelism.

Works on rows ``[N, d]`` (graph nodes, text tokens, samples); nothing here is circuit-specific.
"""

import circuitml.moe.routers  # noqa: E402,F401,I001  (registers the built-in routers)
from circuitml.moe.config import RouterConfig
from circuitml.moe.registry import ROUTERS, build_router, register_router, router_class
from circuitml.moe.router import Router, RouterOutput

__all__ = [
    "ROUTERS",
    "Router",
    "RouterConfig",
    "RouterOutput",
    "build_router",
    "register_router",
    "router_class",
]
