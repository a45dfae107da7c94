"""Bit-parallel simulation throughput: pattern-gate evaluations per second, against references run alongside.

Rows: EPFL and mockturtle circuits from ../shared/data (when present) and generated large random AIGs.
Columns: our level-by-level simulator with 1 and 2 threads (``Simulator.ones_count``, i.e. signal probabilities),
and two references measured in the same run on the same arrays:

* ``flat``: the same gather/xor/and/popcount traffic done as ONE numpy expression over all ANDs (ignores the
  level order, so its values are wrong): what numpy reaches on these bytes with no per-level overhead and no
  word chunking;
* ``naive``: a per-node Python loop over 64-bit words (Python ints), on the smallest circuits only.

Usage: ``python bench/bench_sim.py [--patterns 8192] [--repeat 3] [--quick]``
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from circuitml.aig import AIG
from circuitml.sim import Simulator, random_pi_words

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def random_layered_aig(num_pis: int, num_ands: int, window: int, seed: int) -> AIG:
    """A large random AIG whose fanins come from the previous ``window`` nodes (keeps depth realistic)."""
    rng = np.random.default_rng(seed)
    own = num_pis + 1 + np.arange(num_ands, dtype=np.int64)
    lo = np.maximum(1, own - window)
    fan = lo[:, None] + (rng.random((num_ands, 2)) * (own - lo)[:, None]).astype(np.int64)
    ands = 2 * fan + rng.integers(0, 2, size=(num_ands, 2))
    pos = 2 * own[-min(num_ands, 256) :]
    return AIG(num_pis=num_pis, ands=ands, pos=pos, name=f"rand{num_ands // 1000}k_w{window}")


def best_time(fn, repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def flat_reference(aig: AIG, words: np.ndarray) -> None:
    """Same bytes moved as one level of simulation over all ANDs (values wrong: levels ignored)."""
    vals = np.zeros((aig.num_nodes, words.shape[1]), dtype=np.uint64)
    vals[1 : aig.first_and] = words
    m0 = (-(aig.ands[:, 0] & 1)).astype(np.uint64)[:, None]
    m1 = (-(aig.ands[:, 1] & 1)).astype(np.uint64)[:, None]
    a = np.take(vals, aig.ands[:, 0] >> 1, axis=0)
    b = np.take(vals, aig.ands[:, 1] >> 1, axis=0)
    np.bitwise_xor(a, m0, out=a)
    np.bitwise_xor(b, m1, out=b)
    np.bitwise_and(a, b, out=vals[aig.first_and :])
    np.bitwise_count(vals).sum(axis=1)


def naive_reference(aig: AIG, words: np.ndarray) -> None:
    """Per-node Python loop, one 64-bit word (64 patterns) at a time."""
    full = (1 << 64) - 1
    rows = aig.ands.tolist()
    for w in range(words.shape[1]):
        v = [0] + [int(x) for x in words[:, w]] + [0] * aig.num_ands
        base = aig.first_and
        for i, (x, y) in enumerate(rows):
            a = v[x >> 1] ^ (full if x & 1 else 0)
            b = v[y >> 1] ^ (full if y & 1 else 0)
            v[base + i] = a & b


def circuits(quick: bool) -> list[tuple[str, AIG]]:
    from circuitml.formats import read_aiger

    out = []
    for pattern in ("lsils__benchmarks/*/*.aig", "lsils__mockturtle/experiments/benchmarks/*.aig"):
        for path in sorted(SHARED.glob(pattern)) if SHARED.is_dir() else []:
            out.append((f"{path.parent.name}/{path.stem}", read_aiger(path)))
    sizes = [(200_000, 2_000)] if quick else [(200_000, 2_000), (1_000_000, 20_000)]
    for n, window in sizes:
        out.append(("generated", random_layered_aig(256, n, window, seed=n)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patterns", type=int, default=8192)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="skip the 1M-node AIG")
    args = ap.parse_args()
    console = Console(width=200)
    table = Table(title=f"pattern-gate evaluations / s ({args.patterns} patterns)")
    for col in (
        "circuit",
        "ANDs",
        "levels",
        "1 thread",
        "2 threads",
        "flat ref",
        "ours/flat",
        "naive",
        "ours/naive",
    ):
        table.add_column(col, justify="right" if col != "circuit" else "left")
    totals = {"evals": 0.0, "t1": 0.0, "t2": 0.0, "flat": 0.0}
    for group, aig in circuits(args.quick):
        words = random_pi_words(aig.num_pis, args.patterns, seed=0)
        sim = Simulator(aig)
        evals = aig.num_ands * words.shape[1] * 64
        sim.threads = 1
        t1 = best_time(lambda: sim.ones_count(words), args.repeat)  # noqa: B023
        sim.threads = 2
        t2 = best_time(lambda: sim.ones_count(words), args.repeat)  # noqa: B023
        tf = best_time(lambda: flat_reference(aig, words), args.repeat)  # noqa: B023
        naive_cells = ["-", "-"]
        if aig.num_ands <= 2000:
            few = words[:, :2]
            tn = best_time(lambda: naive_reference(aig, few), 1)  # noqa: B023
            naive_rate = aig.num_ands * few.shape[1] * 64 / tn
            naive_cells = [f"{naive_rate:.2e}", f"{evals / min(t1, t2) / naive_rate:.0f}x"]
        totals["evals"] += evals
        totals["t1"] += t1
        totals["t2"] += t2
        totals["flat"] += tf
        table.add_row(
            f"{group}/{aig.name}" if group == "generated" else group,
            f"{aig.num_ands:,}",
            str(len(sim.levels)),
            f"{evals / t1:.2e}",
            f"{evals / t2:.2e}",
            f"{evals / tf:.2e}",
            f"{tf / min(t1, t2):.2f}",
            *naive_cells,
        )
    table.add_row(
        "ALL (total evals / total time)",
        "",
        "",
        f"{totals['evals'] / totals['t1']:.2e}",
        f"{totals['evals'] / totals['t2']:.2e}",
        f"{totals['evals'] / totals['flat']:.2e}",
        f"{totals['flat'] / min(totals['t1'], totals['t2']):.2f}",
        "",
        "",
    )
    console.print(table)
    console.print("target: >= 2.00e+09 pattern-gate evaluations / s on 2 cores")


if __name__ == "__main__":
    main()
