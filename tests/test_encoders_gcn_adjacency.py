"""The GCN encoder's precomputed sparse adjacency gives PyG GCNConv's numbers (outputs and gradients)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from circuitml import kernels
from circuitml.aig import AIG
from circuitml.encoders import build_encoder, rowwise
from circuitml.encoders import csr_matmul as csr_mod
from circuitml.encoders.pyg_stacks import gcn_adjacency
from circuitml.graph import aig_to_data


def small_aig(seed: int, num_ands: int = 40) -> AIG:
    rng = np.random.default_rng(seed)
    num_pis = 5
    ands = []
    for i in range(num_ands):
        top = num_pis + i  # variables 1..top exist before this AND
        a, b = rng.integers(1, top + 1, 2)
        if i % 9 == 0:
            b = a  # an AND reading one node twice: parallel edges
        ands.append([2 * a + rng.integers(0, 2), 2 * b + rng.integers(0, 2)])
    pos = 2 * np.arange(num_pis + num_ands - 4, num_pis + num_ands + 1)
    return AIG(num_pis=num_pis, ands=np.array(ands), pos=pos, name=f"g{seed}")


def message_passing_reference(enc, data):
    """The same weights through PyG's own GCNConv path (normalization per layer, gather/scatter messages)."""
    for conv in enc.gnn.convs:
        conv.normalize = True
    try:
        edge_index, _ = enc.graph_edges(data)
        h = enc.type_embedding(data.x.view(-1).long())
        return enc.gnn(h, edge_index, batch=getattr(data, "batch", None))
    finally:
        for conv in enc.gnn.convs:
            conv.normalize = False


@pytest.mark.parametrize(
    "options", [{}, {"undirected": True}, {"jk": "cat", "norm": "batch"}, {"act": "gelu"}]
)
def test_gcn_sparse_adjacency_matches_message_passing(options: dict) -> None:
    torch.manual_seed(0)
    enc = build_encoder("gcn", hidden=16, num_layers=3, options=options).double()
    data = Batch.from_data_list([aig_to_data(small_aig(s)) for s in (1, 2)])
    num_edges = data.edge_index.size(1)
    assert torch.unique(data.edge_index, dim=1).size(1) < num_edges, "the fixture must hold parallel edges"
    params = list(enc.parameters())
    ours = enc.encode_nodes(data, enc.type_embedding(data.x.view(-1).long()))
    ref = message_passing_reference(enc, data)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-12)
    g = torch.randn_like(ref)
    for a, b in zip(
        torch.autograd.grad(ours, params, g, allow_unused=True),
        torch.autograd.grad(ref, params, g, allow_unused=True),
        strict=True,
    ):
        if a is None or b is None:
            assert a is None and b is None
        else:
            torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-11)
    # The adjacency is cached on the graph: a second forward reuses it and gives the same numbers.
    again = enc.encode_nodes(data, enc.type_embedding(data.x.view(-1).long()))
    torch.testing.assert_close(again, ours, rtol=0, atol=0)


def test_gcn_under_bf16_autocast_matches_message_passing() -> None:
    torch.manual_seed(0)
    enc = build_encoder("gcn", hidden=16, num_layers=3)
    data = aig_to_data(small_aig(4))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ours = enc.encode_nodes(data, enc.type_embedding(data.x.view(-1).long()))
        ref = message_passing_reference(enc, data)
    torch.testing.assert_close(ours.float(), ref.float(), rtol=0, atol=0)
    ours.float().sum().backward()
    assert all(p.grad is not None for p in enc.gnn.parameters())


@pytest.mark.skipif(not kernels.HAVE_NUMBA, reason="the compiled CSR kernel needs numba")
@pytest.mark.parametrize("threads", [1, 2])
def test_csr_matmul_equals_torch_sparse_with_the_transpose_in_backward(monkeypatch, threads: int) -> None:
    monkeypatch.setattr(rowwise, "MIN_ROWS_PER_THREAD", 1)
    monkeypatch.setattr(torch, "get_num_threads", lambda: threads)
    data = Batch.from_data_list([aig_to_data(small_aig(s, 60)) for s in (3, 5)])
    n = data.num_nodes
    _, _, adj = gcn_adjacency(data.edge_index, n, torch.float32)
    pair = csr_mod.csr_pair(adj)
    x = torch.randn(n, 12, generator=torch.Generator().manual_seed(1), requires_grad=True)
    g = torch.randn(n, 12, generator=torch.Generator().manual_seed(2))
    ours = csr_mod.csr_matmul(pair, x)
    ref = adj @ x.detach()
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    (grad,) = torch.autograd.grad(ours, x, g)
    torch.testing.assert_close(grad, adj.to_dense().t() @ g, rtol=1e-5, atol=1e-6)


@pytest.mark.skipif(not kernels.HAVE_NUMBA, reason="the compiled CSR kernel needs numba")
def test_gcn_encoder_propagates_through_the_compiled_csr_kernel(monkeypatch) -> None:
    calls = []
    kernel = csr_mod._csr_rows

    def spy(*args):
        calls.append(args[3].shape)
        return kernel(*args)

    monkeypatch.setattr(csr_mod, "_csr_rows", spy)
    enc = build_encoder("gcn", hidden=16, num_layers=3)
    data = aig_to_data(small_aig(6))
    enc(data).node.sum().backward()
    # three layers forward, and the backward of the two layers whose input needs a gradient plus the first's
    assert len(calls) == 6 and all(shape == (data.num_nodes, 16) for shape in calls)
    calls.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16 states take PyG's edge-weight path instead
        enc(data)
    assert not calls


@pytest.mark.skipif(not kernels.HAVE_NUMBA, reason="the compiled CSR kernel needs numba")
def test_csr_matmul_is_twice_differentiable() -> None:
    """Meta-learning inner steps take gradients of gradients (create_graph=True) through the GCN layers."""
    data = aig_to_data(small_aig(7, 30))
    _, _, adj = gcn_adjacency(data.edge_index, data.num_nodes, torch.float64)
    pair = csr_mod.csr_pair(adj)
    x = torch.randn(data.num_nodes, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: csr_mod.csr_matmul(pair, t), (x,))
    assert torch.autograd.gradgradcheck(lambda t: csr_mod.csr_matmul(pair, t).square(), (x,))
