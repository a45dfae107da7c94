"""SE-MoE ring-memory inference: equals the all-resident model, and never holds more than K sections."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from circuitml.moe import build_moe
from circuitml.moe.systems.ring_inference import mmap_safetensors, ring_offload
from torch import nn

from circuitml.errors import CheckpointError, ConfigError

L, D, E, H = 5, 16, 4, 24


class Stack(nn.Module):
    """A residual stack of MoE layers (the shape of a transformer's FFN half)."""

    def __init__(self, layers: int = L) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            build_moe(d_model=D, num_experts=E, d_hidden=H, top_k=2, expert_bias=True) for _ in range(layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x).out
        return x


@pytest.mark.parametrize("num_slots,prefetch", [(1, True), (2, True), (3, True), (L, True), (2, False)])
def test_ring_equals_all_resident_and_holds_at_most_k_sections(
    tmp_path: Path, num_slots: int, prefetch: bool
) -> None:
    torch.manual_seed(0)
    model = Stack().eval()
    ref_model = copy.deepcopy(model)
    xs = [torch.randn(7, D) for _ in range(3)]
    with torch.no_grad():
        refs = [ref_model(x) for x in xs]
    ring = ring_offload(model, tmp_path / "experts.safetensors", num_slots=num_slots, prefetch=prefetch)
    try:
        # The model itself keeps no expert weights: they live in the file and the ring's K sections.
        expert_bytes = sum(p.numel() * p.element_size() for p in ref_model.blocks[0].experts.parameters())
        assert sum("experts" in n for n, _ in model.named_parameters()) == 0
        assert ring.fast_tier_bytes() == num_slots * expert_bytes
        seen = []
        for block in model.blocks:  # sample the resident set while every layer computes
            block.register_forward_hook(lambda *_: seen.append(len(ring.resident_layers())))
        with torch.no_grad():
            for x, ref in zip(xs, refs, strict=True):  # several passes: the ring wraps around
                torch.testing.assert_close(model(x), ref, rtol=0, atol=0)
        assert max(seen) <= num_slots
        assert 1 <= ring.peak_resident <= num_slots
        if num_slots == L:  # everything fits: each section is loaded once
            assert ring.loads == L
        else:
            assert ring.loads >= len(xs) * L
    finally:
        ring.close()


def test_ring_restarts_when_layers_run_out_of_order(tmp_path: Path) -> None:
    torch.manual_seed(1)
    model = Stack().eval()
    ref_model = copy.deepcopy(model)
    ring = ring_offload(model, tmp_path / "e.safetensors", num_slots=2)
    try:
        x = torch.randn(4, D)
        with torch.no_grad():
            for i in (3, 1, 4, 0, 2):
                torch.testing.assert_close(model.blocks[i](x).out, ref_model.blocks[i](x).out, rtol=0, atol=0)
            torch.testing.assert_close(model(x), ref_model(x), rtol=0, atol=0)
    finally:
        ring.close()


def test_slow_tier_is_a_memory_map_of_the_file(tmp_path: Path) -> None:
    torch.manual_seed(2)
    model = Stack(layers=2)
    path = tmp_path / "e.safetensors"
    ring_offload(model, path, num_slots=1, prefetch=False)
    slow = mmap_safetensors(path)
    assert sorted(slow) == sorted(
        f"layer{i}.{k}" for i in range(2) for k in ("gate_up_proj", "down_proj", "gate_up_bias", "down_bias")
    )
    # Views of one file-backed storage, not copies.
    assert len({t.untyped_storage().data_ptr() for t in slow.values()}) == 1


def test_bad_inputs_raise_project_errors(tmp_path: Path) -> None:
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x05")
    with pytest.raises(CheckpointError, match="bad.safetensors: expected a safetensors file"):
        mmap_safetensors(bad)
    with pytest.raises(ConfigError, match="num_slots: expected 1..5"):
        ring_offload(Stack(), tmp_path / "e.safetensors", num_slots=6)
    with pytest.raises(ConfigError, match="MoE blocks all have FFNExperts"):
        ring_offload(nn.Linear(2, 2), tmp_path / "e.safetensors")
