"""``circuitml evaluate`` (QoR / equivalence / probability tasks) and ``circuitml data qor`` (QoR labels)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from circuitml.datasets.qor import DEFAULT_MAP_SCRIPT
from circuitml.errors import ConfigError
from circuitml.fileio import load_json
from circuitml.yosys import MAX_MEMORY_HELP

TASKS = ("qor", "equivalence", "probability")
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
    recipes: int = typer.Option(100, "--recipes", help="Recipes to draw (ignored with --recipes-csv)."),
    recipes_csv: Optional[Path] = typer.Option(
        None,
        "--recipes-csv",
        help="OpenABC-D openabc_recipes.csv (or referenceScripts.zip); first --recipes rows.",
    ),
    workers: int = typer.Option(2, "--workers", help="ABC processes at once."),
    seed: int = typer.Option(0, "--seed", help="Seed of the recipe generator."),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds allowed to one ABC process (one chunk)."),
    chunk_size: int = typer.Option(25, "--chunk-size", help="Recipes per ABC process."),
    liberty: Optional[Path] = typer.Option(
        None, "--liberty", help="Liberty (.lib) file: also record area and delay (ps) after mapping."
    ),
    map_script: str = typer.Option(
        DEFAULT_MAP_SCRIPT, "--map-script", help="ABC commands that map each result to the --liberty cells."
    ),
    max_memory: str = typer.Option(None, "--max-memory", help=MAX_MEMORY_HELP),
) -> None:
    """Run ABC synthesis recipes on designs and record AND count and depth after each (OpenABC-D labels);
    with --liberty also the area and delay of the mapped netlist."""
    from circuitml.datasets.qor import generate_qor_labels
    from circuitml.yosys import apply_cli_limits

    apply_cli_limits(max_memory=max_memory)
    table = None
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
            seed=seed,
            workers=workers,
            timeout=timeout,
            chunk_size=chunk_size,
            progress=tick,
            liberty=liberty,
            map_script=map_script,
        )
    console.print(
        f"{rep.recipes_run} recipe runs on {rep.designs} designs in {rep.seconds:.1f} s "
        f"({rep.recipes_per_second:.2f} recipes/s), {rep.recipes_skipped} already done; labels in {out}"
    )
    for e in rep.errors:
        console.print(f"[red]failed[/] {e['design']} ({e['stage']}): {e['error']}", highlight=False)


def evaluate(
    task: str = typer.Argument(..., help="qor | equivalence | probability"),
    encoder: str = typer.Option(
        "scratch", "--encoder", help="Encoder folder (save_pretrained) or 'scratch'."
    ),
    data: Path = typer.Option(
        ..., "--data", help="Dataset folder / circuit folder; for qor a QoR labels folder."
    ),
    out: Path = typer.Option(..., "--out", help="Where metrics.json, report.md and plots go."),
    compare: Optional[str] = typer.Option(None, "--compare", help="'scratch': also train a fresh encoder."),
    seeds: int = typer.Option(1, "--seeds", help="Seeds 0..N-1 (at least 3 with --compare)."),
    epochs: int = typer.Option(30, "--epochs"),
    lr: float = typer.Option(3e-3, "--lr"),
    batch_size: int = typer.Option(64, "--batch-size"),
    finetune: bool = typer.Option(
        True, "--finetune/--frozen", help="Train the pretrained encoder or freeze it."
    ),
    setting: str = typer.Option("gates", "--setting", help="equivalence: gates | circuits."),
    metric: str = typer.Option("ands", "--metric", help="qor: ands | depth (or area/delay when labelled)."),
    recipe_encoder: str = typer.Option("conv", "--recipe-encoder", help="qor: conv | gru | transformer."),
    encoder_config: Optional[str] = typer.Option(
        None,
        "--encoder-config",
        help='Scratch encoder config as JSON, e.g. \'{"kind": "deepgcn", "hidden": 32}\'.',
    ),
    limit: Optional[int] = typer.Option(None, "--limit", help="Use at most this many circuits."),
    test_fraction: float = typer.Option(0.25, "--test-fraction", help="Share of designs/circuits held out."),
) -> None:
    """Train a task head on an encoder and report metrics (optionally pretrained vs scratch over seeds)."""
    from circuitml.tasks.common import TrainConfig, load_circuits
    from circuitml.tasks.report import write_report

    if task not in TASKS:
        raise ConfigError(f"task: expected one of {', '.join(TASKS)}, got {task!r}")
    if compare not in (None, "scratch"):
        raise ConfigError(f"--compare: expected 'scratch', got {compare!r}")
    if compare and seeds < 3:
        raise ConfigError(f"--seeds: expected at least 3 with --compare scratch, got {seeds}")
    if compare and encoder == "scratch":
        raise ConfigError("--compare scratch: expected a pretrained --encoder DIR to compare against")
    cfg_dict = load_json(encoder_config, "--encoder-config", error=ConfigError) if encoder_config else None

    if encoder == "scratch":
        variants = [("scratch", "scratch", "scratch")]
    else:
        variants = [("pretrained", encoder, "finetune" if finetune else "frozen")]
        if compare:
            variants.append(("scratch", encoder, "scratch"))

    prepared = None
    circuits = None
    labels = None
    if task == "qor":
        from circuitml.datasets.qor import load_qor_labels

        labels = load_qor_labels(data)
    else:
        circuits = load_circuits(data, limit=limit)
        if task == "equivalence":
            from circuitml.tasks.equivalence import prepare_equivalence

            console.print(
                f"preparing {setting} pairs for {len(circuits)} circuits (ABC runs once per circuit)"
            )
            prepared = prepare_equivalence(circuits, setting, seed=0)
        else:
            from circuitml.tasks.probability import build_probability_graphs

            prepared = build_probability_graphs(circuits)

    runs: dict = {}
    with _progress() as bar:
        for name, source, mode in variants:
            for seed in range(seeds):
                cfg = TrainConfig(
                    epochs=epochs, lr=lr, batch_size=batch_size, seed=seed, test_fraction=test_fraction
                )
                tid = bar.add_task(f"{task} {name} seed {seed}", total=epochs, info="")

                def tick(epoch: int, loss: float, tid: int = tid) -> None:
                    bar.update(tid, completed=epoch, info=f"loss {loss:.4f}")

                if task == "qor":
                    from circuitml.tasks.qor import run_qor

                    result = run_qor(
                        labels, source, mode, cfg, metric=metric, recipe_kind=recipe_encoder,
                        encoder_config=cfg_dict, progress=tick,
                    )  # fmt: skip
                elif task == "equivalence":
                    from circuitml.tasks.equivalence import run_equivalence

                    result = run_equivalence(
                        circuits, source, mode, cfg, setting=setting, prepared=prepared, encoder_config=cfg_dict,
                        progress=tick,
                    )  # fmt: skip
                else:
                    from circuitml.tasks.probability import run_probability

                    result = run_probability(
                        circuits, source, mode, cfg, graphs=prepared, encoder_config=cfg_dict, progress=tick
                    )
                runs.setdefault(name, []).append(result)
    config = {
        "task": task, "encoder": encoder, "data": str(data), "compare": compare, "seeds": seeds, "epochs": epochs,
        "lr": lr, "batch_size": batch_size, "finetune": finetune, "setting": setting, "metric": metric,
        "recipe_encoder": recipe_encoder, "encoder_config": cfg_dict, "test_fraction": test_fraction,
    }  # fmt: skip
    summary = write_report(runs, out, config=config)
    for name, enc in summary["encoders"].items():
        shown = ", ".join(f"{m} {v['mean']:.4g}±{v['std']:.2g}" for m, v in enc["metrics"].items())
        console.print(f"{name}: {shown}", highlight=False)
    for name, diff in summary["differences"].items():
        shown = ", ".join(f"{m} {v['mean']:+.4g}±{v['std']:.2g}" for m, v in diff.items())
        console.print(f"{name}: {shown}", highlight=False)
    console.print(f"report: {out / 'report.md'}")


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    app.command("evaluate")(evaluate)
    data_app.command("qor")(data_qor)
