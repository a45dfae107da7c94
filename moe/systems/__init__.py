"""Systems of the MoE seed papers, each in its own module, built on the core (block, dispatch, parallel).

* :mod:`.ring_inference` — SE-MoE ring-memory inference (slow tier + ring of K fast sections, prefetch).
"""

from circuitml.moe.systems.ring_inference import RingMemory, mmap_safetensors, ring_offload

__all__ = ["RingMemory", "mmap_safetensors", "ring_offload"]
