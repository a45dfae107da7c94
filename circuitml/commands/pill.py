"""``circuitml pill data|train|compare|table``: PILL on text–circuit matching with the frozen MiniLM."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()

_FUSIONS_HELP = "pill, concat, text or circuit."


def _resources(data: Path, encoder: str, lm: str, threads: int | None = 1, device: str = "cpu"):
    from circuitml.encoders import load_encoder
    from circuitml.lm import load_lm
    from circuitml.tasks.common import configure_runtime
    from circuitml.tasks.pill.data import load_pill_designs
    from circuitml.tasks.pill.train import PillResources

    dev = configure_runtime(threads, device)
    load_pill_designs(data)  # a bad data folder fails before the models load
    bert, tokenizer = load_lm(lm)
    return PillResources(data, bert, tokenizer, load_encoder(encoder), encoder_name=encoder, device=dev)


def _table(results: dict) -> Table:
    from circuitml.tasks.pill.train import results_table

    rows = results_table(results)
    table = Table(title="PILL fusions: accuracy mean ± std over seeds")
    for name in rows[0]:
        table.add_column(name, justify="left" if name == "fusion" else "right")
    for row in rows[1:]:
        table.add_row(*row)
    return table


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    pill_app = typer.Typer(
        help="PILL: modality adapter experts and attention gates on a frozen LM, text–circuit matching.",
        no_args_is_help=True,
    )
    app.add_typer(pill_app, name="pill")

    steps_opt = typer.Option(500, help="Training steps per run.")
    batch_opt = typer.Option(16, help="Designs per step (a positive and a hard-negative pair each).")
    lr_opt = typer.Option(1e-3, help="AdamW learning rate.")
    bottleneck_opt = typer.Option(16, help="PILL's adapter width per expert (concat/text get twice it).")
    tokens_opt = typer.Option(8, help="Circuit tokens per design (level buckets).")
    fuse_opt = typer.Option(3, help="First LM layer with adapters; the layers below are cached.")
    adapter_opt = typer.Option(
        "bottleneck", help="Adapter kind: bottleneck, or glu (PILL's improved adapter)."
    )
    choices_opt = typer.Option(4, help="Candidates per multiple-choice item.")
    threads_opt = typer.Option(1, "--threads", help="CPU threads for torch.")
    device_opt = typer.Option("cpu", "--device", help="cpu, cuda[:N] or auto.")
    encoder_opt = typer.Option(
        "deepgcn32-allobj-corpus", help="Frozen circuit encoder (folder or shipped name)."
    )
    lm_opt = typer.Option("all-minilm-l6-v2", help="Frozen language model (circuitml.lm name).")

    @pill_app.command("data")
    def data(
        out: Path = typer.Argument(..., help="Dataset folder (built, or reused when already built)."),
        variants: int = typer.Option(4, help="Distinct designs per family and width."),
        max_width: int = typer.Option(16, help="Leave out family widths above this."),
        seed: int = typer.Option(0, help="Seed of the design-seed draws."),
        workers: int = typer.Option(1, help="Synthesis worker processes."),
    ) -> None:
        """Build the description–AIG data set: generated designs, their AIGs, descriptions and splits."""
        from collections import Counter

        from circuitml.tasks.pill.data import PillDataConfig, build_pill_dataset

        cfg = PillDataConfig(variants=variants, max_width=max_width, seed=seed)
        designs = build_pill_dataset(out, cfg, workers=workers)
        counts = Counter(d.split for d in designs)
        console.print(
            f"{out}: {len(designs)} designs of {len({d.family for d in designs})} families; "
            + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
        )

    @pill_app.command("train")
    def train(
        data: Path = typer.Argument(..., help="A folder built by `circuitml pill data`."),
        fusion: str = typer.Option("pill", help=_FUSIONS_HELP),
        steps: int = steps_opt,
        batch: int = batch_opt,
        lr: float = lr_opt,
        bottleneck: int = bottleneck_opt,
        num_tokens: int = tokens_opt,
        fuse_from: int = fuse_opt,
        choices: int = choices_opt,
        seed: int = typer.Option(0, help="Random seed."),
        adapter: str = adapter_opt,
        threads: int = threads_opt,
        device: str = device_opt,
        encoder: str = encoder_opt,
        lm: str = lm_opt,
        out: Path | None = typer.Option(None, "--out", help="Write the run's result JSON here."),
    ) -> None:
        """Train one fusion and print its held-out matching and multiple-choice accuracy."""
        from circuitml.fileio import atomic_write
        from circuitml.tasks.pill.train import PillTrainConfig, train_pill

        cfg = PillTrainConfig(
            fusion, steps, batch, lr, bottleneck, num_tokens, fuse_from, choices, seed, adapter
        )
        cfg.check()
        result = train_pill(_resources(data, encoder, lm, threads, device), cfg, log=console.print)
        console.print(f"trainable parameters: {result['trainable_parameters']}")
        for split, s in result["scores"].items():
            console.print(
                f"{split}: match {s['match']:.3f}  choose circuit {s['choose_circuit']:.3f}  "
                f"choose text {s['choose_text']:.3f}"
            )
        if out is not None:
            atomic_write(out, json.dumps(result, indent=1))

    @pill_app.command("compare")
    def compare(
        data: Path = typer.Argument(..., help="A folder built by `circuitml pill data`."),
        out: Path = typer.Option(..., "--out", help="Folder for results.json (resumed) and results.md."),
        fusions: list[str] = typer.Option(
            ["pill", "concat", "text", "circuit"], "--fusion", help=_FUSIONS_HELP
        ),
        seeds: list[int] = typer.Option([0, 1, 2], "--seed", help="Seeds (repeat the option)."),
        steps: int = steps_opt,
        batch: int = batch_opt,
        lr: float = lr_opt,
        bottleneck: int = bottleneck_opt,
        num_tokens: int = tokens_opt,
        fuse_from: int = fuse_opt,
        choices: int = choices_opt,
        adapter: str = adapter_opt,
        threads: int = threads_opt,
        device: str = device_opt,
        encoder: str = encoder_opt,
        lm: str = lm_opt,
    ) -> None:
        """Every fusion × seed at matched trainable parameters; held-out widths and seeds; a mean ± std table."""
        from circuitml.fileio import atomic_write
        from circuitml.tasks.pill.train import PillTrainConfig, compare_fusions, results_table

        base = PillTrainConfig(
            "pill", steps, batch, lr, bottleneck, num_tokens, fuse_from, choices, 0, adapter
        )
        for f in fusions:
            PillTrainConfig(**{**base.__dict__, "fusion": f}).check()
        res = _resources(data, encoder, lm, threads, device)
        results = compare_fusions(res, out, base, fusions, seeds, log=console.print)
        rows = results_table(results)
        md = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
        md += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        atomic_write(Path(out) / "results.md", "\n".join(md) + "\n")
        console.print(_table(results))

    @pill_app.command("table")
    def table(
        results: Path = typer.Argument(..., help="A results.json written by `circuitml pill compare`."),
    ) -> None:
        """Print the mean ± std table of a comparison (finished runs only)."""
        from circuitml.errors import ConfigError
        from circuitml.fileio import read_json

        obj = read_json(results, error=ConfigError, what="pill results")
        if not isinstance(obj, dict) or not isinstance(obj.get("runs"), dict):
            raise ConfigError(f"{results}: expected the results.json of `circuitml pill compare`")
        console.print(_table(obj))
