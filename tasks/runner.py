"""Run one task for several encoder variants over seeds, sharing the data and the frozen embeddings.

What ``circuitml evaluate`` does, as a Python API: the data of a task (QoR labels, equivalence pairs, probability
graphs) is prepared once and reused by every variant and seed, so compared encoders see the same examples; a
frozen pretrained encoder does not depend on the seed, so it encodes the graphs once for all seeds.

Variants are ``(name, source, mode, head)``: e.g. ``("pretrained", DIR, "finetune", "mlp")`` against
``("scratch", DIR, "scratch", "mlp")`` (the same architecture, fresh weights), or the linear-probe pair
``("probe", DIR, "frozen", "linear")`` against ``("random", DIR, "random", "linear")``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from circuitml.tasks.common import TaskResult, TrainConfig, load_circuits, load_families

from circuitml.errors import ConfigError, DatasetError

__all__ = ["TASKS", "SPLITS", "Variant", "TaskData", "prepare_task", "run_variants"]

TASKS = ("qor", "equivalence", "probability")
# held-out unit per task: QoR has OpenABC-D's two settings, the circuit tasks hold out circuits or whole families
SPLITS = {
    "qor": ("designs", "recipes"),
    "equivalence": ("circuits", "families"),
    "probability": ("circuits", "families"),
}


@dataclass(frozen=True)
class Variant:
    name: str
    source: object  # encoder folder, module, or "scratch"
    mode: str  # frozen | finetune | scratch | random
    head: str = "mlp"
    zero_shot: bool = False  # with head "pretrained": the pretraining head, untrained but for its calibration


@dataclass
class TaskData:
    """A task's prepared data (what every variant and seed reuses)."""

    task: str
    setting: str = "gates"
    split: str = ""
    labels: object = None  # QoRLabels
    circuits: list = field(default_factory=list)
    prepared: object = None  # equivalence pairs / probability graphs / QoR graphs
    groups: list[str] | None = None  # family per circuit for the families split
    heldout: dict | None = None  # what excluding the pretraining corpus removed (tasks.heldout.unseen)
    test_designs: tuple[str, ...] = ()  # QoR: the design ids held out at every seed (--test-designs)


def prepare_task(
    task: str,
    data: str | Path,
    *,
    setting: str = "gates",
    split: str | None = None,
    limit: int | None = None,
    explicit_not: bool = True,
    exclude_seen: str | Path | None = None,
    test_designs: Sequence[str] = (),
    log: Callable[[str], None] = lambda s: None,
) -> TaskData:
    """Load and prepare ``task``'s data from ``data`` (QoR labels folder, dataset or circuit folder).

    ``exclude_seen``: a pretraining corpus (dataset folder); circuits whose function or name is in it are dropped
    (QoR: whole designs with all their rows; the counts go to ``heldout``).
    ``test_designs``: QoR only, shell patterns (fnmatch) over design ids and source paths; the matching designs
    are the test set at every seed (``designs`` split).
    """
    if task not in TASKS:
        raise ConfigError(f"task: expected one of {', '.join(TASKS)}, got {task!r}")
    split = split or SPLITS[task][0]
    if split not in SPLITS[task]:
        raise ConfigError(f"--split for {task}: expected one of {', '.join(SPLITS[task])}, got {split!r}")
    if test_designs and (task != "qor" or split != "designs"):
        raise ConfigError(f"--test-designs: only with qor and --split designs, got {task} {split}")
    out = TaskData(task, setting=setting, split=split)
    if task == "qor":
        from circuitml.datasets.qor import load_qor_labels

        from circuitml.graph import aig_to_data

        out.labels = load_qor_labels(data)
        n = len(out.labels.design_ids)
        if exclude_seen is not None:
            from circuitml.tasks.heldout import unseen

            log(f"fingerprinting the pretraining corpus {exclude_seen} to hold its designs out")
            keep, out.heldout = unseen([out.labels.aig(d) for d in range(n)], exclude_seen)
            if keep.size < n:
                seen = sorted(set(out.labels.design_ids) - {out.labels.design_ids[k] for k in keep})
                out.heldout["dropped"] = seen
                log(f"qor: dropped {len(seen)} designs of the pretraining corpus: {', '.join(seen)}")
                out.labels = out.labels.subset(keep)
                n = keep.size
            if n < 2:
                raise DatasetError(
                    f"{data}: {n} designs left outside the pretraining corpus; expected 2 or more"
                )
        if test_designs:
            picked = out.labels.match_designs(test_designs)
            for pattern in test_designs:
                if out.labels.match_designs([pattern]).size == 0:
                    raise ConfigError(f"--test-designs: {pattern!r} matches no design id or source of {data}")
            out.test_designs = tuple(out.labels.design_ids[d] for d in picked)
            if len(out.test_designs) == n:
                raise ConfigError(f"--test-designs: every design of {data} matches; none is left to train on")
            log(f"qor: {len(out.test_designs)} test designs named by --test-designs")
        log(f"qor: {n} designs, {len(out.labels)} labelled (design, recipe) rows; encoding graphs")
        out.prepared = [aig_to_data(out.labels.aig(d), explicit_not=explicit_not) for d in range(n)]
        return out
    out.circuits = load_circuits(data, limit=limit)
    if split == "families":
        out.groups = load_families(data, limit=limit)
    if exclude_seen is not None:
        from circuitml.tasks.heldout import unseen

        log(f"fingerprinting the pretraining corpus {exclude_seen} to hold its designs out")
        keep, out.heldout = unseen(out.circuits, exclude_seen)
        out.circuits = [out.circuits[k] for k in keep]
        out.groups = None if out.groups is None else [out.groups[k] for k in keep]
        log(f"kept {len(out.circuits)} circuits never seen in pretraining: {out.heldout}")
    if task == "equivalence":
        from circuitml.tasks.equivalence import prepare_equivalence

        log(f"preparing {setting} pairs for {len(out.circuits)} circuits (ABC runs once per circuit)")
        out.prepared = prepare_equivalence(out.circuits, setting, seed=0, explicit_not=explicit_not)
    else:
        from circuitml.tasks.probability import build_probability_graphs

        log(f"simulating {len(out.circuits)} circuits for signal-probability labels")
        out.prepared = build_probability_graphs(out.circuits, explicit_not=explicit_not)
    return out


def _run_one(
    data: TaskData,
    variant: Variant,
    cfg: TrainConfig,
    *,
    encoder_config: dict | None,
    metric: str,
    recipe_kind: str,
    qor_target: str = "z",
    progress=None,
    cache: list | None,
) -> TaskResult:
    common = dict(encoder_config=encoder_config, progress=progress, cache=cache)
    if data.task == "qor":
        from circuitml.tasks.qor import run_qor

        return run_qor(
            data.labels, variant.source, variant.mode, cfg, metric=metric, recipe_kind=recipe_kind,
            split=data.split, target=qor_target, graphs=data.prepared, **common,
        )  # fmt: skip
    if data.task == "equivalence":
        from circuitml.tasks.equivalence import run_equivalence

        return run_equivalence(
            data.circuits, variant.source, variant.mode, cfg, setting=data.setting, prepared=data.prepared,
            groups=data.groups, **common,
        )  # fmt: skip
    from circuitml.tasks.probability import run_probability

    return run_probability(
        data.circuits, variant.source, variant.mode, cfg, graphs=data.prepared, groups=data.groups, **common
    )


def run_variants(
    data: TaskData,
    variants: Sequence[Variant],
    seeds: Sequence[int],
    cfg: TrainConfig,
    *,
    encoder_config: dict | None = None,
    metric: str = "ands",
    recipe_kind: str = "conv",
    qor_target: str = "z",
    progress: Callable[[str, int, int, float], None] | None = None,
) -> dict[str, list[TaskResult]]:
    """Every variant at every seed (same budget); ``progress(run_label, epoch, epochs, loss)`` after each epoch."""
    runs: dict[str, list[TaskResult]] = {}
    for v in variants:
        # a frozen pretrained encoder gives the same embeddings at every seed: encode once
        cache: list | None = [] if v.mode == "frozen" else None
        for seed in seeds:
            run_cfg = replace(cfg, seed=seed, head=v.head, zero_shot=v.zero_shot)
            if data.test_designs:
                run_cfg = replace(run_cfg, test_groups=data.test_designs)
            label = f"{data.task} {v.name} seed {seed}"

            def tick(epoch: int, loss: float, label: str = label) -> None:
                if progress is not None:
                    progress(label, epoch, cfg.epochs, loss)

            result = _run_one(
                data, v, run_cfg, encoder_config=encoder_config, metric=metric, recipe_kind=recipe_kind,
                qor_target=qor_target, progress=tick, cache=cache,
            )  # fmt: skip
            runs.setdefault(v.name, []).append(result)
    return runs
