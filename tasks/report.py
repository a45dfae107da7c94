"""Evaluation outputs: ``metrics.json``, a Markdown report, and plots (predicted vs true, per-design errors).

Comparisons run every encoder with the same seeds and budget; the report gives, per metric, the mean ± standard
deviation over seeds of each encoder and of the per-seed difference (pretrained − scratch), so the spread of the
gain is visible, not only its average.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from circuitml.tasks.common import TaskResult

from circuitml.fileio import atomic_write

__all__ = ["summarize", "write_report"]

# metrics where lower is better (the sign of a "gain" flips)
LOWER_IS_BETTER = {"mse", "mape", "mae"}
MAX_DESIGN_BARS = 30  # per_design_error.png: at most this many bars (0.5 inch each at 110 dpi)


def _mean_std(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0, "n": int(a.size)}


def summarize(runs: dict[str, list[TaskResult]], reference: str | None = "scratch") -> dict:
    """Aggregate runs per encoder label (mean ± std over seeds) and per-seed differences to ``reference``."""
    out: dict = {"encoders": {}, "differences": {}}
    for name, results in runs.items():
        metrics = results[0].metrics.keys()
        out["encoders"][name] = {
            "seeds": [r.seed for r in results],
            "metrics": {m: _mean_std([r.metrics[m] for r in results]) for m in metrics},
            "baseline": {m: _mean_std([r.baseline[m] for r in results]) for m in results[0].baseline},
            "runs": [r.summary() for r in results],
        }
    if reference in runs:
        ref = {r.seed: r for r in runs[reference]}
        for name, results in runs.items():
            if name == reference:
                continue
            diffs: dict[str, list[float]] = {}
            for r in results:
                if r.seed in ref:
                    for m, v in r.metrics.items():
                        diffs.setdefault(m, []).append(v - ref[r.seed].metrics[m])
            out["differences"][f"{name} - {reference}"] = {m: _mean_std(v) for m, v in diffs.items()}
    return out


def _write_text_atomic(path: Path, text: str) -> None:
    atomic_write(path, text, fsync=False)


def _fmt(s: dict[str, float]) -> str:
    return f"{s['mean']:.4g} ± {s['std']:.2g}"


def _plots(runs: dict[str, list[TaskResult]], out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    first = next(iter(runs.values()))[0]
    task = first.task
    fig, axes = plt.subplots(1, len(runs), figsize=(4.5 * len(runs), 4), squeeze=False)
    for ax, (name, results) in zip(axes[0], runs.items(), strict=True):
        r = results[0]
        if task == "equivalence":
            for lab, color in ((1.0, "tab:green"), (0.0, "tab:red")):
                ax.hist(
                    r.pred[r.true == lab],
                    bins=30,
                    range=(0, 1),
                    alpha=0.6,
                    color=color,
                    label=f"label {int(lab)}",
                )
            ax.set_xlabel("predicted probability of equivalence")
            ax.legend()
        else:
            ax.scatter(r.true, r.pred, s=4, alpha=0.4)
            lo, hi = float(min(r.true.min(), r.pred.min())), float(max(r.true.max(), r.pred.max()))
            ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
            ax.set_xlabel("true")
            ax.set_ylabel("predicted")
        ax.set_title(f"{task}: {name} (seed {r.seed})")
    fig.tight_layout()
    fig.savefig(out / "pred_vs_true.png", dpi=110)
    plt.close(fig)
    files.append("pred_vs_true.png")

    all_groups = sorted({int(g) for rs in runs.values() for g in np.unique(rs[0].group)})
    per = {}
    for name, results in runs.items():
        r = results[0]
        err = np.abs(r.pred - r.true)
        per[name] = np.array(
            [float(err[r.group == g].mean()) if np.any(r.group == g) else np.nan for g in all_groups]
        )
    # at most MAX_DESIGN_BARS designs keep their own bar (the worst by mean error over encoders); the rest are
    # averaged into one bar, so the plot stays readable (and a few thousand pixels wide) at any number of designs
    shown = np.arange(len(all_groups))
    if len(all_groups) > MAX_DESIGN_BARS:
        worst = np.argsort(
            -np.nan_to_num(np.nanmean(np.stack(list(per.values())), 0), nan=-1.0), kind="stable"
        )
        shown = np.sort(worst[: MAX_DESIGN_BARS - 1])
        rest = np.setdiff1d(np.arange(len(all_groups)), shown)
    ticks = [first.group_names[all_groups[i]] for i in shown]
    if len(shown) < len(all_groups):
        ticks.append(f"mean of {len(rest)} others")
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(ticks) + 3), 4))
    width = 0.8 / len(runs)
    for k, name in enumerate(runs):
        vals = list(per[name][shown])
        if len(shown) < len(all_groups):
            vals.append(float(np.nanmean(per[name][rest])))
        ax.bar(np.arange(len(ticks)) + k * width, vals, width, label=name)
    ax.set_xticks(np.arange(len(ticks)) + 0.4 - width / 2)
    ax.set_xticklabels(ticks, rotation=45, ha="right")
    ax.set_ylabel("mean |pred - true|")
    capped = f", {MAX_DESIGN_BARS - 1} worst of {len(all_groups)}" if len(shown) < len(all_groups) else ""
    ax.set_title(f"{task}: error per held-out design (seed {first.seed}{capped})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "per_design_error.png", dpi=110)
    plt.close(fig)
    files.append("per_design_error.png")
    return files


def write_report(
    runs: dict[str, list[TaskResult]],
    out: str | os.PathLike,
    *,
    config: dict | None = None,
    reference: str | None = "scratch",
) -> dict:
    """Write ``metrics.json``, ``report.md`` and the plots into ``out``; returns the summary."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarize(runs, reference=reference)
    summary["config"] = config or {}
    plots = _plots(runs, out)
    _write_text_atomic(out / "metrics.json", json.dumps(summary, indent=1))
    first = next(iter(runs.values()))[0]
    notes = {name: r[0].notes for name, r in runs.items()}
    if len(set(notes.values())) == 1:
        lines = [f"# circuitml evaluate: {first.task}", "", first.notes, ""]
    else:  # the variants differ in what the note states (e.g. a pretraining head vs the reference's MLP)
        lines = (
            [f"# circuitml evaluate: {first.task}", ""] + [f"- **{n}**: {t}" for n, t in notes.items()] + [""]
        )
    metrics = list(first.metrics)
    lines += ["| encoder | mode | seeds | " + " | ".join(metrics) + " |", "|---" * (3 + len(metrics)) + "|"]
    for name, enc in summary["encoders"].items():
        mode = runs[name][0].mode
        cells = [_fmt(enc["metrics"][m]) for m in metrics]
        lines.append(f"| {name} | {mode} | {len(enc['seeds'])} | " + " | ".join(cells) + " |")
    base = next(iter(summary["encoders"].values()))["baseline"]
    lines.append("| trivial baseline | - | - | " + " | ".join(_fmt(base[m]) for m in metrics) + " |")
    extra = [m for m in base if m not in metrics]
    if extra:
        lines += ["", "Other baselines: " + "; ".join(f"{m} {_fmt(base[m])}" for m in extra) + "."]
    if summary["differences"]:
        lines += ["", "Per-seed difference (same seeds, same budget), mean ± std over seeds:", ""]
        lines += ["| comparison | " + " | ".join(metrics) + " |", "|---" * (1 + len(metrics)) + "|"]
        for name, diff in summary["differences"].items():
            lines.append(f"| {name} | " + " | ".join(_fmt(diff[m]) for m in metrics) + " |")
        lines += [
            "",
            f"Lower is better for {', '.join(sorted(LOWER_IS_BETTER & set(metrics))) or 'none'}; higher for the rest.",
        ]
    lines += ["", *[f"![{p}]({p})" for p in plots], ""]
    if config:
        lines += ["## Configuration", "", "```json", json.dumps(config, indent=1), "```", ""]
    _write_text_atomic(out / "report.md", "\n".join(lines))
    return summary
