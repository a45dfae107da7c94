"""AdvMoE on scikit-learn's load_digits: dense CNN + AT, MoE-CNN + AT, MoE-CNN + AdvMoE (issue 14, item 6).

Standard accuracy (SA) and robust accuracy (RA, PGD at eps on [0, 1] pixels) on the held-out 25 %, mean ± std
over seeds. Every method trains the same number of epochs (AdvMoE spends two PGD attacks per batch).

    python bench/bench_advmoe.py --seeds 0 1 2 --epochs 5 --train-steps 3 --lr 0.003 --batch-size 32 --expert channels

``--expert channels`` gives the MoE-CNN the paper's experts (channel groups of the dense layers, ``k/E`` of
them per sample); ``full`` makes every expert a full-width convolution.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from circuitml.tasks.advmoe import EXPERTS, METHODS, AdvConfig, run_advmoe


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--train-steps", type=int, default=3, help="PGD iterations in training")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    ap.add_argument("--expert", choices=EXPERTS, default="full", help="MoE-CNN expert design")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows: dict[str, list[dict]] = {}
    for method in args.methods:
        for seed in args.seeds:
            t0 = time.process_time()
            r = run_advmoe(
                method,
                AdvConfig(
                    epochs=args.epochs,
                    eps=args.eps,
                    train_steps=args.train_steps,
                    lr=args.lr,
                    batch_size=args.batch_size,
                    expert=args.expert,
                    seed=seed,
                ),
            )
            r["cpu_s"] = time.process_time() - t0
            rows.setdefault(method, []).append(r)
            print(method, seed, {k: round(v, 4) for k, v in r.items()}, flush=True)
    print(
        f"\n| method | SA (mean ± std) | RA PGD-10 eps={args.eps} (mean ± std) | per-seed SA / RA | CPU s/run |"
    )
    print("|---|---|---|---|---|")
    for method, rs in rows.items():
        sa, ra = [r["sa"] for r in rs], [r["ra"] for r in rs]
        sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0  # noqa: E731
        seeds = ", ".join(f"{a:.3f}/{b:.3f}" for a, b in zip(sa, ra, strict=True))
        cpu = statistics.fmean(r["cpu_s"] for r in rs)
        print(
            f"| {method} | {statistics.fmean(sa):.3f} ± {sd(sa):.3f} | {statistics.fmean(ra):.3f} ± {sd(ra):.3f} "
            f"| {seeds} | {cpu:.0f} |"
        )


if __name__ == "__main__":
    main()
