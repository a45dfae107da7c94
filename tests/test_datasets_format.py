"""The on-disk dataset format: exact round trips, and corrupted circuit files or manifests raise DatasetError
naming the file (never a bare exception)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from circuitml.datasets.format import (
    FORMAT_NAME,
    circuit_bytes,
    empty_manifest,
    load_circuit,
    read_manifest,
    save_circuit,
    write_manifest,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from circuitml.aig import AIG, AIGBuilder
from circuitml.errors import DatasetError


@st.composite
def aigs(draw) -> AIG:
    num_pis = draw(st.integers(1, 6))
    b = AIGBuilder(name=draw(st.sampled_from(["", "c17", "x y"])))
    lits = [b.add_pi(f"in[{k}]") for k in range(num_pis)]
    for _ in range(draw(st.integers(0, 20))):
        i, j = draw(st.integers(0, len(lits) - 1)), draw(st.integers(0, len(lits) - 1))
        lits.append(b.and_(lits[i] ^ draw(st.integers(0, 1)), lits[j] ^ draw(st.integers(0, 1))))
    num_latches = draw(st.integers(0, min(2, num_pis)))
    for k in range(draw(st.integers(num_latches, num_latches + 3))):
        b.add_po(draw(st.sampled_from(lits)) ^ draw(st.integers(0, 1)), f"out{k}")
    init = np.array(draw(st.lists(st.sampled_from([0, 1, -1]), min_size=num_latches, max_size=num_latches)))
    return b.build(num_latches=num_latches, latch_init=init)


RECORD = {"id": "x", "family": "f", "source": "x.aag", "sha256": "0" * 64, "verilog": None}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(aig=aigs(), tokens=st.one_of(st.none(), st.lists(st.integers(0, 500), max_size=30)))
def test_circuit_round_trip_is_exact(tmp_path, aig, tokens):
    path = tmp_path / "c.safetensors"
    tok = None if tokens is None else np.array(tokens, dtype=np.int32)
    save_circuit(path, aig, RECORD, tok)
    back, record, tok_back = load_circuit(path)
    assert back.same_structure(aig)
    assert (back.pi_names, back.po_names, back.name) == (aig.pi_names, aig.po_names, aig.name)
    assert record == RECORD
    if tok is None:
        assert tok_back is None
    else:
        assert tok_back.tolist() == tok.tolist()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files left behind


def _sample() -> AIG:
    b = AIGBuilder("s")
    x, y = b.add_pi(), b.add_pi()
    b.add_po(b.xor_(x, y))
    return b.build()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cut=st.integers(0, 10_000),
    flips=st.lists(st.tuples(st.integers(0, 10_000), st.integers(1, 255)), max_size=4),
)
def test_damaged_circuit_file_raises_dataset_error(tmp_path, cut, flips):
    data = bytearray(circuit_bytes(_sample(), RECORD))
    for pos, xor in flips:
        data[pos % len(data)] ^= xor
    data = data[: cut % (len(data) + 1)] if cut % 3 else data
    path = tmp_path / "bad.safetensors"
    path.write_bytes(bytes(data))
    try:
        aig, _, _ = load_circuit(path)
    except DatasetError as exc:
        assert str(path) in str(exc)
        assert "\n" not in str(exc)
    else:
        aig.validate()  # a flip that kept the file consistent must still give a valid AIG


def test_truncated_and_foreign_files_are_named(tmp_path):
    good = circuit_bytes(_sample(), RECORD)
    p = tmp_path / "t.safetensors"
    p.write_bytes(good[: len(good) // 2])
    with pytest.raises(DatasetError, match=r"t\.safetensors: truncated"):
        load_circuit(p)
    from safetensors.numpy import save

    p.write_bytes(save({"w": np.zeros(3, dtype=np.float32)}))
    with pytest.raises(DatasetError, match="expected '__metadata__.circuitml'"):
        load_circuit(p)
    with pytest.raises(DatasetError, match="cannot read circuit file"):
        load_circuit(tmp_path / "missing.safetensors")


def test_manifest_round_trip_and_errors(tmp_path):
    m = empty_manifest()
    m["records"] = [
        {**RECORD, "id": "b", "num_pis": 1, "num_pos": 1, "num_ands": 0, "depth": 0},
        {**RECORD, "id": "a", "num_pis": 1, "num_pos": 1, "num_ands": 0, "depth": 0},
    ]
    write_manifest(tmp_path, m)
    back = read_manifest(tmp_path)
    assert [r["id"] for r in back["records"]] == ["a", "b"] and back["format"] == FORMAT_NAME

    (tmp_path / "manifest.json").write_text('{"format": "circuitml-dataset",\n "version": 1,\n "records": [')
    with pytest.raises(DatasetError, match=r"manifest\.json:3: expected JSON"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other", "version": 1, "records": []}))
    with pytest.raises(DatasetError, match='expected "format"'):
        read_manifest(tmp_path)
    bad = empty_manifest()
    bad["records"] = [{"id": "a"}]
    (tmp_path / "manifest.json").write_text(json.dumps(bad))
    with pytest.raises(DatasetError, match=r"expected key 'family' at records\[0\]"):
        read_manifest(tmp_path)
    dup = empty_manifest()
    dup["records"] = [m["records"][0], m["records"][0]]
    (tmp_path / "manifest.json").write_text(json.dumps(dup))
    with pytest.raises(DatasetError, match=r"records\[1\]\.id"):
        read_manifest(tmp_path)
    with pytest.raises(DatasetError, match="no dataset manifest"):
        read_manifest(tmp_path / "nowhere")
