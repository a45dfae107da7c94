"""Level-wise propagation against a naive node-by-node reference (float64), checkpointed backward against plain
autograd, and batching that merges levels without changing any graph's result."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch_geometric.data import Batch

from circuitml.aig import AIGBuilder
from circuitml.encoders import build_encoder
from circuitml.encoders.dag import DagCell
from circuitml.encoders.propagation import level_sweep, segment_attention, sweep_plan
from circuitml.graph import aig_to_data, level_schedule
from tests.test_encoders_circuits import adder, multiplier


def _batch(explicit_not: bool = True) -> Batch:
    return Batch.from_data_list(
        [aig_to_data(a, explicit_not=explicit_not) for a in (adder(3), multiplier(3), adder(2))]
    )


def _naive_gru(cell: torch.nn.GRUCell, x: list[float], h: list[float]) -> list[float]:
    """torch.nn.GRUCell written out per component (Cho et al. 2014 with PyTorch's gate order r, z, n)."""
    n = len(h)
    w_ih, w_hh, b_ih, b_hh = (
        t.tolist() for t in (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    )

    def lin(w, b, v, row):
        return sum(w[row][j] * v[j] for j in range(len(v))) + b[row]

    def sig(v):
        return 1.0 / (1.0 + math.exp(-v))

    out = []
    for i in range(n):
        r = sig(lin(w_ih, b_ih, x, i) + lin(w_hh, b_hh, h, i))
        z = sig(lin(w_ih, b_ih, x, n + i) + lin(w_hh, b_hh, h, n + i))
        c = math.tanh(lin(w_ih, b_ih, x, 2 * n + i) + r * lin(w_hh, b_hh, h, 2 * n + i))
        out.append((1 - z) * c + z * h[i])
    return out


def _naive_sweep(cell: DagCell, edge_index, level, state, ctx, edge_feat, reverse: bool):
    """One node at a time, in level order, with plain Python lists: the DagCell equations written out."""
    h = cell.hidden
    src_list, dst_list = edge_index.tolist()
    if reverse:
        src_list, dst_list = dst_list, src_list
    fanins: dict[int, list[tuple[int, int]]] = {}
    for e, (u, v) in enumerate(zip(src_list, dst_list, strict=True)):
        fanins.setdefault(v, []).append((u, e))
    wk = (cell.key.weight * cell.key_mask).tolist()
    wq = (cell.query.weight * cell.query_mask).tolist()
    a_src, a_dst = cell.att_src.tolist(), cell.att_dst.tolist()
    rows = [list(r) for r in state.tolist()]
    for v in sorted(range(len(rows)), key=lambda i: level[i]):
        if v not in fanins:
            continue
        q = [sum(wq[i][j] * rows[v][j] for j in range(2 * h)) for i in range(2 * h)]
        keys, scores = [], []
        for u, e in fanins[v]:
            z = rows[u] + ([] if edge_feat is None else edge_feat[e].tolist())
            k = [sum(wk[i][j] * z[j] for j in range(len(z))) for i in range(2 * h)]
            keys.append(k)
            s = []
            for head in range(2):
                raw = sum(a_src[head][i] * k[head * h + i] for i in range(h)) + sum(
                    a_dst[head][i] * q[head * h + i] for i in range(h)
                )
                s.append(raw if raw > 0 else 0.2 * raw)
            scores.append(s)
        msg = [0.0] * (2 * h)
        for head in range(2):
            top = max(s[head] for s in scores)
            ex = [math.exp(s[head] - top) for s in scores]
            for k, w in zip(keys, ex, strict=True):
                for i in range(h):
                    msg[head * h + i] += w / sum(ex) * k[head * h + i]
        x = ctx[v].tolist()
        hf = _naive_gru(cell.gru_f, msg[:h] + x, rows[v][:h])
        hs = _naive_gru(cell.gru_s, msg[h:] + x, rows[v][h:])
        rows[v] = hf + hs
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("explicit_not", [True, False])
def test_level_sweep_matches_naive_reference(reverse: bool, explicit_not: bool) -> None:
    data = _batch(explicit_not)
    n, h = data.num_nodes, 3
    cell = DagCell(h, edge_dim=0 if explicit_not else 1).double()
    state = torch.randn(n, 2 * h, dtype=torch.float64)
    ctx = torch.randn(n, h, dtype=torch.float64)
    edge_feat = None if explicit_not else data.edge_attr.double()
    plan = sweep_plan(data.edge_index, n, level_schedule(data), reverse=reverse)
    lvl = (data.rev_level if reverse else data.level).tolist()
    want = _naive_sweep(cell, data.edge_index, lvl, state, ctx, edge_feat, reverse)
    for checkpoint in (True, False):
        got = level_sweep(cell, plan, state.clone().requires_grad_(), ctx, edge_feat, checkpoint=checkpoint)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("reverse", [False, True])
def test_checkpointed_backward_equals_plain_autograd(reverse: bool) -> None:
    data = _batch(explicit_not=False)
    n, h = data.num_nodes, 4
    cell = DagCell(h, edge_dim=1).double()
    plan = sweep_plan(data.edge_index, n, level_schedule(data), reverse=reverse)
    state = torch.randn(n, 2 * h, dtype=torch.float64)
    ctx = torch.randn(n, h, dtype=torch.float64)
    edge = data.edge_attr.double()
    weight = torch.randn(n, 2 * h, dtype=torch.float64)
    grads = []
    for checkpoint in (True, False):
        inputs = [t.clone().requires_grad_() for t in (state, ctx, edge)]
        out = level_sweep(cell, plan, *inputs, checkpoint=checkpoint)
        # Two sweeps in a row: the second reads rows the first wrote, as in the encoder.
        out = level_sweep(cell, plan, torch.tanh(out), inputs[1], inputs[2], checkpoint=checkpoint)
        params = list(cell.parameters())
        grads.append(torch.autograd.grad((out * weight).sum(), inputs + params))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_gradcheck_checkpointed_sweep() -> None:
    data = aig_to_data(adder(1))
    n, h = data.num_nodes, 2
    cell = DagCell(h).double()
    plan = sweep_plan(data.edge_index, n, level_schedule(data))
    state = torch.randn(n, 2 * h, dtype=torch.float64, requires_grad=True)
    ctx = torch.randn(n, h, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda s, c: level_sweep(cell, plan, s, c, checkpoint=True), (state, ctx), fast_mode=True
    )


def test_segment_attention_reference() -> None:
    score = torch.tensor([0.5, -1.0, 2.0, 0.0, 1.0], dtype=torch.float64)
    value = torch.arange(10, dtype=torch.float64).view(5, 2)
    local = torch.tensor([0, 0, 1, 1, 1])
    out = segment_attention(score, value, local, 3)
    a = torch.softmax(score[:2], 0) @ value[:2]
    b = torch.softmax(score[2:], 0) @ value[2:]
    torch.testing.assert_close(out, torch.stack([a, b, torch.zeros(2, dtype=torch.float64)]))


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 40), st.booleans(), st.booleans()), max_size=30))
def test_sweep_plan_covers_every_edge_once_in_level_order(gates) -> None:
    b = AIGBuilder("random")
    lits = [b.add_pi() for _ in range(4)]
    for i, j, ci, cj in gates:
        lits.append(b.and_(lits[i % len(lits)] ^ ci, lits[j % len(lits)] ^ cj))
    b.add_po(lits[-1])
    data = aig_to_data(b.build())
    for reverse in (False, True):
        plan = sweep_plan(data.edge_index, data.num_nodes, level_schedule(data), reverse=reverse)
        lvl = data.rev_level if reverse else data.level
        tgt_row, src_row = (0, 1) if reverse else (1, 0)
        seen = torch.cat(plan.edge_ids) if len(plan) else torch.zeros(0, dtype=torch.long)
        assert sorted(seen.tolist()) == list(range(data.edge_index.size(1)))
        for tgt, src, loc, eid in zip(plan.targets, plan.sources, plan.local, plan.edge_ids, strict=True):
            assert torch.equal(tgt[loc], data.edge_index[tgt_row, eid])
            assert torch.equal(src, data.edge_index[src_row, eid])
            assert bool((lvl[src] < lvl[tgt[0]]).all()) and bool((lvl[tgt] == lvl[tgt[0]]).all())
            assert bool((loc[1:] >= loc[:-1]).all())


@pytest.mark.parametrize("checkpoint", [True, False])
def test_batched_levels_equal_separate_graphs(checkpoint: bool) -> None:
    graphs = [aig_to_data(a) for a in (adder(3), multiplier(3), adder(5))]
    enc = build_encoder("dag", hidden=8, num_layers=2, options={"checkpoint": checkpoint}).double()
    batch = Batch.from_data_list(graphs)
    together = enc(batch).node
    apart = torch.cat([enc(g).node for g in graphs])
    torch.testing.assert_close(together, apart, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", ["dag", "deepgcn", "moe_gnn"])
def test_bf16_autocast_forward_backward(kind: str) -> None:
    batch = Batch.from_data_list([aig_to_data(adder(4)), aig_to_data(multiplier(3))])
    opts = {"checkpoint": True} if kind == "dag" else {}
    enc = build_encoder(kind, hidden=16, num_layers=2, options=opts)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = enc(batch)
        loss = out.node.float().square().mean() + enc.aux_loss()
    loss.backward()
    assert torch.isfinite(out.node.float()).all()
    grads = [p.grad for p in enc.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert enc.type_embedding.weight.grad.abs().sum() > 0


def _materialized_keys_cell(cell: DagCell, src, tgt, x, edge_feat, local, n):
    """The DagCell equations with keys and queries materialized per edge / target (the pre-folding form)."""
    h = cell.hidden
    z = src if edge_feat is None else torch.cat([src, edge_feat], dim=-1)
    keys = torch.nn.functional.linear(z, cell.key.weight * cell.key_mask).view(-1, 2, h)
    queries = torch.nn.functional.linear(tgt, cell.query.weight * cell.query_mask).view(-1, 2, h)
    score = (keys * cell.att_src).sum(-1) + (queries * cell.att_dst).sum(-1)[local]
    msg = segment_attention(torch.nn.functional.leaky_relu(score, 0.2), keys, local, n)
    hf = cell.gru_f(torch.cat([msg[:, 0], x], dim=-1), tgt[:, :h])
    hs = cell.gru_s(torch.cat([msg[:, 1], x], dim=-1), tgt[:, h:])
    return torch.cat([hf, hs], dim=-1)


@pytest.mark.parametrize("edge_dim", [0, 1])
def test_dag_cell_folded_attention_equals_materialized_keys_with_gradients(edge_dim: int) -> None:
    torch.manual_seed(edge_dim)
    h, n, e = 6, 9, 23
    cell = DagCell(h, edge_dim).double()
    local = torch.sort(torch.randint(0, n, (e,))).values
    inputs = [
        torch.randn(e, 2 * h, dtype=torch.float64),
        torch.randn(n, 2 * h, dtype=torch.float64),
        torch.randn(n, h, dtype=torch.float64),
    ]
    ef = torch.randint(0, 2, (e, 1)).double() if edge_dim else None
    grads = []
    for fn in (cell, lambda *a: _materialized_keys_cell(cell, *a)):
        cell.zero_grad()
        leaves = [t.clone().requires_grad_() for t in inputs]
        out = fn(*leaves, ef, local, n)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=torch.float64).view_as(out))
        grads.append((out.detach(), [t.grad for t in leaves], [p.grad.clone() for p in cell.parameters()]))
    (a, ga, pa), (b, gb, pb) = grads
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    for u, v in zip(ga + pa, gb + pb, strict=True):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)
