"""Layer-wise learning-rate decay for fine-tuning a pretrained encoder.

Howard & Ruder, "Universal Language Model Fine-tuning for Text Classification" (ULMFiT), ACL 2018 (discriminative
fine-tuning); Clark et al., "ELECTRA: Pre-training Text Encoders as Discriminators Rather Than Generators",
ICLR 2020 (layer-wise decay with every layer trained). With ``L`` layers, the embeddings at depth 0 and layer
``i`` at depth ``i + 1``, a parameter at depth ``l`` learns at

    lr_l = lr · ξ^(L − l),    0 < ξ ≤ 1,

so the top layer moves at the full rate and the lower, more general layers less: the pretrained features are
kept while the task head and the top adapt.
"""

from __future__ import annotations

from typing import Any

from circuitml.errors import ConfigError

__all__ = ["layer_lr_scales"]


def layer_lr_scales(model: Any, decay: float) -> dict[int, float]:
    """``id(parameter) → ξ^(L − depth)`` for every parameter of an upcycled reader's backbone (embeddings,
    layers, and anything above them, e.g. a pooler, at the top's full rate). The span head (``qa_*``) is not in
    the map: it keeps its own learning rate."""
    if not 0 < decay <= 1:
        raise ConfigError(f"qa: layer_lr_decay: expected a factor in (0, 1], got {decay}")
    layers = model._layers()
    depth_of: dict[int, int] = {id(p): len(layers) for p in model.backbone.parameters()}
    for p in model.backbone.embeddings.parameters():
        depth_of[id(p)] = 0
    for i, layer in enumerate(layers):
        for p in layer.parameters():
            depth_of[id(p)] = i + 1
    return {k: decay ** (len(layers) - d) for k, d in depth_of.items()}
