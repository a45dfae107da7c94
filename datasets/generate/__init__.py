"""Built-in circuit families: readable, parametrized RTL generated from ``(width, seed)``.

Importing this package registers every family in :data:`FAMILIES`. The dataset pipeline that writes the
Verilog, synthesizes it and builds the dataset lives in :mod:`circuitml.datasets.generate.pipeline`.
"""

from __future__ import annotations

from . import (  # noqa: F401  (each import registers its family)
    adder_cla,
    adder_rc,
    alu,
    barrel_shifter,
    comparator,
    counter,
    crc,
    decoder,
    encoder,
    fsm,
    mult_array,
    mult_booth,
    mux,
    parity,
    priority_encoder,
    random_control,
    subtractor,
)
from .registry import FAMILIES, Family, get_family, register_family

__all__ = ["FAMILIES", "Family", "get_family", "register_family"]
