"""Match the ports of two circuits before comparing them: by name when both sides name them, else by position.

Port order is not a property of a circuit: Yosys' ``write_aiger`` orders inputs by name, our Verilog path by
declaration, a bench file by its ``INPUT`` lines. Comparing by position two circuits that list the same named
ports in a different order reports "not equivalent" for what is one function. :func:`align_ports` therefore
permutes the second circuit's inputs and outputs into the first one's order by name, and refuses (rather than
compares) when the names differ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from circuitml.aig import AIG
from circuitml.errors import ConfigError

__all__ = ["PortMatch", "align_ports"]


@dataclass(frozen=True)
class PortMatch:
    """Two circuits with ports in one order: ``first`` unchanged, ``second`` permuted; ``how`` says how."""

    first: AIG
    second: AIG
    how: str  # "by name" or "by position"
    why: str  # one clause explaining the choice


def _names(names: list[str] | None, count: int) -> list[str] | None:
    if names is None or len(names) < count:
        return None
    names = [n.strip() for n in names[:count]]
    if any(not n for n in names) or len(set(names)) != count:
        return None  # unnamed or repeated names cannot identify ports
    return names


def _combinational(aig: AIG) -> AIG:
    # equivalence cuts latches anyway; as plain PIs/POs the latch pseudo-ports permute like the others
    return AIG(
        num_pis=aig.num_pis,
        ands=aig.ands,
        pos=aig.pos,
        pi_names=None if aig.pi_names is None else list(aig.pi_names),
        po_names=None if aig.po_names is None else list(aig.po_names),
        name=aig.name,
    )


def _differences(first: list[str], second: list[str], what: str) -> str | None:
    only_a = [n for n in first if n not in set(second)]
    only_b = [n for n in second if n not in set(first)]
    if not only_a and not only_b:
        return None

    def few(names: list[str]) -> str:
        return ", ".join(names[:4]) + (f" (+{len(names) - 4} more)" if len(names) > 4 else "") or "none"

    return f"{what} only in the first: {few(only_a)}; only in the second: {few(only_b)}"


def align_ports(a: AIG, b: AIG, *, by_position: bool = False) -> PortMatch:
    """Put ``b``'s inputs and outputs in ``a``'s order.

    By name when both circuits name all their inputs and outputs uniquely (latch pseudo-ports included), by
    position otherwise or when ``by_position`` is set.

    Raises:
        ConfigError: both circuits name their ports and the names differ (they are not compared: matching
            differently named ports by position would be a guess; ``by_position`` makes that choice explicit).
    """
    a_in, b_in = _names(a.pi_names, a.num_pis), _names(b.pi_names, b.num_pis)
    a_out, b_out = _names(a.po_names, a.num_pos), _names(b.po_names, b.num_pos)
    if by_position:
        return PortMatch(a, b, "by position", "as asked")
    if a_in is None or b_in is None or a_out is None or b_out is None:
        side = "the first" if a_in is None or a_out is None else "the second"
        return PortMatch(a, b, "by position", f"{side} circuit does not name all its ports uniquely")
    problems = [p for p in (_differences(a_in, b_in, "inputs"), _differences(a_out, b_out, "outputs")) if p]
    if problems:
        raise ConfigError(
            "port names differ, circuits not compared (--by-position compares them by position): "
            + "; ".join(problems)
        )
    pi_perm = np.array([b_in.index(n) for n in a_in], dtype=np.int64)
    po_perm = np.array([b_out.index(n) for n in a_out], dtype=np.int64)
    if (pi_perm == np.arange(b.num_pis)).all() and (po_perm == np.arange(b.num_pos)).all():
        return PortMatch(a, b, "by name", "same names in the same order")
    # node 1 + pi_perm[j] of b becomes node 1 + j; AND nodes keep their numbers
    node_map = np.arange(b.num_nodes, dtype=np.int64)
    node_map[1 + pi_perm] = 1 + np.arange(b.num_pis, dtype=np.int64)
    ands = 2 * node_map[b.ands >> 1] + (b.ands & 1)
    pos = b.pos[po_perm]
    pos = 2 * node_map[pos >> 1] + (pos & 1)
    second = AIG(
        num_pis=b.num_pis, ands=ands, pos=pos, pi_names=list(a_in), po_names=list(a_out), name=b.name
    )
    return PortMatch(_combinational(a), second, "by name", "ports listed in a different order")
