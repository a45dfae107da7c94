"""Two-way ANOVA of a QoR labels folder: design, recipe and interaction shares of each target's variance.

    python bench/qor_anova.py QOR_DIR [--metric ands] [--designs PATTERN,...]

For the raw count, its log, log(count / unoptimized count) and OpenABC-D's per-design z-score: the share of the
sum of squares that is the design, the recipe and their interaction (tasks/qor_anova.py), the interaction share
that the other designs of the same generator family predict (leave-one-design-out), and how many designs have at
most 2 distinct values over the recipes. ``--designs`` restricts to designs whose id or source matches.
"""

from __future__ import annotations

import argparse
import json
import signal

from circuitml.datasets.qor import load_qor_labels
from circuitml.tasks.qor_anova import qor_variance


def main() -> None:
    if hasattr(signal, "SIGPIPE"):  # `| head`: end quietly when the reader goes away, as cat and grep do
        signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("data")
    ap.add_argument("--metric", default="ands")
    ap.add_argument("--designs", default=None)
    args = ap.parse_args()
    labels = load_qor_labels(args.data)
    if args.designs:
        labels = labels.subset(
            labels.match_designs([p.strip() for p in args.designs.split(",") if p.strip()])
        )
    v = qor_variance(labels, args.metric)
    print(f"{args.data} ({args.metric}); {v['raw']['designs']} designs x {v['raw']['recipes']} recipes")
    print(f"{'target':<8}{'design':>9}{'recipe':>9}{'interact':>10}{'family-shared':>15}{'fam designs':>13}")
    for t, r in v.items():
        fam = r["family"]
        print(
            f"{t:<8}{r['frac_design']:>9.4f}{r['frac_recipe']:>9.4f}{r['frac_interaction']:>10.4f}"
            f"{fam['explained']:>15.4f}{fam['designs']:>13}"
        )
    print(f"designs with <= 2 distinct values over the recipes: {v['raw']['designs_with_at_most_2_values']}")
    print(json.dumps(v))


if __name__ == "__main__":
    main()
