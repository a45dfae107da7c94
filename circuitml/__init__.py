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
    SynthesisError,
)

__version__ = "0.1.0"

__all__ = [
    "AIG",
    "AIGBuilder",
    "CheckpointError",
    "CircuitFormatError",
    "CircuitmlError",
    "ConfigError",
    "DatasetError",
    "SynthesisError",
    "__version__",
]
