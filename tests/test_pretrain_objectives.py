"""Functional objectives: signatures against naive evaluation, proved mutants, trivial predictors against naive
reference implementations, contrastive masking, and the Verilog ablation's derangement."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch_geometric.data import Batch

from circuitml.aig import AIGBuilder
from circuitml.graph import NOT, PO, aig_to_data
from circuitml.pretrain.config import OBJECTIVE_PRESETS, OBJECTIVES, load_config, objective_overrides
from circuitml.pretrain.contrastive import ContrastiveHead
from circuitml.pretrain.funcrec import FunctionalReconstructionHead
from circuitml.pretrain.funcsim import FunctionalSimilarityHead, sample_pairs
from circuitml.pretrain.signatures import (
    degree_lookup_accuracy,
    linear_fit,
    node_signatures,
    one_gate_mutant,
    signature_bits,
)
from circuitml.sim import evaluate, random_pi_words


def _random_aig(seed: int, pis: int = 5, gates: int = 14, pos: int = 3):
    rng = random.Random(seed)
    b = AIGBuilder(f"r{seed}")
    lits = [b.add_pi() for _ in range(pis)]
    for _ in range(gates):
        x, y = rng.sample(lits, 2)
        lits.append(b.and_(x ^ rng.randint(0, 1), y ^ rng.randint(0, 1)))
    for lit in rng.sample(lits[pis:], pos):
        b.add_po(lit ^ rng.randint(0, 1))
    return b.build()


def _eval_nodes(aig, assignment) -> list[int]:
    """Naive reference: every AIG node's value under one assignment, gate by gate."""
    values = [0, *[int(a) for a in assignment]]
    for a, b in aig.ands.tolist():
        values.append((values[a >> 1] ^ (a & 1)) & (values[b >> 1] ^ (b & 1)))
    return values


def _eval_outputs(aig, assignment) -> list[int]:
    values = _eval_nodes(aig, assignment)
    return [values[lit >> 1] ^ (lit & 1) for lit in aig.pos.tolist()]


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000))
def test_signatures_equal_naive_evaluation_pattern_by_pattern(seed):
    aig = _random_aig(seed)
    g = aig_to_data(aig, explicit_not=True)
    bits = signature_bits(node_signatures(aig, g, num_words=1)).numpy()
    words = random_pi_words(aig.num_pis, 64, 0)
    for k in range(0, 64, 9):
        assignment = np.array([(int(w[0]) >> k) & 1 for w in words], dtype=bool)
        values = _eval_nodes(aig, assignment)
        node = g.aig_node.numpy()
        for v in range(g.num_nodes):
            if g.x[v] == PO:
                continue
            want = values[node[v]] ^ int(g.x[v] == NOT)
            assert bits[v, k] == want
        outs = _eval_outputs(aig, assignment)
        assert list(evaluate(aig, assignment)) == outs
        po_nodes = np.flatnonzero(g.x.numpy() == PO)
        assert [bool(bits[v, k]) for v in po_nodes] == [bool(o) for o in outs]


def test_mutant_differs_in_one_fanin_and_is_proved_non_equivalent():
    for seed in range(5):
        aig = _random_aig(seed)
        mutant = one_gate_mutant(aig, np.random.default_rng(seed))
        if mutant is None:
            continue
        assert (mutant.ands != aig.ands).sum() == 1
        # exhaustive check of the counterexample claim: some input pattern separates them
        differ = any(
            _eval_outputs(aig, p) != _eval_outputs(mutant, p)
            for p in itertools.product([0, 1], repeat=aig.num_pis)
        )
        assert differ


def test_degree_lookup_equals_a_naive_table():
    gen = torch.Generator().manual_seed(0)
    indeg = torch.randint(0, 3, (200,), generator=gen).float()
    outdeg = torch.randint(0, 4, (200,), generator=gen).float()
    target = torch.randint(0, 4, (200,), generator=gen)
    table: dict = {}
    for a, b, t in zip(indeg.tolist(), outdeg.tolist(), target.tolist(), strict=True):
        table.setdefault((a, b), []).append(t)
    naive = sum(max(v.count(c) for c in set(v)) for v in table.values()) / 200
    assert float(degree_lookup_accuracy(indeg, outdeg, target)) == pytest.approx(naive)


def test_linear_fit_equals_numpy_least_squares():
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(50, 4, generator=gen)
    y = torch.randn(50, generator=gen)
    coef, *_ = np.linalg.lstsq(x.double().numpy(), y.double().numpy(), rcond=None)
    assert np.allclose(linear_fit(x, y).numpy(), x.double().numpy() @ coef, atol=1e-4)


def _batch(aigs):
    graphs = []
    for aig in aigs:
        g = aig_to_data(aig)
        g.sig = node_signatures(aig, g)
        graphs.append(g)
    return Batch.from_data_list(graphs)


def test_pairs_stay_inside_their_graph_and_heads_give_finite_losses():
    batch = _batch([_random_aig(s) for s in range(3)])
    gen = torch.Generator().manual_seed(0)
    pairs = sample_pairs(batch.batch, batch.num_graphs, 2.0, gen)
    assert torch.equal(batch.batch[pairs[0]], batch.batch[pairs[1]])
    node = torch.randn(batch.num_nodes, 16, requires_grad=True)
    fs = FunctionalSimilarityHead(16)(node, batch, gen)
    mask = torch.rand(batch.num_nodes, generator=gen) < 0.5
    fr = FunctionalReconstructionHead(16, 128, 1)(node, mask, batch)
    (fs.loss + fr.loss).backward()
    assert torch.isfinite(node.grad).all() and node.grad.abs().sum() > 0
    assert 0 <= float(fr.baseline_prob_mae) <= 1 and 0 <= float(fs.baseline_mae) <= 1


def test_contrastive_never_treats_an_equivalent_as_a_negative():
    # two anchors of the SAME design: each other's positive must be excluded from the denominator, so a model
    # that maps both designs' variants to one point still gets accuracy 1 and finite loss
    aigs = [_random_aig(7), _random_aig(7)]
    anchor, positive = _batch(aigs), _batch(aigs)
    head = ContrastiveHead(8, temperature=0.1)
    node = torch.randn(anchor.num_nodes, 8)
    graph = torch.ones(2, 8)
    out = head(
        (node, graph, anchor), (node, graph, positive), None, torch.tensor([0, 0]), torch.empty(0).long()
    )
    assert float(out.graph_accuracy) == 1.0 and torch.isfinite(out.loss)
    # different designs with identical embeddings: chance-level, the loss sees the negative
    out2 = head(
        (node, graph, anchor), (node, graph, positive), None, torch.tensor([0, 1]), torch.empty(0).long()
    )
    assert float(out2.loss) > float(out.loss)


def test_presets_switch_exactly_their_objectives():
    for name, on in OBJECTIVE_PRESETS.items():
        labels = ["qor.labels=labels/"] if "qor" in on else []  # the qor objective needs its labels folder
        cfg = load_config(None, objective_overrides(name) + labels)
        enabled = {n for n in OBJECTIVES if getattr(cfg, n).enabled}
        assert enabled == set(on)
    assert load_config(None).funcrec.enabled is False  # the default stays the paper's MGM + VGA


def test_shuffled_verilog_is_a_derangement_of_designs():
    from circuitml.pretrain.data import PretrainData

    class Fake:
        def __init__(self):
            self.aigs = [_random_aig(s) for s in range(6)]
            self.records = [
                {"id": f"c{i}", "design": f"d{i // 2}"} for i in range(6)
            ]  # 3 designs x 2 variants

        def __len__(self):
            return 6

        def aig(self, i):
            return self.aigs[i]

        def verilog_tokens(self, i):
            return [10 + i // 2] * 3  # the design's "Verilog"

    own = PretrainData(Fake(), explicit_not=True, text="builtin", max_tokens=8, max_nodes=999)
    shuffled = PretrainData(
        Fake(), explicit_not=True, text="builtin", max_tokens=8, max_nodes=999, verilog="shuffled"
    )
    none = PretrainData(
        Fake(), explicit_not=True, text="builtin", max_tokens=8, max_nodes=999, verilog="none"
    )
    for i in range(6):
        assert int(own.samples[i].tokens[0]) == 10 + i // 2
        assert int(shuffled.samples[i].tokens[0]) != 10 + i // 2
        assert int(shuffled.samples[i].tokens[0]) == int(shuffled.samples[i ^ 1].tokens[0])  # per design
        assert none.samples[i].tokens.tolist() == [0]


def test_verilog_encoder_by_shipped_name(tmp_path):
    pytest.importorskip("all_minilm_l6_v2")
    pytest.importorskip("transformers")
    from circuitml.pretrain.trainer import _build_text

    cfg = load_config(None, ["model.verilog_encoder=all-minilm-l6-v2"])
    features, hidden, vocab = _build_text(cfg, tmp_path, torch.device("cpu"))
    assert hidden == 384 and vocab is None
    states = features.features("module m(input a, output y); assign y = ~a; endmodule")
    assert states.shape[1] == 384 and features.cached("module m(input a, output y); assign y = ~a; endmodule")
