"""Random features at primary inputs (``EncoderConfig.pi_features``): symmetric twins become distinguishable,
evaluation is deterministic and independent of the batch, training draws fresh vectors."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch

from circuitml.aig import AIGBuilder
from circuitml.encoders import EncoderConfig, build_encoder, load_encoder
from circuitml.encoders.random_features import pi_positions
from circuitml.errors import ConfigError
from circuitml.graph import PI, aig_to_data
from tests.test_pretrain_objectives import _random_aig


def _twins():
    """AND(a, b) and AND(a, c): one structure, two functions."""
    b = AIGBuilder("twins")
    a, x, y = b.add_pi(), b.add_pi(), b.add_pi()
    b.add_po(b.and_(a, x))
    b.add_po(b.and_(a, y))
    return b.build()


def _gate_rows(data):
    return torch.nonzero(data.aig_node >= 4).flatten()  # the two ANDs (nodes 4 and 5 of the AIG)


@pytest.mark.parametrize("kind", ["deepgcn", "gcn"])
def test_random_pi_features_tell_twins_apart_and_anonymous_inputs_do_not(kind: str) -> None:
    data = aig_to_data(_twins())
    rows = _gate_rows(data)
    for width, differ in [(0, False), (8, True)]:
        torch.manual_seed(0)
        enc = build_encoder(EncoderConfig(kind=kind, hidden=16, num_layers=2, pi_features=width)).eval()
        with torch.no_grad():
            node = enc(data).node
        assert (not torch.allclose(node[rows[0]], node[rows[1]], atol=1e-6)) == differ


def test_evaluation_is_deterministic_and_independent_of_the_batch() -> None:
    torch.manual_seed(0)
    enc = build_encoder(EncoderConfig(kind="deepgcn", hidden=16, num_layers=2, pi_features=8)).eval()
    g, other = aig_to_data(_random_aig(1)), aig_to_data(_random_aig(2, pis=7))
    with torch.no_grad():
        alone = enc(g).node
        torch.manual_seed(123)  # the global random state plays no part in evaluation
        again = enc(g).node
        batched = enc(Batch.from_data_list([other, g])).node[other.num_nodes :]
    assert torch.equal(alone, again)
    assert torch.allclose(alone, batched, atol=1e-5)
    enc.train()
    first, second = enc(g).node, enc(g).node
    assert not torch.allclose(first, second)  # fresh vectors every training pass


def test_pi_positions_count_inputs_within_each_graph() -> None:
    batch = Batch.from_data_list([aig_to_data(_random_aig(s, pis=3 + s)) for s in range(3)])
    nodes, rank = pi_positions(batch.x, batch.batch)
    assert (batch.x[nodes] == PI).all()
    naive = []
    for g in range(3):
        naive += list(range(int(((batch.x == PI) & (batch.batch == g)).sum())))
    assert rank.tolist() == naive


def test_config_round_trip_save_load_and_bounds(tmp_path) -> None:
    assert "pi_features" not in EncoderConfig().to_dict()  # configs without it read as before
    cfg = EncoderConfig(hidden=16, num_layers=2, pi_features=8)
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg
    torch.manual_seed(0)
    enc = build_encoder(cfg).eval()
    enc.save_pretrained(tmp_path / "enc")
    back = load_encoder(tmp_path / "enc").eval()
    g = aig_to_data(_random_aig(5))
    with torch.no_grad():
        assert torch.equal(enc(g).node, back(g).node)
    for bad in (-1, 1.5, 10**6):
        with pytest.raises(ConfigError, match="pi_features"):
            EncoderConfig(pi_features=bad)


def test_freezing_the_bottom_also_freezes_the_random_feature_projection() -> None:
    from circuitml.tasks.common import TrainConfig, param_groups

    enc = build_encoder(EncoderConfig(kind="deepgcn", hidden=8, num_layers=3, pi_features=4))
    groups = param_groups(torch.nn.Linear(8, 1), enc, True, True, TrainConfig(freeze_layers=1))
    trained = {id(p) for p in groups[1]["params"]}
    assert all(id(p) not in trained and not p.requires_grad for p in enc.pi_projection.parameters())
    unfrozen = build_encoder(EncoderConfig(kind="deepgcn", hidden=8, num_layers=3, pi_features=4))
    groups = param_groups(torch.nn.Linear(8, 1), unfrozen, True, True, TrainConfig(freeze_layers=0))
    assert {id(p) for p in unfrozen.pi_projection.parameters()} <= {id(p) for p in groups[1]["params"]}
