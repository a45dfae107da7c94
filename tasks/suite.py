"""The pretrained-vs-scratch proof (issue 11, item 6) as one run writing one report.

Rows, each over the same seeds and budget for every encoder compared, per-seed differences reported:

* **fine-tuned vs scratch** (MLP heads): signal probability MAE and gate-/circuit-level equivalence on circuits
  never seen in pretraining; QoR with held-out designs and with held-out recipes on seen designs (OpenABC-D's
  two settings); optionally one row with whole families held out from pretraining *and* from the task's training
  split (an encoder pretrained without those families);
* **linear probe**: the frozen pretrained encoder + a linear head against the same architecture at random
  initialisation, frozen, + the same head;
* **ablation**: the linear probe of every encoder of an objective ablation, against the same random reference;
* **zero-shot**: the frozen pretrained encoder with its matching pretraining head (:mod:`circuitml.pretrain.heads`),
  nothing trained but the head's calibration, against scratch trained on the labels.

``finetune_head="pretrained"`` starts the fine-tuned rows' head from the pretraining head where the task has one
(probability, equivalence); QoR has none and keeps the MLP; every row's report names the head it used.

A row *meets its target* when the mean per-seed improvement reaches the target (probability MAE −15 %,
equivalence F1 +5 points, QoR MSE −10 %, relative to the reference's mean) and exceeds the standard deviation of
the per-seed differences.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from circuitml.tasks.common import TrainConfig
from circuitml.tasks.report import write_report
from circuitml.tasks.runner import TaskData, Variant, prepare_task, run_variants

from circuitml.fileio import atomic_write
from circuitml.pretrain.heads import TASK_HEADS

__all__ = ["Row", "TARGETS", "proof_rows", "run_suite"]

# main metric per task, the target improvement, and whether it is relative to the reference's mean
TARGETS = {
    "probability": ("mae", -0.15, True),
    "equivalence": ("f1", 0.05, False),
    "qor": ("mse", -0.10, True),
}


@dataclass(frozen=True)
class Row:
    name: str
    table: str  # "finetune" | "probe" | "ablation" | "zeroshot"
    task: str
    data: str
    encoder: str
    setting: str = "gates"
    split: str | None = None
    test_groups: tuple[str, ...] = ()
    exclude_seen: str | None = None


def proof_rows(
    encoder: str,
    *,
    circuits: str,
    qor: str | None = None,
    families: tuple[str, str, tuple[str, ...]] | None = None,
    ablation: dict[str, str] | None = None,
    corpus: str | None = None,
) -> list[Row]:
    """The rows of the proof. ``families``: ``(encoder pretrained without them, dataset, held-out families)``;
    ``corpus``: the pretraining corpus whose designs every circuit row drops."""
    rows = [
        Row(
            "probability · unseen circuits", "finetune", "probability", circuits, encoder, exclude_seen=corpus
        ),
        Row("equivalence · gates", "finetune", "equivalence", circuits, encoder, exclude_seen=corpus),
        Row(
            "equivalence · circuits",
            "finetune",
            "equivalence",
            circuits,
            encoder,
            "circuits",
            exclude_seen=corpus,
        ),
    ]
    if qor:
        rows += [
            Row(
                "qor · held-out designs",
                "finetune",
                "qor",
                qor,
                encoder,
                split="designs",
                exclude_seen=corpus,
            ),
            Row(
                "qor · held-out recipes",
                "finetune",
                "qor",
                qor,
                encoder,
                split="recipes",
                exclude_seen=corpus,
            ),
        ]
    if families:
        fam_encoder, fam_data, held = families
        # no corpus filter: the test families are absent from this encoder's corpus as a whole, while the full
        # corpus (of the other encoders) holds designs of them, which the filter would drop
        rows.append(
            Row(
                f"probability · families {','.join(held)} held out", "finetune", "probability", fam_data,
                fam_encoder, split="families", test_groups=held,
            )
        )  # fmt: skip
    probe_tasks = [("probability", circuits, "gates", None), ("equivalence", circuits, "gates", None)]
    if qor:
        probe_tasks.append(("qor", qor, "gates", "designs"))
    for task, data, setting, split in probe_tasks:
        rows.append(Row(f"{task} · probe", "probe", task, data, encoder, setting, split, exclude_seen=corpus))
    for name, path in (ablation or {}).items():
        for task, data, setting, split in probe_tasks:
            rows.append(
                Row(f"{task} · {name}", "ablation", task, data, path, setting, split, exclude_seen=corpus)
            )
    for task, setting in TASK_HEADS:
        name = f"{task} · {setting} · zero-shot" if task == "equivalence" else f"{task} · zero-shot"
        rows.append(Row(name, "zeroshot", task, circuits, encoder, setting, exclude_seen=corpus))
    return rows


def row_head(row: Row, finetune_head: str) -> str:
    """The head of a row's pretrained side: the pretraining head where one exists for the task, else an MLP."""
    if row.table == "zeroshot" or (finetune_head == "pretrained" and row.table == "finetune"):
        return "pretrained" if (row.task, row.setting) in TASK_HEADS else "mlp"
    return "mlp" if row.table == "finetune" else "linear"


def _variants(row: Row, finetune_head: str = "mlp") -> list[Variant]:
    head = row_head(row, finetune_head)
    if row.table in ("finetune", "zeroshot"):
        mode = "frozen" if row.table == "zeroshot" else "finetune"
        return [
            Variant("pretrained", row.encoder, mode, head, zero_shot=row.table == "zeroshot"),
            Variant("scratch", row.encoder, "scratch"),
        ]
    return [
        Variant("pretrained", row.encoder, "frozen", "linear"),
        Variant("random", row.encoder, "random", "linear"),
    ]


def _verdict(task: str, summary: dict, reference: str) -> dict:
    metric, target, relative = TARGETS[task]
    ref = summary["encoders"][reference]["metrics"][metric]["mean"]
    diff = summary["differences"][f"pretrained - {reference}"][metric]
    gain = diff["mean"] / abs(ref) if relative and ref else diff["mean"]
    better = gain <= target if target < 0 else gain >= target
    return {
        "metric": metric,
        "pretrained": summary["encoders"]["pretrained"]["metrics"][metric],
        "reference": summary["encoders"][reference]["metrics"][metric],
        "difference": diff,
        "gain": gain,
        "target": target,
        "relative": relative,
        "beyond_spread": abs(diff["mean"]) > diff["std"],
        "met": bool(better and abs(diff["mean"]) > diff["std"]),
    }


def run_suite(
    rows: Sequence[Row],
    out: str | os.PathLike,
    *,
    seeds: Sequence[int] = (0, 1, 2),
    cfg: TrainConfig | None = None,
    log: Callable[[str], None] = print,
    progress=None,
    finetune_head: str = "mlp",
) -> dict:
    """Run every row (data prepared once per (task, data, setting, split)), write per-row reports under
    ``out/<k>_<task>/`` and the tables into ``out/report.md`` and ``out/metrics.json`` after each row.
    ``finetune_head``: ``mlp`` or ``pretrained`` (see :func:`row_head`)."""
    from circuitml.encoders import load_encoder

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfg = cfg or TrainConfig()
    prepared: dict[tuple, TaskData] = {}
    done: dict[tuple, list] = {}
    results: list[dict] = []
    for k, row in enumerate(rows):
        explicit_not = load_encoder(row.encoder).config.explicit_not
        key = (row.task, row.data, row.setting, row.split, row.exclude_seen, explicit_not)
        if key not in prepared:
            prepared[key] = prepare_task(
                row.task, row.data, setting=row.setting, split=row.split, explicit_not=explicit_not,
                exclude_seen=row.exclude_seen, log=log,
            )  # fmt: skip
        data = prepared[key]
        log(f"[{k + 1}/{len(rows)}] {row.name} ({row.table}, encoder {row.encoder})")
        runs = {}
        for v in _variants(row, finetune_head):
            # a variant already run on the same data (scratch: the reference of both finetune and zero-shot
            # rows) gives the same numbers again (seeded, deterministic kernels): reuse it
            done_key = (key, row.test_groups, v)
            if done_key not in done:
                row_cfg = replace(cfg, test_groups=row.test_groups)
                done[done_key] = run_variants(data, [v], seeds, row_cfg, progress=progress)[v.name]
            runs[v.name] = done[done_key]
        reference = "scratch" if row.table in ("finetune", "zeroshot") else "random"
        summary = write_report(
            runs, out / f"{k:02d}_{row.task}", config={"row": row.__dict__}, reference=reference
        )
        results.append(
            {
                "row": row.name,
                "table": row.table,
                "head": row_head(row, finetune_head),
                "task": row.task,
                "encoder": row.encoder,
                "data": row.data,
                "heldout": data.heldout,
                "metrics": {n: e["metrics"] for n, e in summary["encoders"].items()},
                "baseline": next(iter(summary["encoders"].values()))["baseline"],
                "verdict": _verdict(row.task, summary, reference),
            }
        )
        _write_tables(results, out, seeds, cfg)
    return {"rows": results}


def _encoder_name(path: str) -> str:
    """``runs/x/encoder`` → ``x/encoder``: a run's exported encoder folder is always called ``encoder``."""
    p = Path(path)
    return f"{p.parent.name}/{p.name}" if p.name == "encoder" else p.name


def _fmt(s: dict) -> str:
    return f"{s['mean']:.4g} ± {s['std']:.2g}"


def _write_tables(results: list[dict], out: Path, seeds: Sequence[int], cfg: TrainConfig) -> None:
    finetune = {
        k: getattr(cfg, k) for k in ("encoder_lr", "probe_epochs", "freeze_layers", "sp_alpha", "validation")
    }
    atomic_write(
        out / "metrics.json",
        json.dumps({"seeds": list(seeds), "epochs": cfg.epochs, **finetune, "rows": results}, indent=1),
    )
    titles = {
        "finetune": "Pretrained (fine-tuned) vs scratch, same architecture, MLP heads",
        "probe": "Linear probe: frozen pretrained vs frozen random init, same architecture",
        "ablation": "Ablation: linear probe of each objective set's encoder vs frozen random init",
        "zeroshot": "Zero-shot: frozen pretrained encoder + its pretraining head (only calibrated) vs scratch trained",
    }
    lines = [
        "# circuitml evaluation suite: pretrained vs scratch",
        "",
        f"Seeds {', '.join(map(str, seeds))}; {cfg.epochs} epochs; mean ± std over seeds; difference = pretrained − "
        "reference per seed. Targets: probability MAE −15 %, equivalence F1 +5 points, QoR MSE −10 % (relative "
        "to the reference mean); met = target reached and |mean difference| > its std.",
        "",
        f"Fine-tuning: pretrained encoder at lr {cfg.encoder_lr:g} (head and scratch encoders at {cfg.lr:g}), "
        f"{cfg.probe_epochs} head-only epochs first (LP-FT), {cfg.freeze_layers} bottom blocks frozen"
        + (f", L2-SP alpha {cfg.sp_alpha:g}." if cfg.sp_alpha else "."),
        "",
    ]
    if cfg.validation:
        lines += [
            "**Validation split**: scores on a share of the training designs; the test split was not used.",
            "",
        ]
    for table, title in titles.items():
        mine = [r for r in results if r["table"] == table]
        if not mine:
            continue
        ref = "scratch" if table in ("finetune", "zeroshot") else "random"
        lines += [
            f"## {title}",
            "",
            f"| row | encoder | head | metric | pretrained | {ref} | difference | gain | target | met |",
        ]
        lines.append("|---" * 10 + "|")
        for r in mine:
            v = r["verdict"]
            gain = f"{100 * v['gain']:+.1f} %" if v["relative"] else f"{v['gain']:+.3f}"
            target = f"{100 * v['target']:+.0f} %" if v["relative"] else f"{v['target']:+.2f}"
            lines.append(
                f"| {r['row']} | {_encoder_name(r['encoder'])} | {r['head']} | {v['metric']} | {_fmt(v['pretrained'])} | "
                f"{_fmt(v['reference'])} | {_fmt(v['difference'])} | {gain} | {target} | {'yes' if v['met'] else 'no'} |"
            )
        lines.append("")
        if table != "ablation" and any(len(r["metrics"]["pretrained"]) > 1 for r in mine):
            lines += ["Other metrics (pretrained / reference):", ""]
            for r in mine:
                shown = "; ".join(
                    f"{m} {_fmt(r['metrics']['pretrained'][m])} / {_fmt(r['metrics'][ref][m])}"
                    for m in r["metrics"]["pretrained"]
                    if m != r["verdict"]["metric"]
                )
                base = "; ".join(f"{m} {_fmt(v)}" for m, v in r.get("baseline", {}).items())
                shown = "; ".join(x for x in (shown, f"trivial baselines: {base}" if base else "") if x)
                if shown:
                    lines.append(f"- {r['row']}: {shown}")
            lines.append("")
    held = [r for r in results if r["heldout"]]
    if held:
        lines += ["## Held out from pretraining", ""]
        seen = {}
        for r in held:
            seen[(r["data"], json.dumps(r["heldout"], sort_keys=True))] = r["heldout"]
        for (data, _), h in seen.items():
            lines.append(
                f"- {data}: {h['circuits']} circuits, {h['seen_by_function']} equal in function and "
                f"{h['seen_by_name']} in name to a circuit of {h['corpus']} (dropped), {h['kept']} kept"
            )
        lines.append("")
    atomic_write(out / "report.md", "\n".join(lines))
