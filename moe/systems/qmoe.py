r"""QMoE: data-dependent ternary quantization of experts and a sub-1-bit entropy-coded format run directly.

QMoE (Frantar & Alistarh 2023, "QMoE: Practical Sub-1-Bit Compression of Trillion-Parameter Models",
MLSys 2024). Each expert matrix ``W [out, in]`` is quantized GPTQ-style (Frantar et al. 2023, ICLR) from the
calibration inputs ``X`` that the router sends to that expert: with :math:`H = 2 X^\top X + \lambda I` and the
upper Cholesky factor :math:`U` of :math:`H^{-1}`, columns are quantized left to right and each one's error
is spread over the columns not yet quantized,

.. math::
    q_i = \mathrm{quant}(w_i), \qquad W_{:, j>i} \mathrel{-}= \frac{w_i - q_i}{U_{ii}}\, U_{i, j>i},

on a per-row ternary min-max grid :math:`\{c - s, c, c + s\}` (``c`` the row's midrange, ``s`` half its
range). Most weights land on the middle symbol, so the ternary stream is highly compressible; QMoE codes it
with a dictionary of variable-length symbol runs. Here the stream is cut into zero-runs ``(run, sign)``
(runs of ``>= R`` zeros emit escape tokens, a lane ends with an end-of-lane token) and the tokens are
Huffman-coded with a length-limited canonical code. The stream is split into independent lanes (groups of
rows of one expert) so the decoder advances all lanes at once — one table lookup per token and lane, a loop
over token steps, never over weights — and only the lanes of the experts a batch routes to are decoded.
"""

from __future__ import annotations

import heapq
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from circuitml.moe.block import MoEBlock
from circuitml.moe.experts.ffn import FFNExperts, apply_activation
from circuitml.moe.systems.fssdp import run_materialized
from safetensors import SafetensorError, safe_open
from safetensors.torch import load, save
from torch import Tensor, nn

from circuitml.errors import CheckpointError, ConfigError
from circuitml.fileio import atomic_write, check_format

RUN_LIMIT = 64  # R: longest zero run in one token; longer runs use escape tokens
ESCAPE, END = 2 * RUN_LIMIT, 2 * RUN_LIMIT + 1
ALPHABET = 2 * RUN_LIMIT + 2
MAX_CODE_BITS = 16
FORMAT = "circuitml-qmoe"


# ---------------------------------------------------------------------------------------------- quantization
def ternary_grid(w: Tensor) -> tuple[Tensor, Tensor]:
    """Per-row min-max ternary grid: centre ``c`` and step ``s`` (levels ``c - s, c, c + s``)."""
    lo, hi = w.min(dim=1).values, w.max(dim=1).values
    return (lo + hi) / 2, ((hi - lo) / 2).clamp_min(1e-12)


def gptq_ternary(
    w: Tensor, hessian: Tensor | None, block: int = 128, damp: float = 0.01
) -> tuple[Tensor, Tensor, Tensor]:
    """GPTQ quantization of ``w [out, in]`` to ternary symbols ``[out, in]`` (int8 in {-1, 0, 1}).

    ``hessian`` is ``X^T X`` of the calibration inputs ``[in, in]`` (``None``: plain rounding). Returns
    ``(symbols, centre[out], step[out])``; the dequantized matrix is ``centre[:, None] + step[:, None] * symbols``.
    The loop runs over input columns (GPTQ's order), vectorized over rows.
    """
    w = w.detach().double().clone()
    centre, step = ternary_grid(w)
    centre, step = centre.half().double(), step.half().double()  # the grid as it is stored (fp16)
    cols = w.shape[1]

    def quant(col: Tensor) -> Tensor:
        return torch.clamp(torch.round((col - centre) / step), -1, 1)

    if hessian is None:
        return quant(w.t()).t().to(torch.int8), centre.float(), step.float()
    h = hessian.detach().double().clone()
    dead = torch.diagonal(h) == 0  # inputs never seen: their columns need no error compensation
    h[dead, dead] = 1.0
    w[:, dead] = centre[:, None].expand_as(w)[:, dead]
    h += damp * torch.diagonal(h).mean() * torch.eye(cols, dtype=h.dtype)
    u = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    symbols = torch.zeros_like(w)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        w1, u1 = w[:, i1:i2].clone(), u[i1:i2, i1:i2]
        err1 = torch.zeros_like(w1)
        for i in range(i2 - i1):
            q = quant(w1[:, i])
            symbols[:, i1 + i] = q
            err = (w1[:, i] - (centre + step * q)) / u1[i, i]
            w1[:, i:] -= err[:, None] * u1[i, i:][None, :]
            err1[:, i] = err
        w[:, i2:] -= err1 @ u[i1:i2, i2:]
    return symbols.to(torch.int8), centre.float(), step.float()


# ------------------------------------------------------------------------------------------------- the code
def huffman_lengths(freq: np.ndarray, max_bits: int = MAX_CODE_BITS) -> np.ndarray:
    """Code lengths of a Huffman code for ``freq`` (0 for unused symbols), limited to ``max_bits``.

    Lengths are limited by flattening the distribution (raising rare counts) until the longest fits; a loop
    over the alphabet (130 symbols), not over the data.
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


def tokenize(symbols: Tensor) -> tuple[Tensor, Tensor]:
    """Tokens of every lane of ``symbols [lanes, lane_len]`` (ternary) and the token count per lane.

    A nonzero after ``r`` zeros is ``2 (r mod R) + [sign > 0]`` preceded by ``r // R`` ``ESCAPE`` tokens; each
    lane ends with ``END`` (the rest of the lane is zero).
    """
    lanes, lane_len = symbols.shape
    marked = torch.cat([symbols.long(), torch.full((lanes, 1), 2)], dim=1)  # 2 marks the lane's end
    lane, pos = torch.nonzero(marked, as_tuple=True)
    prev = torch.cat([torch.tensor([-1]), pos[:-1]])
    first = torch.cat([torch.tensor([True]), lane[1:] != lane[:-1]])
    run = pos - torch.where(first, torch.full_like(prev, -1), prev) - 1
    value = marked[lane, pos]
    is_end = value == 2
    escapes = torch.where(is_end, 0, run // RUN_LIMIT)
    token = torch.where(is_end, END, 2 * (run % RUN_LIMIT) + (value > 0).long())
    # Each event emits its escapes then its token: interleave with one repeat_interleave.
    per_event = escapes + 1
    tokens = torch.full((int(per_event.sum()),), ESCAPE, dtype=torch.long)
    tokens[torch.cumsum(per_event, 0) - 1] = token
    counts = torch.zeros(lanes, dtype=torch.long).index_add_(0, lane, per_event)
    return tokens, counts


def encode(symbols: Tensor, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bitstream (uint8) of ``symbols [lanes, lane_len]`` and each lane's starting bit (int64 ``[lanes + 1]``)."""
    tokens, counts = tokenize(symbols)
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
    stream: Tensor, lane_start: Tensor, lanes: Tensor, lane_len: int, table: tuple[Tensor, Tensor]
) -> Tensor:
    """Ternary symbols ``[len(lanes), lane_len]`` (int8) of the selected ``lanes``; all lanes step together."""
    dev = stream.device
    sym_table, len_table = table[0].to(dev), table[1].to(dev)
    padded = torch.cat([stream.long(), stream.new_zeros(4).long()])
    lanes = lanes.to(dev)
    bitpos = lane_start.long().index_select(0, lanes)
    col = torch.zeros(lanes.numel(), dtype=torch.long, device=dev)
    out = torch.zeros(
        lanes.numel(), lane_len + 1, dtype=torch.int8, device=dev
    )  # last column: finished lanes
    active = torch.arange(lanes.numel(), device=dev)
    while active.numel():
        pos = bitpos[active]
        byte = pos >> 3
        window = (padded[byte] << 16) | (padded[byte + 1] << 8) | padded[byte + 2]
        peek = (window >> (8 - (pos & 7))) & 0xFFFF
        token, length = sym_table[peek], len_table[peek]
        bitpos[active] = pos + length
        c = col[active]
        is_value = token < ESCAPE
        c = c + torch.where(token == ESCAPE, RUN_LIMIT, token >> 1)
        out[active, torch.where(is_value, c, lane_len)] = torch.where(is_value, (token & 1) * 2 - 1, 0).to(
            torch.int8
        )
        col[active] = c + is_value.long()
        active = active[token != END]
    return out[:, :lane_len]


# ------------------------------------------------------------------------------------------ compressed experts
@dataclass
class CompressedMatrix:
    """One stacked expert matrix ``[E, out, in]`` in the entropy-coded ternary format."""

    shape: tuple[int, int, int]
    rows_per_lane: int
    stream: Tensor  # uint8
    lane_start: Tensor  # int32 [lanes + 1], bit offsets
    centre: Tensor  # fp16 [E, out]
    step: Tensor  # fp16 [E, out]
    lengths: Tensor  # uint8 [ALPHABET]

    @classmethod
    def from_symbols(
        cls, symbols: Tensor, centre: Tensor, step: Tensor, rows_per_lane: int
    ) -> CompressedMatrix:
        e, out, inp = symbols.shape
        if out % rows_per_lane:
            raise ConfigError(
                f"qmoe: rows_per_lane={rows_per_lane} does not divide the {out} rows of a matrix"
            )
        lanes = symbols.reshape(e * out // rows_per_lane, rows_per_lane * inp)
        tokens, _ = tokenize(lanes)
        lengths = huffman_lengths(np.bincount(tokens.numpy(), minlength=ALPHABET))
        stream, lane_start = encode(lanes, lengths)
        return cls(
            (e, out, inp),
            rows_per_lane,
            torch.from_numpy(stream),
            torch.from_numpy(lane_start.astype(np.int32)),  # bit offsets; < 2^31 per matrix
            centre.half(),
            step.half(),
            torch.from_numpy(lengths.astype(np.uint8)),
        )

    def table(self) -> tuple[Tensor, Tensor]:
        if getattr(self, "_table", None) is None:
            self._table = decode_table(self.lengths.numpy().astype(np.int64))
        return self._table

    def symbols(self, experts: Tensor) -> Tensor:
        """Decoded ternary symbols ``[len(experts), out, in]`` of the given experts only."""
        e, out, inp = self.shape
        per = out // self.rows_per_lane
        experts = experts.to(self.stream.device)
        lanes = (experts[:, None] * per + torch.arange(per, device=experts.device)).reshape(-1)
        sym = decode(self.stream, self.lane_start, lanes, self.rows_per_lane * inp, self.table())
        return sym.reshape(experts.numel(), out, inp)

    def to(self, device: str | torch.device) -> CompressedMatrix:
        """A copy whose stream, offsets and grids live on ``device`` (a GPU decodes there; untested here)."""
        moved = {f: getattr(self, f).to(device) for f in ("stream", "lane_start", "centre", "step")}
        return CompressedMatrix(self.shape, self.rows_per_lane, lengths=self.lengths, **moved)

    def dequantize(self, experts: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        experts = experts.to(self.stream.device)
        s = self.symbols(experts).to(dtype)
        return self.centre[experts].to(dtype)[..., None] + self.step[experts].to(dtype)[..., None] * s

    def nbytes(self) -> int:
        return sum(
            t.numel() * t.element_size()
            for t in (self.stream, self.lane_start, self.centre, self.step, self.lengths)
        )


class QMoEExperts(nn.Module):
    """Drop-in for :class:`FFNExperts` running from :class:`CompressedMatrix` weights (bias-free experts).

    Each forward decodes only the experts its tokens are routed to, dequantizes them and runs them with the
    fused segment FFN. ``bits_per_param()`` is the compressed size (streams, lane offsets, grids, code) per
    expert parameter.
    """

    def __init__(self, gate_up: CompressedMatrix, down: CompressedMatrix, activation: str) -> None:
        super().__init__()
        self.gate_up, self.down, self.activation = gate_up, down, activation
        self.num_experts = gate_up.shape[0]

    def num_params(self) -> int:
        return math.prod(self.gate_up.shape) + math.prod(self.down.shape)

    def to_device(self, device: str | torch.device) -> QMoEExperts:
        """Keep the compressed experts on ``device`` so they are decoded there (the CUDA path)."""
        self.gate_up, self.down = self.gate_up.to(device), self.down.to(device)
        return self

    def bits_per_param(self) -> float:
        return 8 * (self.gate_up.nbytes() + self.down.nbytes()) / self.num_params()

    def forward(self, x: Tensor, indices: Tensor, weights: Tensor) -> Tensor:
        used = torch.unique(indices[indices >= 0])
        if used.numel() == 0:
            return torch.zeros_like(x)
        w = {
            "gate_up_proj": self.gate_up.dequantize(used, x.dtype).to(x.device),
            "down_proj": self.down.dequantize(used, x.dtype).to(x.device),
        }
        return run_materialized(x, indices, weights, used, w, self.activation)


# --------------------------------------------------------------------------------------------- calibration
def _expert_hessians(block: MoEBlock, inputs: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
    """``X^T X`` per expert of the inputs routed to it, for the up and the down matrix, and token counts."""
    experts: FFNExperts = block.experts
    e, h = experts.num_experts, experts.d_hidden
    d = experts.d_model
    h_up = torch.zeros(e, d, d, dtype=torch.float64)
    h_down = torch.zeros(e, h, h, dtype=torch.float64)
    seen = torch.zeros(e, dtype=torch.long)
    with torch.no_grad():
        for x in inputs:
            flat = x.reshape(-1, d)
            idx = block.router(flat).indices
            for k in range(e):  # a loop over experts; the tokens of each are one matmul
                rows = flat[(idx == k).any(dim=1)].double()
                if rows.shape[0] == 0:
                    continue
                seen[k] += rows.shape[0]
                h_up[k] += rows.t() @ rows
                hid = apply_activation(rows @ experts.gate_up_proj[k].double().t(), experts.activation)
                h_down[k] += hid.t() @ hid
    return h_up, h_down, seen


def compress_block(
    block: MoEBlock, inputs: list[Tensor], rows_per_lane: int = 8, use_hessian: bool = True
) -> QMoEExperts:
    """Quantize the FFN experts of ``block`` (GPTQ-ternary from the calibration ``inputs`` that reach the block)
    and replace them by :class:`QMoEExperts`; returns the new experts module."""
    experts = block.experts
    if not isinstance(experts, FFNExperts) or experts.gate_up_bias is not None:
        raise ConfigError("qmoe: expected a block of bias-free FFNExperts")
    h_up, h_down, seen = _expert_hessians(block, inputs)
    parts = {}
    for name, hess in (("gate_up_proj", h_up), ("down_proj", h_down)):
        weight = getattr(experts, name)
        syms, centres, steps = [], [], []
        for k in range(experts.num_experts):
            s, c, st = gptq_ternary(weight[k], hess[k] if use_hessian and seen[k] > 0 else None)
            syms.append(s)
            centres.append(c)
            steps.append(st)
        parts[name] = CompressedMatrix.from_symbols(
            torch.stack(syms), torch.stack(centres), torch.stack(steps), rows_per_lane
        )
    q = QMoEExperts(parts["gate_up_proj"], parts["down_proj"], experts.activation)
    block.experts = q
    return q


def capture_block_inputs(model: nn.Module, run) -> dict[MoEBlock, list[Tensor]]:
    """Inputs of every :class:`MoEBlock` of ``model`` while ``run()`` calls it (calibration data)."""
    seen: dict[MoEBlock, list[Tensor]] = {}
    hooks = []
    for m in model.modules():
        if isinstance(m, MoEBlock):
            seen[m] = []
            hooks.append(
                m.register_forward_pre_hook(
                    lambda mod, args, kw: seen[mod].append(args[0].detach()), with_kwargs=True
                )
            )
    try:
        with torch.no_grad():
            run()
    finally:
        for hk in hooks:
            hk.remove()
    return seen


def compress_model(
    model: nn.Module, run, rows_per_lane: int = 8, use_hessian: bool = True
) -> list[QMoEExperts]:
    """Compress every MoE block of ``model`` from calibration inputs captured while ``run()`` executes.

    Blocks are compressed first to last, each calibrated on the inputs it sees with the blocks before it
    already compressed (GPTQ's sequential order).
    """
    out = []
    blocks = [m for m in model.modules() if isinstance(m, MoEBlock) and isinstance(m.experts, FFNExperts)]
    for block in blocks:
        inputs = capture_block_inputs(model, run)[block]
        out.append(compress_block(block, inputs, rows_per_lane, use_hessian))
    return out


# --------------------------------------------------------------------------------------------------- the file
def save_qmoe(experts: list[QMoEExperts], path: str | Path) -> None:
    """Write compressed experts to one safetensors file (uint8 streams, int32 offsets, fp16 grids)."""
    tensors, meta = {}, []
    for i, q in enumerate(experts):
        for name in ("gate_up", "down"):
            m: CompressedMatrix = getattr(q, name)
            for field in ("stream", "lane_start", "centre", "step", "lengths"):
                tensors[f"{i}.{name}.{field}"] = getattr(m, field).contiguous()
            meta.append(
                {"layer": i, "matrix": name, "shape": list(m.shape), "rows_per_lane": m.rows_per_lane}
            )
    header = {
        "format": FORMAT,
        "version": 1,
        "activations": [q.activation for q in experts],
        "matrices": meta,
    }
    atomic_write(path, save(tensors, metadata={"qmoe": json.dumps(header)}))


def load_qmoe(path: str | Path) -> list[QMoEExperts]:
    """Read what :func:`save_qmoe` wrote."""
    path = Path(path)
    try:
        with safe_open(str(path), "pt") as fh:
            header = json.loads((fh.metadata() or {}).get("qmoe", "null"))
        tensors = load(path.read_bytes())
    except (OSError, ValueError, RuntimeError, SafetensorError) as exc:
        raise CheckpointError(f"{path}: expected a qmoe safetensors file ({exc})") from exc
    check_format(header, path, name=FORMAT, version=1, error=CheckpointError)
    mats: dict[tuple[int, str], CompressedMatrix] = {}
    for m in header["matrices"]:
        key = f"{m['layer']}.{m['matrix']}"
        try:
            mats[(m["layer"], m["matrix"])] = CompressedMatrix(
                tuple(m["shape"]),
                m["rows_per_lane"],
                *(tensors[f"{key}.{f}"] for f in ("stream", "lane_start", "centre", "step", "lengths")),
            )
        except KeyError as exc:
            raise CheckpointError(f"{path}: missing tensor {exc.args[0]!r}") from exc
    return [
        QMoEExperts(mats[(i, "gate_up")], mats[(i, "down")], act)
        for i, act in enumerate(header["activations"])
    ]
