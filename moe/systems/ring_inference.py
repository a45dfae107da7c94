r"""SE-MoE ring-memory inference: expert weights in a slow tier, a ring of ``K`` fast-tier sections.

SE-MoE (Shen et al. 2022, "SE-MoE: A Scalable and Efficient Mixture-of-Experts Distributed Training and
Inference System", arXiv:2205.10034), section "Ring Memory": when a model is larger than the fast memory, the
layers are split into sections; the fast tier holds a ring of ``K`` sections and the computation walks the ring
round-robin — layer ``i`` runs in slot ``i mod K`` while a background stream loads layer ``i + K`` into the slot
that layer ``i`` just freed:

.. math::
    \text{slot}(i) = i \bmod K, \qquad \text{after computing } i:\ \text{load}(i + K \bmod L) \to \text{slot}(i)

Here a section is the expert weights of one MoE layer (routers, shared experts and everything else stay
resident: they are small). The slow tier is a memory-mapped safetensors file when the fast tier is CPU RAM, and
CPU RAM (pinned) when the fast tier is a GPU; the loader is a background thread (on a side CUDA stream on a GPU).
``prefetch=False`` loads each section when it is needed (the load-on-demand reference).
"""

from __future__ import annotations

import json
import queue
import struct
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from circuitml.moe.block import MoEBlock
from circuitml.moe.experts.ffn import FFNExperts
from torch import Tensor, nn

from circuitml.errors import CheckpointError, ConfigError
from circuitml.fileio import atomic_write, safetensors_bytes

SECTION_KEYS = ("gate_up_proj", "down_proj", "gate_up_bias", "down_bias")
_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def save_sections(blocks: list[MoEBlock], path: str | Path) -> None:
    """Write the expert weights of every block to one safetensors file, ``layer{i}.{param}`` per tensor."""
    tensors = {}
    for i, block in enumerate(blocks):
        for key in SECTION_KEYS:
            t = getattr(block.experts, key)
            if t is not None:
                tensors[f"layer{i}.{key}"] = t.detach().cpu().contiguous()
    atomic_write(
        path, safetensors_bytes(tensors, {"format": "circuitml-ring-sections", "layers": str(len(blocks))})
    )


def mmap_safetensors(path: str | Path) -> dict[str, Tensor]:
    """Every tensor of a safetensors file as a view into one copy-on-write memory map (nothing is read yet)."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as fh:
            (header_len,) = struct.unpack("<Q", fh.read(8))
            header = json.loads(fh.read(header_len))
    except (OSError, struct.error, ValueError) as exc:
        raise CheckpointError(f"{path}: expected a safetensors file ({exc})") from exc
    raw = torch.UntypedStorage.from_file(str(path), False, size)
    data = torch.empty(0, dtype=torch.uint8).set_(raw)[8 + header_len :]
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info.get("dtype") not in _DTYPES:
            raise CheckpointError(
                f"{path}: tensor {name!r}: expected dtype in {sorted(_DTYPES)}, got {info.get('dtype')!r}"
            )
        start, stop = info["data_offsets"]
        out[name] = data[start:stop].view(_DTYPES[info["dtype"]]).view(info["shape"])
    return out


@dataclass
class _Load:
    slot: int
    layer: int
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


class RingMemory:
    """``K`` fast-tier sections holding the experts of the layers in flight, filled from the slow tier.

    Args:
        slow: tensors ``layer{i}.{param}`` of the slow tier (see :func:`mmap_safetensors`).
        template: an :class:`FFNExperts` with the shape of one section (its weights are not used).
        num_layers: ``L``.
        num_slots: ``K`` (``1 <= K <= L``).
        device: the fast tier (``"cpu"`` or a CUDA device).
        prefetch: load ahead in a background thread (``False``: load on demand in the caller).

    ``resident_layers()`` is the set of layers whose weights are in the fast tier now; ``peak_resident`` the
    largest such set seen, updated at every load (a layer counts from the moment its load starts).
    """

    def __init__(
        self,
        slow: dict[str, Tensor],
        template: FFNExperts,
        num_layers: int,
        num_slots: int,
        device: str | torch.device = "cpu",
        prefetch: bool = True,
    ) -> None:
        if not 1 <= num_slots <= num_layers:
            raise ConfigError(
                f"ring inference: num_slots: expected 1..{num_layers} (layers), got {num_slots}"
            )
        self.device = torch.device(device)
        self.num_layers, self.num_slots, self.prefetch = num_layers, num_slots, prefetch
        self.slow = slow
        if self.device.type == "cuda":  # slow tier = pinned CPU RAM so copies can run asynchronously
            self.slow = {k: v.clone().pin_memory() for k, v in slow.items()}
            self.stream = torch.cuda.Stream(self.device)
        self.slots: list[FFNExperts] = []
        for _ in range(num_slots):
            s = FFNExperts(
                template.num_experts,
                template.d_model,
                template.d_hidden,
                template.activation,
                bias=template.gate_up_bias is not None,
                use_grouped_mm=template.use_grouped_mm,
            ).to(device=self.device, dtype=template.gate_up_proj.dtype)
            s.requires_grad_(False)
            self.slots.append(s)
        self.slot_layer: list[int | None] = [None] * num_slots  # layer whose weights the slot holds
        self.pending: list[_Load | None] = [None] * num_slots  # the last load scheduled into each slot
        self.peak_resident = 0
        self.loads = 0
        self._last_scheduled = -1
        self._lock = threading.Lock()
        self._queue: queue.Queue[_Load | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        if prefetch:
            self._thread = threading.Thread(target=self._worker, name="ring-prefetch", daemon=True)
            self._thread.start()
            for slot in range(num_slots):
                self._schedule_next(slot)

    def resident_layers(self) -> set[int]:
        """Layers whose expert weights are in the fast tier now (loaded or being loaded)."""
        with self._lock:
            return {layer for layer in self.slot_layer if layer is not None}

    def fast_tier_bytes(self) -> int:
        """Bytes of expert weights held in the fast tier (the ring's sections)."""
        return sum(p.numel() * p.element_size() for s in self.slots for p in s.parameters())

    def _copy(self, job: _Load) -> None:
        with self._lock:
            if self.slot_layer[job.slot] == job.layer:  # already there (K = L, or a repeated layer)
                return
            self.slot_layer[job.slot] = job.layer
            self.peak_resident = max(self.peak_resident, len({x for x in self.slot_layer if x is not None}))
            self.loads += 1
        slot = self.slots[job.slot]
        cuda = self.device.type == "cuda"
        with torch.no_grad():
            for key in SECTION_KEYS:
                dst = getattr(slot, key)
                if dst is not None:
                    dst.copy_(self.slow[f"layer{job.layer}.{key}"], non_blocking=cuda)

    def _worker(self) -> None:
        while (job := self._queue.get()) is not None:
            try:
                if self.device.type == "cuda":
                    with torch.cuda.stream(self.stream):
                        self._copy(job)
                    self.stream.synchronize()
                else:
                    self._copy(job)
            except BaseException as exc:  # surfaced in the computing thread by acquire()
                job.error = exc
            job.done.set()

    def _schedule(self, slot: int, layer: int) -> _Load:
        job = _Load(slot, layer)
        self.pending[slot] = job
        self._queue.put(job)
        return job

    def _schedule_next(self, slot: int) -> None:
        # Round-robin: the ring streams layers 0, 1, ..., L-1, 0, 1, ... into slots as they free up.
        self._last_scheduled = (self._last_scheduled + 1) % self.num_layers
        self._schedule(slot, self._last_scheduled)

    def acquire(self, layer: int) -> int:
        """Slot holding ``layer``'s experts, once loaded (loading it now, in the caller, without prefetch)."""
        if not self.prefetch:
            slot = layer % self.num_slots
            self._copy(_Load(slot, layer))
            return slot
        found = [s for s, j in enumerate(self.pending) if j is not None and j.layer == layer]
        if found:
            slot, job = found[0], self.pending[found[0]]
        else:  # out of the ring's order (e.g. a partial forward): restart the ring at this layer
            for pending in self.pending:
                if pending is not None:
                    pending.done.wait()
            self._last_scheduled = layer - 1
            for s in range(self.num_slots):
                self._schedule_next(s)
            slot, job = 0, self.pending[0]
        job.done.wait()
        if job.error is not None:
            raise job.error
        return slot

    def release(self, slot: int) -> None:
        """The layer in ``slot`` is done: load the next layer of the ring into it."""
        if self.prefetch:
            self._schedule_next(slot)

    def close(self) -> None:
        """Stop the prefetch thread (pending loads finish first)."""
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join()
            self._thread = None


class _RingExperts(nn.Module):
    """Stands in for a block's experts: runs them from the ring section of its layer."""

    def __init__(self, ring: RingMemory, layer: int) -> None:
        super().__init__()
        self.layer = layer
        self._ring = [ring]  # a list so the ring is not registered as a submodule (no weights in state_dict)

    def forward(self, x: Tensor, indices: Tensor, weights: Tensor) -> Tensor:
        ring = self._ring[0]
        slot = ring.acquire(self.layer)
        try:
            return ring.slots[slot](x, indices, weights)
        finally:
            ring.release(slot)


def ring_offload(
    model: nn.Module,
    path: str | Path,
    num_slots: int = 2,
    device: str | torch.device = "cpu",
    prefetch: bool = True,
) -> RingMemory:
    """Move the FFN experts of every :class:`MoEBlock` of ``model`` to a slow tier and run them from a ring.

    The experts are written to the safetensors file ``path``, memory-mapped back as the slow tier, and each
    block's experts are replaced by a stand-in that computes from the ring section of its layer; the model's
    own expert weights are freed. Layers must run in module order (a transformer's forward does); a layer run
    out of order is loaded on the spot. Returns the :class:`RingMemory` (``close()`` it when done).
    """
    blocks = [m for m in model.modules() if isinstance(m, MoEBlock)]
    if not blocks or not all(isinstance(b.experts, FFNExperts) for b in blocks):
        raise ConfigError("ring inference: expected a model whose MoE blocks all have FFNExperts")
    shapes = {
        (tuple(b.experts.gate_up_proj.shape), b.experts.activation, b.experts.gate_up_bias is not None)
        for b in blocks
    }
    if len(shapes) != 1:
        raise ConfigError(
            f"ring inference: expected every MoE layer's experts to have one shape, got {sorted(shapes)}"
        )
    save_sections(blocks, path)
    template = blocks[0].experts
    ring = RingMemory(mmap_safetensors(path), template, len(blocks), num_slots, device, prefetch)
    for i, block in enumerate(blocks):
        block.experts = _RingExperts(ring, i)
    return ring
