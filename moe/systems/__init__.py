"""Systems of the MoE seed papers, each in its own module, built on the core (block, dispatch, parallel).

* :mod:`.ring_inference` — SE-MoE ring-memory inference (slow tier + ring of K fast sections, prefetch).
* :mod:`.fssdp` — Hecate's fully sharded sparse data parallelism (sparse all-gather / reduce-scatter, re-sharding).
* :mod:`.adaptive` — Tutel's adaptive runtime (dynamic capacity, EP<->DP switch, pipelining degree).
* :mod:`.launch` — run a function on W local processes of one gloo/NCCL group (tests, benches).
"""

from circuitml.moe.systems.adaptive import AdaptiveParallelFFN, DynamicCapacityRouter
from circuitml.moe.systems.fssdp import FSSDPExperts, allreduce_replicated_grads, balanced_placement
from circuitml.moe.systems.ring_inference import RingMemory, mmap_safetensors, ring_offload

__all__ = [
    "AdaptiveParallelFFN",
    "DynamicCapacityRouter",
    "FSSDPExperts",
    "RingMemory",
    "allreduce_replicated_grads",
    "balanced_placement",
    "mmap_safetensors",
    "ring_offload",
]
