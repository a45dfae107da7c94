"""Unguided vs classifier-free guidance vs adapter guidance distillation on the load_digits diffusion model.

Per seed: a new denoiser (condition dropout 0.1), AGD adapters trained on CFG trajectories, then 50 samples per
class with each sampler at guidance scale ``w``; prints network evaluations per sample, sampling CPU seconds, class
accuracy of a digits classifier and the Fréchet distance of its features to real held-out digits.

    nice -n 10 python bench/bench_agd.py --seeds 0 1 2 --out agd.json
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from circuitml.tasks.guidance.digits import run_guidance

from circuitml.fileio import atomic_write


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--w", type=float, default=3.0)
    ap.add_argument("--out", type=Path, default=Path("agd.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    results = {}
    for seed in args.seeds:
        results[f"seed{seed}"] = run_guidance(seed=seed, w=args.w)
        for name, row in results[f"seed{seed}"].items():
            print(f"seed {seed} {name:9s} " + "  ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)
        atomic_write(args.out, json.dumps({"w": args.w, "results": results}, indent=2))


if __name__ == "__main__":
    main()
