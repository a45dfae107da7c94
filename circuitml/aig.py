"""The And-Inverter Graph: one numpy-backed type used by every reader, writer, simulator and graph builder.

Conventions follow AIGER (Biere, "The AIGER And-Inverter Graph Format", 2007):

* node ``0`` is constant false; nodes ``1 .. num_pis`` are primary inputs; AND nodes follow, node
  ``num_pis + 1 + i`` being row ``i`` of :attr:`AIG.ands`;
* a *literal* is ``2 * node + complement``; literal 0 is false, literal 1 is true;
* AND rows are topologically ordered: both fanin literals of row ``i`` are smaller than its own literal.

Sequential circuits are stored with their latches *cut*: the last ``num_latches`` PIs are the latch outputs
(pseudo-PIs) and the last ``num_latches`` POs are the latch next-state functions (pseudo-POs), so every AIG
here is combinational and simulation, ABC recipes and GNNs all see the same DAG.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "AIG",
    "AIGBuilder",
    "merge_with_copy",
    "lit",
    "lit_node",
    "lit_compl",
    "longest_path_levels",
    "segment_gather",
]


def lit(node: int | np.ndarray, compl: int | np.ndarray = 0) -> int | np.ndarray:
    """Literal of ``node``, complemented when ``compl`` is 1."""
    return 2 * node + compl


def lit_node(literal: int | np.ndarray) -> int | np.ndarray:
    return literal >> 1


def lit_compl(literal: int | np.ndarray) -> int | np.ndarray:
    return literal & 1


def segment_gather(ptr: np.ndarray, segments: np.ndarray) -> np.ndarray:
    """Positions ``ptr[s] .. ptr[s+1]-1`` of every segment ``s`` in ``segments``, concatenated (CSR gather)."""
    starts = ptr[segments]
    lens = ptr[segments + 1] - starts
    total = int(lens.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    offsets = np.repeat(starts - (np.cumsum(lens) - lens), lens)
    return offsets + np.arange(total, dtype=np.int64)


def longest_path_levels(num_nodes: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Longest-path level of every node of a DAG given as edges ``src -> dst`` (sources at level 0).

    Kahn's algorithm run one *level* at a time: each round gathers the fanouts of the nodes settled in the
    previous round through a CSR index, so the total work is O(nodes + edges) numpy work plus one round per
    level, and no Python code runs per node.

    Raises:
        ValueError: if the edges contain a cycle.
    """
    src = np.asarray(src, dtype=np.int64)
    dst = np.asarray(dst, dtype=np.int64)
    level = np.zeros(num_nodes, dtype=np.int64)
    if src.size == 0:
        return level
    order = np.argsort(src, kind="stable")
    targets = dst[order]
    ptr = np.zeros(num_nodes + 1, dtype=np.int64)
    np.cumsum(np.bincount(src, minlength=num_nodes), out=ptr[1:])
    indeg = np.bincount(dst, minlength=num_nodes)
    frontier = np.flatnonzero(indeg == 0)
    settled = frontier.size
    depth = 0
    while frontier.size:
        hit = targets[segment_gather(ptr, frontier)]
        if hit.size == 0:
            break
        nodes, counts = np.unique(hit, return_counts=True)
        indeg[nodes] -= counts
        frontier = nodes[indeg[nodes] == 0]
        depth += 1
        level[frontier] = depth
        settled += frontier.size
    if settled != num_nodes:
        raise ValueError("graph has a cycle")
    return level


@dataclass
class AIG:
    """A combinational And-Inverter Graph with numpy storage.

    Attributes:
        num_pis: number of primary inputs, pseudo-PIs of cut latches included (they come last).
        ands: ``int64 [num_ands, 2]`` fanin literals of each AND node, topologically ordered.
        pos: ``int64 [num_pos]`` output literals, pseudo-POs of cut latches included (they come last).
        num_latches: how many latches were cut.
        latch_init: ``int8 [num_latches]`` reset value per latch: 0, 1, or -1 when undefined.
        pi_names, po_names: optional names (``None`` or a list with one entry per PI / PO).
        name: circuit name (usually the file stem or Verilog top module).
        comments: AIGER comment lines, kept for round trips.
    """

    num_pis: int
    ands: np.ndarray
    pos: np.ndarray
    num_latches: int = 0
    latch_init: np.ndarray | None = None
    pi_names: list[str] | None = None
    po_names: list[str] | None = None
    name: str = ""
    comments: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.ands = np.ascontiguousarray(np.asarray(self.ands, dtype=np.int64).reshape(-1, 2))
        self.pos = np.ascontiguousarray(np.asarray(self.pos, dtype=np.int64).reshape(-1))
        if self.latch_init is None:
            self.latch_init = np.zeros(self.num_latches, dtype=np.int8)
        self.latch_init = np.asarray(self.latch_init, dtype=np.int8).reshape(-1)

    # ------------------------------------------------------------------ sizes
    @property
    def num_ands(self) -> int:
        return int(self.ands.shape[0])

    @property
    def num_pos(self) -> int:
        return int(self.pos.shape[0])

    @property
    def num_nodes(self) -> int:
        """Constant + PIs + ANDs (the AIGER ``M + 1``)."""
        return 1 + self.num_pis + self.num_ands

    @property
    def num_inputs(self) -> int:
        """True primary inputs (pseudo-PIs of latches excluded)."""
        return self.num_pis - self.num_latches

    @property
    def num_outputs(self) -> int:
        """True primary outputs (pseudo-POs of latches excluded)."""
        return self.num_pos - self.num_latches

    @property
    def first_and(self) -> int:
        """Node id of the first AND node."""
        return self.num_pis + 1

    @property
    def is_sequential(self) -> bool:
        return self.num_latches > 0

    # ------------------------------------------------------------------ checks
    def validate(self) -> None:
        """Raise ``ValueError`` unless the arrays describe a well-formed, topologically ordered AIG."""
        if self.num_pis < 0 or self.num_latches < 0 or self.num_latches > min(self.num_pis, self.num_pos):
            raise ValueError(f"bad sizes: {self.num_pis} PIs, {self.num_pos} POs, {self.num_latches} latches")
        own = 2 * (self.first_and + np.arange(self.num_ands, dtype=np.int64))
        if self.num_ands and (self.ands.min() < 0 or (self.ands >= own[:, None]).any()):
            raise ValueError("AND fanins must be literals of earlier nodes (topological order)")
        if self.num_pos and (self.pos.min() < 0 or self.pos.max() >= 2 * self.num_nodes):
            raise ValueError("output literal out of range")
        for names, n, what in ((self.pi_names, self.num_pis, "PI"), (self.po_names, self.num_pos, "PO")):
            if names is not None and len(names) != n:
                raise ValueError(f"{len(names)} {what} names for {n} {what}s")
        if self.latch_init.shape[0] != self.num_latches:
            raise ValueError("latch_init must have one entry per latch")

    # ------------------------------------------------------------------ structure
    def fanin_nodes(self) -> tuple[np.ndarray, np.ndarray]:
        """Fanin node ids of each AND row: two ``int64 [num_ands]`` arrays."""
        return self.ands[:, 0] >> 1, self.ands[:, 1] >> 1

    def _and_edges(self) -> tuple[np.ndarray, np.ndarray]:
        """Edges fanin node -> AND node, two per AND row."""
        src = (self.ands >> 1).reshape(-1)
        dst = np.repeat(self.first_and + np.arange(self.num_ands, dtype=np.int64), 2)
        return src, dst

    def levels(self) -> np.ndarray:
        """Forward level of every node: constant and PIs at 0, an AND one above its deepest fanin."""
        src, dst = self._and_edges()
        return longest_path_levels(self.num_nodes, src, dst)

    def reverse_levels(self) -> np.ndarray:
        """Level in the reversed DAG: 0 for nodes with no AND fanout, else one above its highest fanout.

        Used by reverse (outputs → inputs) level-wise propagation.
        """
        src, dst = self._and_edges()
        return longest_path_levels(self.num_nodes, dst, src)

    def depth(self) -> int:
        """Largest forward level among the nodes driving outputs."""
        if self.num_pos == 0:
            return 0
        return int(self.levels()[self.pos >> 1].max())

    def fanout_counts(self) -> np.ndarray:
        """Fanouts per node, counting AND fanins and PO references."""
        n = self.num_nodes
        return (
            np.bincount(self.ands[:, 0] >> 1, minlength=n)
            + np.bincount(self.ands[:, 1] >> 1, minlength=n)
            + np.bincount(self.pos >> 1, minlength=n)
        )

    # ------------------------------------------------------------------ misc
    def copy(self) -> AIG:
        return AIG(
            num_pis=self.num_pis,
            ands=self.ands.copy(),
            pos=self.pos.copy(),
            num_latches=self.num_latches,
            latch_init=self.latch_init.copy(),
            pi_names=None if self.pi_names is None else list(self.pi_names),
            po_names=None if self.po_names is None else list(self.po_names),
            name=self.name,
            comments=list(self.comments),
        )

    def same_structure(self, other: AIG) -> bool:
        """True when both graphs have the same sizes, fanins and outputs (names and fanin order ignored)."""
        return (
            self.num_pis == other.num_pis
            and self.num_latches == other.num_latches
            and np.array_equal(np.sort(self.ands, axis=1), np.sort(other.ands, axis=1))
            and np.array_equal(self.pos, other.pos)
            and np.array_equal(self.latch_init, other.latch_init)
        )

    def stats(self) -> dict[str, int]:
        return {
            "inputs": self.num_inputs,
            "outputs": self.num_outputs,
            "latches": self.num_latches,
            "ands": self.num_ands,
            "depth": self.depth(),
        }

    def __repr__(self) -> str:
        return (
            f"AIG(name={self.name!r}, pis={self.num_inputs}, pos={self.num_outputs}, "
            f"latches={self.num_latches}, ands={self.num_ands})"
        )


def merge_with_copy(a: AIG, b: AIG) -> AIG:
    """One AIG holding ``a`` and ``b`` over the same PIs (``b``'s ANDs appended, outputs of both kept).

    With ``b`` a recipe variant of ``a`` (the same function, another structure), the merged graph holds
    functionally equal but structurally different gates: the gate-equivalence task builds its pairs from it, and
    pretraining can sample them (``data.merge_variants``). Cut latches stay cut: their pseudo-PIs are shared PIs
    of the merged AIG and their next-state pseudo-POs are plain outputs.
    """
    from circuitml.errors import ConfigError

    if a.num_pis != b.num_pis:
        raise ConfigError(f"merge: expected the same number of PIs, got {a.num_pis} and {b.num_pis}")

    def remap(lits: np.ndarray) -> np.ndarray:
        node = lits >> 1
        return np.where(node > b.num_pis, lits + 2 * a.num_ands, lits)

    return AIG(
        num_pis=a.num_pis,
        ands=np.concatenate([a.ands, remap(b.ands)]),
        pos=np.concatenate([a.pos, remap(b.pos)]),
        name=a.name,
    )


class AIGBuilder:
    """Builds an :class:`AIG` gate by gate with structural hashing and constant propagation.

    Used where gates arrive one by one (``.bench`` files, generators); readers of AIGER files fill the arrays
    directly. Every method takes and returns literals.
    """

    FALSE = 0
    TRUE = 1

    def __init__(self, name: str = "") -> None:
        self.name = name
        self._pi_names: list[str] = []
        self._ands: list[tuple[int, int]] = []
        self._strash: dict[tuple[int, int], int] = {}
        self._pos: list[int] = []
        self._po_names: list[str] = []
        self._frozen_pis = False

    def add_pi(self, name: str | None = None) -> int:
        if self._frozen_pis:
            raise RuntimeError("all PIs must be added before the first AND")
        self._pi_names.append(name if name is not None else f"pi{len(self._pi_names)}")
        return 2 * len(self._pi_names)

    def and_(self, a: int, b: int) -> int:
        self._frozen_pis = True
        if a > b:
            a, b = b, a
        if a == 0 or a == (b ^ 1):
            return 0
        if a == 1:
            return b
        if a == b:
            return a
        key = (a, b)
        hit = self._strash.get(key)
        if hit is not None:
            return hit
        out = 2 * (len(self._pi_names) + 1 + len(self._ands))
        self._ands.append(key)
        self._strash[key] = out
        return out

    @staticmethod
    def not_(a: int) -> int:
        return a ^ 1

    def or_(self, a: int, b: int) -> int:
        return self.and_(a ^ 1, b ^ 1) ^ 1

    def xor_(self, a: int, b: int) -> int:
        return self.or_(self.and_(a, b ^ 1), self.and_(a ^ 1, b))

    def mux_(self, sel: int, then: int, other: int) -> int:
        return self.or_(self.and_(sel, then), self.and_(sel ^ 1, other))

    def and_many(self, lits: list[int]) -> int:
        """Balanced AND tree (keeps depth logarithmic)."""
        if not lits:
            return 1
        while len(lits) > 1:
            nxt = [self.and_(lits[i], lits[i + 1]) for i in range(0, len(lits) - 1, 2)]
            if len(lits) % 2:
                nxt.append(lits[-1])
            lits = nxt
        return lits[0]

    def or_many(self, lits: list[int]) -> int:
        return self.and_many([x ^ 1 for x in lits]) ^ 1

    def xor_many(self, lits: list[int]) -> int:
        if not lits:
            return 0
        while len(lits) > 1:
            nxt = [self.xor_(lits[i], lits[i + 1]) for i in range(0, len(lits) - 1, 2)]
            if len(lits) % 2:
                nxt.append(lits[-1])
            lits = nxt
        return lits[0]

    def add_po(self, literal: int, name: str | None = None) -> None:
        self._pos.append(literal)
        self._po_names.append(name if name is not None else f"po{len(self._pos) - 1}")

    @property
    def num_pis(self) -> int:
        return len(self._pi_names)

    def build(self, num_latches: int = 0, latch_init: np.ndarray | None = None) -> AIG:
        aig = AIG(
            num_pis=len(self._pi_names),
            ands=np.array(self._ands, dtype=np.int64).reshape(-1, 2),
            pos=np.array(self._pos, dtype=np.int64),
            num_latches=num_latches,
            latch_init=latch_init,
            pi_names=list(self._pi_names),
            po_names=list(self._po_names),
            name=self.name,
        )
        return aig
