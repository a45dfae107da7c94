"""Hecate FSSDP against today's expert parallelism (EP, ``ExpertParallelFFN``) and plain DDP (every rank holds
every expert; ``torch.nn.parallel.DistributedDataParallel``), all on W local processes of one group.

Each rank trains one MoE layer (top-k router + FFN experts) on its own tokens with Adam; a step is forward,
backward, gradient synchronisation and the optimizer step. The three variants run interleaved (ddp, ep, fssdp,
ddp, ...) on the same data; the best wall-clock step time of ``--repeats`` is kept per variant (the max over
ranks of each step, since a step ends when the slowest rank does). ``--skew`` shifts the inputs so the router
sends most tokens to a few experts (the imbalance Hecate targets); FSSDP re-shards by load after the warm-up.
It prints ms/step, the ratio to DDP, and the expert parameters each rank keeps between steps.

    python bench/bench_moe_fssdp.py                       # W=2 gloo on CPU
    python bench/bench_moe_fssdp.py --quick
    # where FSSDP's design pays: W=4, many experts, skewed routing, many tokens per rank (EP's owner of the hot
    # experts computes nearly every token; FSSDP gathers the few hot experts and each rank computes its own)
    python bench/bench_moe_fssdp.py --world 4 --experts 32 --d-model 128 --hidden 256 --tokens 4096 --skew 3
    python bench/bench_moe_fssdp.py --device cuda --world 2   # NCCL (untested here: no GPU on this machine)
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
import torch.distributed as dist
from circuitml.moe import build_moe
from circuitml.moe.parallel import ExpertParallelFFN
from circuitml.moe.systems.fssdp import FSSDPExperts
from circuitml.moe.systems.launch import spawn_group
from torch.nn.parallel import DistributedDataParallel


def _sync_router(block) -> None:
    for p in block.router.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad)


def _worker(rank: int, world: int, args: argparse.Namespace) -> dict:
    device = torch.device(f"cuda:{rank}" if args.device == "cuda" else "cpu")
    torch.manual_seed(args.seed)
    base = build_moe(
        d_model=args.d_model,
        num_experts=args.experts,
        d_hidden=args.hidden,
        top_k=args.top_k,
        router_options={"balance_loss": None},
    )
    variants = {}
    ddp_block = copy.deepcopy(base).to(device)
    variants["ddp"] = (DistributedDataParallel(ddp_block), ddp_block, None)
    ep_block = copy.deepcopy(base)
    ep = ExpertParallelFFN(args.experts, args.d_model, args.hidden)
    ep.load_from_full(base.experts)
    ep_block.experts = ep
    variants["ep"] = (ep_block.to(device), ep_block, _sync_router)
    fs_block = copy.deepcopy(base)
    fs = FSSDPExperts(args.experts, args.d_model, args.hidden)
    fs.load_from_full(base.experts)
    fs_block.experts = fs
    variants["fssdp"] = (fs_block.to(device), fs_block, _sync_router)
    opts = {k: torch.optim.Adam(v[0].parameters(), lr=1e-3) for k, v in variants.items()}
    g = torch.Generator().manual_seed(args.seed + 1 + rank)
    skew = torch.randn(args.d_model, generator=torch.Generator().manual_seed(args.seed)) * args.skew
    best = {k: float("inf") for k in variants}
    for step in range(args.warmup + args.repeats):
        x = (torch.randn(args.tokens, args.d_model, generator=g) + skew).to(device)
        for name, (model, block, sync) in variants.items():
            dist.barrier()
            t0 = time.perf_counter()
            opts[name].zero_grad()
            out = model(x)
            out = out.out if hasattr(out, "out") else out
            out.square().mean().backward()
            if sync is not None:
                sync(block)
            opts[name].step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = torch.tensor(time.perf_counter() - t0)
            dist.all_reduce(dt, op=dist.ReduceOp.MAX)
            if step >= args.warmup:
                best[name] = min(best[name], float(dt))
        if step == args.warmup - 1:
            fs.reshard(opts["fssdp"])
    full = sum(p.numel() for p in base.experts.parameters())
    resident = {
        "ddp": full,
        "ep": sum(p.numel() for p in ep.parameters()),
        "fssdp": fs.owned.numel(),
    }
    return {
        "best": best,
        "resident": resident,
        "full": full,
        "imbalance": float(fs.load.max() / fs.load.mean()),
    }


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--world", type=int, default=2)
    p.add_argument("--experts", type=int, default=16)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--tokens", type=int, default=512, help="tokens per rank and step")
    p.add_argument("--skew", type=float, default=1.0)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=6)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.experts, args.d_model, args.hidden, args.tokens, args.repeats = 8, 64, 128, 128, 3
    backend = "nccl" if args.device == "cuda" else "gloo"
    results = spawn_group(_worker, args.world, args, backend=backend, timeout=600)
    r0 = results[0]
    print(
        f"FSSDP bench: W={args.world} {backend} E={args.experts} d={args.d_model} h={args.hidden} k={args.top_k} "
        f"N/rank={args.tokens} skew={args.skew} seed={args.seed} repeats={args.repeats} "
        f"(load max/mean over the measured steps {r0['imbalance']:.2f})"
    )
    print(f"{'variant':<7} {'ms/step':>8} {'vs ddp':>7} {'expert params/rank':>19} {'fraction':>9}")
    for name, t in r0["best"].items():
        res = r0["resident"][name]
        print(f"{name:<7} {1e3 * t:>8.2f} {t / r0['best']['ddp']:>7.2f} {res:>19,} {res / r0['full']:>9.3f}")


if __name__ == "__main__":
    main()
