"""Seed ensembles of QA readers (``tasks.qa.ensemble``) against their members alone, from readers kept by
``bench_qa_minilm.py --keep-models DIR``.

Each group of seeds is combined with :func:`ensemble_qa` (logits averaged, the decision refitted on the shared
validation contexts) and scored on the held-out contexts; the members' own rows come from the same run. Prints
EM/F1 with the HasAns/NoAns split, the F1 at the tuned threshold and with the verifier when the readers were
trained with it, the reader diagnostics (forced-answer HasAns F1, answerability AUC) on validation and held-out
questions, and the CPU time of reading the held-out questions: the ensemble against one member, in the same run.

    python bench/bench_qa_minilm.py --variants switch --seeds 0 1 2 3 4 --keep-models runs/readers ...
    python bench/bench_qa_ensemble.py --models runs/readers/switch --groups 0,1,2 1,2,3 2,3,4 --out ens.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from circuitml.tasks.qa.train import (
    _data_split,
    _validation_split,
    ensemble_qa,
    load_qa_model,
    predict_examples,
)

from circuitml.fileio import atomic_write


def _cpu_seconds(model_dir: Path, examples, repeats: int) -> float:
    """Best-of-``repeats`` CPU time of reading ``examples`` with the saved model (reader and decision)."""
    model, tok, cfg = load_qa_model(model_dir)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.process_time()
        predict_examples(model, tok, examples, cfg)
        best = min(best, time.process_time() - t0)
    return best


def _row(name: str, m: dict) -> str:
    ev = m["eval"]
    vr, er = m.get("val_reader", {}), m.get("eval_reader", {})
    plain = m.get("eval_plain_threshold", ev)["f1"]
    return (
        f"| {name} | {ev['exact']:.1f} | {ev['f1']:.1f} | {plain:.1f} | {ev.get('HasAns_f1', 0):.1f} | "
        f"{ev.get('NoAns_exact', 0):.1f} | {m.get('val_f1_plain_threshold', m.get('val_f1', float('nan'))):.1f} | "
        f"{vr.get('forced_HasAns_f1', float('nan')):.1f} / {vr.get('answerability_auc', float('nan')):.3f} | "
        f"{er.get('forced_HasAns_f1', float('nan')):.1f} / {er.get('answerability_auc', float('nan')):.3f} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", type=Path, required=True, help="folder of seed<N> readers")
    ap.add_argument("--groups", nargs="+", required=True, help="comma-separated seeds per ensemble")
    ap.add_argument(
        "--timing-repeats", type=int, default=1, help="best of N CPU timings of reading (0: none)"
    )
    ap.add_argument("--out", type=Path, default=Path("qa_ensemble.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)

    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    header = (
        "| run | EM | F1 | F1 tuned threshold | HasAns F1 | NoAns | val F1 tuned threshold | val forced F1 / AUC | "
        "test forced F1 / AUC |"
    )
    for group in args.groups:
        seeds = [int(s) for s in group.split(",")]
        key = "ensemble/" + "+".join(map(str, seeds))
        if key in results:  # resume
            continue
        dirs = [args.models / f"seed{s}" for s in seeds]
        with tempfile.TemporaryDirectory() as tmp:
            # the members' own rows are their runs' metrics (config.json): no extra passes here
            m = ensemble_qa(dirs, Path(tmp) / "ensemble", threads=1, member_metrics=False)
            _, eval_ex, _ = _data_split(load_qa_model(dirs[0])[2])
            if args.timing_repeats:
                m["cpu_seconds_read_eval"] = _cpu_seconds(
                    Path(tmp) / "ensemble", eval_ex, args.timing_repeats
                )
                m["cpu_seconds_read_eval_one_member"] = _cpu_seconds(dirs[0], eval_ex, args.timing_repeats)
        results[key] = m
        print(header + "\n|---|---|---|---|---|---|---|---|---|", flush=True)
        print(_row(key, m), flush=True)
        for seed in seeds:
            own = json.loads((args.models / f"seed{seed}" / "config.json").read_text())["metrics"]
            print(_row(f"seed {seed} alone", own), flush=True)
        cfg = load_qa_model(dirs[0])[2]
        train_ex, _, version = _data_split(cfg)
        _, val_ex = _validation_split(cfg, train_ex, version == "v2.0")
        m["val_baseline_no_answer_f1"] = 100.0 * sum(e.is_impossible for e in val_ex) / max(1, len(val_ex))
        print(
            f"always no answer: validation F1 {m['val_baseline_no_answer_f1']:.1f}, held-out F1 "
            f"{m['eval_baseline_no_answer']['f1']:.1f}",
            flush=True,
        )
        if args.timing_repeats:
            print(
                f"reading {len(eval_ex)} held-out questions: {m['cpu_seconds_read_eval']:.1f} CPU-s vs "
                f"{m['cpu_seconds_read_eval_one_member']:.1f} for one member "
                f"({m['cpu_seconds_read_eval'] / m['cpu_seconds_read_eval_one_member']:.2f}x)",
                flush=True,
            )
        atomic_write(args.out, json.dumps(results, indent=2))
    summarize(results)


def summarize(results: dict) -> None:
    """Mean ± population std over the ensembles present."""
    runs = [v for k, v in results.items() if k.startswith("ensemble/")]
    if not runs:
        return
    cols = {
        "EM": lambda m: m["eval"]["exact"],
        "F1": lambda m: m["eval"]["f1"],
        "F1 tuned threshold": lambda m: m.get("eval_plain_threshold", m["eval"])["f1"],
        "HasAns F1": lambda m: m["eval"].get("HasAns_f1", 0.0),
        "NoAns": lambda m: m["eval"].get("NoAns_exact", 0.0),
        "val F1 tuned threshold": lambda m: m.get("val_f1_plain_threshold", m.get("val_f1", float("nan"))),
    }
    print(
        f"ensembles ({len(runs)}): "
        + ", ".join(
            f"{name} {np.mean([f(m) for m in runs]):.1f} ± {np.std([f(m) for m in runs]):.1f}"
            for name, f in cols.items()
        )
    )


if __name__ == "__main__":
    main()
