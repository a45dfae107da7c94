"""QMoE: GPTQ ternary and 2-bit experts, the entropy-coded format (lossless, < 1 bit/param), and its decoder."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from circuitml.moe import FFNExperts, build_moe
from circuitml.moe.systems.qmoe import (
    CompressedMatrix,
    alphabet_size,
    apply_qmoe,
    capture_expert_inputs,
    compress_model,
    decode,
    decode_table,
    encode,
    gptq,
    huffman_lengths,
    load_qmoe,
    make_grid,
    save_qmoe,
    tokenize,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from circuitml.errors import CheckpointError, ConfigError


def _roundtrip(symbols: torch.Tensor, levels: int) -> torch.Tensor:
    tokens, _ = tokenize(symbols, levels)
    lengths = huffman_lengths(np.bincount(tokens.numpy(), minlength=alphabet_size(levels)))
    stream, starts = encode(symbols, lengths, levels)
    lanes = torch.arange(symbols.shape[0] - 1, -1, -1)  # any subset, any order
    got = decode(
        torch.from_numpy(stream),
        torch.from_numpy(starts),
        lanes,
        symbols.shape[1],
        decode_table(lengths),
        levels,
    )
    return got.flip(0)


@settings(max_examples=40, deadline=None)
@given(
    lanes=st.integers(1, 6),
    lane_len=st.integers(1, 300),
    p_zero=st.sampled_from([0.0, 0.5, 0.9, 0.99, 1.0]),
    levels=st.sampled_from([1, 3]),
    seed=st.integers(0, 2**16),
)
def test_code_is_lossless(lanes: int, lane_len: int, p_zero: float, levels: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    value = torch.randint(1, levels + 1, (lanes, lane_len), generator=g)
    sign = torch.randint(0, 2, (lanes, lane_len), generator=g) * 2 - 1
    keep = torch.rand(lanes, lane_len, generator=g) >= p_zero
    symbols = (sign * value * keep).to(torch.int8)
    torch.testing.assert_close(_roundtrip(symbols, levels), symbols, rtol=0, atol=0)


def test_huffman_lengths_are_a_prefix_code_within_16_bits() -> None:
    for levels in (1, 3):
        # a skew that an unlimited Huffman code would make > 16 deep
        freq = np.array([2**40] + [1] * (alphabet_size(levels) - 1))
        lengths = huffman_lengths(freq)
        assert lengths.max() <= 16
        assert abs(sum(2.0 ** -lengths[lengths > 0]) - 1.0) < 1e-12  # Kraft equality: complete prefix code


def _naive_gptq(w: torch.Tensor, h: torch.Tensor, grid, block: int) -> torch.Tensor:
    """Textbook GPTQ (no lazy updates): quantize column i, update every later column with H^-1 rows; with
    ``grid.zeros``, SparseGPT's mask: per row, the least salient ``w^2 / U_jj^2`` of each block are zero."""
    w = w.double().clone()
    rows, cols = w.shape
    h = h.double() + 0.01 * torch.diagonal(h).mean() * torch.eye(cols, dtype=torch.float64)
    u = torch.linalg.cholesky(torch.linalg.inv(h), upper=True)
    q = torch.zeros_like(w)
    zero = torch.zeros_like(w, dtype=torch.bool)
    for i in range(cols):
        x = w[:, i] / grid.scale
        if grid.zeros is None:  # the grid by its definition: nearest level, or zero inside the dead zone
            mag = torch.where(x.abs() > grid.threshold, torch.floor(x.abs() - grid.threshold) + 1, 0.0)
        else:
            if i % block == 0:
                j = slice(i, min(i + block, cols))
                sal = w[:, j].square() / torch.diagonal(u)[j].square()
                k = round(grid.zeros * sal.shape[1])
                for r in range(rows):  # the k least salient of the row's block
                    zero[r, i + torch.argsort(sal[r])[:k]] = True
            mag = torch.where(zero[:, i], 0.0, torch.round(x.abs()).clamp_min(1))
        q[:, i] = torch.clamp(torch.sign(x) * mag, grid.lo, grid.hi)
        err = (w[:, i] - grid.scale * q[:, i]) / u[i, i]
        w[:, i:] -= err[:, None] * u[i, i:][None, :]
    return q


@pytest.mark.parametrize("bits,zeros", [("ternary", None), ("ternary", 0.5), ("ternary", 0.8), ("2", None)])
def test_gptq_equals_the_textbook_loop_and_beats_rounding(bits: str, zeros: float | None) -> None:
    torch.manual_seed(0)
    x = torch.randn(200, 24, dtype=torch.float64) @ torch.randn(24, 24, dtype=torch.float64)  # correlated
    w = torch.randn(16, 24, dtype=torch.float64)
    h = x.t() @ x
    grid = make_grid(w, bits, zeros)
    sym, scale = gptq(w, h, grid, block=8)
    assert int(sym.abs().max()) <= (1 if bits == "ternary" else 3)
    torch.testing.assert_close(sym.double(), _naive_gptq(w, h, grid, 8), rtol=0, atol=0)
    if zeros is not None:  # exactly the requested zeros: 3 blocks of 8 columns per row
        assert (sym == 0).sum(1).tolist() == [3 * round(zeros * 8)] * 16
    # the refit scale is the least-squares one: no other scale of a row has a smaller output error
    err = lambda a, s: (x @ (w - a[:, None] * s.double()).t()).square().sum(0)  # noqa: E731
    for f in (0.9, 1.1):
        assert (err(scale, sym) <= err(scale * f, sym) + 1e-9).all()
    rtn, rtn_scale = gptq(w, None, grid)
    assert torch.equal(rtn_scale, grid.scale)
    assert err(scale, sym).sum() < 0.8 * err(grid.scale, rtn).sum()


def test_grid_levels() -> None:
    w = torch.tensor([[-0.9, -0.1, 0.0, 0.2, 0.3, 0.6], [0.1, 0.2, 0.28, 0.4, 0.5, 0.6]], dtype=torch.float64)
    g2 = make_grid(w, "2")  # 4 levels spanning [min(w, 0), max(w, 0)] with 0 on the grid
    assert g2.lo.tolist() == [-2, 0] and g2.hi.tolist() == [1, 3]
    t = make_grid(w, "ternary")  # the paper's min-max grid: level max|w|, zero below half of it
    torch.testing.assert_close(t.scale, torch.tensor([0.9, 0.6], dtype=torch.float64), atol=1e-3, rtol=0)
    assert gptq(w, None, t)[0].tolist() == [[-1, 0, 0, 0, 0, 1], [0, 0, 0, 1, 1, 1]]
    dz = make_grid(w, "ternary", zeros=0.5)  # half the weights of each row are zero; level = mean kept |w|
    s, _ = gptq(w, None, dz)
    assert (s == 0).sum(1).tolist() == [3, 3]
    torch.testing.assert_close(dz.scale, torch.tensor([0.6, 0.5], dtype=torch.float64), atol=1e-3, rtol=0)
    with pytest.raises(ConfigError, match="zeros"):
        make_grid(w, "2", zeros=0.5)
    with pytest.raises(ConfigError, match="bits"):
        make_grid(w, "3")


def _entropy_bits(symbols: torch.Tensor) -> float:
    p = torch.bincount(symbols.flatten().long() + 3, minlength=7).double() / symbols.numel()
    p = p[p > 0]
    return float(-(p * p.log2()).sum())


def _heavy_tailed_moe(seed: int, bias: bool, activation: str = "swiglu"):
    torch.manual_seed(seed)
    model = build_moe(d_model=128, num_experts=2, d_hidden=128, top_k=1)
    model.experts = FFNExperts(2, 128, 128, activation=activation, bias=bias)
    with torch.no_grad():  # heavier-tailed than the uniform init, like trained weights
        for w in (model.experts.gate_up_proj, model.experts.down_proj):
            w.copy_(torch.distributions.StudentT(4.0).sample(w.shape) * 0.05)
    return model.eval()


@pytest.mark.parametrize("bits,zeros,bias", [("ternary", 0.9, False), ("2", None, True)])
def test_decoded_weights_are_the_quantized_ones_and_run_like_them(
    bits: str, zeros: float | None, bias: bool, tmp_path: Path
) -> None:
    model = _heavy_tailed_moe(1, bias, "swiglu" if not bias else "gelu")
    dense = copy.deepcopy(model.experts)
    calib = torch.randn(600, 128)
    inputs = capture_expert_inputs(model, lambda: model(calib))["experts"]
    qs = compress_model(model, lambda: model(calib), bits=bits, zeros=zeros)
    q = qs["experts"]
    assert model.experts is q
    all_e = torch.arange(2)
    # Decoding gives exactly the GPTQ symbols, computed here from the captured rows of each expert.
    for name, m in (("gate_up_proj", q.gate_up), ("down_proj", q.down)):
        for k in range(2):
            rows = inputs[0][0][(inputs[0][1] == k).any(1)].double()
            if name == "down_proj":
                rows = _hidden(dense, k, rows)
            w = getattr(dense, name)[k]
            want, scale = gptq(w, rows.t() @ rows, make_grid(w, bits, zeros))
            assert torch.equal(m.symbols(torch.tensor([k]))[0], want)
            torch.testing.assert_close(m.dequantize(torch.tensor([k]))[0], (scale[:, None] * want).float())
        # The run-length Huffman stream costs at most 0.05 bit/param above the i.i.d. symbols' entropy.
        stream_bits = m.stream.numel() * 8 / m.symbols(all_e).numel()
        assert stream_bits < _entropy_bits(m.symbols(all_e)) + 0.05
    # The decoder's output equals dense experts holding the decoded weights (and the kept biases).
    ref = FFNExperts(2, 128, 128, activation=dense.activation, bias=bias)
    with torch.no_grad():
        ref.gate_up_proj.copy_(q.gate_up.dequantize(all_e))
        ref.down_proj.copy_(q.down.dequantize(all_e))
        if bias:
            ref.gate_up_bias.copy_(q.gate_up_bias)  # the dense biases rounded to fp16
            ref.down_bias.copy_(q.down_bias)
            torch.testing.assert_close(q.down_bias.float(), dense.down_bias, atol=1e-3, rtol=1e-3)
    x = torch.randn(40, 128)
    r = model.router(x)
    with torch.no_grad():
        torch.testing.assert_close(q(x, r.indices, r.weights), ref(x, r.indices, r.weights))
    # The file round-trips into a fresh dense model, by module name.
    path = tmp_path / "experts.qmoe.safetensors"
    save_qmoe(qs, path, info={"bits": bits})
    fresh = _heavy_tailed_moe(1, bias, dense.activation)
    apply_qmoe(fresh, load_qmoe(path))
    with torch.no_grad():
        torch.testing.assert_close(fresh(x).out, model(x).out, rtol=0, atol=0)
    assert path.stat().st_size < q.nbytes() + 4096


def _hidden(dense: FFNExperts, k: int, rows: torch.Tensor) -> torch.Tensor:
    from circuitml.moe.experts.ffn import apply_activation

    pre = rows @ dense.gate_up_proj[k].double().t()
    if dense.gate_up_bias is not None:
        pre = pre + dense.gate_up_bias[k].double()
    return apply_activation(pre, dense.activation)


def test_dead_zone_grid_goes_below_one_bit_per_parameter() -> None:
    model = _heavy_tailed_moe(2, False)
    calib = torch.randn(600, 128)
    q = compress_model(model, lambda: model(calib), zeros=0.9)["experts"]
    # 128-wide rows: 16 bits of scale per row add 0.125 bit/param to the stream
    assert q.bits_per_param() < 1.0


def test_bad_file_and_wrong_model_are_checkpoint_errors(tmp_path: Path) -> None:
    bad = tmp_path / "x.safetensors"
    bad.write_bytes(b"not a file")
    with pytest.raises(CheckpointError, match="x.safetensors: expected a qmoe safetensors file"):
        load_qmoe(bad)
    model = _heavy_tailed_moe(3, False)
    qs = compress_model(model, lambda: model(torch.randn(100, 128)))
    other = build_moe(d_model=64, num_experts=2, d_hidden=64, top_k=1)
    with pytest.raises(CheckpointError, match="experts 'experts': expected FFNExperts of shape"):
        apply_qmoe(other, qs)
    with pytest.raises(CheckpointError, match="no such module"):
        apply_qmoe(other, {"nope": qs["experts"]})


def test_rows_per_lane_must_divide_rows() -> None:
    with pytest.raises(ConfigError, match="rows_per_lane=3 does not divide"):
        CompressedMatrix.from_symbols(torch.zeros(1, 4, 4, dtype=torch.int8), torch.ones(1, 4), 3)
