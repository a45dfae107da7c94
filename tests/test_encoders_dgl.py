"""DGL-backed GCN and SAGE encoders give the PyG encoders' outputs (and gradients) for the same weights."""

from __future__ import annotations

import pytest
import torch

from circuitml.encoders import build_encoder
from tests.test_encoders_circuits import circuit_batch

pytest.importorskip("dgl")


@pytest.mark.parametrize("kind", ["gcn", "sage"])
@pytest.mark.parametrize("undirected", [False, True])
def test_dgl_matches_pyg(kind: str, undirected: bool) -> None:
    batch = circuit_batch(with_prob=False)
    pyg = build_encoder(kind, hidden=16, num_layers=3, pool="attention", options={"undirected": undirected})
    dgl_enc = build_encoder(
        f"dgl_{kind}", hidden=16, num_layers=3, pool="attention", options={"undirected": undirected}
    )
    pyg, dgl_enc = pyg.double(), dgl_enc.double()
    dgl_enc.load_pyg_state_dict(pyg.state_dict())
    a, b = pyg(batch), dgl_enc(batch)
    torch.testing.assert_close(b.node, a.node, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(b.graph, a.graph, rtol=1e-10, atol=1e-10)
    a.graph.sum().backward()
    b.graph.sum().backward()
    torch.testing.assert_close(dgl_enc.type_embedding.weight.grad, pyg.type_embedding.weight.grad)


def test_dgl_encoder_save_load(tmp_path) -> None:
    from circuitml.encoders import load_encoder

    enc = build_encoder("dgl_sage", hidden=8, num_layers=2)
    batch = circuit_batch(with_prob=False)
    enc.save_pretrained(tmp_path / "d")
    torch.testing.assert_close(
        load_encoder(tmp_path / "d")(batch).node, enc.eval()(batch).node, rtol=0, atol=0
    )


def test_dgl_matches_pyg_with_random_input_features() -> None:
    batch = circuit_batch(with_prob=False)
    pyg = build_encoder("gcn", hidden=16, num_layers=2, pi_features=4).double().eval()
    dgl_enc = build_encoder("dgl_gcn", hidden=16, num_layers=2, pi_features=4).double().eval()
    dgl_enc.load_pyg_state_dict(pyg.state_dict())
    torch.testing.assert_close(dgl_enc(batch).node, pyg(batch).node, rtol=1e-10, atol=1e-10)
