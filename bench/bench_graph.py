"""File → graph tensors: nodes per second, ours against aigverse on the same AIGER files, in one run.

Ours: ``circuitml.formats.read_aiger`` + ``circuitml.graph.aig_to_data`` (explicit NOT nodes, PO nodes, forward
and reverse levels, torch tensors); also with ``explicit_not=False``. aigverse: ``aigverse.io.read_aiger_into_aig``
+ ``Aig.to_graph_tensors()`` (its defaults: integer node types, complement edge attribute, forward levels).
``ours+sched`` adds the level schedule (:func:`circuitml.graph.level_schedule`, what the level-wise encoders
run on) and ``numpy path`` is the same with the compiled kernels (:mod:`circuitml.kernels`, numba) switched off.
Each side counts the nodes of its own output; ``AIG nodes/s`` divides both by the same count (constant + PIs + ANDs
+ POs of the file) so the ratio compares like with like. Times are best-of-``--repeat`` process CPU time, which
keeps the comparison fair on a machine shared with other jobs.

``--stages c17,dec`` instead times the stages of those files (read, graph, schedule, the three chained, and
aigverse) as CPU time per call, best of ``--repeat`` loops of ``--calls`` calls each (small files take tens of
microseconds, below what one timed call resolves), and ``--profile`` adds a cProfile of the chained calls.

``--ascii`` runs the same table on the same circuits written as ASCII ``.aag`` files (aigverse:
``read_ascii_aiger_into_aig``).

Usage: ``python bench/bench_graph.py [--repeat 5] [--ascii] [--stages c17 [--calls 2000] [--profile]]``
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import tempfile
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from circuitml import kernels
from circuitml.formats import read_aiger, write_aiger
from circuitml.graph import aig_to_data, level_schedule

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def best_cpu(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        t = time.process_time()
        out = fn()
        best = min(best, time.process_time() - t)
    return best, out


def per_call_cpu(fn, repeat: int, calls: int) -> float:
    """Best-of-``repeat`` CPU time of one call, each loop timing ``calls`` calls."""
    fn()
    best = float("inf")
    for _ in range(repeat):
        t = time.process_time()
        for _ in range(calls):
            fn()
        best = min(best, (time.process_time() - t) / calls)
    return best


def stages(files: list[Path], repeat: int, calls: int, profile: bool, read_aiger_into_aig) -> None:
    """Per-stage CPU time of each file, and optionally where the chained calls spend it."""
    console = Console(width=200)
    table = Table(title=f"per-stage CPU time per call (us), best of {repeat} x {calls} calls")
    for col in (
        "file",
        "read_aiger",
        "aig_to_data",
        "level_schedule",
        "chained",
        "aigverse",
        "aigverse/chained",
    ):
        table.add_column(col, justify="left" if col == "file" else "right")
    for path in files:
        aig = read_aiger(path)
        data = aig_to_data(aig)

        def schedule(data=data) -> None:
            data._store.__dict__.pop("_level_schedule_cache", None)  # noqa: SLF001 - time the computation, not the cache
            level_schedule(data)

        times = [
            per_call_cpu(fn, repeat, calls)
            for fn in (
                lambda: read_aiger(path),  # noqa: B023
                lambda: aig_to_data(aig),  # noqa: B023
                schedule,
                lambda: level_schedule(aig_to_data(read_aiger(path))),  # noqa: B023
                lambda: read_aiger_into_aig(str(path)).to_graph_tensors(),  # noqa: B023
            )
        ]
        table.add_row(path.stem, *(f"{1e6 * t:.1f}" for t in times), f"{times[4] / times[3]:.2f}")
        if profile:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(calls):
                level_schedule(aig_to_data(read_aiger(path)))
            prof.disable()
            console.print(f"cProfile of {calls} chained calls on {path.stem} (tottime, top 15):")
            pstats.Stats(prof).sort_stats("tottime").print_stats(15)
    console.print(table)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--stages", default="", help="comma-separated file stems: per-stage times instead")
    ap.add_argument("--calls", type=int, default=2000, help="calls per timed loop with --stages")
    ap.add_argument("--profile", action="store_true", help="with --stages: cProfile the chained calls")
    ap.add_argument("--ascii", action="store_true", help="the same circuits as ASCII .aag files")
    args = ap.parse_args()
    torch.set_num_threads(1)
    try:
        from aigverse.io import read_aiger_into_aig, read_ascii_aiger_into_aig
    except ImportError:
        raise SystemExit('aigverse is not installed: pip install "circuitml[aigverse]"') from None
    files = []
    for pattern in ("lsils__benchmarks/*/*.aig", "lsils__mockturtle/experiments/benchmarks/*.aig"):
        files += sorted(SHARED.glob(pattern)) if SHARED.is_dir() else []
    if not files:
        raise SystemExit(f"no .aig files under {SHARED}")
    if args.ascii:
        tmp = tempfile.TemporaryDirectory(prefix="bench_graph_")  # removed when the run ends
        ascii_files = []
        for path in files:
            target = Path(tmp.name) / path.parent.name / f"{path.stem}.aag"
            target.parent.mkdir(exist_ok=True)
            write_aiger(read_aiger(path), target)
            ascii_files.append(target)
        files, read_aiger_into_aig = ascii_files, read_ascii_aiger_into_aig
    if args.stages:
        wanted = args.stages.split(",")
        chosen = [p for stem in wanted for p in files if p.stem == stem]
        if len(chosen) < len(wanted):
            raise SystemExit(f"--stages: no such file among {sorted({p.stem for p in files})}")
        stages(chosen, args.repeat, args.calls, args.profile, read_aiger_into_aig)
        return

    console = Console(width=200)
    table = Table(title="file -> graph tensors (best-of CPU time)")
    cols = (
        "file",
        "AIG nodes",
        "ours nodes",
        "ours ms",
        "ours+sched ms",
        "ours-edgeattr ms",
        "numpy path ms",
        "aigverse nodes",
        "aigverse ms",
    )
    for col in (*cols, "AIG nodes/s ours", "AIG nodes/s aigverse", "ours/aigverse", "ours+sched/aigverse"):
        table.add_column(col, justify="left" if col == "file" else "right")
    tot = dict.fromkeys(("aig", "ours", "sched", "attr", "numpy", "av"), 0.0)

    def numpy_path(path: Path) -> None:
        kernels.HAVE_NUMBA, compiled = False, kernels.HAVE_NUMBA
        try:
            level_schedule(aig_to_data(read_aiger(path)))
        finally:
            kernels.HAVE_NUMBA = compiled

    for path in files:
        t_ours, data = best_cpu(lambda: aig_to_data(read_aiger(path)), args.repeat)  # noqa: B023
        t_sched, _ = best_cpu(lambda: level_schedule(aig_to_data(read_aiger(path))), args.repeat)  # noqa: B023
        t_attr, _ = best_cpu(lambda: aig_to_data(read_aiger(path), explicit_not=False), args.repeat)  # noqa: B023
        t_np, _ = best_cpu(lambda: numpy_path(path), args.repeat)  # noqa: B023
        t_av, tensors = best_cpu(lambda: read_aiger_into_aig(str(path)).to_graph_tensors(), args.repeat)  # noqa: B023
        aig = read_aiger(path)
        n_aig = aig.num_nodes + aig.num_pos
        for key, val in (("aig", n_aig), ("ours", t_ours), ("sched", t_sched), ("attr", t_attr)):
            tot[key] += val
        tot["numpy"] += t_np
        tot["av"] += t_av
        table.add_row(
            f"{path.parent.name}/{path.stem}",
            f"{n_aig:,}",
            f"{data.num_nodes:,}",
            *(f"{1e3 * t:.2f}" for t in (t_ours, t_sched, t_attr, t_np)),
            f"{len(tensors['node_attr']):,}",
            f"{1e3 * t_av:.2f}",
            f"{n_aig / t_ours:.3g}",
            f"{n_aig / t_av:.3g}",
            f"{t_av / t_ours:.2f}",
            f"{t_av / t_sched:.2f}",
        )
    table.add_row(
        "ALL",
        f"{int(tot['aig']):,}",
        "",
        *(f"{1e3 * tot[k]:.1f}" for k in ("ours", "sched", "attr", "numpy")),
        "",
        f"{1e3 * tot['av']:.1f}",
        f"{tot['aig'] / tot['ours']:.3g}",
        f"{tot['aig'] / tot['av']:.3g}",
        f"{tot['av'] / tot['ours']:.2f}",
        f"{tot['av'] / tot['sched']:.2f}",
    )
    console.print(table)
    console.print(f"compiled kernels: {'numba' if kernels.HAVE_NUMBA else 'off (numpy path)'}")
    console.print("ours/aigverse > 1 means ours is faster; target: >= 1")


if __name__ == "__main__":
    main()
