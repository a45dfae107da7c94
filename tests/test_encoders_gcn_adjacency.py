"""The GCN encoder's precomputed sparse adjacency gives PyG GCNConv's numbers (outputs and gradients)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch

from circuitml.aig import AIG
from circuitml.encoders import build_encoder
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
