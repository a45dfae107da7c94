"""Forward+backward throughput of circuitml.moe's sorted dispatch against references measured in the same run.

Rows (issue 3): E=8,k=2,d=512,h=2048,N=4096 · E=64,k=8,d=512,h=256,N=4096 · E=16,k=2,d=256,h=512,N=512 ·
E=8,k=2,d=64,h=128,N=65536. For each row it times, interleaved so that machine noise hits all alike:

* ``ours``   — ``MoEBlock(TopKRouter, FFNExperts)``: router + sort-and-segment experts;
* ``naive``  — a textbook per-expert loop (``nonzero`` on the routing mask, weighted ``index_add``);
* ``hf``     — transformers' ``MixtralSparseMoeBlock`` built from a ``MixtralConfig`` at equal shapes with
  the SAME weights copied in (outputs are checked equal before timing), its eager per-expert loop;
* ``hf_gmm`` — the same block with ``experts_implementation="grouped_mm"`` (sort + ``torch._grouped_mm``),
  HF's fastest path (skipped when this transformers has none);
* ``dense``  — one SwiGLU FFN with hidden ``k*h`` (the same active parameters): the bound no dispatch beats.

It prints tokens/s and each method's cost relative to ``dense`` (lower is better; the target is ours <= 1.1x).

    python bench/bench_moe.py                 # full sweep on CPU
    python bench/bench_moe.py --quick         # small shapes, a few repeats (smoke run)
    python bench/bench_moe.py --clock thread     # single-thread CPU time: stable when the machine is shared
    python bench/bench_moe.py --clock thread --rows 2,3 --skip-naive --skip-hf-eager --repeats 3   # two rows, cheap
    python bench/bench_moe.py --device cuda --dtype bfloat16
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from circuitml.moe import FFNExperts, MoEBlock, build_router
from torch import nn

FULL_ROWS = [
    # E, k, d, h, N
    (8, 2, 512, 2048, 4096),
    (64, 8, 512, 256, 4096),
    (16, 2, 256, 512, 512),
    (8, 2, 64, 128, 65536),
]
METHODS = ("ours", "naive", "hf", "hf_gmm", "dense")
QUICK_ROWS = [(8, 2, 64, 128, 2048), (16, 4, 64, 64, 1024)]


class NaiveLoopMoE(nn.Module):
    """The textbook per-expert loop over a routing mask, sharing the weights of ``ours``."""

    def __init__(self, block: MoEBlock) -> None:
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        routing = self.block.router(x)
        experts: FFNExperts = self.block.experts
        out = torch.zeros_like(x)
        for e in range(experts.num_experts):
            tok, slot = torch.nonzero(routing.indices == e, as_tuple=True)
            if tok.numel():
                y = experts.expert(e, x[tok]) * routing.weights[tok, slot, None]
                out = out.index_add(0, tok, y)
        return out


class DenseSwiGLU(nn.Module):
    """One SwiGLU FFN of hidden ``k*h``: the FLOPs of the routed experts without any dispatch."""

    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.up = nn.Linear(d, 2 * hidden, bias=False)
        self.down = nn.Linear(hidden, d, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.up(x).chunk(2, dim=-1)
        return self.down(F.silu(gate) * up)


def build_hf(
    block: MoEBlock, E: int, k: int, d: int, h: int, implementation: str = "eager"
) -> nn.Module | None:
    try:
        from transformers import MixtralConfig
        from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock
    except ImportError:
        return None
    if implementation != "eager":
        try:
            from transformers.integrations.moe import ALL_EXPERTS_FUNCTIONS
        except ImportError:
            return None
        if implementation not in ALL_EXPERTS_FUNCTIONS:
            return None
    cfg = MixtralConfig(
        experts_implementation=implementation,
        hidden_size=d,
        intermediate_size=h,
        num_local_experts=E,
        num_experts_per_tok=k,
        hidden_act="silu",
        router_jitter_noise=0.0,
    )
    hf = MixtralSparseMoeBlock(cfg)
    with torch.no_grad():
        hf.gate.weight.copy_(block.router.gate.weight)
        hf.experts.gate_up_proj.copy_(block.experts.gate_up_proj)
        hf.experts.down_proj.copy_(block.experts.down_proj)
    return hf


def time_methods(
    methods: dict[str, Callable[[], None]],
    repeats: int,
    warmup: int,
    sync: Callable[[], None],
    clock: Callable[[], float] = time.perf_counter,
) -> dict[str, float]:
    """Best (minimum) seconds per call — other load on the machine only adds time, with the methods interleaved round-robin."""
    for fn in methods.values():
        for _ in range(warmup):
            fn()
    sync()
    times: dict[str, list[float]] = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            sync()
            t0 = clock()
            fn()
            sync()
            times[name].append(clock() - t0)
    return {name: min(ts) for name, ts in times.items()}


def run_row(E: int, k: int, d: int, h: int, N: int, args: argparse.Namespace) -> dict[str, float]:
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    torch.manual_seed(0)
    router = build_router("topk", d_model=d, num_experts=E, top_k=k, balance_loss=None)
    ours = MoEBlock(router, FFNExperts(E, d, h, "swiglu")).to(device, dtype)
    naive = NaiveLoopMoE(ours)
    dense = DenseSwiGLU(d, k * h).to(device, dtype)
    hfs = {
        name: build_hf(ours, E, k, d, h, impl)
        for name, impl in (("hf", "eager"), ("hf_gmm", "grouped_mm"))
        if not (name == "hf" and args.skip_hf_eager)
    }
    x = torch.randn(N, d, device=device, dtype=dtype)
    grad_out = torch.randn(N, d, device=device, dtype=dtype)

    def fwd_bwd(fn: Callable[[torch.Tensor], torch.Tensor], module: nn.Module) -> Callable[[], None]:
        def step() -> None:
            module.zero_grad(set_to_none=True)
            xi = x.detach().requires_grad_(True)
            fn(xi).backward(grad_out)

        return step

    methods = {"ours": fwd_bwd(lambda t: ours(t).out, ours)}
    if not args.skip_naive:
        methods["naive"] = fwd_bwd(naive, naive)
    for name, hf in hfs.items():
        if hf is None:
            continue
        hf = hf.to(device, dtype)
        with torch.no_grad():
            ref = hf(x.unsqueeze(0)).squeeze(0)
            got = ours(x).out
        tol = 1e-4 if dtype == torch.float32 else 3e-2
        err = (ref - got).abs().max().item() / max(ref.abs().max().item(), 1e-12)
        if err > tol:
            raise SystemExit(f"{name} and ours disagree on E={E} k={k} d={d} h={h}: rel err {err:.2e}")
        methods[name] = fwd_bwd(lambda t, hf=hf: hf(t.unsqueeze(0)).squeeze(0), hf)
    methods["dense"] = fwd_bwd(dense, dense)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    times = time_methods(methods, args.repeats, args.warmup, sync, clock)
    if args.profile:
        for name in ("ours", "dense"):
            print_profile(name, methods[name], args.profile)
    return times


def print_profile(name: str, step: Callable[[], None], top: int) -> None:
    """Top ``top`` ops by self CPU time of 5 more steps, each with its share of the total (where the time goes)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(5):
            step()
    events = sorted(prof.key_averages(), key=lambda ev: ev.self_cpu_time_total, reverse=True)
    total = sum(ev.self_cpu_time_total for ev in events) or 1.0
    tops = ", ".join(f"{ev.key} {100 * ev.self_cpu_time_total / total:.0f}%" for ev in events[:top])
    print(f"#   {name}: {total / 5e3:.2f} ms/step profiled; {tops}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--quick", action="store_true", help="small shapes and few repeats (smoke run)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (CPU)")
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-hf-eager", action="store_true", help="time HF's grouped_mm path only")
    parser.add_argument(
        "--clock",
        default="wall",
        choices=["wall", "thread"],
        help="wall: elapsed time; thread: CPU time of one thread (sets 1 torch thread), robust on a busy machine",
    )
    parser.add_argument("--rows", default=None, help="comma-separated row numbers to run (1-based)")
    parser.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="N",
        help="after each row, print the N ops with the most self CPU time (torch.profiler) of ours and of dense",
    )
    args = parser.parse_args(argv)
    if args.clock == "thread":
        if args.device != "cpu":
            raise SystemExit("--clock thread measures CPU time; use --clock wall with --device cuda")
        args.threads = 1
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = QUICK_ROWS if args.quick else FULL_ROWS
    if args.rows:
        rows = [rows[int(i) - 1] for i in args.rows.split(",")]
    if args.repeats is None:
        args.repeats = 3 if args.quick else 7
    print(
        f"device={args.device} dtype={args.dtype} threads={torch.get_num_threads()} clock={args.clock} best-of={args.repeats} torch={torch.__version__}"
    )
    header = f"{'E':>3} {'k':>2} {'d':>4} {'h':>5} {'N':>6} | " + " | ".join(
        f"{m:>6} tok/s  x dense" for m in METHODS
    )
    print(header)
    print("-" * len(header))
    for E, k, d, h, N in rows:
        res = run_row(E, k, d, h, N, args)
        cells = []  # the row's profile (--profile) was printed above it
        for m in METHODS:
            if m in res:
                cells.append(f"{N / res[m]:>12,.0f} {res[m] / res['dense']:>6.2f}x")
            else:
                cells.append(f"{'-':>12} {'-':>7}")
        print(f"{E:>3} {k:>2} {d:>4} {h:>5} {N:>6} | " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
