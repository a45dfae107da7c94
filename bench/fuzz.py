"""Long-mode fuzzing of every circuitml reader: per reader, cases / clean errors / other exceptions / hangs / memory.

    nice -n 10 python bench/fuzz.py --cases 100000 --seed 0

The mutators and readers are those of ``circuitml/fuzz.py``, loaded here *by path*, so the same cases can be
run against another checkout of the project: ``/usr/bin/python bench/fuzz.py`` with that interpreter's
``circuitml`` measures that code (the before/after tables of issue 15).

Each reader runs in its own forked child, so one reader's peak memory is not another's and a crash is
counted instead of ending the run. Every case runs under an alarm (``--limit-s``, a "hang") and an
address-space cap of current size + ``MEMORY_BOUND`` (1 GiB; an allocation beyond it is a "memory" case).
Columns: ``clean`` = a project error of one line naming the file; ``vague`` = a project error that is
multi-line or does not name the file; ``other`` = any other exception (the contract's failures).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import multiprocessing as mp
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

ENGINE = Path(__file__).resolve().parent.parent / "circuitml" / "fuzz.py"


def load_engine():
    spec = importlib.util.spec_from_file_location("circuitml_fuzz_engine", ENGINE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module


def _child(name: str, cases: int, seed: int, limit_s: float, weight_total: float, queue) -> None:
    import torch

    torch.set_num_threads(1)
    engine = load_engine()
    targets = {t.name: t for t in engine.make_targets(Path(tempfile.mkdtemp(prefix="circuitml-fuzz-")))}
    target = targets[name]
    n = max(1, round(cases * target.weight / weight_total))
    target.weight = 1.0
    start_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    cpu = time.process_time()
    stats = engine.run_cases([target], n, seed=seed, limit_s=limit_s)[name]
    queue.put(
        {
            "reader": name,
            "cases": stats.cases,
            "ok": stats.ok,
            "clean": stats.clean,
            "vague": stats.vague,
            "other": stats.other,
            "hangs": stats.hangs,
            "memory": stats.memory,
            "cpu_s": round(time.process_time() - cpu, 1),
            "slowest_s": round(stats.slowest, 2),
            "max_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            "rss_growth_mb": round((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - start_rss) / 1024),
            "groups": dict(sorted(stats.groups.items(), key=lambda kv: -kv[1])),
        }
    )


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", type=int, default=10_000, help="total cases, split over readers by weight")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit-s", type=float, default=10.0, help="a case running longer is a hang")
    ap.add_argument("--readers", default="", help="comma-separated subset (default: all)")
    ap.add_argument("--json", type=Path, help="also write the table as JSON here")
    args = ap.parse_args()

    engine = load_engine()
    probe = engine.make_targets(Path(tempfile.mkdtemp(prefix="circuitml-fuzz-")))
    names = [t.name for t in probe]
    weight_total = sum(t.weight for t in probe)
    chosen = [n for n in names if not args.readers or n in args.readers.split(",")]
    import circuitml

    print(f"# circuitml from {Path(circuitml.__file__).resolve().parent.parent}; engine {ENGINE}")
    print(
        f"# cases={args.cases} seed={args.seed} limit={args.limit_s:g}s memory bound="
        f"{engine.MEMORY_BOUND >> 20} MiB; pid {os.getpid()}"
    )
    ctx = mp.get_context("fork")
    rows = []
    for name in chosen:
        queue = ctx.Queue()
        proc = ctx.Process(
            target=_child, args=(name, args.cases, args.seed, args.limit_s, weight_total, queue)
        )
        proc.start()
        try:
            row = queue.get(timeout=24 * 3600)
        except Exception:  # the child died (a crash counts against the reader)
            row = {"reader": name, "crashed": True}
        proc.join()
        if proc.exitcode:
            row["exitcode"] = proc.exitcode
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "groups"}), flush=True)

    header = (
        "| reader | cases | ok | clean errors | vague errors | other exceptions | hangs | over memory bound "
        "| max RSS MB | CPU s |"
    )
    print("\n" + header)
    print("|---" * (header.count("|") - 1) + "|")
    total = {k: 0 for k in ("cases", "ok", "clean", "vague", "other", "hangs", "memory")}
    for r in rows:
        if r.get("crashed"):
            print(f"| {r['reader']} | crashed (exit {r.get('exitcode')}) |")
            continue
        for k in total:
            total[k] += r[k]
        print(
            f"| {r['reader']} | {r['cases']} | {r['ok']} | {r['clean']} | {r['vague']} | {r['other']} | "
            f"{r['hangs']} | {r['memory']} | {r['max_rss_mb']} | {r['cpu_s']} |"
        )
    print(
        f"| **total** | {total['cases']} | {total['ok']} | {total['clean']} | {total['vague']} | "
        f"{total['other']} | {total['hangs']} | {total['memory']} | | |"
    )
    print("\nException groups (reader: count kind at place):")
    for r in rows:
        for g, c in list(r.get("groups", {}).items())[:12]:
            print(f"  {r['reader']}: {c} {g}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
