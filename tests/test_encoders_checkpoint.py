"""save_pretrained → load_encoder gives identical outputs; every kind of damage raises CheckpointError; embed."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from circuitml.encoders import Encoder, build_encoder, load_encoder
from circuitml.errors import CheckpointError, ConfigError
from circuitml.graph import aig_to_data
from tests.test_encoders_circuits import adder, circuit_batch, multiplier

KINDS = [
    ("deepgcn", {}),
    ("dag", {}),
    ("gat", {"heads": 2}),
    ("moe_gnn", {"router": "topk", "num_experts": 3}),
    ("moe_gnn", {"expert": "ffn", "router": "switch", "top_k": 1}),
]


@pytest.mark.parametrize(("kind", "options"), KINDS)
def test_save_load_identical(tmp_path, kind, options) -> None:
    enc = build_encoder(kind, hidden=16, num_layers=2, pool="attention", options=options)
    with torch.no_grad():  # move weights off their init so a silent re-init would show
        for p in enc.parameters():
            p.add_(0.01 * torch.randn_like(p))
    batch = circuit_batch(with_prob=False)
    enc.eval()
    want = enc(batch)
    enc.save_pretrained(tmp_path / "enc", card={"data": "adders", "steps": 3, "final_loss": 0.125})
    assert sorted(p.name for p in (tmp_path / "enc").iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    loaded = Encoder.from_pretrained(tmp_path / "enc")
    assert not loaded.training and loaded.config == enc.config
    got = loaded(batch)
    torch.testing.assert_close(got.node, want.node, rtol=0, atol=0)
    torch.testing.assert_close(got.graph, want.graph, rtol=0, atol=0)
    card = (tmp_path / "enc" / "README.md").read_text()
    assert kind in card and "final_loss" in card and "0.125" in card
    meta = json.loads((tmp_path / "enc" / "config.json").read_text())
    assert meta["format"] == "circuitml-encoder" and meta["config"]["kind"] == kind


def _saved(tmp_path):
    enc = build_encoder("gcn", hidden=8, num_layers=2)
    return enc, enc.save_pretrained(tmp_path / "enc")


def test_missing_files(tmp_path) -> None:
    with pytest.raises(CheckpointError, match="not an encoder directory"):
        load_encoder(tmp_path / "nothing")
    _, d = _saved(tmp_path)
    (d / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"model\.safetensors: missing"):
        load_encoder(d)


def test_from_pretrained_checks_the_class(tmp_path) -> None:
    from circuitml.encoders.dag import DagEncoder
    from circuitml.encoders.pyg_stacks import GCNEncoder

    _, d = _saved(tmp_path)
    assert isinstance(GCNEncoder.from_pretrained(d), GCNEncoder)
    with pytest.raises(CheckpointError, match="expected a DagEncoder"):
        DagEncoder.from_pretrained(d)


def test_truncated_weights(tmp_path) -> None:
    _, d = _saved(tmp_path)
    raw = (d / "model.safetensors").read_bytes()
    for cut in (3, len(raw) // 2, len(raw) - 1):
        (d / "model.safetensors").write_bytes(raw[:cut])
        with pytest.raises(CheckpointError, match=r"model\.safetensors"):
            load_encoder(d)


def test_garbage_config(tmp_path) -> None:
    _, d = _saved(tmp_path)
    (d / "config.json").write_text('{"format": "circuitml-encoder",\n  "config": {oops}}')
    with pytest.raises(CheckpointError, match=r"config\.json:2:"):
        load_encoder(d)
    (d / "config.json").write_text(json.dumps({"format": "pickle"}))
    with pytest.raises(CheckpointError, match="'format'"):
        load_encoder(d)


def test_config_errors_name_the_key(tmp_path) -> None:
    _, d = _saved(tmp_path)
    meta = json.loads((d / "config.json").read_text())
    meta["config"]["layer_count"] = 3
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="layer_count"):
        load_encoder(d)


def test_mismatched_tensors(tmp_path) -> None:
    _, d = _saved(tmp_path)
    meta = json.loads((d / "config.json").read_text())
    meta["config"]["hidden"] = 16  # weights are 8 wide
    (d / "config.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"expected torch.float32 \(6, 16\)"):
        load_encoder(d)
    _, d = _saved(tmp_path)
    state = load_file(d / "model.safetensors")
    state.pop("gnn.convs.1.bias")
    state["extra"] = torch.zeros(1)
    save_file(state, d / "model.safetensors")
    with pytest.raises(
        CheckpointError, match="missing tensors 'gnn.convs.1.bias'; unexpected tensors 'extra'"
    ):
        load_encoder(d)
    _, d = _saved(tmp_path)
    state = load_file(d / "model.safetensors")
    state["gnn.convs.0.bias"][0] = float("nan")
    save_file(state, d / "model.safetensors")
    with pytest.raises(CheckpointError, match="NaN"):
        load_encoder(d)


def test_save_replaces_atomically(tmp_path) -> None:
    enc, d = _saved(tmp_path)
    enc2 = build_encoder("gcn", hidden=8, num_layers=2)
    enc2.save_pretrained(d)
    assert sorted(p.name for p in d.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    loaded = load_encoder(d)
    for a, b in zip(loaded.parameters(), enc2.parameters(), strict=True):
        assert torch.equal(a, b)


def test_saved_files_get_a_plain_opens_mode_and_a_file_in_the_way_is_one_error(tmp_path) -> None:
    import os

    from circuitml.errors import OutputError

    enc, d = _saved(tmp_path)
    mask = os.umask(0o022)
    os.umask(mask)
    for f in d.iterdir():  # mkstemp's 0600 would hide a shared encoder from colleagues
        assert f.stat().st_mode & 0o777 == 0o666 & ~mask, f.name
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="file"):
        enc.save_pretrained(tmp_path / "file" / "enc")


def test_embed_inputs(tmp_path) -> None:
    from circuitml.formats import write_circuit

    enc = build_encoder("sage", hidden=8, num_layers=2)
    enc.train()
    a, m = adder(3), multiplier(3)
    path = tmp_path / "mult3.aag"
    write_circuit(m, path)
    out_list = enc.embed([a, aig_to_data(m), path])
    assert out_list.graph.shape == (3, 8) and not out_list.node.requires_grad
    assert enc.training  # embed restores the mode
    torch.testing.assert_close(enc.embed(a).graph[0], out_list.graph[0])
    torch.testing.assert_close(enc.embed(str(path)).graph[0], out_list.graph[2])
    torch.testing.assert_close(out_list.graph[1], out_list.graph[2])
    with pytest.raises(ConfigError, match="cannot encode a int"):
        enc.embed(3)
    with pytest.raises(FileNotFoundError):
        enc.embed(tmp_path / "absent.aig")
