"""QoR label throughput: recipes per second, batched ABC runs vs one ABC process per recipe, measured in one run.

    python bench/bench_qor_labels.py [--recipes 20] [DESIGN ...]

Default designs: ISCAS85 c432, c880 and OpenABC-D's ss_pcm from ../shared/data. The reference runs the same recipes
with one ABC process each (what a naive labeller does); the batched path runs them all in one process
(``run_recipes``), restoring the original with ``&put`` between recipes. Both give the same AND counts (checked).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from circuitml.datasets.qor import abc_backend, generate_recipes, run_recipes

from circuitml.formats import read_circuit

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
DEFAULT = [
    SHARED / "ispras__hdl-benchmarks/iscas85/bench/c432.bench",
    SHARED / "ispras__hdl-benchmarks/iscas85/bench/c880.bench",
    SHARED / "NYU-MLDA__OpenABC/bench_openabcd/ss_pcm_orig.bench",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("designs", nargs="*", type=Path)
    ap.add_argument("--recipes", type=int, default=20)
    args = ap.parse_args()
    designs = args.designs or [p for p in DEFAULT if p.is_file()]
    recipes = generate_recipes(args.recipes, seed=0)
    print(f"ABC backend: {abc_backend()[0]}; {len(recipes)} recipes x {len(designs)} designs")
    print(f"{'design':<16}{'ANDs':>7}{'batched rec/s':>15}{'per-recipe rec/s':>18}{'ratio':>8}")
    tot_b = tot_r = 0.0
    for path in designs:
        aig = read_circuit(path)
        run_recipes(aig, recipes[:1])  # warm the Yosys/ABC start-up cache
        t = time.perf_counter()
        batched = run_recipes(aig, recipes)
        tb = time.perf_counter() - t
        t = time.perf_counter()
        single = [run_recipes(aig, recipes[k : k + 1])[0] for k in range(len(recipes))]
        tr = time.perf_counter() - t
        assert [o.ands for o in batched] == [o.ands for o in single], "batched and single runs disagree"
        tot_b, tot_r = tot_b + tb, tot_r + tr
        n = len(recipes)
        print(f"{path.stem:<16}{aig.num_ands:>7}{n / tb:>15.2f}{n / tr:>18.2f}{tr / tb:>8.2f}")
    n = len(recipes) * len(designs)
    print(f"{'total':<16}{'':>7}{n / tot_b:>15.2f}{n / tot_r:>18.2f}{tot_r / tot_b:>8.2f}")


if __name__ == "__main__":
    main()
