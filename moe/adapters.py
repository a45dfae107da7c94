"""Adapter modules for users outside the MoE block (re-exported from :mod:`circuitml.moe.experts.adapters`)."""

from circuitml.moe.experts.adapters import AdapterExperts, BottleneckAdapter, LoRALinear

__all__ = ["AdapterExperts", "BottleneckAdapter", "LoRALinear"]
