r"""QMoE: data-dependent ternary or 2-bit quantization of experts and an entropy-coded format run directly.

QMoE (Frantar & Alistarh 2023, "QMoE: Practical Sub-1-Bit Compression of Trillion-Parameter Models",
MLSys 2024). Each expert matrix ``W [out, in]`` is quantized GPTQ-style (Frantar et al. 2023, ICLR) from the
calibration inputs ``X`` that the router sends to that expert: with :math:`H = 2 X^\top X + \lambda I` and the
upper Cholesky factor :math:`U` of :math:`H^{-1}`, columns are quantized left to right and each one's error
is spread over the columns not yet quantized,

.. math::
    q_i = \mathrm{quant}(w_i), \qquad W_{:, j>i} \mathrel{-}= \frac{w_i - q_i}{U_{ii}}\, U_{i, j>i}.

Grids are zero-centred per row, :math:`q = \alpha\, s` with an integer symbol :math:`s`, so a zero weight
is exactly zero and one fp16 scale per row is stored:

* **ternary** (QMoE's 1.5-bit grid), :math:`s \in \{-1, 0, 1\}`. ``zeros=None``: the paper's min-max grid,
  :math:`\alpha = \max_j |w_j|`, a weight is zero when :math:`|w| < \alpha / 2`. ``zeros=p``: a dead-zone
  grid whose threshold :math:`\tau` is the row's ``p``-quantile of :math:`|w|` and whose level
  :math:`\alpha = \mathrm{mean}\{|w| : |w| > \tau\}` is the least-squares level of the weights kept
  (plain rounding zeroes :math:`|w| \le \tau`); GPTQ zeroes a ``p`` fraction of each row, block by block,
  by least saliency (SparseGPT's adaptive mask) and compensates them in the remaining columns. ``p`` sets
  the rate: the symbols' entropy is about :math:`H(p, \frac{1-p}{2}, \frac{1-p}{2})`, 0.76 bit at
  ``p = 0.85``.
* **2-bit** (GPTQ's 4-level asymmetric min-max grid with an integer zero point ``z``):
  :math:`\alpha = (\max(w, 0) - \min(w, 0)) / 3`, :math:`s \in \{-z, \dots, 3 - z\}`.

The symbol stream is cut into zero-runs: a nonzero symbol ``v`` after ``r`` zeros is one token
:math:`2M (r \bmod R) + \mathrm{idx}(v)` (``M`` the largest ``|s|``: 1 ternary, 3 2-bit) preceded by
:math:`\lfloor r / R \rfloor` escape tokens; a lane ends with an end token. QMoE codes its ternary stream with
a fixed dictionary of variable-length symbol runs; here the tokens are Huffman-coded with a length-limited
canonical code (within 0.05 bit of the symbols' entropy in the tests). The stream is split into independent
lanes (groups of rows of one expert) so the decoder advances all lanes at once — one table lookup per token
and lane, a loop over token steps, never over weights — and only the lanes of the experts a batch routes to
are decoded.
"""

from __future__ import annotations

import heapq
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from circuitml.moe.experts.ffn import FFNExperts, apply_activation
from circuitml.moe.systems.fssdp import run_materialized
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, save
from torch import Tensor, nn

from circuitml.errors import CheckpointError, ConfigError
from circuitml.fileio import atomic_write, check_format

RUN_LIMIT = 64  # R: longest zero run in one token; longer runs use escape tokens
MAX_CODE_BITS = 16
FORMAT = "circuitml-qmoe"
BITS = {"ternary": 1, "2": 3}  # quantization mode -> M, the largest |symbol|


def alphabet_size(levels: int) -> int:
    """Tokens of the run-length code for symbols in ``[-levels, levels]``: runs x values, escape, end."""
    return 2 * levels * RUN_LIMIT + 2


def _escape_end(levels: int) -> tuple[int, int]:
    return 2 * levels * RUN_LIMIT, 2 * levels * RUN_LIMIT + 1


# ---------------------------------------------------------------------------------------------- quantization
@dataclass
class Grid:
    """Per-row zero-centred grid: value ``scale * s``, ``s`` an integer in ``[lo, hi]``.

    ``threshold`` (in units of ``scale``) is the dead zone: ``|w| / scale <= threshold`` quantizes to 0 and
    each step above it to the next level (``0.5`` is round-to-nearest). ``zeros`` (dead-zone grids): the
    fraction of each row that GPTQ sets to zero, chosen in each block by saliency (see :func:`gptq`).
    """

    scale: Tensor  # [rows], float64 holding fp16 values (the grid as it is stored)
    threshold: Tensor  # [rows]
    lo: Tensor  # [rows]
    hi: Tensor  # [rows]
    zeros: float | None = None

    def symbols(self, col: Tensor) -> Tensor:
        """Symbols of one column (one weight per row)."""
        mag = torch.floor(col.abs() / self.scale + 1 - self.threshold).clamp_min(0)
        return torch.minimum(torch.maximum(torch.sign(col) * mag, self.lo), self.hi)


def make_grid(w: Tensor, bits: str = "ternary", zeros: float | None = None) -> Grid:
    """The grid of every row of ``w [out, in]`` (see the module docstring)."""
    if bits not in BITS:
        raise ConfigError(f"qmoe: bits: expected one of {sorted(BITS)}, got {bits!r}")
    w = w.double()
    rows = w.shape[0]
    half = torch.full((rows,), 0.5, dtype=torch.float64)
    if bits == "2":
        if zeros is not None:
            raise ConfigError("qmoe: zeros (the dead-zone grid) applies to bits='ternary' only")
        lo, hi = w.min(dim=1).values.clamp_max(0), w.max(dim=1).values.clamp_min(0)
        scale = _fp16((hi - lo) / 3)
        z = torch.round(-lo / scale).clamp(0, 3)
        return Grid(scale, half, -z, 3 - z)
    a = w.abs()
    if zeros is None:
        return Grid(
            _fp16(a.max(dim=1).values),
            half,
            -torch.ones(rows, dtype=w.dtype),
            torch.ones(rows, dtype=w.dtype),
        )
    if not 0.0 <= zeros < 1.0:
        raise ConfigError(f"qmoe: zeros: expected a fraction in [0, 1), got {zeros}")
    tau = torch.quantile(a, zeros, dim=1)
    kept = a > tau[:, None]
    level = torch.where(kept, a, 0).sum(1) / kept.sum(1).clamp_min(1)
    scale = _fp16(torch.where(kept.any(1), level, a.max(dim=1).values))
    ones = torch.ones(rows, dtype=w.dtype)
    return Grid(scale, (tau / scale).clamp_max(1.0), -ones, ones, zeros)


def _fp16(x: Tensor) -> Tensor:
    return x.clamp_min(1e-7).half().double()


def gptq(
    w: Tensor, hessian: Tensor | None, grid: Grid, block: int = 32, damp: float = 0.01
) -> tuple[Tensor, Tensor]:
    """GPTQ quantization of ``w [out, in]`` on ``grid``: integer symbols ``[out, in]`` (int8) and the row
    scales ``[out]`` (fp16 values).

    ``hessian`` is ``X^T X`` of the calibration inputs ``[in, in]`` (``None``: plain rounding to the grid). The
    loop runs over input columns (GPTQ's order) in lazy blocks, vectorized over rows.

    With a dead-zone grid (``grid.zeros = p``) and a Hessian, the zeros are not a fixed threshold on the
    original weights (compensation grows the later columns, so far fewer than ``p`` would stay zero): as in
    SparseGPT's adaptive mask (Frantar & Alistarh, "SparseGPT: Massive Language Models Can Be Accurately
    Pruned in One-Shot", ICML 2023), at the start of each block the ``p`` fraction of each row's block
    weights with the least OBS saliency :math:`w_j^2 / U_{jj}^2` (on the weights already compensated) is
    zeroed and the rest go to the nearest nonzero level (blocks of 32 columns measured better than 128).

    With a Hessian, each row's scale is then refit to the symbols by least squares on the calibration
    inputs, :math:`\alpha = s H w^\top / s H s^\top` (the output error is quadratic in the one scale).
    """
    w = w.detach().double().clone()
    cols = w.shape[1]
    if hessian is None:
        return grid.symbols(w.t()).t().to(torch.int8), grid.scale
    w0 = w.clone()
    h = hessian.detach().double().clone()
    dead = torch.diagonal(h) == 0  # inputs never seen: their columns need no error compensation
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += damp * torch.diagonal(h).mean() * torch.eye(cols, dtype=h.dtype)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    symbols = torch.zeros_like(w)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1, u1 = w[:, i1:i2].clone(), u[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        mask = None if grid.zeros is None else _least_salient(w1, torch.diagonal(u1), grid.zeros)
        for i in range(i2 - i1):
            q = grid.symbols(w1[:, i]) if mask is None else _nonzero_level(w1[:, i], grid) * ~mask[:, i]
            symbols[:, i1 + i] = q
            err = (w1[:, i] - grid.scale * q) / u1[i, i]
            w1[:, i:] -= err[:, None] * u1[i, i:][None, :]
            err1[:, i] = err
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    sh = symbols @ h
    fit = (sh * w0).sum(1) / (sh * symbols).sum(1).clamp_min(1e-30)
    scale = torch.where((symbols != 0).any(1) & (fit > 0), _fp16(fit), grid.scale)
    return symbols.to(torch.int8), scale


def _least_salient(w: Tensor, d: Tensor, fraction: float) -> Tensor:
    """Mask of the ``fraction`` of each row of ``w [rows, cols]`` with the smallest ``w^2 / d^2``."""
    k = int(round(fraction * w.shape[1]))
    mask = torch.zeros_like(w, dtype=torch.bool)
    if k:
        mask.scatter_(1, torch.topk(w.square() / d.square(), k, dim=1, largest=False).indices, True)
    return mask


def _nonzero_level(col: Tensor, grid: Grid) -> Tensor:
    """The nearest nonzero symbol of each weight of ``col`` (a weight the mask keeps is never zeroed)."""
    mag = torch.floor(col.abs() / grid.scale + 0.5).clamp_min(1)
    sign = torch.where(col < 0, -1.0, 1.0).to(col.dtype)
    return torch.minimum(torch.maximum(sign * mag, grid.lo), grid.hi)


# ------------------------------------------------------------------------------------------------- the code
def huffman_lengths(freq: np.ndarray, max_bits: int = MAX_CODE_BITS) -> np.ndarray:
    """Code lengths of a Huffman code for ``freq`` (0 for unused symbols), limited to ``max_bits``.

    Lengths are limited by flattening the distribution (raising rare counts) until the longest fits; a loop
    over the alphabet (a few hundred symbols), not over the data.
    """
    freq = freq.astype(np.float64)
    used = np.nonzero(freq)[0]
    lengths = np.zeros(freq.size, dtype=np.int64)
    if used.size == 1:
        lengths[used] = 1
        return lengths
    floor = 0.0
    while True:
        f = np.maximum(freq[used], floor)
        heap = [(float(v), i, [i]) for i, v in enumerate(f)]
        heapq.heapify(heap)
        depth = np.zeros(used.size, dtype=np.int64)
        tie = used.size
        while len(heap) > 1:
            fa, _, a = heapq.heappop(heap)
            fb, _, b = heapq.heappop(heap)
            depth[a + b] += 1
            heapq.heappush(heap, (fa + fb, tie, a + b))
            tie += 1
        if depth.max() <= max_bits:
            lengths[used] = depth
            return lengths
        floor = max(floor * 2, freq[used].sum() / 2**max_bits)


def canonical_codes(lengths: np.ndarray) -> np.ndarray:
    """Canonical Huffman codes (as ints) for code ``lengths`` (symbols ordered by (length, symbol))."""
    codes = np.zeros(lengths.size, dtype=np.int64)
    code, prev = 0, 0
    for s in sorted(np.nonzero(lengths)[0], key=lambda s: (lengths[s], s)):
        code <<= int(lengths[s]) - prev
        codes[s], prev = code, int(lengths[s])
        code += 1
    return codes


def tokenize(symbols: Tensor, levels: int = 1) -> tuple[Tensor, Tensor]:
    """Tokens of every lane of ``symbols [lanes, lane_len]`` (values in ``[-levels, levels]``) and the token
    count per lane.

    A nonzero ``v`` after ``r`` zeros is ``2 M (r mod R) + idx(v)`` (``idx`` numbers ``-M..-1, 1..M`` as
    ``0..2M-1``) preceded by ``r // R`` escape tokens; each lane ends with the end token (the rest is zero).
    """
    escape, end = _escape_end(levels)
    lanes, lane_len = symbols.shape
    if symbols.numel() and int(symbols.abs().max()) > levels:
        raise ConfigError(f"qmoe: a symbol is outside [-{levels}, {levels}]")
    marked = torch.cat([symbols.long(), torch.full((lanes, 1), levels + 1)], dim=1)  # M+1 marks the end
    lane, pos = torch.nonzero(marked, as_tuple=True)
    prev = torch.cat([torch.tensor([-1]), pos[:-1]])
    first = torch.cat([torch.tensor([True]), lane[1:] != lane[:-1]])
    run = pos - torch.where(first, torch.full_like(prev, -1), prev) - 1
    value = marked[lane, pos]
    is_end = value == levels + 1
    escapes = torch.where(is_end, 0, run // RUN_LIMIT)
    idx = torch.where(value < 0, value + levels, value + levels - 1)
    token = torch.where(is_end, end, 2 * levels * (run % RUN_LIMIT) + idx)
    # Each event emits its escapes then its token: interleave with one repeat_interleave.
    per_event = escapes + 1
    tokens = torch.full((int(per_event.sum()),), escape, dtype=torch.long)
    tokens[torch.cumsum(per_event, 0) - 1] = token
    counts = torch.zeros(lanes, dtype=torch.long).index_add_(0, lane, per_event)
    return tokens, counts


def encode(symbols: Tensor, lengths: np.ndarray, levels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Bitstream (uint8) of ``symbols [lanes, lane_len]`` and each lane's starting bit (int64 ``[lanes + 1]``)."""
    tokens, counts = tokenize(symbols, levels)
    codes = canonical_codes(lengths)
    tok = tokens.numpy()
    tok_len, tok_code = lengths[tok], codes[tok]
    if (tok_len == 0).any():
        raise ConfigError("qmoe: a token has no code (the code was built from other data)")
    # Expand every token into its bits, most significant first.
    bit_index = np.arange(int(tok_len.sum())) - np.repeat(np.cumsum(tok_len) - tok_len, tok_len)
    shift = np.repeat(tok_len, tok_len) - 1 - bit_index
    bits = (np.repeat(tok_code, tok_len) >> shift) & 1
    token_end = np.concatenate([[0], np.cumsum(tok_len)])
    lane_start = token_end[np.concatenate([[0], np.cumsum(counts.numpy())])]
    return np.packbits(bits.astype(np.uint8)), lane_start


def decode_table(lengths: np.ndarray) -> tuple[Tensor, Tensor]:
    """``(symbol, length)`` for every 16-bit window: the canonical code's lookup table."""
    codes = canonical_codes(lengths)
    sym = np.zeros(1 << MAX_CODE_BITS, dtype=np.int64)
    ln = np.zeros(1 << MAX_CODE_BITS, dtype=np.int64)
    for s in np.nonzero(lengths)[0]:
        lo = int(codes[s]) << (MAX_CODE_BITS - int(lengths[s]))
        hi = lo + (1 << (MAX_CODE_BITS - int(lengths[s])))
        sym[lo:hi], ln[lo:hi] = s, lengths[s]
    return torch.from_numpy(sym), torch.from_numpy(ln)


def decode(
    stream: Tensor,
    lane_start: Tensor,
    lanes: Tensor,
    lane_len: int,
    table: tuple[Tensor, Tensor],
    levels: int = 1,
) -> Tensor:
    """Symbols ``[len(lanes), lane_len]`` (int8) of the selected ``lanes``; all lanes step together."""
    escape, end = _escape_end(levels)
    dev = stream.device
    sym_table, len_table = table[0].to(dev), table[1].to(dev)
    values = torch.cat([torch.arange(-levels, 0), torch.arange(1, levels + 1)]).to(dev, torch.int8)
    padded = torch.cat([stream.long(), stream.new_zeros(4).long()])
    lanes = lanes.to(dev)
    bitpos = lane_start.long().index_select(0, lanes)
    col = torch.zeros(lanes.numel(), dtype=torch.long, device=dev)
    # the last column collects the writes of escape and end tokens
    out = torch.zeros(lanes.numel(), lane_len + 1, dtype=torch.int8, device=dev)
    active = torch.arange(lanes.numel(), device=dev)
    limit = lane_start.long().index_select(0, lanes + 1)  # a lane's bits end where the next lane's start
    while active.numel():
        # Reading at pos is safe before it is checked: the last step left pos below its limit (at most 8 x the
        # stream's bytes) plus one code word of at most 16 bits, which the 4 padding bytes cover.
        pos = bitpos[active]
        byte = pos >> 3
        window = (padded[byte] << 16) | (padded[byte + 1] << 8) | padded[byte + 2]
        peek = (window >> (8 - (pos & 7))) & 0xFFFF
        token, length = sym_table[peek], len_table[peek]
        c = col[active]
        is_value = token < escape
        c = c + torch.where(token == escape, RUN_LIMIT, token // (2 * levels))
        # one check (one device sync) per step: a well-formed lane ends with its end token inside its bits, reads
        # only code words, and never decodes more symbols than it holds
        if bool(((pos >= limit[active]) | (length == 0) | ((c >= lane_len) & is_value)).any()):
            raise CheckpointError("qmoe: a compressed lane is damaged (it runs past its bits or symbols)")
        bitpos[active] = pos + length
        v = values[torch.where(is_value, token % (2 * levels), 0)]
        out[active, torch.where(is_value, c, lane_len)] = torch.where(is_value, v, 0).to(torch.int8)
        col[active] = c + is_value.long()
        active = active[token != end]
    return out[:, :lane_len]


# ------------------------------------------------------------------------------------------ compressed experts
@dataclass
class CompressedMatrix:
    """One stacked expert matrix ``[E, out, in]`` in the entropy-coded format (``weight = scale * symbol``)."""

    shape: tuple[int, int, int]
    rows_per_lane: int
    levels: int  # M: symbols lie in [-M, M]
    stream: Tensor  # uint8
    lane_start: Tensor  # int32 [lanes + 1], bit offsets
    scale: Tensor  # fp16 [E, out]
    lengths: Tensor  # uint8 [alphabet]

    @classmethod
    def from_symbols(
        cls, symbols: Tensor, scale: Tensor, rows_per_lane: int, levels: int = 1
    ) -> CompressedMatrix:
        e, out, inp = symbols.shape
        if out % rows_per_lane:
            raise ConfigError(
                f"qmoe: rows_per_lane={rows_per_lane} does not divide the {out} rows of a matrix"
            )
        lanes = symbols.reshape(e * out // rows_per_lane, rows_per_lane * inp)
        tokens, _ = tokenize(lanes, levels)
        lengths = huffman_lengths(np.bincount(tokens.numpy(), minlength=alphabet_size(levels)))
        stream, lane_start = encode(lanes, lengths, levels)
        if lane_start[-1] >= 2**31:
            raise ConfigError(f"qmoe: a matrix of {e}x{out}x{inp} codes to more than 2^31 bits; split it")
        return cls(
            (e, out, inp),
            rows_per_lane,
            levels,
            torch.from_numpy(stream),
            torch.from_numpy(lane_start.astype(np.int32)),
            scale.half(),
            torch.from_numpy(lengths.astype(np.uint8)),
        )

    def table(self) -> tuple[Tensor, Tensor]:
        if getattr(self, "_table", None) is None:
            self._table = decode_table(self.lengths.numpy().astype(np.int64))
        return self._table

    def symbols(self, experts: Tensor) -> Tensor:
        """Decoded symbols ``[len(experts), out, in]`` of the given experts only."""
        e, out, inp = self.shape
        per = out // self.rows_per_lane
        experts = experts.to(self.stream.device)
        lanes = (experts[:, None] * per + torch.arange(per, device=experts.device)).reshape(-1)
        sym = decode(self.stream, self.lane_start, lanes, self.rows_per_lane * inp, self.table(), self.levels)
        return sym.reshape(experts.numel(), out, inp)

    def to(self, device: str | torch.device) -> CompressedMatrix:
        """A copy whose stream, offsets and scales live on ``device`` (a GPU decodes there; untested here)."""
        moved = {f: getattr(self, f).to(device) for f in ("stream", "lane_start", "scale")}
        return CompressedMatrix(self.shape, self.rows_per_lane, self.levels, lengths=self.lengths, **moved)

    def dequantize(self, experts: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        experts = experts.to(self.stream.device)
        return self.scale[experts].to(dtype)[..., None] * self.symbols(experts).to(dtype)

    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size() for t in (self.stream, self.lane_start, self.scale, self.lengths)
        )


class QMoEExperts(nn.Module):
    """Drop-in for :class:`FFNExperts` running from :class:`CompressedMatrix` weights.

    Each forward decodes only the experts its tokens are routed to, dequantizes them and runs them with the
    fused segment FFN. Biases (few parameters) are kept in fp16, like the scales. ``bits_per_param()`` is the
    compressed size (streams, lane offsets, scales, code lengths, biases) per expert parameter.
    """

    def __init__(
        self,
        gate_up: CompressedMatrix,
        down: CompressedMatrix,
        activation: str,
        gate_up_bias: Tensor | None = None,
        down_bias: Tensor | None = None,
    ) -> None:
        super().__init__()
        self.gate_up, self.down, self.activation = gate_up, down, activation
        self.num_experts = gate_up.shape[0]
        self.register_buffer("gate_up_bias", gate_up_bias)
        self.register_buffer("down_bias", down_bias)

    def biases(self) -> list[Tensor]:
        return [b for b in (self.gate_up_bias, self.down_bias) if b is not None]

    def num_params(self) -> int:
        return (
            math.prod(self.gate_up.shape) + math.prod(self.down.shape) + sum(b.numel() for b in self.biases())
        )

    def nbytes(self) -> int:
        return (
            self.gate_up.nbytes()
            + self.down.nbytes()
            + sum(b.numel() * b.element_size() for b in self.biases())
        )

    def to_device(self, device: str | torch.device) -> QMoEExperts:
        """Keep the compressed experts on ``device`` so they are decoded there (the CUDA path)."""
        self.gate_up, self.down = self.gate_up.to(device), self.down.to(device)
        return self.to(device)

    def bits_per_param(self) -> float:
        return 8 * self.nbytes() / self.num_params()

    def forward(self, x: Tensor, indices: Tensor, weights: Tensor) -> Tensor:
        used = torch.unique(indices[indices >= 0])
        if used.numel() == 0:
            return torch.zeros_like(x)
        w = {
            "gate_up_proj": self.gate_up.dequantize(used, x.dtype).to(x.device),
            "down_proj": self.down.dequantize(used, x.dtype).to(x.device),
        }
        for name in ("gate_up_bias", "down_bias"):
            b = getattr(self, name)
            if b is not None:
                w[name] = b[used.to(b.device)].to(x.device, x.dtype)
        return run_materialized(x, indices, weights, used, w, self.activation)


# --------------------------------------------------------------------------------------------- calibration
def capture_expert_inputs(model: nn.Module, run) -> dict[str, list[tuple[Tensor, Tensor]]]:
    """``(tokens, routed expert indices)`` of every :class:`FFNExperts` of ``model`` (by module name) while
    ``run()`` calls the model: exactly the rows each expert receives, after routing and capacity drops."""
    seen: dict[str, list[tuple[Tensor, Tensor]]] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, FFNExperts):
            seen[name] = []
            hooks.append(
                m.register_forward_pre_hook(
                    lambda mod, args, kw, key=name: seen[key].append((args[0].detach(), args[1].detach())),
                    with_kwargs=True,
                )
            )
    try:
        with torch.no_grad():
            run()
    finally:
        for hk in hooks:
            hk.remove()
    return seen


def _expert_hessians(
    experts: FFNExperts, inputs: list[tuple[Tensor, Tensor]]
) -> tuple[Tensor, Tensor, Tensor]:
    """``X^T X`` per expert of the rows routed to it, for the up and the down matrix, and row counts."""
    e, h, d = experts.num_experts, experts.d_hidden, experts.d_model
    h_up = torch.zeros(e, d, d, dtype=torch.float64)
    h_down = torch.zeros(e, h, h, dtype=torch.float64)
    seen = torch.zeros(e, dtype=torch.long)
    with torch.no_grad():
        for x, idx in inputs:
            flat = x.reshape(-1, d)
            for k in range(e):  # a loop over experts; the rows of each are one matmul
                rows = flat[(idx.reshape(flat.shape[0], -1) == k).any(dim=1)].double()
                if rows.shape[0] == 0:
                    continue
                seen[k] += rows.shape[0]
                h_up[k] += rows.t() @ rows
                pre = rows @ experts.gate_up_proj[k].double().t()
                if experts.gate_up_bias is not None:
                    pre = pre + experts.gate_up_bias[k].double()
                hid = apply_activation(pre, experts.activation)
                h_down[k] += hid.t() @ hid
    return h_up, h_down, seen


def compress_experts(
    experts: FFNExperts,
    inputs: list[tuple[Tensor, Tensor]],
    bits: str = "ternary",
    zeros: float | None = None,
    rows_per_lane: int = 8,
    use_hessian: bool = True,
) -> QMoEExperts:
    """Quantize ``experts`` (GPTQ from the calibration ``inputs`` that reached them, or plain rounding with
    ``use_hessian=False``) to ``bits`` (``"ternary"`` or ``"2"``) and code them: the compressed module."""
    if not isinstance(experts, FFNExperts):
        raise ConfigError(f"qmoe: expected FFNExperts, got {type(experts).__name__}")
    h_up, h_down, seen = _expert_hessians(experts, inputs)
    parts = {}
    for name, hess in (("gate_up_proj", h_up), ("down_proj", h_down)):
        weight = getattr(experts, name).detach()
        syms, scales = [], []
        for k in range(experts.num_experts):
            sym, scale = gptq(
                weight[k], hess[k] if use_hessian and seen[k] > 0 else None, make_grid(weight[k], bits, zeros)
            )
            syms.append(sym)
            scales.append(scale)
        parts[name] = CompressedMatrix.from_symbols(
            torch.stack(syms), torch.stack(scales), rows_per_lane, BITS[bits]
        )
    biases = [
        None if b is None else b.detach().half().clone() for b in (experts.gate_up_bias, experts.down_bias)
    ]
    return QMoEExperts(parts["gate_up_proj"], parts["down_proj"], experts.activation, *biases)


def _replace(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, attr, module)


def compress_model(
    model: nn.Module,
    run,
    bits: str = "ternary",
    zeros: float | None = None,
    rows_per_lane: int = 8,
    use_hessian: bool = True,
) -> dict[str, QMoEExperts]:
    """Compress every :class:`FFNExperts` of ``model`` in place from calibration inputs captured while
    ``run()`` executes; returns the compressed modules by name.

    Layers are compressed first to last, each calibrated on the inputs it sees with the layers before it
    already compressed (GPTQ's sequential order). The model is calibrated in eval mode (no dropout) and
    left in eval mode.
    """
    model.eval()
    names = [n for n, m in model.named_modules() if isinstance(m, FFNExperts)]
    if not names:
        raise ConfigError(f"qmoe: {type(model).__name__} has no FFNExperts to compress")
    out = {}
    for name in names:
        inputs = capture_expert_inputs(model, run)[name]
        q = compress_experts(model.get_submodule(name), inputs, bits, zeros, rows_per_lane, use_hessian)
        _replace(model, name, q)
        out[name] = q
    return out


def apply_qmoe(model: nn.Module, experts: dict[str, QMoEExperts], where: object = "qmoe") -> nn.Module:
    """Put compressed ``experts`` (from :func:`load_qmoe`) in place of ``model``'s FFNExperts of the same names
    and shapes; the dense expert tensors are released."""
    for name, q in experts.items():
        try:
            dense = model.get_submodule(name)
        except AttributeError:
            raise CheckpointError(f"{where}: experts {name!r}: the model has no such module") from None
        want = (
            (dense.num_experts, dense.gate_up_proj.shape[1], dense.d_model)
            if isinstance(dense, FFNExperts)
            else None
        )
        if want != q.gate_up.shape or (dense.gate_up_bias is None) != (q.gate_up_bias is None):
            raise CheckpointError(
                f"{where}: experts {name!r}: expected FFNExperts of shape {q.gate_up.shape} "
                f"(bias={q.gate_up_bias is not None}), the model has {type(dense).__name__} {want}"
            )
        want_down = tuple(dense.down_proj.shape)
        if want_down != q.down.shape or (dense.down_bias is None) != (q.down_bias is None):
            raise CheckpointError(
                f"{where}: experts {name!r}: down projection of shape {q.down.shape} "
                f"(bias={q.down_bias is not None}), the model's is {want_down}"
            )
        if q.activation != dense.activation:
            raise CheckpointError(
                f"{where}: experts {name!r}: activation {q.activation!r}, the model's is {dense.activation!r}"
            )
        _replace(model, name, q)
    return model


# --------------------------------------------------------------------------------------------------- the file
_FIELDS = ("stream", "lane_start", "scale", "lengths")


def save_qmoe(experts: dict[str, QMoEExperts], path: str | Path, info: dict | None = None) -> None:
    """Write compressed experts (by module name) to one safetensors file (uint8 streams, int32 offsets, fp16
    scales, fp16 biases); ``info`` is kept in the header (e.g. how the experts were made)."""
    tensors, layers = {}, []
    for i, (name, q) in enumerate(experts.items()):
        mats = {}
        for part in ("gate_up", "down"):
            m: CompressedMatrix = getattr(q, part)
            for field in _FIELDS:
                tensors[f"{i}.{part}.{field}"] = getattr(m, field).contiguous()
            mats[part] = {"shape": list(m.shape), "rows_per_lane": m.rows_per_lane, "levels": m.levels}
        for bias in ("gate_up_bias", "down_bias"):
            if getattr(q, bias) is not None:
                tensors[f"{i}.{bias}"] = getattr(q, bias).contiguous()
        layers.append({"name": name, "activation": q.activation, **mats})
    header = {"format": FORMAT, "version": 2, "layers": layers, "info": info or {}}
    atomic_write(path, save(tensors, metadata={"qmoe": json.dumps(header)}))


def read_qmoe_header(path: str | Path) -> dict:
    """The JSON header of a file written by :func:`save_qmoe`."""
    try:
        with safe_open(str(path), "pt") as fh:
            header = json.loads((fh.metadata() or {}).get("qmoe", "null"))
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise CheckpointError(f"{path}: expected a qmoe safetensors file ({exc})") from exc
    return check_format(header, path, name=FORMAT, version=2, error=CheckpointError)


def load_qmoe(path: str | Path, verify: bool = True) -> dict[str, QMoEExperts]:
    """Read what :func:`save_qmoe` wrote: the compressed experts by module name.

    Every header field is checked against the tensors before use; with ``verify`` every lane is decoded once, so a
    damaged stream is a :class:`CheckpointError` naming the file here rather than at the first forward.
    """
    path = Path(path)
    header = read_qmoe_header(path)
    try:
        tensors = load(path.read_bytes())
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise CheckpointError(f"{path}: expected a qmoe safetensors file ({exc})") from exc
    out = {}
    layers = header.get("layers")
    if not isinstance(layers, list) or not layers:
        raise CheckpointError(f"{path}: 'layers': expected a non-empty list")
    try:
        for i, layer in enumerate(layers):
            if not isinstance(layer, dict) or not isinstance(layer.get("name"), str):
                raise CheckpointError(f"{path}: layers[{i}]: expected an object with a 'name' string")
            if layer.get("activation") not in _ACTIVATIONS:
                raise CheckpointError(
                    f"{path}: layers[{i}]: activation: expected one of {', '.join(_ACTIVATIONS)}"
                )
            mats = [_checked_matrix(path, i, part, layer.get(part), tensors) for part in ("gate_up", "down")]
            biases = [tensors.get(f"{i}.{b}") for b in ("gate_up_bias", "down_bias")]
            for b, m in zip(biases, mats, strict=True):
                if b is not None and (b.dtype != torch.float16 or tuple(b.shape) != m.shape[:2]):
                    raise CheckpointError(
                        f"{path}: layers[{i}]: a bias is not fp16 of shape {list(m.shape[:2])}"
                    )
            experts = QMoEExperts(*mats, layer["activation"], *biases)
            if verify:
                for m in mats:  # decode every lane once, so a damaged stream fails here, naming the file
                    try:
                        m.symbols(torch.arange(m.shape[0]))
                    except CheckpointError as exc:
                        raise CheckpointError(f"{path}: layers[{i}]: {exc}") from None
            out[layer["name"]] = experts
    except KeyError as exc:
        raise CheckpointError(f"{path}: missing {exc.args[0]!r}") from exc
    return out


_ACTIVATIONS = ("gelu", "relu", "silu", "swiglu", "geglu")
_MAX_QMOE_ELEMENTS = 1 << 30  # expert parameters of one matrix; bounds every allocation the decoder makes


def _checked_matrix(
    path: Path, i: int, part: str, meta: object, tensors: dict[str, Tensor]
) -> CompressedMatrix:
    """A :class:`CompressedMatrix` from header ``meta`` and its tensors, every field checked against the others
    before anything is allocated from them."""
    where = f"{path}: layers[{i}].{part}"
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}: expected an object with shape, rows_per_lane and levels")
    shape, rpl, levels = meta.get("shape"), meta.get("rows_per_lane"), meta.get("levels")
    if not (
        isinstance(shape, list)
        and len(shape) == 3
        and all(type(v) is int and 0 < v <= _MAX_QMOE_ELEMENTS for v in shape)
        and math.prod(shape) <= _MAX_QMOE_ELEMENTS
    ):
        raise CheckpointError(f"{where}: shape: expected 3 positive integers, at most 2^30 elements")
    if type(rpl) is not int or rpl < 1 or shape[1] % rpl:
        raise CheckpointError(f"{where}: rows_per_lane: expected a positive divisor of {shape[1]}")
    if type(levels) is not int or not 1 <= levels <= 7:
        raise CheckpointError(f"{where}: levels: expected an integer 1..7")
    stream, lane_start, scale, lengths = (tensors[f"{i}.{part}.{f}"] for f in _FIELDS)
    lanes = shape[0] * shape[1] // rpl
    if stream.dtype != torch.uint8 or stream.dim() != 1:
        raise CheckpointError(f"{where}: stream: expected 1-D uint8")
    if lane_start.dtype != torch.int32 or tuple(lane_start.shape) != (lanes + 1,):
        raise CheckpointError(f"{where}: lane_start: expected int32 of length {lanes + 1}")
    ls = lane_start.long()
    if int(ls[0]) != 0 or bool((ls[1:] < ls[:-1]).any()) or int(ls[-1]) > 8 * stream.numel():
        raise CheckpointError(f"{where}: lane_start: expected bit offsets rising from 0 within the stream")
    if scale.dtype != torch.float16 or tuple(scale.shape) != tuple(shape[:2]):
        raise CheckpointError(f"{where}: scale: expected fp16 of shape {shape[:2]}")
    if lengths.dtype != torch.uint8 or tuple(lengths.shape) != (alphabet_size(levels),):
        raise CheckpointError(f"{where}: lengths: expected uint8 of length {alphabet_size(levels)}")
    ln = lengths.long()
    if bool((ln > MAX_CODE_BITS).any()) or float((2.0 ** -ln[ln > 0].double()).sum()) > 1.0:
        raise CheckpointError(
            f"{where}: lengths: expected the code lengths of a prefix code, at most 16 bits"
        )
    return CompressedMatrix(tuple(shape), rpl, levels, stream, lane_start, scale, lengths)
