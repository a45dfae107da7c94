"""Compiled single-pass kernels for the graph builder: AIG levels and counting-sort level schedules.

An AIG's AND rows are topologically ordered (AIGER), so longest-path levels need no Kahn rounds at all: one
ascending pass over the rows gives forward levels and one descending pass gives reverse levels, O(N + E) with a
constant of a few nanoseconds per AND once compiled. numpy cannot express a loop-carried maximum without one
round of calls per level (what :mod:`circuitml.graph` falls back to), so these loops are compiled with numba
(``pip install "circuitml[fast]"``) when it is installed. Outputs are identical to the numpy path (tested).

Set ``CIRCUITML_NO_NUMBA=1`` to force the numpy path.
"""

from __future__ import annotations

import os

import numpy as np

__all__ = [
    "HAVE_NUMBA",
    "aig_levels",
    "counting_sort",
    "graph_arrays",
    "graph_with_levels",
    "level_groups",
    "schedule_arrays",
    "place_levels",
]

try:  # numba is an optional extra: every caller has a numpy fallback
    if os.environ.get("CIRCUITML_NO_NUMBA"):
        raise ImportError("disabled by CIRCUITML_NO_NUMBA")
    from numba import njit

    HAVE_NUMBA = True
except ImportError:  # pragma: no cover - exercised in environments without numba
    HAVE_NUMBA = False

    def njit(*args, **kwargs):  # noqa: ANN002, ANN003 - a no-op decorator keeps the kernels importable
        if args and callable(args[0]):
            return args[0]
        return lambda fn: fn


@njit(cache=True, nogil=True)
def aig_levels(
    first_and: int, num_nodes: int, lits: np.ndarray, pos: np.ndarray, explicit_not: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Forward and reverse longest-path levels of the AIG nodes, and the reverse level of each node's NOT node.

    An edge through a complement is one level longer when complements are NOT nodes (``explicit_not``).
    ``lits``: the ``[2 A]`` fanin literals in row order; ``pos``: output literals.
    Returns ``fwd``, ``rev`` (``int64 [num_nodes]``) and ``not_rev`` (the reverse level a NOT node of each AIG
    node gets: one above its highest complemented fanout, 1 for a complemented output, 0 when unused).
    """
    num_ands = lits.size // 2
    fwd = np.zeros(num_nodes, dtype=np.int64)
    for i in range(num_ands):
        best = 0
        for j in range(2):
            lit = lits[2 * i + j]
            cand = fwd[lit >> 1] + 1 + ((lit & 1) if explicit_not else 0)
            if cand > best:
                best = cand
        fwd[first_and + i] = best
    rev = np.zeros(num_nodes, dtype=np.int64)
    not_rev = np.zeros(num_nodes, dtype=np.int64)
    for k in range(pos.size):
        lit = pos[k]
        c = (lit & 1) if explicit_not else 0
        if 1 + c > rev[lit >> 1]:
            rev[lit >> 1] = 1 + c
        if c and not_rev[lit >> 1] < 1:
            not_rev[lit >> 1] = 1
    for i in range(num_ands - 1, -1, -1):
        r = rev[first_and + i]
        for j in range(2):
            lit = lits[2 * i + j]
            v = lit >> 1
            c = (lit & 1) if explicit_not else 0
            if r + 1 + c > rev[v]:
                rev[v] = r + 1 + c
            if c and r + 1 > not_rev[v]:
                not_rev[v] = r + 1
    return fwd, rev, not_rev


@njit(cache=True, nogil=True)
def counting_sort(key: np.ndarray, num_keys: int) -> tuple[np.ndarray, np.ndarray]:
    """Stable permutation sorting ``key`` (values ``0 .. num_keys-1``) and its CSR pointers, in O(n + num_keys)."""
    ptr = np.zeros(num_keys + 1, dtype=np.int64)
    for i in range(key.size):
        ptr[key[i] + 1] += 1
    for k in range(num_keys):
        ptr[k + 1] += ptr[k]
    fill = ptr[:-1].copy()
    perm = np.empty(key.size, dtype=np.int64)
    for i in range(key.size):
        k = key[i]
        perm[fill[k]] = i
        fill[k] += 1
    return perm, ptr


@njit(cache=True, nogil=True)
def graph_arrays(
    num_pis: int, num_ands: int, lits: np.ndarray, pos: np.ndarray, explicit_not: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int, int, int]:
    """The graph of :func:`circuitml.graph.aig_to_data` in one pass: node types, ``edge_index`` ``[2, E]``,
    AIG-node ids, complement bits (empty with ``explicit_not``), the number of graph nodes before the POs, the
    number of NOT nodes and the id shift of AIG nodes (1 when the constant has no graph node).

    Same numbering as the numpy builder: ``[CONST] + PIs + ANDs``, NOT nodes by the node they invert, POs.
    """
    num_nodes = 1 + num_pis + num_ands
    const_used = False
    for k in range(lits.size):
        if lits[k] < 2:
            const_used = True
    for k in range(pos.size):
        if pos[k] < 2:
            const_used = True
    shift = 0 if const_used else 1
    n_base = num_nodes - shift
    not_id = np.full(num_nodes, -1, dtype=np.int64)
    n_not = 0
    if explicit_not:
        for k in range(lits.size):
            if lits[k] & 1:
                not_id[lits[k] >> 1] = 0
        for k in range(pos.size):
            if pos[k] & 1:
                not_id[pos[k] >> 1] = 0
        for v in range(num_nodes):  # numbered in AIG-node order
            if not_id[v] == 0:
                not_id[v] = n_base + n_not
                n_not += 1
    po_start = n_base + n_not
    total = po_start + pos.size
    node_type = np.full(total, 2, dtype=np.int64)  # AND
    aig_node = np.full(total, -1, dtype=np.int64)
    for v in range(n_base):
        aig_node[v] = v + shift
    for v in range(1 + num_pis - shift):
        node_type[v] = 0  # PI
    if const_used:
        node_type[0] = 4  # CONST
    num_edges = n_not + lits.size + pos.size
    edge_index = np.empty((2, num_edges), dtype=np.int64)
    e = 0
    if explicit_not:
        for v in range(num_nodes):
            if not_id[v] >= 0:
                node_type[not_id[v]] = 3  # NOT
                aig_node[not_id[v]] = v
                edge_index[0, e] = v - shift
                edge_index[1, e] = not_id[v]
                e += 1
    compl = np.zeros(0 if explicit_not else lits.size + pos.size, dtype=np.float32)
    for k in range(lits.size + pos.size):
        lit = lits[k] if k < lits.size else pos[k - lits.size]
        node = lit >> 1
        if explicit_not and lit & 1:
            edge_index[0, e] = not_id[node]
        else:
            edge_index[0, e] = node - shift
        if not explicit_not:
            compl[k] = lit & 1
        if k < lits.size:
            edge_index[1, e] = num_pis + 1 + (k >> 1) - shift
        else:
            edge_index[1, e] = po_start + k - lits.size
            node_type[po_start + k - lits.size] = 1  # PO
        e += 1
    return node_type, edge_index, aig_node, compl, po_start, n_not, shift


@njit(cache=True, nogil=True)
def place_levels(
    fwd: np.ndarray,
    rev: np.ndarray,
    not_rev: np.ndarray,
    aig_node: np.ndarray,
    pos: np.ndarray,
    po_start: int,
    n_not: int,
    explicit_not: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Graph-node levels from AIG-node levels (see :func:`circuitml.graph._place_levels`, the numpy twin)."""
    total = po_start + pos.size
    level = np.empty(total, dtype=np.int64)
    rev_level = np.zeros(total, dtype=np.int64)
    for v in range(po_start):
        level[v] = fwd[aig_node[v]]
        rev_level[v] = rev[aig_node[v]]
    if explicit_not:
        for v in range(po_start - n_not, po_start):
            level[v] += 1
            rev_level[v] = not_rev[aig_node[v]]
    for k in range(pos.size):
        level[po_start + k] = fwd[pos[k] >> 1] + 1 + ((pos[k] & 1) if explicit_not else 0)
    return level, rev_level


@njit(cache=True, nogil=True)
def level_groups(
    level: np.ndarray, target: np.ndarray, num_levels: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Nodes grouped by ``level`` and edges by ``(level[target], target)``: permutations and CSR pointers, the
    same as stable sorts on those keys, as counting passes in O(N + E).

    Edges take two passes: in-degrees, then each edge written at its target's next slot, where a target's first
    slot is the running in-degree sum over the nodes in level order (one pass over the node permutation, which
    also yields the level pointers of the edges).
    """
    n = level.size
    node_perm, node_ptr = counting_sort(level, num_levels)
    slot = np.zeros(n, dtype=np.int64)
    for e in range(target.size):
        slot[target[e]] += 1
    edge_ptr = np.zeros(num_levels + 1, dtype=np.int64)
    total = 0
    for lvl in range(num_levels):
        for k in range(node_ptr[lvl], node_ptr[lvl + 1]):
            v = node_perm[k]
            deg = slot[v]
            slot[v] = total
            total += deg
        edge_ptr[lvl + 1] = total
    edge_perm = np.empty(target.size, dtype=np.int64)
    for e in range(target.size):
        v = target[e]
        edge_perm[slot[v]] = e
        slot[v] += 1
    return node_perm, node_ptr, edge_perm, edge_ptr


@njit(cache=True, nogil=True)
def schedule_arrays(
    level: np.ndarray, rev_level: np.ndarray, src: np.ndarray, dst: np.ndarray
) -> tuple[
    int,
    tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
]:
    """Both directions of :func:`level_groups` (forward: edges by target level; reverse: by source reverse
    level) and the level count ``max(level) + 1``, in one call (on small files the per-call cost dominates)."""
    num_levels = 0
    for v in range(level.size):
        if level[v] + 1 > num_levels:
            num_levels = level[v] + 1
    fwd = level_groups(level, dst, num_levels)
    rev = level_groups(rev_level, src, num_levels)
    return num_levels, fwd, rev


@njit(cache=True, nogil=True)
def graph_with_levels(
    num_pis: int, num_latches: int, lits: np.ndarray, pos: np.ndarray, explicit_not: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """All of :func:`circuitml.graph.aig_to_data`'s arrays in one call (:func:`graph_arrays`,
    :func:`aig_levels`, :func:`place_levels` and the latch flags): node types, ``edge_index``, AIG-node ids,
    complement bits, ``level``, ``rev_level``, ``is_latch`` and the first PO node. On small files the calls, not
    the loops, were the cost."""
    num_ands = lits.size // 2
    node_type, edge_index, aig_node, compl, po_start, n_not, shift = graph_arrays(
        num_pis, num_ands, lits, pos, explicit_not
    )
    fwd, rev, not_rev = aig_levels(num_pis + 1, 1 + num_pis + num_ands, lits, pos, explicit_not)
    level, rev_level = place_levels(fwd, rev, not_rev, aig_node, pos, po_start, n_not, explicit_not)
    is_latch = np.zeros(node_type.size, dtype=np.bool_)
    if num_latches:  # pseudo-PIs are the last PIs, pseudo-POs the last POs
        is_latch[1 + num_pis - num_latches - shift : 1 + num_pis - shift] = True
        is_latch[po_start + pos.size - num_latches : po_start + pos.size] = True
    return node_type, edge_index, aig_node, compl, level, rev_level, is_latch, po_start
