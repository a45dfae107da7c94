"""QoR at scale: several pretrained encoders against one shared scratch run, each fine-tuned as `evaluate qor`.

    python bench/qor_scale.py --data QOR_DIR --out DIR --encoder deepgcn64-allobj-corpus \
        --encoder deepgcn64-funcrec-corpus [--split designs|recipes] [--test-designs '/work/shared/data/*'] \
        [--exclude-seen CORPUS] [--validation] [--target z|ratio] [--seeds 3] [--epochs 30]

The same runs as ``circuitml evaluate qor --encoder E --compare scratch --encoder-lr 1e-3 --freeze-layers 3
--threads 1`` for each ``E`` (every run seeds itself, so a variant's numbers do not depend on what ran before it),
but the scratch reference, identical for encoders of one architecture, is trained once instead of once per
encoder. Writes the usual ``report.md`` / ``metrics.json`` into ``--out`` and prints the table, the recipe-mean
baseline and each encoder's per-seed difference to scratch, with the CPU time.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from circuitml.tasks.common import TrainConfig, configure_runtime
from circuitml.tasks.report import write_report
from circuitml.tasks.runner import Variant, prepare_task, run_variants

from circuitml.encoders import load_encoder
from circuitml.errors import ConfigError


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, type=Path)
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--encoder", action="append", required=True)
    ap.add_argument("--split", default="designs")
    ap.add_argument("--test-designs", default=None)
    ap.add_argument("--exclude-seen", default=None)
    ap.add_argument("--validation", action="store_true")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--encoder-lr", type=float, default=1e-3)
    ap.add_argument("--freeze-layers", type=int, default=3)
    ap.add_argument("--metric", default="ands")
    ap.add_argument("--target", default="z", help="z | ratio (evaluate qor --target)")
    args = ap.parse_args()
    configure_runtime(1, "cpu")
    arch = [load_encoder(e).config for e in args.encoder]
    if any(a != arch[0] for a in arch):
        raise ConfigError("--encoder: expected encoders of one architecture (they share the scratch run)")
    t0 = time.process_time()
    patterns = (
        tuple(p.strip() for p in args.test_designs.split(",") if p.strip()) if args.test_designs else ()
    )
    data = prepare_task(
        "qor", args.data, split=args.split, explicit_not=load_encoder(args.encoder[0]).config.explicit_not,
        exclude_seen=args.exclude_seen, test_designs=patterns, log=print,
    )  # fmt: skip
    cfg = TrainConfig(
        epochs=args.epochs, encoder_lr=args.encoder_lr, freeze_layers=args.freeze_layers,
        validation=args.validation,
    )  # fmt: skip
    variants = [Variant(e, e, "finetune") for e in args.encoder]
    variants.append(Variant("scratch", args.encoder[0], "scratch"))

    def tick(label: str, epoch: int, epochs: int, loss: float) -> None:
        if epoch == epochs:
            print(
                f"{label}: {epochs} epochs, loss {loss:.4f}, {time.process_time() - t0:.0f} CPU-s", flush=True
            )

    runs = run_variants(
        data, variants, range(args.seeds), cfg, metric=args.metric, qor_target=args.target, progress=tick
    )
    cpu = time.process_time() - t0
    config = {**vars(args), "data": str(args.data), "out": str(args.out), "heldout": data.heldout,
              "test_designs": list(data.test_designs), "cpu_seconds": round(cpu, 1),
              "threads": torch.get_num_threads()}  # fmt: skip
    summary = write_report(runs, args.out, config=config, reference="scratch")
    print(json.dumps({"encoders": summary["encoders"], "differences": summary["differences"]}, indent=1))
    print(f"{len(runs)} variants x {args.seeds} seeds in {cpu:.0f} CPU-s; report: {args.out / 'report.md'}")


if __name__ == "__main__":
    main()
