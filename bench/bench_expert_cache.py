"""Read-ME's lookahead expert cache against a demand-fetched LRU cache, feeding the expert computation.

A pre-gated (``read_me``) stack of MoE layers computes its FFN experts with the weights its cache serves; the
weights live in an :class:`~circuitml.moe.stack.ExpertStore` (a memory-mapped safetensors file: the slow tier).
Over a stream of small batches (few tokens, so each layer uses only some experts) this counts, per cache:
demands that found their expert resident (hits) or had to wait for a fetch (misses), reads from the store, and
the most experts resident at once. Every run's outputs are checked against the all-resident model.

    python bench/bench_expert_cache.py --layers 6 --experts 16 --slots 16 32 --tokens 4 --batches 200
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import torch
from circuitml.moe import FFNExperts, MoEBlock
from circuitml.moe.stack import ExpertStore, LookaheadExpertCache, MoEStack, build_router_stack


def forward(blocks, stack, x, cache=None):
    run = stack.start(router_input=x, cache=cache)
    h = x
    for i, block in enumerate(blocks):
        h = h + block(h, **run.ctx(i)).out
    return h


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--experts", type=int, default=16)
    ap.add_argument("--d-model", type=int, default=32)
    ap.add_argument("--slots", type=int, nargs="+", default=[16, 32])
    ap.add_argument("--tokens", type=int, default=4, help="tokens per batch")
    ap.add_argument("--batches", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    routers = build_router_stack(
        "read_me", args.layers, d_model=args.d_model, num_experts=args.experts, top_k=2
    )
    blocks = [MoEBlock(r, FFNExperts(args.experts, args.d_model, 2 * args.d_model)).eval() for r in routers]
    stack = MoEStack(routers)
    gen = torch.Generator().manual_seed(args.seed + 1)
    stream = [torch.randn(args.tokens, args.d_model, generator=gen) for _ in range(args.batches)]
    want = [forward(blocks, stack, x) for x in stream]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "experts.safetensors"
        ExpertStore.save(path, [b.experts for b in blocks])
        print("| slots | cache | hits | misses | hit rate | store reads | peak resident |")
        print("|---|---|---|---|---|---|---|")
        for slots in args.slots:
            for name, lookahead in (
                ("demand LRU", None),
                ("lookahead 0", 0),
                ("lookahead 1", 1),
                ("lookahead 2", 2),
            ):
                store = ExpertStore.open(path)
                cache = LookaheadExpertCache(slots, store.fetch, lookahead=lookahead)
                for x, ref in zip(stream, want, strict=True):
                    torch.testing.assert_close(forward(blocks, stack, x, cache), ref, rtol=0, atol=1e-5)
                print(
                    f"| {slots} | {name} | {cache.hits} | {cache.misses} | {cache.hit_rate:.3f} | {store.reads} "
                    f"| {cache.peak} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
