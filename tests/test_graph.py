"""AIG → PyG graph conversion, level schedule, batching and DGL parity."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch_geometric.data import Batch

from circuitml import kernels
from circuitml.graph import (
    _TENSOR_FIELDS,
    AND,
    CONST,
    MASK_TYPE,
    NOT,
    NUM_NODE_TYPES,
    PI,
    PO,
    aig_to_data,
    level_schedule,
    to_dgl,
)
from circuitml.sim import output_words, popcount, random_pi_words, signal_probability, simulate_words
from tests.conftest import shared_files
from tests.test_sim import random_aig

SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
aig_params = st.tuples(st.integers(0, 10_000), st.integers(0, 8), st.integers(0, 50), st.integers(0, 5))


def indegree(data) -> np.ndarray:
    return np.bincount(data.edge_index[1].numpy(), minlength=data.num_nodes)


def naive_levels(n: int, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Longest path from a source, by repeated relaxation (slow, obviously right)."""
    lv = np.zeros(n, dtype=np.int64)
    for _ in range(n + 1):
        new = lv.copy()
        np.maximum.at(new, dst, lv[src] + 1)
        if np.array_equal(new, lv):
            return lv
        lv = new
    raise AssertionError("cycle")


def eval_graph(data, pi_values: np.ndarray) -> np.ndarray:
    """Evaluate the graph itself node by node in level order (types decide the operation)."""
    x = data.x.numpy()
    src, dst = data.edge_index.numpy()
    compl = (
        data.edge_attr.view(-1).numpy().astype(np.int64)
        if "edge_attr" in data
        else np.zeros(src.size, np.int64)
    )
    fanins: list[list[tuple[int, int]]] = [[] for _ in range(data.num_nodes)]
    for s, d, c in zip(src.tolist(), dst.tolist(), compl.tolist(), strict=True):
        fanins[d].append((s, c))
    val = np.zeros(data.num_nodes, dtype=np.int64)
    pis = np.flatnonzero(x == PI)
    val[pis] = pi_values
    for v in np.argsort(data.level.numpy(), kind="stable").tolist():
        ins = [val[s] ^ c for s, c in fanins[v]]
        if x[v] == AND:
            val[v] = ins[0] & ins[1]
        elif x[v] == NOT:
            val[v] = 1 - ins[0]
        elif x[v] == PO:
            val[v] = ins[0]
    return val


@SETTINGS
@given(aig_params, st.booleans())
def test_structure_invariants(params, explicit_not):
    aig = random_aig(*params)
    d = aig_to_data(aig, explicit_not=explicit_not)
    x = d.x.numpy()
    lits = np.concatenate([aig.ands.reshape(-1), aig.pos])
    const_used = bool((lits < 2).any())
    n_not = np.unique(lits[(lits & 1) == 1] >> 1).size if explicit_not else 0
    assert d.num_nodes == int(const_used) + aig.num_pis + aig.num_ands + n_not + aig.num_pos
    assert [(x == t).sum() for t in (PI, PO, AND, NOT, CONST)] == [
        aig.num_pis,
        aig.num_pos,
        aig.num_ands,
        n_not,
        int(const_used),
    ]
    deg = indegree(d)
    assert (deg[x == AND] == 2).all() and (deg[x == NOT] == 1).all() and (deg[x == PO] == 1).all()
    assert (deg[(x == PI) | (x == CONST)] == 0).all()
    assert d.edge_index.dtype == torch.long and d.x.dtype == torch.long
    if explicit_not:
        assert "edge_attr" not in d
        nots = np.flatnonzero(x == NOT)
        src = d.edge_index[0].numpy()[np.isin(d.edge_index[1].numpy(), nots)]
        assert (x[src] != NOT).all()  # NOT nodes invert real nodes, never each other
    else:
        assert d.edge_attr.shape == (d.num_edges, 1) and d.edge_attr.dtype == torch.float32
    # AIG node ids: -1 exactly on PO nodes, NOT nodes point at the node they invert.
    assert ((d.aig_node.numpy() == -1) == (x == PO)).all()
    assert d.name == aig.name


@SETTINGS
@given(aig_params, st.booleans())
def test_levels_are_longest_paths_on_the_graph(params, explicit_not):
    d = aig_to_data(random_aig(*params), explicit_not=explicit_not)
    src, dst = d.edge_index.numpy()
    lv, rl = d.level.numpy(), d.rev_level.numpy()
    assert (lv[dst] > lv[src]).all() and (rl[src] > rl[dst]).all()
    np.testing.assert_array_equal(lv, naive_levels(d.num_nodes, src, dst))
    np.testing.assert_array_equal(rl, naive_levels(d.num_nodes, dst, src))
    assert d.level.dtype == torch.long and d.rev_level.dtype == torch.long


@SETTINGS
@given(aig_params, st.booleans(), st.integers(0, 99))
def test_graph_computes_the_aig_function(params, explicit_not, seed):
    aig = random_aig(*params)
    d = aig_to_data(aig, explicit_not=explicit_not)
    words = random_pi_words(aig.num_pis, 8, seed)
    nodes = simulate_words(aig, words)
    outs = output_words(aig, nodes)
    x, an = d.x.numpy(), d.aig_node.numpy()
    for p in range(8):
        val = eval_graph(d, ((words[:, 0] >> np.uint64(p)) & np.uint64(1)).astype(np.int64))
        inner = an >= 0
        expect = ((nodes[an[inner], 0] >> np.uint64(p)) & np.uint64(1)).astype(np.int64)
        expect[x[inner] == NOT] ^= 1
        np.testing.assert_array_equal(val[inner], expect)
        po_expect = ((outs[:, 0] >> np.uint64(p)) & np.uint64(1)).astype(np.int64)
        np.testing.assert_array_equal(val[x == PO], po_expect)


def test_probabilities_follow_nots_and_outputs():
    aig = random_aig(12, 8, 80, 6)
    d = aig_to_data(aig, with_prob=True, num_patterns=512, seed=4)
    p_aig = signal_probability(aig, num_patterns=512, seed=4)
    x, an, prob = d.x.numpy(), d.aig_node.numpy(), d.prob.numpy()
    assert d.prob.dtype == torch.float32
    gates = (x == AND) | (x == PI)
    np.testing.assert_allclose(prob[gates], p_aig[an[gates]])
    np.testing.assert_allclose(prob[x == NOT], 1 - p_aig[an[x == NOT]], atol=1e-6)
    outs = output_words(aig, simulate_words(aig, random_pi_words(aig.num_pis, 512, 4)))
    np.testing.assert_allclose(prob[x == PO], popcount(outs).sum(axis=1) / 512, atol=1e-6)


def test_latch_pseudo_ports_are_flagged():
    aig = random_aig(5, 6, 30, 4, num_latches=2)
    d = aig_to_data(aig)
    x, latch = d.x.numpy(), d.is_latch.numpy()
    assert latch.dtype == bool and latch.sum() == 4
    assert (latch[x == PI] == [False] * 4 + [True] * 2).all()
    assert (latch[x == PO] == [False] * 2 + [True] * 2).all()


def test_mask_type_is_reserved_past_the_node_types():
    assert NUM_NODE_TYPES == 5 and MASK_TYPE == NUM_NODE_TYPES
    assert {PI, PO, AND, NOT, CONST} == set(range(NUM_NODE_TYPES))


# ---------------------------------------------------------------------- schedule
def check_schedule(d) -> None:
    s = level_schedule(d)
    lv, rl = d.level, d.rev_level
    src, dst = d.edge_index
    assert s.num_levels == int(lv.max()) + 1 == int(rl.max()) + 1
    for perm, ptr, key in ((s.node_perm, s.node_ptr, lv), (s.rev_node_perm, s.rev_node_ptr, rl)):
        assert torch.equal(torch.sort(perm).values, torch.arange(d.num_nodes))
        assert torch.equal(key[perm], torch.sort(key).values)
        for l in range(s.num_levels):
            seg = perm[ptr[l] : ptr[l + 1]]
            assert torch.equal(seg, torch.nonzero(key == l).view(-1))  # stable: ascending ids within a level
    for perm, ptr, key, end in (
        (s.edge_perm, s.edge_ptr, lv[dst], dst),
        (s.rev_edge_perm, s.rev_edge_ptr, rl[src], src),
    ):
        assert torch.equal(torch.sort(perm).values, torch.arange(d.num_edges))
        assert int(ptr[1] - ptr[0]) == 0  # nothing to do at level 0
        for l in range(s.num_levels):
            seg = perm[ptr[l] : ptr[l + 1]]
            assert set(seg.tolist()) == set(torch.nonzero(key == l).view(-1).tolist())
            assert (end[seg][1:] >= end[seg][:-1]).all()  # grouped by the node they update
    for l in range(s.num_levels):
        assert torch.equal(s.nodes(l), s.node_perm[s.node_ptr[l] : s.node_ptr[l + 1]])
        assert torch.equal(
            s.edges(l, reverse=True), s.rev_edge_perm[s.rev_edge_ptr[l] : s.rev_edge_ptr[l + 1]]
        )


@SETTINGS
@given(aig_params.filter(lambda p: p[3] > 0), st.booleans())
def test_schedule_invariants(params, explicit_not):
    check_schedule(aig_to_data(random_aig(*params), explicit_not=explicit_not))


def test_schedule_is_cached_and_invalidated():
    d = aig_to_data(random_aig(1, 5, 30, 3))
    s = level_schedule(d)
    assert level_schedule(d) is s
    d.level = d.level.clone()
    assert level_schedule(d) is not s


def test_batch_of_three_matches_per_graph_results():
    graphs = [aig_to_data(random_aig(seed, 4 + seed, 20 + 10 * seed, 3), with_prob=True) for seed in range(3)]
    batch = Batch.from_data_list(graphs)
    offsets = np.cumsum([0] + [g.num_nodes for g in graphs])
    for i, g in enumerate(graphs):
        nodes = slice(offsets[i], offsets[i + 1])
        for key in ("x", "level", "rev_level", "aig_node", "is_latch", "prob"):
            assert torch.equal(batch[key][nodes], g[key]), key
        e0 = sum(h.num_edges for h in graphs[:i])
        assert torch.equal(batch.edge_index[:, e0 : e0 + g.num_edges], g.edge_index + int(offsets[i]))
    assert batch.name == [g.name for g in graphs]
    check_schedule(batch)
    s = level_schedule(batch)
    for l in range(s.num_levels):  # level l of the batch = union of the graphs' level l, offset
        want = sorted(
            int(v) + int(offsets[i])
            for i, g in enumerate(graphs)
            if l < level_schedule(g).num_levels
            for v in level_schedule(g).nodes(l).tolist()
        )
        assert s.nodes(l).tolist() == want


def test_schedule_moves_to_another_device_unchanged():
    s = level_schedule(aig_to_data(random_aig(2, 4, 20, 2)))
    t = s.to("cpu")
    assert t.node_bounds == s.node_bounds and torch.equal(t.rev_edge_perm, s.rev_edge_perm)


# ---------------------------------------------------------------------- DGL
@pytest.mark.parametrize("explicit_not", [True, False])
def test_dgl_parity(explicit_not):
    pytest.importorskip("dgl")
    d = aig_to_data(random_aig(8, 6, 40, 4), explicit_not=explicit_not, with_prob=True)
    g = to_dgl(d)
    assert g.num_nodes() == d.num_nodes and g.num_edges() == d.num_edges
    src, dst = g.edges(order="eid")
    assert torch.equal(src, d.edge_index[0]) and torch.equal(dst, d.edge_index[1])
    for key in ("x", "level", "rev_level", "aig_node", "is_latch", "prob"):
        assert torch.equal(g.ndata[key], d[key])
    if not explicit_not:
        assert torch.equal(g.edata["edge_attr"], d.edge_attr)


# ---------------------------------------------------------------------- real circuits
EPFL = [p for p in shared_files("lsils__benchmarks/*/*.aig") if p.stem in {"router", "int2float", "adder"}]


@pytest.mark.parametrize("path", EPFL, ids=lambda p: p.stem)
def test_epfl_graphs(path):
    from circuitml.formats import read_aiger

    aig = read_aiger(path)
    d = aig_to_data(aig, with_prob=True)
    src, dst = d.edge_index.numpy()
    lv = d.level.numpy()
    assert (lv[dst] > lv[src]).all()
    # Graph depth: each AIG level adds at most one NOT level, and the PO adds one.
    assert aig.depth() + 1 <= int(lv.max()) <= 2 * aig.depth() + 2
    check_schedule(d)


@SETTINGS
@given(aig_params, st.booleans())
def test_deep_graph_level_search_matches_the_level_rounds(params, explicit_not):
    """Past a round budget levels come from a reweighted Dijkstra search: same numbers as level rounds."""
    import circuitml.graph as graph_mod

    aig = random_aig(*params)
    ref = aig_to_data(aig, explicit_not=explicit_not)
    original, compiled = graph_mod._kahn_longest, kernels.HAVE_NUMBA
    graph_mod._kahn_longest = lambda *args, **kwargs: None
    kernels.HAVE_NUMBA = False
    try:
        d = aig_to_data(aig, explicit_not=explicit_not)
    finally:
        graph_mod._kahn_longest, kernels.HAVE_NUMBA = original, compiled
    assert torch.equal(d.level, ref.level) and torch.equal(d.rev_level, ref.rev_level)


# ---------------------------------------------------------------------- compiled kernels
def assert_same_graph(fast, ref) -> None:
    assert fast.num_nodes == ref.num_nodes
    for key in ("x", "edge_index", "level", "rev_level", "aig_node", "is_latch", "edge_attr"):
        a, b = getattr(fast, key, None), getattr(ref, key, None)
        assert (a is None and b is None) or (a.dtype == b.dtype and torch.equal(a, b)), key


def _numpy_path(fn):
    """Run ``fn`` with the compiled kernels switched off (the pure-numpy / torch-sort fallback)."""
    compiled = kernels.HAVE_NUMBA
    kernels.HAVE_NUMBA = False
    try:
        return fn()
    finally:
        kernels.HAVE_NUMBA = compiled


@SETTINGS
@given(aig_params, st.booleans(), st.integers(0, 3))
def test_compiled_levels_and_schedule_equal_the_numpy_path(params, explicit_not, latches):
    pytest.importorskip("numba")
    aig = random_aig(*params, num_latches=min(latches, params[1], params[3]))
    fast = aig_to_data(aig, explicit_not=explicit_not)
    ref = _numpy_path(lambda: aig_to_data(aig, explicit_not=explicit_not))
    assert_same_graph(fast, ref)
    s_fast = level_schedule(fast)
    s_ref = _numpy_path(lambda: level_schedule(ref))
    assert s_fast is not s_ref and s_fast.num_levels == s_ref.num_levels
    for key in (
        *_TENSOR_FIELDS,
        "node_bounds",
        "edge_bounds",
        "rev_node_bounds",
        "rev_edge_bounds",
    ):
        a, b = getattr(s_fast, key), getattr(s_ref, key)
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, key


@pytest.mark.parametrize("path", EPFL, ids=lambda p: p.stem)
def test_compiled_path_on_epfl_graphs(path):
    pytest.importorskip("numba")
    from circuitml.formats import read_aiger

    aig = read_aiger(path)
    assert aig.same_structure(_numpy_path(lambda: read_aiger(path)))  # compiled varint decoding
    fast = aig_to_data(aig)
    ref = _numpy_path(lambda: aig_to_data(aig))
    assert_same_graph(fast, ref)
    s_fast, s_ref = level_schedule(fast), _numpy_path(lambda: level_schedule(ref))
    assert torch.equal(s_fast.edge_perm, s_ref.edge_perm) and torch.equal(
        s_fast.rev_edge_perm, s_ref.rev_edge_perm
    )


@pytest.mark.parametrize("explicit_not", [True, False])
def test_graph_built_from_a_dict_equals_a_data_built_attribute_by_attribute(explicit_not):
    from torch_geometric.data import Batch, Data

    d = aig_to_data(random_aig(3, 5, 40, 3), explicit_not=explicit_not, with_prob=True)
    ref = Data(**{k: v for k, v in d.to_dict().items()})
    assert sorted(d.keys()) == sorted(ref.keys()) and d.num_nodes == ref.num_nodes
    for key in ref.keys():
        a, b = d[key], ref[key]
        assert torch.equal(a, b) if isinstance(b, torch.Tensor) else a == b, key
    both, both_ref = Batch.from_data_list([d, d]), Batch.from_data_list([ref, ref])
    assert torch.equal(both.edge_index, both_ref.edge_index) and torch.equal(both.batch, both_ref.batch)
    d.x = d.x + 1  # attribute setting still works on the dict-built object
    assert torch.equal(d.x, ref.x + 1)
