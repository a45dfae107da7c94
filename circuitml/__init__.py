"""circuitml: graph learning for digital circuits, with a mixture-of-experts core.

Circuits (Verilog, AIGER, ISCAS bench) become And-Inverter Graphs (:class:`circuitml.AIG`), then PyG graphs;
GNN encoders are pretrained with MGVGA and evaluated on logic-synthesis tasks.
"""

from circuitml.aig import AIG, AIGBuilder
from circuitml.errors import (
    CheckpointError,
    CircuitFormatError,
    CircuitmlError,
    ConfigError,
    DatasetError,
    OutputError,
    SynthesisError,
)

__version__ = "0.1.0"

# Heavier entry points (torch, torch_geometric, Yosys) load on first use, so `import circuitml` stays fast.
_LAZY = {
    "load_encoder": ("circuitml.encoders", "load_encoder"),
    "build_encoder": ("circuitml.encoders", "build_encoder"),
    "Encoder": ("circuitml.encoders", "Encoder"),
    "EncoderConfig": ("circuitml.encoders", "EncoderConfig"),
    "read_circuit": ("circuitml.formats", "read_circuit"),
    "write_circuit": ("circuitml.formats", "write_circuit"),
    "aig_to_data": ("circuitml.graph", "aig_to_data"),
    "signal_probability": ("circuitml.sim", "signal_probability"),
    "equivalent": ("circuitml.sim", "equivalent"),
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'circuitml' has no attribute {name!r}")


__all__ = [
    "AIG",
    "Encoder",
    "EncoderConfig",
    "aig_to_data",
    "build_encoder",
    "equivalent",
    "load_encoder",
    "read_circuit",
    "signal_probability",
    "write_circuit",
    "AIGBuilder",
    "CheckpointError",
    "CircuitFormatError",
    "CircuitmlError",
    "ConfigError",
    "DatasetError",
    "OutputError",
    "SynthesisError",
    "__version__",
]
