"""``circuitml shift circuits`` / ``shift text``: held-out-domain error of the domain-shift methods on circuits
(held-out family) and on QA text with MiniLM (held-out article)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from circuitml.fileio import atomic_write

console = Console()


def domain_table(domains: dict[str, list]) -> Table:
    """The domains found and how many circuits each holds (printed before training starts)."""
    table = Table(title="domains")
    table.add_column("domain")
    table.add_column("circuits", justify="right")
    for name, circuits in domains.items():
        table.add_row(name, str(len(circuits)))
    return table


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    shift_app = typer.Typer(
        help="Domain shift: MixDA, Meta-DMoE, global/local expert gating.", no_args_is_help=True
    )
    app.add_typer(shift_app, name="shift")

    @shift_app.command("circuits")
    def circuits(
        out: Path = typer.Option(..., "--out", help="Directory for results.json and results.md."),
        shared: Optional[Path] = typer.Option(
            None, "--shared", help="../shared/data (EPFL arithmetic/control and ISCAS domains)."
        ),
        generated: Optional[Path] = typer.Option(
            None,
            "--generated",
            help="A dataset directory from `circuitml data generate` (the 'generated' domain).",
        ),
        held_out: Optional[list[str]] = typer.Option(
            None, "--held-out", help="Domains to hold out (default: each)."
        ),
        encoder: str = typer.Option("deepgcn", help="Encoder kind from the encoder builder."),
        hidden: int = typer.Option(32, help="Encoder width."),
        layers: int = typer.Option(3, help="Encoder layers."),
        steps: int = typer.Option(150, help="Training steps of each source model."),
        adapt_steps: int = typer.Option(60, help="Steps of each adaptation stage."),
        max_ands: int = typer.Option(20000, help="Leave out circuits larger than this."),
        seed: int = typer.Option(0, help="Random seed."),
        threads: Optional[int] = typer.Option(
            None, "--threads", help="CPU threads for torch (default: torch's choice)."
        ),
        device: str = typer.Option("cpu", "--device", help="cpu or cuda[:N]."),
    ) -> None:
        """Leave-one-family-out signal-probability MAE: all sources, MixDA, Meta-DMoE, GE/LE/GN."""
        from circuitml.errors import ConfigError
        from circuitml.tasks.common import configure_runtime
        from circuitml.tasks.shift.circuits import (
            ShiftConfig,
            load_circuit_domains,
            results_markdown,
            run_circuit_shift,
        )

        dev = configure_runtime(threads, device)  # before any data is read: a bad device fails at once
        domains = load_circuit_domains(shared, generated, max_ands=max_ands)
        if len(domains) < 2:
            raise ConfigError(
                f"shift circuits: expected at least two domains, found {sorted(domains) or 'none'}"
            )
        for name in held_out or []:
            if name not in domains:
                raise ConfigError(f"shift circuits: --held-out {name!r}: expected one of {sorted(domains)}")
        cfg = ShiftConfig(
            encoder=encoder,
            hidden=hidden,
            num_layers=layers,
            steps=steps,
            adapt_steps=adapt_steps,
            meta_steps=adapt_steps,
            seed=seed,
            device=str(dev),
        )
        console.print(domain_table(domains))
        results = run_circuit_shift(domains, cfg, held_out, progress=console.print)
        table = results_markdown(results)
        atomic_write(out / "results.json", json.dumps({"config": cfg.__dict__, "results": results}, indent=2))
        atomic_write(out / "results.md", "Signal-probability MAE on the held-out family\n\n" + table + "\n")
        console.print(table)

    @shift_app.command("text")
    def text(
        data: Path = typer.Option(
            ..., "--data", help="SQuAD-format file; its articles (titles) are the domains."
        ),
        out: Path = typer.Option(..., "--out", help="Directory for results.json and results.md."),
        held_out: Optional[list[str]] = typer.Option(
            None, "--held-out", help="Article titles to hold out (default: each)."
        ),
        lm: str = typer.Option("all-minilm-l6-v2", "--lm", help="Shipped LM name or local BERT folder."),
        steps: int = typer.Option(150, help="Fine-tuning steps on the source articles."),
        adapt_steps: int = typer.Option(60, help="Steps of each MixDA stage."),
        max_length: int = typer.Option(192, help="Tokens per window."),
        span_head: str = typer.Option(
            "linear", help="The reader's span head, as `qa train`: 'linear' or 'bilinear' (DrQA's)."
        ),
        sentence_prior: bool = typer.Option(
            False,
            "--sentence-prior/--no-sentence-prior",
            help="The reader adds the frozen LM's question-sentence similarity to its span scores (as `qa train`).",
        ),
        head_lr: Optional[float] = typer.Option(
            None, help="Learning rate of the span head in the source fine-tuning (default: the body's)."
        ),
        seeds: list[int] = typer.Option([0], "--seed", help="Random seeds (repeat for mean ± std)."),
        threads: Optional[int] = typer.Option(None, help="CPU threads for torch."),
        device: str = typer.Option("cpu", "--device", help="cpu, cuda[:N] or auto."),
    ) -> None:
        """Span error rate on a held-out article: no-answer, all sources, MixDA (MLM domain adapter), MixDA
        without stage 1."""
        from circuitml.datasets.squad import read_squad
        from circuitml.errors import ConfigError
        from circuitml.fileio import read_json
        from circuitml.tasks.common import configure_runtime
        from circuitml.tasks.shift.qa import TextShiftConfig, run_text_shift, text_results_markdown

        dev = configure_runtime(threads, device)  # before any data is read: a bad device fails at once
        examples, _ = read_squad(data)
        titles = sorted({e.title for e in examples})
        if len(titles) < 2:
            raise ConfigError(f"{data}: shift text: expected at least two articles (titles), found {titles}")
        for name in held_out or []:
            if name not in titles:
                raise ConfigError(f"shift text: --held-out {name!r}: expected one of {titles}")
        settings = {
            "data": str(data),
            "lm": lm,
            "steps": steps,
            "adapt_steps": adapt_steps,
            "max_length": max_length,
            "span_head": span_head,
            "sentence_prior": sentence_prior,
            "head_lr": head_lr,
        }
        results: dict[str, dict[str, dict]] = {}
        if (out / "results.json").is_file():  # resume: finished (article, seed) runs are kept
            done = read_json(out / "results.json", error=ConfigError, what="shift text results")
            if done.get("settings") != settings:
                raise ConfigError(f"{out / 'results.json'}: written with other settings; use another --out")
            results = done["results"]
        for target in held_out or titles:
            for seed in seeds:
                if str(seed) in results.get(target, {}):
                    continue
                cfg = TextShiftConfig(
                    lm=lm,
                    steps=steps,
                    adapt_steps=adapt_steps,
                    max_length=max_length,
                    span_head=span_head,
                    sentence_prior=sentence_prior,
                    head_lr=head_lr,
                    seed=seed,
                    device=str(dev),
                )
                results.setdefault(target, {})[str(seed)] = run_text_shift(
                    examples, target, cfg, progress=console.print
                )
                body = {"settings": settings, "results": results}
                atomic_write(out / "results.json", json.dumps(body, indent=2))
        results = {t: {str(k): results[t][str(k)] for k in seeds} for t in held_out or titles}
        table = text_results_markdown(results)
        atomic_write(out / "results.md", "Span error rate on the held-out article\n\n" + table + "\n")
        console.print(table)
