"""``circuitml evaluate`` (QoR / equivalence / probability tasks) and ``circuitml data qor`` (QoR labels)."""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from circuitml.datasets.qor import DEFAULT_MAP_SCRIPT
from circuitml.errors import ConfigError
from circuitml.fileio import load_json
from circuitml.yosys import MAX_MEMORY_HELP

console = Console(stderr=True)


def _progress() -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        transient=False,
    )


def data_qor(
    sources: list[Path] = typer.Argument(
        ..., help="Circuit files (.aig .aag .bench .v .sv) or folders of them."
    ),
    out: Path = typer.Option(
        ..., "--out", help="Output folder (resumed when it exists with the same recipes)."
    ),
    recipes: int = typer.Option(100, "--recipes", help="Recipes to draw (with --recipes-csv: rows to take)."),
    recipes_csv: Optional[Path] = typer.Option(
        None,
        "--recipes-csv",
        help="OpenABC-D openabc_recipes.csv (or referenceScripts.zip); first --recipes rows.",
    ),
    workers: int = typer.Option(2, "--workers", help="ABC processes at once."),
    seed: Optional[int] = typer.Option(
        None, "--seed", help="Seed of the recipe generator (default 0; not with --recipes-csv)."
    ),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds allowed to one ABC process (one chunk)."),
    chunk_size: int = typer.Option(25, "--chunk-size", help="Recipes per ABC process."),
    liberty: Optional[Path] = typer.Option(
        None, "--liberty", help="Liberty (.lib) file: also record area and delay (ps) after mapping."
    ),
    map_script: str = typer.Option(
        DEFAULT_MAP_SCRIPT, "--map-script", help="ABC commands that map each result to the --liberty cells."
    ),
    max_memory: str = typer.Option(None, "--max-memory", help=MAX_MEMORY_HELP),
    follow_symlinks: bool = typer.Option(
        False, "--follow-symlinks", help="Read symlinks in source folders that point outside them."
    ),
) -> None:
    """Run ABC synthesis recipes on designs and record AND count and depth after each (OpenABC-D labels);
    with --liberty also the area and delay of the mapped netlist."""
    from circuitml.datasets.qor import generate_qor_labels
    from circuitml.yosys import apply_cli_limits

    apply_cli_limits(max_memory=max_memory)
    table = None
    if recipes_csv is not None and seed is not None:
        raise ConfigError("--seed: it draws recipes; with --recipes-csv the recipes come from the file")
    if recipes_csv is not None:
        from circuitml.datasets.openabc import read_recipes_csv, read_reference_scripts

        table = (
            read_reference_scripts(recipes_csv)
            if recipes_csv.suffix == ".zip"
            else read_recipes_csv(recipes_csv)
        )
        table = table[:recipes]
    with _progress() as bar:
        tasks: dict[str, int] = {}

        def tick(design: str, done: int, total: int) -> None:
            if design not in tasks:
                tasks[design] = bar.add_task(design, total=total, info="")
            bar.update(tasks[design], completed=done)

        rep = generate_qor_labels(
            sources,
            out,
            num_recipes=recipes,
            recipes=table,
            recipes_from=recipes_csv,
            seed=0 if seed is None else seed,
            workers=workers,
            timeout=timeout,
            chunk_size=chunk_size,
            progress=tick,
            liberty=liberty,
            map_script=map_script,
            follow_symlinks=follow_symlinks,
        )
    for link, why in rep.ignored:
        console.print(f"[yellow]ignored[/] {link}: {why}", highlight=False, soft_wrap=True)
    console.print(
        f"{rep.recipes_run} recipe runs on {rep.designs} designs in {rep.seconds:.1f} s "
        f"({rep.recipes_per_second:.2f} recipes/s), {rep.recipes_skipped} already done; labels in {out}"
    )
    for e in rep.errors:
        console.print(f"[red]failed[/] {e['design']} ({e['stage']}): {e['error']}", highlight=False)


def _epoch_logger(bar: Progress | None):
    """Progress of each run: a bar on a terminal, one log line per epoch (every 10th on long runs) otherwise."""
    tasks: dict[str, int] = {}

    def tick(label: str, epoch: int, epochs: int, loss: float) -> None:
        if bar is not None:
            if label not in tasks:
                tasks[label] = bar.add_task(label, total=epochs, info="")
            bar.update(tasks[label], completed=epoch, info=f"loss {loss:.4f}")
        elif epoch == epochs or epoch == 1 or epoch % max(1, epochs // 10) == 0:
            console.print(f"{label}: epoch {epoch}/{epochs} loss {loss:.4f}", highlight=False)

    return tick


# fine-tuning practice shared by evaluate and evaluate-suite (tasks.common.TrainConfig)
ENCODER_LR = typer.Option(
    3e-4, "--encoder-lr", help="Learning rate of a fine-tuned pretrained encoder (scratch uses --lr)."
)
PROBE_EPOCHS = typer.Option(
    0, "--probe-epochs", help="LP-FT: epochs training only the head before the pretrained encoder unfreezes."
)
FREEZE_LAYERS = typer.Option(
    0, "--freeze-layers", help="Keep the pretrained encoder's type embedding and first N blocks frozen."
)
SP_ALPHA = typer.Option(
    0.0,
    "--sp-alpha",
    help="L2-SP: decay the fine-tuned pretrained encoder toward its pretrained weights with this strength "
    "(in place of weight decay toward 0; Li et al., ICML 2018). 0: off.",
)
VALIDATION = typer.Option(
    False, "--validation", help="Report on a validation share of the training designs (pick settings here)."
)


def evaluate(
    task: str = typer.Argument(..., help="qor | equivalence | probability"),
    encoder: str = typer.Option(
        "scratch", "--encoder", help="Encoder folder (save_pretrained) or 'scratch'."
    ),
    data: Path = typer.Option(
        ..., "--data", help="Dataset folder / circuit folder; for qor a QoR labels folder."
    ),
    out: Path = typer.Option(..., "--out", help="Where metrics.json, report.md and plots go."),
    compare: Optional[str] = typer.Option(
        None,
        "--compare",
        help="'scratch': also train the same architecture from fresh weights; 'random': also a frozen random-init "
        "copy (the reference of a --frozen --head linear probe).",
    ),
    seeds: int = typer.Option(1, "--seeds", help="Seeds 0..N-1 (at least 3 with --compare)."),
    epochs: int = typer.Option(30, "--epochs"),
    lr: float = typer.Option(3e-3, "--lr"),
    batch_size: int = typer.Option(64, "--batch-size"),
    finetune: bool = typer.Option(
        True, "--finetune/--frozen", help="Train the pretrained encoder or freeze it."
    ),
    head: str = typer.Option(
        "mlp",
        "--head",
        help="mlp | linear (a linear probe) | pretrained (the encoder's matching pretraining head; "
        "probability and equivalence; the --compare reference keeps an mlp head).",
    ),
    zero_shot: bool = typer.Option(
        False,
        "--zero-shot",
        help="With --frozen --head pretrained: train nothing but the head's calibration.",
    ),
    setting: str = typer.Option("gates", "--setting", help="equivalence: gates | circuits."),
    split: Optional[str] = typer.Option(
        None,
        "--split",
        help="Held-out unit. qor: designs | recipes (held-out recipes on seen designs); "
        "equivalence/probability: circuits | families.",
    ),
    metric: str = typer.Option("ands", "--metric", help="qor: ands | depth (or area/delay when labelled)."),
    recipe_encoder: str = typer.Option("conv", "--recipe-encoder", help="qor: conv | gru | transformer."),
    target: str = typer.Option(
        "z",
        "--target",
        help="qor: z (OpenABC-D's per-design z-score) | ratio (log of the metric over the unoptimized design's).",
    ),
    encoder_config: Optional[str] = typer.Option(
        None,
        "--encoder-config",
        help='Scratch encoder config as JSON, e.g. \'{"kind": "deepgcn", "hidden": 32}\'.',
    ),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use at most this many circuits."),
    test_fraction: float = typer.Option(0.25, "--test-fraction", help="Share of designs/circuits held out."),
    test_families: Optional[str] = typer.Option(
        None,
        "--test-families",
        help="With --split families: comma-separated families to hold out (all seeds).",
    ),
    exclude_seen: Optional[Path] = typer.Option(
        None,
        "--exclude-seen",
        help="Pretraining corpus (dataset folder): drop circuits whose function or name is in it.",
    ),
    test_designs: Optional[str] = typer.Option(
        None,
        "--test-designs",
        help="qor, --split designs: comma-separated shell patterns over design ids and source paths; the "
        "matching designs are the test set at every seed (e.g. '/work/shared/data/*': train on the others).",
    ),
    encoder_lr: float = ENCODER_LR,
    probe_epochs: int = PROBE_EPOCHS,
    freeze_layers: int = FREEZE_LAYERS,
    sp_alpha: float = SP_ALPHA,
    validation: bool = VALIDATION,
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (torch); default: torch's."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda[:N]."),
) -> None:
    """Train a task head on an encoder and report metrics (optionally pretrained vs scratch over seeds).

    The same seed gives the same numbers (deterministic kernels, seeded splits and sampling)."""
    from circuitml.tasks.common import HEADS, TrainConfig, configure_runtime
    from circuitml.tasks.report import write_report
    from circuitml.tasks.runner import TASKS, Variant, prepare_task, run_variants

    if task not in TASKS:
        raise ConfigError(f"task: expected one of {', '.join(TASKS)}, got {task!r}")
    if compare not in (None, "scratch", "random"):
        raise ConfigError(f"--compare: expected 'scratch' or 'random', got {compare!r}")
    if head not in HEADS:
        raise ConfigError(f"--head: expected one of {', '.join(HEADS)}, got {head!r}")
    if zero_shot and (head != "pretrained" or finetune):
        raise ConfigError("--zero-shot: expected --frozen --head pretrained")
    if head == "pretrained" and encoder == "scratch":
        raise ConfigError(
            "--head pretrained: expected a pretrained --encoder DIR (scratch has no pretraining head)"
        )
    if head == "pretrained":  # before any data work: a missing head is an error, never a fresh head
        from circuitml.pretrain.heads import load_task_head

        load_task_head(encoder, task, (split or "designs") if task == "qor" else setting)
    if compare and seeds < 3:
        raise ConfigError(f"--seeds: expected at least 3 with --compare {compare}, got {seeds}")
    if seeds < 1:  # no run at all: the report's plots had nothing to draw (a traceback)
        raise ConfigError(f"--seeds: expected at least 1, got {seeds}")
    if compare and encoder == "scratch":
        raise ConfigError(f"--compare {compare}: expected a pretrained --encoder DIR to compare against")
    cfg_dict = load_json(encoder_config, "--encoder-config", error=ConfigError) if encoder_config else None
    held = tuple(f.strip() for f in test_families.split(",") if f.strip()) if test_families else ()
    if test_designs is not None and not test_designs.strip(", "):
        raise ConfigError("--test-designs: expected comma-separated design patterns, got none")
    if target not in ("z", "ratio") or (target != "z" and task != "qor"):
        raise ConfigError(f"--target: expected z or ratio (qor only), got {target!r} for {task}")
    if held and split != "families":
        raise ConfigError("--test-families: only with --split families")
    dev = configure_runtime(threads, device)

    if encoder == "scratch":
        variants = [Variant("scratch", "scratch", "scratch", head)]
    else:
        variants = [Variant("pretrained", encoder, "finetune" if finetune else "frozen", head, zero_shot)]
        if compare:  # a fresh encoder has no pretraining head: its reference head is an MLP
            variants.append(Variant(compare, encoder, compare, "mlp" if head == "pretrained" else head))
    explicit_not = True
    if encoder != "scratch":
        from circuitml.encoders import load_encoder

        explicit_not = load_encoder(encoder).config.explicit_not
    elif cfg_dict is not None:
        explicit_not = bool(cfg_dict.get("explicit_not", True))
    cfg = TrainConfig(
        epochs=epochs,
        lr=lr,
        batch_size=batch_size,
        test_fraction=test_fraction,
        device=str(dev),
        test_groups=held,
        encoder_lr=encoder_lr,
        probe_epochs=probe_epochs,
        freeze_layers=freeze_layers,
        sp_alpha=sp_alpha,
        validation=validation,
    )
    cfg.validate()
    if sp_alpha > 0 and (encoder == "scratch" or not finetune):
        raise ConfigError("--sp-alpha: expected a pretrained --encoder that is fine-tuned (--finetune)")
    prepared = prepare_task(
        task,
        data,
        setting=setting,
        split=split,
        limit=limit,
        explicit_not=explicit_not,
        exclude_seen=exclude_seen,
        test_designs=tuple(p.strip() for p in test_designs.split(",") if p.strip()) if test_designs else (),
        log=console.print,
    )
    on_terminal = console.is_terminal
    with _progress() if on_terminal else nullcontext() as bar:
        runs = run_variants(
            prepared, variants, range(seeds), cfg, encoder_config=cfg_dict, metric=metric,
            recipe_kind=recipe_encoder, qor_target=target, progress=_epoch_logger(bar),
        )  # fmt: skip
    config = {
        "task": task, "encoder": encoder, "data": str(data), "compare": compare, "seeds": seeds, "epochs": epochs,
        "lr": lr, "batch_size": batch_size, "finetune": finetune, "head": head, "setting": setting,
        "split": prepared.split, "metric": metric, "recipe_encoder": recipe_encoder, "target": target, "encoder_config": cfg_dict,
        "test_fraction": test_fraction, "test_families": list(held), "threads": threads, "device": str(dev),
        "exclude_seen": str(exclude_seen) if exclude_seen else None, "heldout": prepared.heldout,
        "test_designs": list(prepared.test_designs),
        "encoder_lr": encoder_lr, "probe_epochs": probe_epochs, "freeze_layers": freeze_layers,
        "sp_alpha": sp_alpha, "validation": validation, "zero_shot": zero_shot,
    }  # fmt: skip
    summary = write_report(runs, out, config=config, reference=compare or "scratch")
    for name, enc in summary["encoders"].items():
        shown = ", ".join(f"{m} {v['mean']:.4g}±{v['std']:.2g}" for m, v in enc["metrics"].items())
        console.print(f"{name}: {shown}", highlight=False)
    for name, diff in summary["differences"].items():
        shown = ", ".join(f"{m} {v['mean']:+.4g}±{v['std']:.2g}" for m, v in diff.items())
        console.print(f"{name}: {shown}", highlight=False)
    console.print(f"report: {out / 'report.md'}")


def evaluate_suite(
    encoder: str = typer.Option(..., "--encoder", help="Pretrained encoder folder to prove."),
    circuits: Path = typer.Option(
        ...,
        "--circuits",
        help="Circuits never seen in pretraining (folder or dataset): probability, equivalence.",
    ),
    out: Path = typer.Option(..., "--out", help="Where report.md, metrics.json and one folder per row go."),
    qor: Optional[Path] = typer.Option(None, "--qor", help="QoR labels folder (circuitml data qor)."),
    corpus: Optional[Path] = typer.Option(
        None,
        "--corpus",
        help="Pretraining corpus: circuits equal in function or name to one of it are dropped.",
    ),
    families_encoder: Optional[str] = typer.Option(
        None, "--families-encoder", help="Encoder pretrained without --held-out-families (the families row)."
    ),
    families_data: Optional[Path] = typer.Option(
        None, "--families-data", help="Dataset with a family per circuit (circuitml data generate)."
    ),
    held_out_families: Optional[str] = typer.Option(
        None,
        "--held-out-families",
        help="Comma-separated families held out of pretraining and of task training.",
    ),
    ablation: Optional[list[str]] = typer.Option(
        None, "--ablation", help="NAME=DIR of an objective-ablation encoder (repeatable): linear-probe rows."
    ),
    tables: str = typer.Option(
        "finetune,probe,ablation", "--tables", help="Which tables to run (also: zeroshot)."
    ),
    finetune_head: str = typer.Option(
        "mlp",
        "--finetune-head",
        help="mlp | pretrained: start the fine-tuned rows' head from the encoder's pretraining head "
        "(probability, equivalence; QoR has none and keeps the MLP).",
    ),
    tasks: str = typer.Option(
        "qor,probability,equivalence", "--tasks", help="Which tasks' rows to run (in order)."
    ),
    seeds: int = typer.Option(3, "--seeds", help="Seeds 0..N-1 (at least 3)."),
    epochs: int = typer.Option(30, "--epochs"),
    encoder_lr: float = ENCODER_LR,
    probe_epochs: int = PROBE_EPOCHS,
    freeze_layers: int = FREEZE_LAYERS,
    sp_alpha: float = SP_ALPHA,
    validation: bool = VALIDATION,
    threads: Optional[int] = typer.Option(None, "--threads", help="CPU threads (torch); default: torch's."),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda[:N]."),
) -> None:
    """The pretrained-vs-scratch proof: every task and held-out setting, linear probes and the objective
    ablation, mean ± std over seeds with per-seed differences, in one report."""
    from circuitml.tasks.common import TrainConfig, configure_runtime
    from circuitml.tasks.suite import proof_rows, run_suite

    if seeds < 3:
        raise ConfigError(f"--seeds: expected at least 3, got {seeds}")
    fam = None
    if families_encoder or families_data or held_out_families:
        if not (families_encoder and families_data and held_out_families):
            raise ConfigError(
                "--families-encoder, --families-data and --held-out-families: expected all three or none"
            )
        fam = (families_encoder, str(families_data), tuple(f.strip() for f in held_out_families.split(",")))
    abl = {}
    for item in ablation or []:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--ablation: expected NAME=DIR, got {item!r}")
        abl[name] = path
    wanted = {t.strip() for t in tables.split(",")}
    if not wanted <= {"finetune", "probe", "ablation", "zeroshot"}:
        raise ConfigError(f"--tables: expected finetune, probe, ablation and/or zeroshot, got {tables!r}")
    if finetune_head not in ("mlp", "pretrained"):
        raise ConfigError(f"--finetune-head: expected mlp or pretrained, got {finetune_head!r}")
    dev = configure_runtime(threads, device)
    cfg = TrainConfig(
        epochs=epochs, device=str(dev), encoder_lr=encoder_lr, probe_epochs=probe_epochs,
        freeze_layers=freeze_layers, sp_alpha=sp_alpha, validation=validation,
    )  # fmt: skip
    cfg.validate()
    rows = proof_rows(
        encoder, circuits=str(circuits), qor=str(qor) if qor else None, families=fam, ablation=abl,
        corpus=str(corpus) if corpus else None,
    )  # fmt: skip
    from circuitml.tasks.runner import TASKS

    order = [t.strip() for t in tasks.split(",") if t.strip()]
    if not order or not set(order) <= set(TASKS):
        raise ConfigError(f"--tasks: expected some of {', '.join(TASKS)}, got {tasks!r}")
    rows = sorted(
        (r for r in rows if r.table in wanted and r.task in order), key=lambda r: order.index(r.task)
    )
    from circuitml.pretrain.heads import load_task_head
    from circuitml.tasks.suite import row_head

    for r in rows:  # before any data work: every pretraining head a row needs exists
        if row_head(r, finetune_head) == "pretrained":
            load_task_head(r.encoder, r.task, r.setting)
    with _progress() if console.is_terminal else nullcontext() as bar:
        run_suite(
            rows, out, seeds=range(seeds), cfg=cfg,
            log=lambda s: console.print(s, highlight=False), progress=_epoch_logger(bar),
            finetune_head=finetune_head,
        )  # fmt: skip
    console.print(f"report: {out / 'report.md'}")


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
    app.command("evaluate-suite")(evaluate_suite)
    data_app.command("qor")(data_qor)
