"""Gate-equivalence pairs for pretraining: funcsim's ``equiv`` sampler against a naive enumeration, and
``data.merge_variants`` (each circuit merged with another variant of its design)."""

from __future__ import annotations

from collections import defaultdict

import pytest
import torch
from torch_geometric.data import Batch

from circuitml.aig import AIGBuilder, merge_with_copy
from circuitml.errors import ConfigError
from circuitml.graph import AND, aig_to_data
from circuitml.pretrain.config import load_config
from circuitml.pretrain.data import PretrainData
from circuitml.pretrain.funcsim import FunctionalSimilarityHead, sample_equivalence_pairs
from circuitml.pretrain.signatures import node_signatures
from tests.test_pretrain_objectives import _random_aig


def _chain(pis: int, left: bool, name: str):
    """AND of all PIs as a left- or right-leaning chain: one function, two structures."""
    b = AIGBuilder(name)
    lits = [b.add_pi() for _ in range(pis)]
    if left:
        acc = lits[0]
        for x in lits[1:]:
            acc = b.and_(acc, x)
    else:
        acc = lits[-1]
        for x in reversed(lits[:-1]):
            acc = b.and_(x, acc)
    b.add_po(acc)
    return b.build()


def _merged_batch():
    graphs = []
    for aig in [
        merge_with_copy(_chain(5, True, "l"), _chain(5, False, "r")),
        merge_with_copy(_random_aig(3, pis=6, gates=30), _random_aig(3, pis=6, gates=30)),
        _random_aig(4, pis=6, gates=30),
    ]:
        g = aig_to_data(aig)
        g.sig = node_signatures(aig, g)
        graphs.append(g)
    return Batch.from_data_list(graphs)


def _naive_positive_count(batch) -> int:
    """Per graph, AND gates grouped by non-constant signature: a class of k gates gives k - 1 adjacent pairs."""
    classes = defaultdict(int)
    sig = batch.sig.tolist()
    for v in range(batch.num_nodes):
        if int(batch.x[v]) != AND or all(w == 0 for w in sig[v]) or all(w == -1 for w in sig[v]):
            continue
        classes[(int(batch.batch[v]), tuple(sig[v]))] += 1
    return sum(k - 1 for k in classes.values())


def test_equiv_pairs_are_every_equal_function_class_and_as_many_proved_different_pairs():
    batch = _merged_batch()
    pairs = sample_equivalence_pairs(
        batch.batch, batch.sig, batch.x, batch.edge_index, 100.0, torch.Generator().manual_seed(0)
    )
    a, b = pairs
    assert torch.equal(batch.batch[a], batch.batch[b])
    assert (batch.x[a] == AND).all() and (batch.x[b] == AND).all() and (a != b).all()
    equal = (batch.sig[a] == batch.sig[b]).all(1)
    assert int(equal.sum()) == _naive_positive_count(batch) > 0
    assert not (batch.sig[a[equal]] == 0).all(1).any()  # constant signatures are not called equal
    assert int((~equal).sum()) == int(equal.sum())  # balanced: random pairs fill what siblings leave
    # the two chains' ANDs of the same PI prefix differ, but their outputs are one function: a cross pair exists
    first = batch.ptr[1]
    assert bool(((a[equal] < first) & (b[equal] < first)).any())


def test_equiv_pairs_respect_the_budget_and_the_seed():
    batch = _merged_batch()
    args = (batch.batch, batch.sig, batch.x, batch.edge_index, 0.1)
    p1 = sample_equivalence_pairs(*args, torch.Generator().manual_seed(3))
    p2 = sample_equivalence_pairs(*args, torch.Generator().manual_seed(3))
    assert torch.equal(p1, p2)
    ands = int((batch.x == AND).sum())
    assert p1.size(1) <= max(2, int(0.1 * ands))


def test_funcsim_equiv_head_trains_equal_pairs_to_distance_zero():
    batch = _merged_batch()
    head = FunctionalSimilarityHead(8, pairs_per_node=1.0, sampling="equiv")
    node = torch.randn(batch.num_nodes, 8, requires_grad=True)
    out = head(node, batch, torch.Generator().manual_seed(0))
    out.loss.backward()
    assert torch.isfinite(out.loss) and node.grad.abs().sum() > 0
    # identical embeddings for equal-signature nodes: the equal pairs cost nothing
    key = {tuple(s): k for k, s in enumerate(batch.sig.tolist())}
    same = torch.stack([torch.full((8,), float(key[tuple(s)])) for s in batch.sig.tolist()])
    pairs = sample_equivalence_pairs(
        batch.batch, batch.sig, batch.x, batch.edge_index, 1.0, torch.Generator().manual_seed(0)
    )
    z = head.proj(same)
    equal = (batch.sig[pairs[0]] == batch.sig[pairs[1]]).all(1)
    assert torch.allclose(z[pairs[0][equal]], z[pairs[1][equal]])


class _Variants:
    """3 designs: two with two structures of one function, one alone."""

    def __init__(self):
        self.aigs = [_chain(4, True, "a"), _chain(4, False, "a"), _chain(6, True, "b"), _chain(6, False, "b")]
        self.aigs.append(_random_aig(9, pis=5, gates=12))
        self.records = [{"id": f"c{i}", "design": d} for i, d in enumerate(["a", "a", "b", "b", "c"])]

    def __len__(self):
        return len(self.aigs)

    def aig(self, i):
        return self.aigs[i]


def test_merge_variants_puts_each_circuit_with_another_of_its_design():
    ds = _Variants()
    plain = PretrainData(ds, explicit_not=True, text=None, max_tokens=8, max_nodes=999, signatures=True)
    merged = PretrainData(
        ds, explicit_not=True, text=None, max_tokens=8, max_nodes=999, signatures=True, merge_variants=True
    )
    assert merged.merged == 4 and plain.merged == 0
    for k in range(4):
        partner = k ^ 1  # the other member of its design
        expect = aig_to_data(merge_with_copy(ds.aig(k), ds.aig(partner)))
        assert merged.samples[k].graph.num_nodes == expect.num_nodes
        assert torch.equal(merged.samples[k].graph.x, expect.x)
    assert merged.samples[4].graph.num_nodes == plain.samples[4].graph.num_nodes  # alone: unchanged
    # the merged graph holds equal-function gates from the two structures
    g = merged.samples[0].graph
    batch = Batch.from_data_list([g])
    pairs = sample_equivalence_pairs(
        batch.batch, batch.sig, batch.x, batch.edge_index, 10.0, torch.Generator().manual_seed(0)
    )
    assert bool((batch.sig[pairs[0]] == batch.sig[pairs[1]]).all(1).any())


def test_merge_variants_config_refuses_what_it_cannot_honour():
    cfg = load_config(None, ["data.merge_variants=true", "funcsim.enabled=true", "funcsim.sampling=equiv"])
    assert cfg.data.merge_variants and cfg.funcsim.sampling == "equiv"
    with pytest.raises(ConfigError, match="merge_variants"):
        load_config(None, ["data.merge_variants=true", "contrast.enabled=true"])
    with pytest.raises(ConfigError, match="funcsim.sampling"):
        load_config(None, ["funcsim.sampling=equal"])
