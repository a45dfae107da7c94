"""Shared mixture-of-experts core: routers, experts, MoE block, adapters, losses, expert parallelism."""
