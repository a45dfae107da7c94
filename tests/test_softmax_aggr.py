"""The fused GENConv softmax aggregation against PyG's, and the DeeperGCN encoder with and without it."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch
from torch_geometric.nn.aggr import SoftmaxAggregation

from circuitml.encoders import build_encoder
from circuitml.encoders.softmax_aggr import incoming_csr, softmax_aggregate
from circuitml.graph import aig_to_data
from circuitml.memory import page_faults, tune_malloc
from tests.test_sim import random_aig


def random_graph(seed: int, n: int = 60, max_deg: int = 5) -> torch.Tensor:
    """Edges into every node with in-degree 0 .. max_deg (0, 1, 2 and the general case all occur)."""
    rng = np.random.default_rng(seed)
    deg = rng.integers(0, max_deg + 1, n)
    dst = np.repeat(np.arange(n), deg)
    src = rng.integers(0, n, dst.size)
    order = rng.permutation(dst.size)  # edges in no particular order
    return torch.from_numpy(np.stack([src[order], dst[order]]))


def pyg_reference(x: torch.Tensor, t: float, edge_index: torch.Tensor, eps: float):
    """GENConv's message and aggregation as PyG computes them; returns the output and the aggregation module."""
    aggr = SoftmaxAggregation(t=t, learn=True).double()
    msg = torch.relu(x[edge_index[0]]) + eps
    return aggr(msg, edge_index[1], dim_size=x.size(0)), aggr


@pytest.mark.parametrize("fused", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
def test_softmax_aggregate_matches_pyg_outputs_and_gradients(fused, seed):
    if fused:
        pytest.importorskip("numba")
    torch.manual_seed(seed)
    edge_index = random_graph(seed)
    n = 60
    x = torch.randn(n, 16, dtype=torch.float64, requires_grad=True)
    t = torch.tensor([0.75], dtype=torch.float64, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_()
    out = softmax_aggregate(x, t, incoming_csr(edge_index, n), 1e-7, fused=fused)
    ref, aggr = pyg_reference(x_ref, 0.75, edge_index, 1e-7)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    g = torch.randn_like(out)
    out.backward(g)
    ref.backward(g)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(t.grad, aggr.t.grad.view(-1), rtol=1e-9, atol=1e-9)


def test_softmax_aggregate_is_stable_for_large_temperatures():
    pytest.importorskip("numba")
    edge_index = random_graph(3)
    x = torch.randn(60, 8, dtype=torch.float64) * 50
    t = torch.tensor([40.0], dtype=torch.float64)
    csr = incoming_csr(edge_index, 60)
    fused = softmax_aggregate(x, t, csr, fused=True)
    assert torch.isfinite(fused).all()
    torch.testing.assert_close(fused, softmax_aggregate(x, t, csr, fused=False))


def deepgcn_step(enc, data):
    enc.zero_grad(set_to_none=True)
    out = enc(data)
    (out.node.square().mean() + out.graph.mean()).backward()
    return out.node.detach(), {k: p.grad for k, p in enc.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("ckpt", [False, True])
def test_deepgcn_fused_equals_pyg_genconv(ckpt):
    pytest.importorskip("numba")
    torch.manual_seed(0)
    graphs = [aig_to_data(random_aig(s, 6, 80, 4)) for s in range(3)]
    data = Batch.from_data_list(graphs)
    opts = {"ckpt_grad": ckpt}
    fused = build_encoder("deepgcn", hidden=32, num_layers=3, options={**opts, "fused": True})
    ref = build_encoder("deepgcn", hidden=32, num_layers=3, options={**opts, "fused": False})
    ref.load_state_dict(fused.state_dict())
    a, ga = deepgcn_step(fused, data)
    b, gb = deepgcn_step(ref, data)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    assert set(ga) == set(gb)
    for key in gb:
        torch.testing.assert_close(ga[key], gb[key], rtol=1e-4, atol=1e-5, msg=key)


def test_deepgcn_fused_rejects_settings_it_cannot_honour():
    from circuitml.errors import ConfigError

    enc = build_encoder("deepgcn", hidden=16, num_layers=2, options={"fused": True, "aggr": "mean"})
    with pytest.raises(ConfigError, match="fused"):
        enc(aig_to_data(random_aig(0, 4, 20, 2)))


def test_deepgcn_bf16_autocast_stays_close_to_float32():
    pytest.importorskip("numba")
    torch.manual_seed(0)
    data = aig_to_data(random_aig(5, 6, 120, 4))
    enc = build_encoder("deepgcn", hidden=32, num_layers=2).eval()
    with torch.no_grad():
        ref = enc(data).node
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = enc(data).node.float()
    assert (low - ref).abs().max() < 0.1 * ref.abs().max()


def test_tune_malloc_is_idempotent_and_counts_faults():
    first = tune_malloc()
    assert tune_malloc() is first
    before = page_faults()
    torch.ones(4 * 2**20)  # 16 MB: at least a few pages are touched
    assert page_faults() >= before


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run by bench/gpu_check.sh)")
def test_cuda_deepgcn_equals_cpu():
    torch.manual_seed(0)
    data = aig_to_data(random_aig(7, 6, 200, 4))
    enc = build_encoder("deepgcn", hidden=32, num_layers=3)
    a, ga = deepgcn_step(enc, data)
    b, gb = deepgcn_step(enc.cuda(), data.cuda())
    torch.testing.assert_close(b.cpu(), a, rtol=1e-4, atol=1e-4)
    for key in ga:
        torch.testing.assert_close(gb[key].cpu(), ga[key], rtol=1e-3, atol=1e-4, msg=key)


def test_fused_forward_without_autograd_keeps_no_backward_state():
    pytest.importorskip("numba")
    edge_index = random_graph(4)
    x = torch.randn(60, 8)
    t = torch.tensor([1.5])
    csr = incoming_csr(edge_index, 60)
    with torch.no_grad():
        cheap = softmax_aggregate(x, t, csr, fused=True)
    torch.testing.assert_close(cheap, softmax_aggregate(x, t, csr, fused=False))


def test_double_backward_block_gives_second_order_gradients_equal_to_pygs():
    pytest.importorskip("numba")
    from circuitml.encoders.softmax_aggr import double_backward, uses_fused_kernel

    torch.manual_seed(3)
    edge_index = random_graph(7)
    x = torch.randn(60, 4, dtype=torch.float64, requires_grad=True)
    csr = incoming_csr(edge_index, 60)
    t = torch.tensor([0.7], dtype=torch.float64, requires_grad=True)
    assert uses_fused_kernel(x)
    with double_backward():
        assert not uses_fused_kernel(x)
        out = softmax_aggregate(x, t, csr, 1e-7)
        (gx,) = torch.autograd.grad((out**2).sum(), x, create_graph=True)
        (hx,) = torch.autograd.grad(gx.pow(2).sum(), x)
    assert uses_fused_kernel(x)  # the block ends, the compiled path is back
    want, _ = pyg_reference(x, 0.7, edge_index, 1e-7)
    (wgx,) = torch.autograd.grad((want**2).sum(), x, create_graph=True)
    (whx,) = torch.autograd.grad(wgx.pow(2).sum(), x)
    torch.testing.assert_close(hx, whx, rtol=1e-6, atol=1e-4)  # PyG adds 1e-16 to the softmax denominator
    # the compiled backward has no second order (torch refuses it), which is why the block exists
    out = softmax_aggregate(x, t, csr, 1e-7)
    (gx,) = torch.autograd.grad((out**2).sum(), x, create_graph=True)
    with pytest.raises(RuntimeError):
        torch.autograd.grad(gx.pow(2).sum(), x)
