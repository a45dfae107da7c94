"""MGVGA pretraining: masked gate modeling + Verilog-AIG alignment (Wu et al., ICLR 2025), and functional
objectives (functional reconstruction, DeepGate2's functional similarity, equivalence-aware contrastive).

Entry points: :func:`train` (the loop behind ``circuitml pretrain``), :func:`load_config`, and the pieces a user
may reuse: :class:`MGMHead`, :class:`VGAHead`, :class:`BuiltinVerilogEncoder`, :class:`HFVerilogFeatures`,
:func:`embed_files`. Import submodules lazily so ``import circuitml.pretrain`` stays light.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "PretrainConfig",
    "load_config",
    "train",
    "TrainResult",
    "MGMHead",
    "VGAHead",
    "BuiltinVerilogEncoder",
    "HFVerilogFeatures",
    "MGVGAModel",
    "embed_files",
    "load_checkpoint",
    "FunctionalReconstructionHead",
    "FunctionalSimilarityHead",
    "ContrastiveHead",
    "export_encoder",
]

_WHERE = {
    "PretrainConfig": "config",
    "load_config": "config",
    "train": "trainer",
    "TrainResult": "trainer",
    "MGMHead": "mgm",
    "VGAHead": "vga",
    "BuiltinVerilogEncoder": "verilog_encoder",
    "HFVerilogFeatures": "verilog_encoder",
    "MGVGAModel": "model",
    "embed_files": "embed",
    "load_checkpoint": "checkpoint",
    "FunctionalReconstructionHead": "funcrec",
    "FunctionalSimilarityHead": "funcsim",
    "ContrastiveHead": "contrastive",
    "export_encoder": "trainer",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(f"circuitml.pretrain.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'circuitml.pretrain' has no attribute {name!r}")
