"""QMoE: GPTQ-ternary experts, the entropy-coded format (lossless, < 1 bit/param), and its decoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from circuitml.moe import FFNExperts, build_moe
from circuitml.moe.systems.qmoe import (
    ALPHABET,
    CompressedMatrix,
    compress_model,
    decode,
    decode_table,
    encode,
    gptq_ternary,
    huffman_lengths,
    load_qmoe,
    save_qmoe,
    tokenize,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from circuitml.errors import CheckpointError


def _roundtrip(symbols: torch.Tensor) -> torch.Tensor:
    tokens, _ = tokenize(symbols)
    lengths = huffman_lengths(np.bincount(tokens.numpy(), minlength=ALPHABET))
    stream, starts = encode(symbols, lengths)
    lanes = torch.arange(symbols.shape[0] - 1, -1, -1)  # any subset, any order
    got = decode(
        torch.from_numpy(stream), torch.from_numpy(starts), lanes, symbols.shape[1], decode_table(lengths)
    )
    return got.flip(0)


@settings(max_examples=40, deadline=None)
@given(
    lanes=st.integers(1, 6),
    lane_len=st.integers(1, 300),
    p_zero=st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]),
    seed=st.integers(0, 2**16),
)
def test_code_is_lossless(lanes: int, lane_len: int, p_zero: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    sign = torch.randint(0, 2, (lanes, lane_len), generator=g) * 2 - 1
    keep = torch.rand(lanes, lane_len, generator=g) >= p_zero
    symbols = (sign * keep).to(torch.int8)
    torch.testing.assert_close(_roundtrip(symbols), symbols, rtol=0, atol=0)


def test_huffman_lengths_are_a_prefix_code_within_16_bits() -> None:
    freq = np.array(
        [2**40] + [1] * (ALPHABET - 1)
    )  # a skew that an unlimited Huffman code would make > 16 deep
    lengths = huffman_lengths(freq)
    assert lengths.max() <= 16
    assert abs(sum(2.0 ** -lengths[lengths > 0]) - 1.0) < 1e-12  # Kraft equality: a complete prefix code


def _naive_gptq(w: torch.Tensor, h: torch.Tensor, centre: torch.Tensor, step: torch.Tensor) -> torch.Tensor:
    """Textbook GPTQ (no lazy blocks): quantize column i, update every later column with H^-1 rows."""
    w = w.double().clone()
    cols = w.shape[1]
    h = h.double() + 0.01 * torch.diagonal(h).mean() * torch.eye(cols, dtype=torch.float64)
    u = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
    q = torch.zeros_like(w)
    for i in range(cols):
        q[:, i] = torch.clamp(torch.round((w[:, i] - centre) / step), -1, 1)
        err = (w[:, i] - (centre + step * q[:, i])) / u[i, i]
        w[:, i:] -= err[:, None] * u[i, i:][None, :]
    return q


def test_gptq_equals_the_textbook_loop_and_beats_rounding() -> None:
    torch.manual_seed(0)
    x = torch.randn(200, 24, dtype=torch.float64) @ torch.randn(
        24, 24, dtype=torch.float64
    )  # correlated inputs
    w = torch.randn(16, 24, dtype=torch.float64)
    h = x.t() @ x
    sym, centre, step = gptq_ternary(w, h, block=5)
    ref = _naive_gptq(w, h, centre.double(), step.double())
    torch.testing.assert_close(sym.double(), ref, rtol=0, atol=0)
    rtn, _, _ = gptq_ternary(w, None)
    deq = lambda s: centre.double()[:, None] + step.double()[:, None] * s.double()  # noqa: E731
    err_gptq = (x @ (w - deq(sym)).t()).square().sum()
    err_rtn = (x @ (w - deq(rtn)).t()).square().sum()
    assert err_gptq < 0.8 * err_rtn


def _entropy_bits(symbols: torch.Tensor) -> float:
    p = torch.bincount(symbols.flatten().long() + 1, minlength=3).double() / symbols.numel()
    p = p[p > 0]
    return float(-(p * p.log2()).sum())


def test_compressed_experts_run_like_their_dequantized_weights_at_the_entropy(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = build_moe(d_model=256, num_experts=2, d_hidden=256, top_k=1)
    with torch.no_grad():  # heavier-tailed than the uniform init, like trained weights
        for w in (model.experts.gate_up_proj, model.experts.down_proj):
            w.copy_(torch.distributions.StudentT(4.0).sample(w.shape) * 0.05)
    calib = torch.randn(300, 256)
    (q,) = compress_model(model, lambda: model(calib))
    all_e = torch.arange(2)
    for m in (q.gate_up, q.down):
        # The run-length Huffman stream costs at most 0.05 bit/param above the i.i.d. ternary entropy.
        stream_bits = m.stream.numel() * 8 / m.symbols(all_e).numel()
        assert stream_bits < _entropy_bits(m.symbols(all_e)) + 0.05
    # Grids (2 x fp16 = 32 bits per row of 256) and int32 lane offsets add ~0.14 bit/param to the stream.
    stream_only = 8 * (q.gate_up.stream.numel() + q.down.stream.numel()) / q.num_params()
    assert q.bits_per_param() < stream_only + 0.15
    ref = FFNExperts(2, 256, 256)
    with torch.no_grad():
        ref.gate_up_proj.copy_(q.gate_up.dequantize(all_e))
        ref.down_proj.copy_(q.down.dequantize(all_e))
    x = torch.randn(20, 256)
    r = model.router(x)
    torch.testing.assert_close(q(x, r.indices, r.weights), ref(x, r.indices, r.weights))
    # The file round-trips and is the in-memory format plus its header.
    path = tmp_path / "experts.qmoe.safetensors"
    save_qmoe([q], path)
    (back,) = load_qmoe(path)
    torch.testing.assert_close(back(x, r.indices, r.weights), q(x, r.indices, r.weights), rtol=0, atol=0)
    assert path.stat().st_size < q.gate_up.nbytes() + q.down.nbytes() + 4096


def test_bad_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a file")
    with pytest.raises(CheckpointError, match="x.safetensors: expected a qmoe safetensors file"):
        load_qmoe(bad)


def test_rows_per_lane_must_divide_rows() -> None:
    from circuitml.errors import ConfigError

    with pytest.raises(ConfigError, match="rows_per_lane=3 does not divide"):
        CompressedMatrix.from_symbols(
            torch.zeros(1, 4, 4, dtype=torch.int8), torch.zeros(1, 4), torch.ones(1, 4), 3
        )
