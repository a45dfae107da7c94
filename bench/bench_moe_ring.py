"""SE-MoE ring-memory inference: tokens/s of the ring (K sections, background prefetch) against load-on-demand
(same ring, no prefetch) and the all-resident model, all three measured in this run on the same weights.

The model is a residual stack of ``L`` MoE layers whose experts (``L`` sections) exceed the fast-tier budget
of ``K`` sections; the slow tier is the memory-mapped safetensors file (CPU fast tier) or pinned CPU RAM (GPU
fast tier, ``--device cuda``, untested here: no GPU on the machine this was written on). Passes are
interleaved (ring, on-demand, resident, ring, ...) so machine noise hits all alike; the best of ``--repeats``
wall-clock times is kept (overlap is a wall-clock effect: CPU time would add the prefetch thread's copies).

    python bench/bench_moe_ring.py                     # L=8, E=16, d=256, h=512, N=256, K=2
    python bench/bench_moe_ring.py --quick
    python bench/bench_moe_ring.py --device cuda --tokens 4096
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from pathlib import Path

import torch
from circuitml.moe import build_moe
from circuitml.moe.systems.ring_inference import ring_offload
from torch import nn


class Stack(nn.Module):
    def __init__(self, layers: int, d: int, experts: int, hidden: int, k: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            build_moe(d_model=d, num_experts=experts, d_hidden=hidden, top_k=k) for _ in range(layers)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = x + block(x).out
        return x


def timed(model: nn.Module, x: torch.Tensor, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    with torch.no_grad():
        model(x)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--experts", type=int, default=16)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--tokens", type=int, default=256)
    p.add_argument("--slots", type=int, default=2, help="K fast-tier sections")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads for the compute")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.layers, args.experts, args.d_model, args.hidden, args.tokens, args.repeats = 4, 8, 64, 128, 64, 3
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    base = Stack(args.layers, args.d_model, args.experts, args.hidden, args.top_k).eval()
    x = torch.randn(args.tokens, args.d_model, device=device)
    section_mib = sum(p.numel() * p.element_size() for p in base.blocks[0].experts.parameters()) / 2**20
    resident = copy.deepcopy(base).to(device)
    with tempfile.TemporaryDirectory() as tmp:
        runs: dict[str, tuple[nn.Module, object]] = {}
        for name, prefetch in (("ring", True), ("on-demand", False)):
            m = copy.deepcopy(base)
            ring = ring_offload(m, Path(tmp) / f"{name}.safetensors", args.slots, device, prefetch)
            runs[name] = (m.to(device), ring)
        runs["all-resident"] = (resident, None)
        with torch.no_grad():
            ref = resident(x)
            for m, _ in runs.values():
                torch.testing.assert_close(m(x), ref, rtol=1e-5, atol=1e-5)  # same numbers before timing
        best = {name: float("inf") for name in runs}
        for _ in range(args.repeats):
            for name, (m, _) in runs.items():
                best[name] = min(best[name], timed(m, x, device))
        print(
            f"SE-MoE ring: L={args.layers} E={args.experts} d={args.d_model} h={args.hidden} k={args.top_k} "
            f"N={args.tokens} device={device} threads={args.threads} seed={args.seed} repeats={args.repeats}"
        )
        print(
            f"experts {args.layers * section_mib:.1f} MiB in {args.layers} sections; fast tier "
            f"{args.slots} x {section_mib:.1f} = {args.slots * section_mib:.1f} MiB"
        )
        print(f"{'method':<13} {'tokens/s':>10} {'ms/pass':>9} {'time/ring':>9} {'peak sections':>14}")
        for name, (_, ring) in runs.items():
            peak = ring.peak_resident if ring is not None else args.layers
            print(
                f"{name:<13} {args.tokens / best[name]:>10.0f} {1e3 * best[name]:>9.2f} "
                f"{best[name] / best['ring']:>9.2f} {peak:>14}"
            )
        for _, ring in runs.values():
            if ring is not None:
                ring.close()


if __name__ == "__main__":
    main()
