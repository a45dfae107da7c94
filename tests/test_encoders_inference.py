"""No-grad inference paths against the autograd ones: DeeperGCN's chunked blocks and the row-wise kernels."""

from __future__ import annotations

import pytest
import torch
from torch_geometric.data import Batch

from circuitml.encoders import build_encoder, rowwise
from circuitml.encoders import deepgcn as deepgcn_mod
from circuitml.encoders.softmax_aggr import aggregate_rows_plus_self, incoming_csr, softmax_aggregate
from circuitml.graph import aig_to_data
from tests.test_sim import random_aig
from tests.test_softmax_aggr import random_graph

pytest.importorskip("numba")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("affine", [True, False])
def test_layer_norm_relu_equals_torch(dtype, affine):
    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(48, elementwise_affine=affine).to(dtype)
    if affine:
        torch.nn.init.normal_(norm.weight)
        torch.nn.init.normal_(norm.bias)
    x = torch.randn(37, 48, dtype=dtype) * 3 + 1
    ref = torch.relu(torch.nn.functional.layer_norm(x, (48,), norm.weight, norm.bias, norm.eps))
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(rowwise.layer_norm_relu(x, norm), ref, rtol=tol, atol=tol)
    rowwise.layer_norm_relu(x, norm, out=x)  # in place
    torch.testing.assert_close(x, ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("start", [0, 13, 59])
def test_aggregate_rows_plus_self_equals_the_full_aggregation(start):
    torch.manual_seed(start)
    edge_index = random_graph(start)  # in-degrees 0 .. 5
    x = torch.randn(60, 16, dtype=torch.float64)
    t = torch.tensor([0.8], dtype=torch.float64)
    csr = incoming_csr(edge_index, 60)
    ref = softmax_aggregate(x, t, csr, 1e-7, fused=False) + x
    out = torch.full((60 - start, 16), float("nan"), dtype=torch.float64)  # every row must be written
    aggregate_rows_plus_self(x, 0.8, csr, 1e-7, start, out)
    torch.testing.assert_close(out, ref[start:], rtol=1e-12, atol=1e-12)


def test_parallel_rows_covers_every_row_once(monkeypatch):
    monkeypatch.setattr(rowwise, "MIN_ROWS_PER_THREAD", 1)
    hits = torch.zeros(1001, dtype=torch.long)

    def mark(s: int, e: int) -> None:
        hits[s:e] += 1

    rowwise.parallel_rows(mark, 1001, 3)
    assert bool((hits == 1).all())


def _reference_forward(enc, data):
    """The encoder's full-tensor path (PyG-composed blocks around the fused aggregation)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(deepgcn_mod.DeepGCNEncoder, "_chunked_inference_applies", lambda self, h: False)
        return enc(data).node


@pytest.mark.parametrize(
    ("options", "threads"),
    [({}, 1), ({}, 2), ({"norm": "batch"}, 2), ({"mlp_layers": 3, "t": 0.5, "learn_t": False}, 2)],
)
def test_deepgcn_chunked_inference_equals_the_full_path(monkeypatch, options, threads):
    torch.manual_seed(0)
    data = Batch.from_data_list([aig_to_data(random_aig(s, 6, 90, 4)) for s in range(3)])
    enc = build_encoder("deepgcn", hidden=16, num_layers=4, options=options)
    # Train a step's worth of BatchNorm statistics so eval-mode norms are not the identity.
    enc.train()
    enc(data)
    enc.eval()
    monkeypatch.setattr(deepgcn_mod, "_INFER_ROWS", 7)  # many chunks, a ragged last one
    monkeypatch.setattr(rowwise, "MIN_ROWS_PER_THREAD", 1)
    calls = []
    orig = deepgcn_mod.DeepGCNEncoder._encode_chunked
    monkeypatch.setattr(
        deepgcn_mod.DeepGCNEncoder,
        "_encode_chunked",
        lambda self, h, csr: calls.append(1) or orig(self, h, csr),
    )
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with torch.no_grad():
            fast = enc(data).node
            ref = _reference_forward(enc, data)
        assert torch.get_num_threads() == threads  # the MLP loop's single-thread section restores the setting
    finally:
        torch.set_num_threads(before)
    assert calls, "the chunked path did not run"
    torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5)


def test_deepgcn_chunked_inference_only_without_autograd_or_dropout():
    enc = build_encoder("deepgcn", hidden=8, num_layers=2, dropout=0.2)
    h = torch.zeros(3, 8)
    with torch.no_grad():
        assert not enc.train()._chunked_inference_applies(h)  # dropout masks are drawn per call
        assert enc.eval()._chunked_inference_applies(h)
    assert not enc._chunked_inference_applies(h)  # autograd on: the training path


def test_deepgcn_chunked_inference_under_bf16_autocast_stays_close():
    torch.manual_seed(0)
    data = aig_to_data(random_aig(5, 6, 120, 4))
    enc = build_encoder("deepgcn", hidden=32, num_layers=3).eval()
    with torch.no_grad():
        ref = _reference_forward(enc, data)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = enc(data).node.float()
    assert (low - ref).abs().max() < 0.1 * ref.abs().max()


@pytest.mark.parametrize(("shift", "expect"), [(1, False), (-1, True)])
def test_deepgcn_auto_checkpointing_starts_at_twice_min_edges_with_the_fused_kernel(
    monkeypatch, shift, expect
):
    """ckpt_min_edges just above / below half the edge count: E >= ckpt_min_edges in both cases, but the fused
    kernel checkpoints only from 2x (measured crossover, see deepgcn._FUSED_CKPT_SCALE)."""
    data = aig_to_data(random_aig(1, 6, 80, 4))
    half = int(data.edge_index.size(1)) // 2
    enc = build_encoder("deepgcn", hidden=8, num_layers=2, options={"ckpt_min_edges": half + shift})
    calls = []
    real = deepgcn_mod.checkpoint
    monkeypatch.setattr(deepgcn_mod, "checkpoint", lambda *a, **k: calls.append(1) or real(*a, **k))
    enc(data).node.sum().backward()
    assert bool(calls) is expect


def test_chunked_inference_leaves_every_thread_setting_alone(monkeypatch):
    import threading

    torch.manual_seed(0)
    torch.set_num_threads(2)  # the user's setting (conftest puts the suite's back after the test)
    data = Batch.from_data_list([aig_to_data(random_aig(s, 6, 90, 4)) for s in range(2)])
    enc = build_encoder("deepgcn", hidden=16, num_layers=3).eval()
    monkeypatch.setattr(deepgcn_mod, "_INFER_ROWS", 7)
    monkeypatch.setattr(rowwise, "MIN_ROWS_PER_THREAD", 1)
    plan, chunks, started = deepgcn_mod._mlp_plan, [], []

    def traced_plan(mlp, dtype):
        run = plan(mlp, dtype)

        def traced(z, out, residual):
            chunks.append((threading.current_thread().name, torch.get_num_threads()))
            if not started:  # a thread whose first torch call falls inside the forward
                t = threading.Thread(target=lambda: started.append(torch.get_num_threads()))
                t.start()
                t.join()
            return run(z, out, residual)

        return traced

    monkeypatch.setattr(deepgcn_mod, "_mlp_plan", traced_plan)
    with torch.no_grad():
        enc(data)
    assert chunks and {name.split("_")[0] for name, _ in chunks} == {"circuitml-rows"}
    assert {n for _, n in chunks} == {1}  # the pool's workers run one intra-op thread each
    assert started and set(started) == {2} and torch.get_num_threads() == 2

    def failing_plan(mlp, dtype):
        def fail(z, out, residual):
            raise RuntimeError("chunk failed")

        return fail

    monkeypatch.setattr(deepgcn_mod, "_mlp_plan", failing_plan)
    with pytest.raises(RuntimeError, match="chunk failed"), torch.no_grad():
        enc(data)
    assert torch.get_num_threads() == 2
