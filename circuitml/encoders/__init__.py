"""GNN encoders for AIGs behind one config and one builder, with pretrained save/load and ``embed``.

>>> from circuitml.encoders import build_encoder
>>> enc = build_encoder("deepgcn", hidden=64)          # MGVGA backbone
>>> out = enc(data)                                     # EncoderOutput(node [N, 64], graph [B, 64])
>>> enc.save_pretrained("enc/"); enc2 = load_encoder("enc/")
"""

from circuitml.encoders import pyg_templates  # noqa: F401  (PyG's template files: out of the temp folder)
from circuitml.encoders.base import Encoder, EncoderOutput, load_encoder
from circuitml.encoders.builder import ENCODERS, available_encoders, build_encoder, register_encoder
from circuitml.encoders.config import EncoderConfig

__all__ = [
    "ENCODERS",
    "Encoder",
    "EncoderConfig",
    "EncoderOutput",
    "available_encoders",
    "build_encoder",
    "load_encoder",
    "register_encoder",
]
