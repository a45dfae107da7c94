"""The registry of built-in circuit families: one module per family, each a ``(width, seed) -> (name, verilog)``.

Every family writes readable, parametrized RTL (``parameter``, ``assign``, ``always``, ``generate``) rather
than gate netlists, because the Verilog encoder of MGVGA (Wu et al., "Circuit Representation Learning with
Masked Gate Modeling and Verilog-AIG Alignment", ICLR 2025) learns from the source text itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from circuitml.errors import ConfigError

__all__ = ["Family", "FAMILIES", "register_family", "get_family"]

GenerateFn = Callable[[int, int], tuple[str, str]]


@dataclass(frozen=True)
class Family:
    """A circuit family.

    Attributes:
        name: registry key, also the ``family`` field of dataset records.
        generate: ``(width, seed) -> (module_name, verilog_text)``; the same arguments give the same text.
        widths: bit widths used by default runs (each family reads "width" in its own sense, documented in
            its module: operand bits, select bits, state count...).
        sequential: whether the design has flip-flops (latches are cut into pseudo-PI/PO in the AIG).
        description: one line for ``circuitml data info`` and the docs.
        max_width: widths asked for beyond this are clamped (a 32-bit decoder would have 2**32 outputs).
    """

    name: str
    generate: GenerateFn
    widths: tuple[int, ...]
    sequential: bool = False
    description: str = ""
    max_width: int = 64


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    if family.name in FAMILIES:
        raise ValueError(f"circuit family {family.name!r} registered twice")
    FAMILIES[family.name] = family
    return family


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        known = ", ".join(sorted(FAMILIES))
        raise ConfigError(f"families: unknown circuit family {name!r}; expected one of: {known}") from None
