"""Expert sets: stacked FFN experts, adapter experts around a frozen module, the shared (PR-MoE) expert."""

from circuitml.moe.experts.adapters import AdapterExperts, BottleneckAdapter, LoRALinear
from circuitml.moe.experts.ffn import ACTIVATIONS, FFNExperts, apply_activation
from circuitml.moe.experts.shared import SharedExpert

__all__ = [
    "ACTIVATIONS",
    "AdapterExperts",
    "BottleneckAdapter",
    "FFNExperts",
    "LoRALinear",
    "SharedExpert",
    "apply_activation",
]
