"""Tutel's adaptive runtime on W local processes: forward+backward time of one expert layer under EP with
pipelining degree 1/2/4 and under DP (all-gathered experts), the choice ``tune`` makes, and the dynamic
capacity factor against fixed factors (time and dropped pairs), all measured in the same run.

Variants run interleaved; the best wall-clock time of ``--repeats`` (max over ranks) is kept. The reference
row is EP with degree 1, i.e. today's ``ExpertParallelFFN`` schedule.

    python bench/bench_moe_adaptive.py
    python bench/bench_moe_adaptive.py --quick
    python bench/bench_moe_adaptive.py --device cuda      # NCCL (untested here: no GPU on this machine)
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.distributed as dist
from circuitml.moe import FFNExperts, build_router
from circuitml.moe.systems.adaptive import AdaptiveParallelFFN, DynamicCapacityRouter
from circuitml.moe.systems.launch import spawn_group


def _timed(fn, device: torch.device) -> float:
    dist.barrier()
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t = torch.tensor(time.perf_counter() - t0)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t)


def _worker(rank: int, world: int, args: argparse.Namespace) -> dict:
    device = torch.device(f"cuda:{rank}" if args.device == "cuda" else "cpu")
    torch.manual_seed(args.seed)
    full = FFNExperts(args.experts, args.d_model, args.hidden)
    layer = AdaptiveParallelFFN(args.experts, args.d_model, args.hidden).to(device)
    layer.load_from_full(full)
    inner = build_router("topk", d_model=args.d_model, num_experts=args.experts, top_k=args.top_k).to(device)
    g = torch.Generator().manual_seed(args.seed + 1 + rank)
    skew = torch.randn(args.d_model, generator=torch.Generator().manual_seed(args.seed)) * args.skew
    x = (torch.randn(args.tokens, args.d_model, generator=g) + skew).to(device).requires_grad_(True)
    with torch.no_grad():
        r = inner(x)
    settings = [("ep", 1), ("ep", 2), ("ep", 4), ("dp", 1)]
    best = {s: float("inf") for s in settings}

    def step(s) -> None:
        layer.set_mode(*s)
        layer(x, r.indices, r.weights).square().mean().backward()

    for _ in range(args.repeats):
        for s in settings:
            best[s] = min(best[s], _timed(lambda s=s: step(s), device))
    tuned = layer.tune(x.detach(), r.indices, r.weights, degrees=(1, 2, 4))
    chosen = (layer.mode, layer.degree)
    # Capacity: fixed factors vs the dynamic one (bounded by 4).
    caps = {}
    for name, factor in (("fixed 1.0", 1.0), ("fixed 2.0", 2.0), ("dynamic<=4", None)):
        if factor is None:
            router = DynamicCapacityRouter(inner, 1.0, 4.0)
        else:
            router = build_router(
                "topk",
                d_model=args.d_model,
                num_experts=args.experts,
                top_k=args.top_k,
                capacity_factor=factor,
            ).to(device)
            router.load_state_dict(inner.state_dict())
        layer.set_mode("ep", 1)
        with torch.no_grad():
            rr = router(x)
        t = min(
            _timed(lambda rr=rr: layer(x, rr.indices, rr.weights).square().mean().backward(), device)
            for _ in range(args.repeats)
        )
        dropped = torch.tensor(float((rr.indices < 0).sum()))
        dist.all_reduce(dropped)
        caps[name] = (t, int(dropped), getattr(router, "last_factor", factor))
    return {
        "best": {f"{m}{d}": t for (m, d), t in best.items()},
        "chosen": chosen,
        "tuned": len(tuned),
        "caps": caps,
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--tokens", type=int, default=2048, help="tokens per rank")
    p.add_argument("--skew", type=float, default=1.0)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.d_model, args.hidden, args.tokens, args.repeats = 64, 128, 256, 2
    backend = "nccl" if args.device == "cuda" else "gloo"
    r0 = spawn_group(_worker, args.world, args, backend=backend, timeout=600)[0]
    print(
        f"Tutel adaptive: W={args.world} {backend} E={args.experts} d={args.d_model} h={args.hidden} "
        f"k={args.top_k} N/rank={args.tokens} skew={args.skew} seed={args.seed} repeats={args.repeats}"
    )
    ref = r0["best"]["ep1"]
    print(f"{'setting':<8} {'ms fwd+bwd':>11} {'vs ep1':>7}")
    for name, t in r0["best"].items():
        print(f"{name:<8} {1e3 * t:>11.2f} {t / ref:>7.2f}")
    print(f"tune() chose {r0['chosen'][0]} degree {r0['chosen'][1]}")
    print(f"{'capacity':<11} {'factor':>7} {'ms':>9} {'dropped pairs':>14}")
    for name, (t, dropped, factor) in r0["caps"].items():
        print(f"{name:<11} {factor:>7.2f} {1e3 * t:>9.2f} {dropped:>14}")


if __name__ == "__main__":
    main()
