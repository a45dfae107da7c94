"""Two-way ANOVA of QoR labels: how much of the variance is the design, the recipe, and their interaction.

Fisher's two-way layout without replication (one observation per cell; R. A. Fisher, "Statistical Methods for
Research Workers", 1925, ch. VII; D. C. Montgomery, "Design and Analysis of Experiments", Wiley, Sec. 5.3.5):

    y_dr = mu + a_d + b_r + (ab)_dr,   sum_dr (y_dr - mu)^2 = R sum_d a_d^2 + D sum_r b_r^2 + sum_dr (ab)_dr^2

with ``a_d = mean_r y_dr - mu``, ``b_r = mean_d y_dr - mu`` and the interaction the residual of the additive fit.
ABC is deterministic, so there is no noise term: the interaction is exactly what a QoR model must read from the
design beyond "how good is this recipe on average". OpenABC-D's per-design z-score removes ``a_d`` by
construction, the recipe-mean baseline predicts ``b_r``, so on the z-scored target the design embedding can only
add the interaction share.

Whether that share is *learnable* from similar designs is measured by :func:`shared_interaction`: each design's
interaction row is predicted by the mean interaction row of the other designs of its group (its generator
family), leave-one-design-out; the explained fraction is what a model that recognised the family perfectly
would gain.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
from circuitml.datasets.qor import QoRLabels

from circuitml.errors import DatasetError

__all__ = ["anova_two_way", "qor_matrix", "shared_interaction", "design_family", "qor_variance"]

TARGETS = ("raw", "log", "ratio", "z")
_FAMILY = re.compile(r"^(?P<family>.+)_w\d+_s\d+$")  # circuitml data generate's design names


def anova_two_way(y: np.ndarray) -> dict[str, float]:
    """Sums of squares of a complete ``[D, R]`` table and each effect's share of the total."""
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 2 or min(y.shape) < 2:
        raise DatasetError(
            f"anova: expected a [designs, recipes] table with 2 or more of each, got {y.shape}"
        )
    mu = y.mean()
    a = y.mean(axis=1, keepdims=True) - mu
    b = y.mean(axis=0, keepdims=True) - mu
    ab = y - mu - a - b
    out = {
        "ss_design": float(y.shape[1] * (a**2).sum()),
        "ss_recipe": float(y.shape[0] * (b**2).sum()),
        "ss_interaction": float((ab**2).sum()),
        "ss_total": float(((y - mu) ** 2).sum()),
    }
    total = out["ss_total"] if out["ss_total"] > 0 else 1.0
    for k in ("design", "recipe", "interaction"):
        out[f"frac_{k}"] = out[f"ss_{k}"] / total
    return out


def qor_matrix(labels: QoRLabels, metric: str = "ands", target: str = "z") -> tuple[np.ndarray, np.ndarray]:
    """``([D', R] table, design indices)`` over the designs labelled under every recipe; ``target``: ``raw``
    counts, ``log`` counts (multiplicative effects become additive), ``ratio``, the log of the count over the
    unoptimized design's (how much the recipe removes), or the per-design ``z`` score."""
    if target not in TARGETS:
        raise DatasetError(f"anova target: expected one of {', '.join(TARGETS)}, got {target!r}")
    d_n, r_n = len(labels.design_ids), labels.recipes.shape[0]
    y = labels.targets(metric) if target == "z" else labels.values[metric]
    if target in ("log", "ratio"):
        y = np.log(np.maximum(y, 1.0))
    if target == "ratio":
        y = y - np.log(np.maximum(labels.originals[metric], 1.0))[labels.design]
    table = np.full((d_n, r_n), np.nan)
    table[labels.design, labels.recipe] = y
    complete = np.flatnonzero(~np.isnan(table).any(axis=1))
    return table[complete], complete


def shared_interaction(y: np.ndarray, groups: Sequence[str | None]) -> dict[str, float]:
    """Share of the interaction sum of squares that the other designs of the same group predict
    (leave-one-design-out mean of their interaction rows); designs without a group or alone in theirs are left
    out of both sums."""
    y = np.asarray(y, dtype=np.float64)
    mu = y.mean()
    ab = y - y.mean(axis=1, keepdims=True) - y.mean(axis=0, keepdims=True) + mu
    names = sorted({g for g in groups if g is not None})
    if not names:
        return {"designs": 0, "groups": 0, "explained": float("nan")}
    gid = np.array([names.index(g) if g is not None else -1 for g in groups])
    size = np.bincount(gid[gid >= 0], minlength=len(names))
    use = (gid >= 0) & (size[np.maximum(gid, 0)] >= 2)
    if not use.any():
        return {"designs": 0, "groups": 0, "explained": float("nan")}
    sums = np.zeros((len(names), y.shape[1]))
    np.add.at(sums, gid[use], ab[use])
    # the other members' mean: (group sum - own row) / (size - 1)
    loo = (sums[gid[use]] - ab[use]) / (size[gid[use]] - 1)[:, None]
    ss = (ab[use] ** 2).sum()
    explained = 1.0 - ((ab[use] - loo) ** 2).sum() / ss if ss > 0 else float("nan")
    return {"designs": int(use.sum()), "groups": int((size >= 2).sum()), "explained": float(explained)}


def design_family(name: str) -> str | None:
    """The generator family of a design named ``<family>_w<width>_s<seed>``; ``None`` for other designs."""
    m = _FAMILY.match(name)
    return m.group("family") if m else None


def qor_variance(labels: QoRLabels, metric: str = "ands") -> dict[str, dict]:
    """For each target (raw, log, ratio, z): the ANOVA shares, and the interaction share the design's family predicts."""
    out: dict[str, dict] = {}
    for target in TARGETS:
        table, designs = qor_matrix(labels, metric, target)
        row = anova_two_way(table)
        row["designs"], row["recipes"] = int(table.shape[0]), int(table.shape[1])
        fams = [design_family(labels.design_ids[d]) for d in designs]
        row["family"] = shared_interaction(table, fams)
        # designs whose recipes hardly differ: their z-scores are a few spikes, not a ranking
        row["designs_with_at_most_2_values"] = int(
            sum(np.unique(r).size <= 2 for r in qor_matrix(labels, metric, "raw")[0])
        )
        out[target] = row
    return out
