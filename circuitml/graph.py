"""AIG → PyG graph tensors, and the level schedule that level-wise (DAG) message passing runs on.

The graph follows the convention of DeepGate (Li et al., "DeepGate: Learning Neural Representations of Logic
Gates", DAC 2022) and MGVGA (Wu et al., "Circuit Representation Learning with Masked Gate Modeling and
Verilog-AIG Alignment", ICLR 2025): every node is a gate of one of the types ``PI, PO, AND, NOT`` (plus ``CONST``
when a constant is referenced), each complemented AIG edge becomes an explicit ``NOT`` node — one per AIG node
whose complement is used, shared by all its inverted fanouts — and each primary output gets its own ``PO`` node.
With ``explicit_not=False`` complements stay on the edges as ``edge_attr`` instead.

Node order: ``[CONST] + PIs + ANDs`` (AIG order), then ``NOT`` nodes (by the AIG node they invert), then ``PO``
nodes (output order). Edges run fanin → fanout. ``level`` / ``rev_level`` are longest-path levels on the *graph*
(NOT and PO nodes count as a level), so a level-wise encoder never sees a node before its fanins.

All of it is numpy array work: no Python code runs per node.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch_geometric.data import Data

from circuitml import kernels
from circuitml.aig import AIG

__all__ = [
    "PI",
    "PO",
    "AND",
    "NOT",
    "CONST",
    "NUM_NODE_TYPES",
    "MASK_TYPE",
    "NODE_TYPE_NAMES",
    "aig_to_data",
    "LevelSchedule",
    "level_schedule",
    "to_dgl",
]

PI, PO, AND, NOT, CONST = 0, 1, 2, 3, 4
NUM_NODE_TYPES = 5
#: Input type reserved for masked gates (MGVGA's masked gate modeling): type embeddings need NUM_NODE_TYPES + 1 rows.
MASK_TYPE = 5
NODE_TYPE_NAMES = ("PI", "PO", "AND", "NOT", "CONST")


def _graph_arrays(aig: AIG, explicit_not: bool) -> dict[str, np.ndarray]:
    """Node types, edges and AIG-node ids of the graph of ``aig`` (numpy, before levels; the compiled twin is
    :func:`circuitml.kernels.graph_with_levels`)."""
    n_aig = aig.num_nodes
    and_nodes = aig.first_and + np.arange(aig.num_ands, dtype=np.int64)
    fanin_lits = aig.ands.reshape(-1)  # row-major: fanin 0 and 1 of each AND, in AND order
    po_lits = aig.pos

    # The constant gets a graph node only when something reads it.
    const_used = bool((fanin_lits < 2).any() or (po_lits < 2).any())
    shift = 0 if const_used else 1  # graph id of AIG node v (v >= shift) is v - shift
    n_base = n_aig - shift

    base_type = np.full(n_base, AND, dtype=np.int64)
    base_type[: 1 + aig.num_pis - shift] = PI
    if const_used:
        base_type[0] = CONST
    base_aig = np.arange(shift, n_aig, dtype=np.int64)

    all_lits = np.concatenate([fanin_lits, po_lits])
    and_dst = np.repeat(and_nodes - shift, 2)
    po_ids = np.arange(aig.num_pos, dtype=np.int64)

    if explicit_not:
        # One NOT node per AIG node whose complement is used anywhere, numbered in AIG-node order.
        inverted = np.zeros(n_aig, dtype=bool)
        inverted[all_lits[(all_lits & 1) == 1] >> 1] = True
        not_aig = np.flatnonzero(inverted).astype(np.int64)
        n_not = not_aig.size
        not_id = np.full(n_aig, -1, dtype=np.int64)
        not_id[not_aig] = n_base + np.arange(n_not, dtype=np.int64)
        po_start = n_base + n_not

        def driver(lits: np.ndarray) -> np.ndarray:
            node = lits >> 1
            return np.where((lits & 1) == 1, not_id[node], node - shift)

        src = np.concatenate([not_aig - shift, driver(fanin_lits), driver(po_lits)])
        dst = np.concatenate([not_id[not_aig], and_dst, po_start + po_ids])
        node_type = np.concatenate(
            [base_type, np.full(n_not, NOT, dtype=np.int64), np.full(aig.num_pos, PO, dtype=np.int64)]
        )
        aig_node = np.concatenate([base_aig, not_aig, np.full(aig.num_pos, -1, dtype=np.int64)])
        edge_compl = None
    else:
        po_start = n_base
        src = (all_lits >> 1) - shift
        dst = np.concatenate([and_dst, po_start + po_ids])
        node_type = np.concatenate([base_type, np.full(aig.num_pos, PO, dtype=np.int64)])
        aig_node = np.concatenate([base_aig, np.full(aig.num_pos, -1, dtype=np.int64)])
        edge_compl = (all_lits & 1).astype(np.float32)
        n_not = 0

    g = {
        "node_type": node_type,
        "edge_index": np.stack([src, dst]),
        "src": src,
        "dst": dst,
        "aig_node": aig_node,
        "edge_compl": edge_compl,
        "po_start": np.int64(po_start),
        "po_lits": po_lits,
        "n_not": np.int64(n_not),
    }
    return _with_latches(aig, shift, g)


def _with_latches(aig: AIG, shift: int, g: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Add ``is_latch``: the pseudo-PIs and pseudo-POs of cut latches."""
    is_latch = np.zeros(g["node_type"].size, dtype=bool)
    if aig.num_latches:
        po_start = int(g["po_start"])
        is_latch[1 + aig.num_inputs - shift : 1 + aig.num_pis - shift] = True
        is_latch[po_start + aig.num_outputs : po_start + aig.num_pos] = True
    g["is_latch"] = is_latch
    return g


def _kahn_longest(
    n: int, src: np.ndarray, dst: np.ndarray, length: np.ndarray, init: np.ndarray, max_rounds: int
) -> np.ndarray | None:
    """Weighted longest paths by Kahn's algorithm, one numpy round per (unweighted) level.

    Returns ``None`` past ``max_rounds`` rounds, or earlier when the first rounds settle so few nodes that the
    DAG looks that deep: deep, narrow DAGs are cheaper with :func:`_dijkstra_longest`.
    """
    order = np.argsort(src, kind="stable")
    s_dst, s_len, s_src = dst[order], length[order], src[order]
    fanouts = np.bincount(src, minlength=n)
    ptr = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(fanouts, out=ptr[1:])
    indeg = np.bincount(dst, minlength=n)
    best = init.astype(np.int64, copy=True)
    stamp = np.zeros(n, dtype=np.int64)
    frontier = np.flatnonzero(indeg == 0)
    settled, rounds = frontier.size, 0
    # Each round is a fixed handful of numpy calls (the round count, not the node count, is what costs here).
    while frontier.size:
        lens = fanouts[frontier]
        ends = np.cumsum(lens)
        total = int(ends[-1])
        if total == 0:
            break
        rounds += 1
        if rounds > max_rounds or (rounds == _PROBE_ROUNDS and rounds * n > max_rounds * settled):
            return None
        e = np.repeat(ptr[frontier] - ends + lens, lens) + np.arange(total)  # the frontier's out-edges
        d = s_dst[e]
        np.maximum.at(best, d, best[s_src[e]] + s_len[e])
        np.subtract.at(indeg, d, 1)
        ready = d[indeg[d] == 0]
        # A node reached over several edges appears several times: keep one copy (last writer wins the stamp).
        k = np.arange(ready.size)
        stamp[ready] = k
        frontier = ready[stamp[ready] == k]
        settled += frontier.size
    return best


def _dijkstra_longest(
    n: int, src: np.ndarray, dst: np.ndarray, length: np.ndarray, init: np.ndarray, potential: np.ndarray
) -> np.ndarray:
    """Weighted longest paths on a DAG as shortest paths (scipy's compiled Dijkstra) after reweighting.

    With a topological potential ``t`` (``t[dst] > t[src]`` on every edge) and ``K`` above every length, the
    weights ``K (t[v] - t[u]) - len(u, v)`` are positive and a path's weight telescopes to
    ``K (t[end] - t[start]) - (its length)``: the shortest path from a super-source (potential ``-1``, an edge of
    length ``init[v]`` to every node) is the longest one. O(E log N) with no Python per level.
    Parallel edges must have been merged by the caller (a sparse matrix would add their weights).
    """
    import scipy.sparse as sps
    from scipy.sparse.csgraph import dijkstra

    k = int(max(length.max(initial=0), init.max(initial=0))) + 1
    order = np.argsort(src, kind="stable")
    s, d = src[order], dst[order]
    w = k * (potential[d] - potential[s]) - length[order]
    # Row 0 is the super-source (edges to every node), rows 1.. the nodes.
    indptr = np.zeros(n + 2, dtype=np.int64)
    indptr[1] = n
    np.cumsum(np.bincount(s, minlength=n), out=indptr[2:])
    indptr[2:] += n
    indices = np.concatenate([np.arange(1, n + 1, dtype=np.int64), d + 1])
    weights = np.concatenate([k * (potential + 1) - init, w]).astype(np.float64)
    graph = sps.csr_matrix((weights, indices, indptr), shape=(n + 1, n + 1))
    dist = dijkstra(graph, indices=0)
    return (k * (potential + 1) - dist[1:]).astype(np.int64)


_PROBE_ROUNDS = 8


def _longest_paths(
    n: int, src: np.ndarray, dst: np.ndarray, length: np.ndarray, init: np.ndarray, potential: np.ndarray
) -> np.ndarray:
    """``best[v] = max(init[v], max over edges u -> v of best[u] + length)`` on a DAG without parallel edges."""
    if src.size == 0:
        return init.astype(np.int64, copy=True)
    # A Kahn round costs ~10 us of numpy calls, Dijkstra ~0.35 us per node (measured): past ~n/30 levels
    # the compiled search wins.
    best = _kahn_longest(n, src, dst, length, init, max_rounds=max(16, n // 30))
    return best if best is not None else _dijkstra_longest(n, src, dst, length, init, potential)


def _graph_levels(aig: AIG, g: dict[str, np.ndarray], explicit_not: bool) -> tuple[np.ndarray, np.ndarray]:
    """Forward and reverse levels of the graph nodes, computed on the (half as large) AIG.

    An edge through a NOT node is one level longer, so AIG edges get length ``1 + complement`` in the
    explicit-NOT graph; NOT and PO levels then follow from their single fanin (forward) or fanouts (reverse).
    """
    n = aig.num_nodes
    lits = aig.ands.reshape(-1)
    fanin = lits >> 1
    gate = np.repeat(aig.first_and + np.arange(aig.num_ands, dtype=np.int64), 2)
    compl = (lits & 1) if explicit_not else np.zeros_like(lits)
    po_node, po_compl = aig.pos >> 1, ((aig.pos & 1) if explicit_not else np.zeros_like(aig.pos))
    ids = np.arange(n, dtype=np.int64)

    fanin_all, gate_all, compl_all = fanin, gate, compl
    length = 1 + compl
    # An AND reading one node twice (a & a, a & ~a) has parallel edges: keep one, with the longer length.
    twin = (fanin[0::2] == fanin[1::2]).repeat(2)
    if twin.any():
        pair_len = np.maximum(length[0::2], length[1::2]).repeat(2)
        length = np.where(twin, pair_len, length)
        keep = ~(twin & (np.arange(lits.size) % 2 == 1))
        fanin, gate, length = fanin[keep], gate[keep], length[keep]
    init = np.zeros(n, dtype=np.int64)
    np.maximum.at(init, po_node, 1 + po_compl)
    # Forward and reverse passes as ONE longest-path problem on the disjoint union of the DAG (nodes 0..n-1)
    # and its reverse (nodes n..2n-1): both have the same depth, so this halves the rounds of numpy calls.
    both = _longest_paths(
        2 * n,
        np.concatenate([fanin, gate + n]),
        np.concatenate([gate, fanin + n]),
        np.concatenate([length, length]),
        np.concatenate([np.zeros(n, dtype=np.int64), init]),
        np.concatenate([ids, 2 * n - 1 - ids]),
    )
    fwd, rev = both[:n], both[n:]
    not_rev = np.zeros(n, dtype=np.int64)
    if explicit_not:
        # A NOT node sits one above the highest of its fanouts: complemented AND fanins and complemented POs.
        c = compl_all == 1
        np.maximum.at(not_rev, fanin_all[c], rev[gate_all[c]] + 1)
        np.maximum.at(not_rev, po_node[po_compl == 1], 1)
    return _place_levels(g, fwd, rev, not_rev, aig.pos, explicit_not)


def _place_levels(
    g: dict[str, np.ndarray],
    fwd: np.ndarray,
    rev: np.ndarray,
    not_rev: np.ndarray,
    pos: np.ndarray,
    explicit_not: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Graph-node levels from the AIG-node ones: NOT nodes one above (forward) their AIG node, PO nodes one
    above their driver (two through a complement)."""
    node_type, aig_node = g["node_type"], g["aig_node"]
    level = np.empty(node_type.size, dtype=np.int64)
    rev_level = np.zeros(node_type.size, dtype=np.int64)
    po_start = int(g["po_start"])
    inner_end = po_start  # graph nodes before the POs all have an AIG node
    level[:inner_end] = fwd[aig_node[:inner_end]]
    rev_level[:inner_end] = rev[aig_node[:inner_end]]
    po_compl = (pos & 1) if explicit_not else 0
    level[po_start:] = fwd[pos >> 1] + 1 + po_compl
    if explicit_not:
        n_not = int(g["n_not"])
        nots = slice(po_start - n_not, po_start)  # NOT nodes sit just before the POs
        level[nots] += 1
        rev_level[nots] = not_rev[aig_node[nots]]
    return level, rev_level


def aig_to_data(
    aig: AIG,
    *,
    explicit_not: bool = True,
    with_prob: bool = False,
    num_patterns: int = 4096,
    seed: int = 0,
) -> Data:
    """Turn an AIG into a ``torch_geometric.data.Data`` graph.

    Args:
        aig: the circuit (latches cut: their pseudo-PIs/POs are flagged in ``is_latch``).
        explicit_not: complemented edges become ``NOT`` nodes (DeepGate/MGVGA convention); when ``False`` they
            stay edges with ``edge_attr = 1``.
        with_prob: add ``prob``, each node's probability of being 1 under uniform random inputs, estimated by
            bit-parallel simulation of ``num_patterns`` patterns (:func:`circuitml.sim.signal_probability`).
        num_patterns, seed: simulation size and seed for ``prob``.

    Returns:
        ``Data`` with ``x`` ``long[N]`` node type (``PI=0, PO=1, AND=2, NOT=3, CONST=4``), ``edge_index``
        ``long[2, E]`` fanin → fanout, ``edge_attr`` ``float[E, 1]`` complement bit (only when
        ``explicit_not=False``), ``level`` / ``rev_level`` ``long[N]`` longest-path levels from the inputs /
        from the outputs, ``aig_node`` ``long[N]`` (the AIG node a graph node computes; the inverted node for
        NOT nodes; −1 for PO nodes), ``is_latch`` ``bool[N]``, ``prob`` ``float[N]`` (when ``with_prob``),
        ``name`` and ``num_nodes``. ``Batch.from_data_list`` offsets only ``edge_index``.
    """
    if kernels.HAVE_NUMBA:
        node_type, edge_index, aig_node, compl, level, rev_level, is_latch, po_start = (
            kernels.graph_with_levels(
                aig.num_pis, aig.num_latches, aig.ands.reshape(-1), aig.pos, explicit_not
            )
        )
        g = {
            "node_type": node_type,
            "edge_index": edge_index,
            "aig_node": aig_node,
            "edge_compl": None if explicit_not else compl,
            "is_latch": is_latch,
            "po_start": po_start,
            "po_lits": aig.pos,
        }
    else:
        g = _graph_arrays(aig, explicit_not)
        level, rev_level = _graph_levels(aig, g, explicit_not)
    num_nodes = int(g["node_type"].size)

    attrs = {
        "x": torch.from_numpy(g["node_type"]),
        "edge_index": torch.from_numpy(g["edge_index"]),
        "level": torch.from_numpy(level),
        "rev_level": torch.from_numpy(rev_level),
        "aig_node": torch.from_numpy(g["aig_node"]),
        "is_latch": torch.from_numpy(g["is_latch"]),
        "num_nodes": num_nodes,
    }
    if g["edge_compl"] is not None:
        attrs["edge_attr"] = torch.from_numpy(g["edge_compl"]).view(-1, 1)
    if with_prob:
        from circuitml.sim import signal_probability

        p_aig = signal_probability(aig, num_patterns=num_patterns, seed=seed)
        attrs["prob"] = torch.from_numpy(_graph_probabilities(g, p_aig))
    attrs["name"] = aig.name
    return _data_from_dict(attrs)


def _data_from_dict(attrs: dict) -> Data:
    """A ``Data`` holding ``attrs``, filled in one dict update: PyG's per-attribute ``__setattr__`` (storage
    lookups, cache pops) was over half of building a small file's graph. Equal to ``Data(**attrs)`` (tested)."""
    data = Data()
    data._store._mapping.update(attrs)  # noqa: SLF001 - a fresh store: nothing cached to invalidate
    return data


def _graph_probabilities(g: dict[str, np.ndarray], p_aig: np.ndarray) -> np.ndarray:
    """Per-graph-node probability from per-AIG-node ones: NOT nodes 1 − p, PO nodes their output literal's value."""
    prob = np.empty(g["node_type"].size, dtype=np.float32)
    inner = g["aig_node"] >= 0
    prob[inner] = p_aig[g["aig_node"][inner]]
    is_not = g["node_type"] == NOT
    prob[is_not] = 1.0 - prob[is_not]
    po_lits = g["po_lits"]
    p_po = p_aig[po_lits >> 1]
    prob[int(g["po_start"]) :] = np.where((po_lits & 1) == 1, 1.0 - p_po, p_po)
    return prob


@dataclass(frozen=True)
class LevelSchedule:
    """Nodes and edges grouped by level, for level-wise DAG propagation (one gather + one segment reduce per level).

    Forward pass, level ``l`` (1 .. ``num_levels`` − 1): nodes ``node_perm[node_ptr[l]:node_ptr[l+1]]`` are updated
    from edges ``edge_perm[edge_ptr[l]:edge_ptr[l+1]]``, exactly the edges whose *target* is at level ``l``; those
    edges are sorted by target, so a segment reduction over them needs no further sort. Reverse pass: the same with
    ``rev_level``, edges grouped by the reverse level of their *source* (and sorted by source within it).
    Level 0 holds the sources (no incoming edges). All tensors live on the device of the graph; the ``*_bounds``
    tuples are the pointers as Python ints, so a loop over levels never synchronizes with the device.

    Attributes:
        num_levels: ``max(level) + 1`` (equal to ``max(rev_level) + 1`` on a DAG).
        node_perm, rev_node_perm: ``long[N]`` node ids sorted (stably) by level / reverse level.
        node_ptr, rev_node_ptr: ``long[num_levels + 1]`` CSR pointers into the node permutations.
        edge_perm, rev_edge_perm: ``long[E]`` edge ids sorted by target level (then target) / source reverse
            level (then source).
        edge_ptr, rev_edge_ptr: ``long[num_levels + 1]`` CSR pointers into the edge permutations.
    """

    num_levels: int
    node_perm: Tensor
    node_ptr: Tensor
    edge_perm: Tensor
    edge_ptr: Tensor
    rev_node_perm: Tensor
    rev_node_ptr: Tensor
    rev_edge_perm: Tensor
    rev_edge_ptr: Tensor
    node_bounds: tuple[int, ...] = ()
    edge_bounds: tuple[int, ...] = ()
    rev_node_bounds: tuple[int, ...] = ()
    rev_edge_bounds: tuple[int, ...] = ()

    def nodes(self, lvl: int, reverse: bool = False) -> Tensor:
        """Node ids at (reverse) level ``lvl``."""
        perm, b = (
            (self.rev_node_perm, self.rev_node_bounds) if reverse else (self.node_perm, self.node_bounds)
        )
        return perm[b[lvl] : b[lvl + 1]]

    def edges(self, lvl: int, reverse: bool = False) -> Tensor:
        """Edge ids processed at (reverse) level ``lvl``: targets (forward) / sources (reverse) at that level."""
        perm, b = (
            (self.rev_edge_perm, self.rev_edge_bounds) if reverse else (self.edge_perm, self.edge_bounds)
        )
        return perm[b[lvl] : b[lvl + 1]]

    def to(self, device: torch.device | str) -> LevelSchedule:
        moved = {k: getattr(self, k).to(device) for k in _TENSOR_FIELDS}
        return LevelSchedule(
            num_levels=self.num_levels,
            node_bounds=self.node_bounds,
            edge_bounds=self.edge_bounds,
            rev_node_bounds=self.rev_node_bounds,
            rev_edge_bounds=self.rev_edge_bounds,
            **moved,
        )


_TENSOR_FIELDS = (
    "node_perm",
    "node_ptr",
    "edge_perm",
    "edge_ptr",
    "rev_node_perm",
    "rev_node_ptr",
    "rev_edge_perm",
    "rev_edge_ptr",
)
_CACHE_ATTR = "_level_schedule_cache"


def _group(key: Tensor, num_levels: int, tie: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Stable permutation sorting ``key`` (ties broken by ``tie`` when given) and CSR pointers per key value."""
    if tie is None:
        perm = torch.sort(key, stable=True).indices
    else:
        # One sort on a combined key: level major, tie (a node id < 2**40) minor.
        perm = torch.sort(key * (1 << 40) + tie, stable=True).indices
    ptr = torch.zeros(num_levels + 1, dtype=torch.long, device=key.device)
    torch.cumsum(torch.bincount(key, minlength=num_levels), dim=0, out=ptr[1:])
    return perm, ptr


def level_schedule(data: Data) -> LevelSchedule:
    """The :class:`LevelSchedule` of a graph or a ``Batch`` of graphs, computed once and cached on the object.

    Works on a ``Batch`` directly (levels are per graph and never offset, so the graphs' level ``l`` nodes simply
    fall into the same group). The cache is tied to the very ``edge_index`` / ``level`` / ``rev_level`` tensors it
    was computed from and recomputed if any of them is replaced.
    """
    edge_index, level, rev_level = data.edge_index, data.level, data.rev_level
    store = getattr(data, "_store", None)  # PyG keeps attributes in a storage object; cache next to them
    cached = store.__dict__.get(_CACHE_ATTR) if store is not None else None
    if cached is not None:
        ei, lv, rl, sched = cached
        if ei is edge_index and lv is level and rl is rev_level:
            return sched
    sched = _schedule(edge_index, level, rev_level)
    if store is not None:
        store.__dict__[_CACHE_ATTR] = (edge_index, level, rev_level, sched)
    return sched


def _schedule(edge_index: Tensor, level: Tensor, rev_level: Tensor) -> LevelSchedule:
    if kernels.HAVE_NUMBA and edge_index.device.type == "cpu":
        # Counting sorts (O(N + E), the same permutations as the stable sorts below) in one compiled call; on
        # small files the Python around it is what costs, so it stays in numpy until the end.
        ei = edge_index.numpy()
        num_levels, fwd, rev = kernels.schedule_arrays(level.numpy(), rev_level.numpy(), ei[0], ei[1])
        return LevelSchedule(
            num_levels,
            *map(torch.from_numpy, fwd),
            *map(torch.from_numpy, rev),
            node_bounds=tuple(fwd[1].tolist()),
            edge_bounds=tuple(fwd[3].tolist()),
            rev_node_bounds=tuple(rev[1].tolist()),
            rev_edge_bounds=tuple(rev[3].tolist()),
        )
    src, dst = edge_index[0], edge_index[1]
    num_levels = int(level.max()) + 1 if level.numel() else 0
    node_perm, node_ptr = _group(level, num_levels)
    rev_node_perm, rev_node_ptr = _group(rev_level, num_levels)
    edge_perm, edge_ptr = _group(level[dst], num_levels, tie=dst)
    rev_edge_perm, rev_edge_ptr = _group(rev_level[src], num_levels, tie=src)
    return LevelSchedule(
        num_levels=num_levels,
        node_perm=node_perm,
        node_ptr=node_ptr,
        edge_perm=edge_perm,
        edge_ptr=edge_ptr,
        rev_node_perm=rev_node_perm,
        rev_node_ptr=rev_node_ptr,
        rev_edge_perm=rev_edge_perm,
        rev_edge_ptr=rev_edge_ptr,
        node_bounds=tuple(node_ptr.tolist()),
        edge_bounds=tuple(edge_ptr.tolist()),
        rev_node_bounds=tuple(rev_node_ptr.tolist()),
        rev_edge_bounds=tuple(rev_edge_ptr.tolist()),
    )


def to_dgl(data: Data):
    """The same graph as a ``dgl.DGLGraph``: same node and edge order, node features in ``ndata``
    (``x``, ``level``, ``rev_level``, ``aig_node``, ``is_latch``, ``prob``), ``edge_attr`` in ``edata``.

    Raises:
        ImportError: when dgl is not installed (``pip install "circuitml[dgl]"``).
    """
    try:
        import dgl
    except ImportError as exc:  # keep the hint: dgl is an optional extra
        raise ImportError('to_dgl needs dgl: pip install "circuitml[dgl]"') from exc
    src, dst = data.edge_index[0], data.edge_index[1]
    g = dgl.graph((src, dst), num_nodes=int(data.num_nodes))
    for key in ("x", "level", "rev_level", "aig_node", "is_latch", "prob"):
        value = getattr(data, key, None)
        if isinstance(value, Tensor):
            g.ndata[key] = value
    if isinstance(getattr(data, "edge_attr", None), Tensor):
        g.edata["edge_attr"] = data.edge_attr
    return g
