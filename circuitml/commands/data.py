"""``circuitml data generate|build|info`` and ``circuitml convert IN OUT``."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from circuitml.commands.verilog import LATCH_ERROR_HELP, VERBOSE_HELP, yosys_feedback
from circuitml.errors import ConfigError
from circuitml.yosys import MAX_MEMORY_HELP


def _parse_list(text: str | None, what: str, cast=str) -> list | None:
    if text is None:
        return None
    items = [t.strip() for t in text.split(",") if t.strip()]
    try:
        return [cast(t) for t in items]
    except ValueError:
        raise ConfigError(
            f"--{what}: expected a comma-separated list of {cast.__name__}, got {text!r}"
        ) from None


def _print_report(console: Console, report) -> None:
    ignored = getattr(report, "ignored", [])
    excluded = [src for src, reason in ignored if reason.startswith("excluded by")]
    for src, reason in ignored:
        if not reason.startswith("excluded by"):
            console.print(f"  ignored {src}: {reason}", highlight=False)
    if excluded:
        console.print(f"  {len(excluded)} file(s) excluded by --exclude", highlight=False)
    for src, note in getattr(report, "warnings", []):
        console.print(f"[yellow]warning:[/] {note}  ({src})", highlight=False)
    if report.failed:
        console.print(f"[yellow]{len(report.failed)} source(s) skipped:[/]")
        for src, reason in report.failed:
            console.print(f"  {reason if reason.startswith(src) else f'{src}: {reason}'}", highlight=False)
    console.print(report.summary(), highlight=False)


def _interrupted(console: Console, out: Path) -> typer.Exit:
    console.print(f"interrupted: finished circuits are kept in {out}; run the same command again to resume")
    return typer.Exit(130)


def _fmt(x: float) -> str:
    return f"{x:g}" if x == int(x) else f"{x:.1f}"


def _info_table(stats: dict) -> Table:
    table = Table(
        title=f"{stats['root']}: {stats['circuits']} circuits",
        caption="sizes: min/median/max; seq.: circuits with latches (cut into pseudo-PI/PO)",
    )
    table.add_column("family", no_wrap=True)
    for label in ("n", "Verilog", "seq."):
        table.add_column(label, justify="right", no_wrap=True)
    for label in ("PIs", "POs", "latches", "ANDs", "depth"):
        table.add_column(label, justify="right", no_wrap=True)
    keys = ("num_inputs", "num_outputs", "num_latches", "num_ands", "depth")

    def row(name: str, r: dict, style: str | None = None) -> None:
        cells = [name, str(r["circuits"]), str(r["with_verilog"]), str(r["sequential"])]
        cells += ["/".join(_fmt(r[k][s]) for s in ("min", "median", "max")) for k in keys]
        table.add_row(*cells, style=style)

    for name, r in stats["families"].items():
        row(name, r)
    if stats["total"] is not None:
        table.add_section()
        row("all", stats["total"], style="bold")
    return table


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    console = Console(soft_wrap=True)  # paths in one-line messages must not be wrapped

    @data_app.command("generate")
    def generate_cmd(
        out: Path = typer.Option(None, "--out", "-o", help="Dataset folder to create (RTL goes to OUT/rtl)."),
        count: int = typer.Option(
            240, "--count", "-n", help="Number of designs (round-robin over families)."
        ),
        families: str = typer.Option(None, "--families", help="Comma-separated families (default: all)."),
        widths: str = typer.Option(
            None, "--widths", help="Comma-separated bit widths (default: per family)."
        ),
        seed: int = typer.Option(0, "--seed", help="Same seed, same designs."),
        workers: int = typer.Option(2, "--workers", "-j", help="Parallel synthesis processes."),
        timeout: float = typer.Option(300.0, "--timeout", help="Seconds allowed per Yosys run."),
        list_families: bool = typer.Option(False, "--list", help="List the circuit families and exit."),
        max_memory: str = typer.Option(None, "--max-memory", help=MAX_MEMORY_HELP),
    ) -> None:
        """Generate the built-in dataset: RTL Verilog of many circuit families, synthesized into AIGs."""
        from circuitml.datasets import FAMILIES, generate
        from circuitml.yosys import apply_cli_limits

        apply_cli_limits(max_memory=max_memory)

        if list_families:
            table = Table(title="circuit families")
            for col in ("family", "default widths", "sequential", "what"):
                table.add_column(col)
            for fam in FAMILIES.values():
                table.add_row(
                    fam.name, ",".join(map(str, fam.widths)), "yes" if fam.sequential else "", fam.description
                )
            console.print(table)
            return
        if out is None:
            raise ConfigError("--out: expected the dataset folder to create")
        try:
            report = generate(
                out,
                count,
                families=_parse_list(families, "families"),
                widths=_parse_list(widths, "widths", int),
                seed=seed,
                workers=workers,
                timeout=timeout,
            )
        except KeyboardInterrupt:
            raise _interrupted(console, out) from None
        _print_report(console, report)

    @data_app.command("build")
    def build_cmd(
        sources: list[Path] = typer.Argument(
            ..., help=".v/.sv/.aig/.aag/.bench files or folders (recursive)."
        ),
        out: Path = typer.Option(..., "--out", "-o", help="Dataset folder (extended when it exists)."),
        workers: int = typer.Option(2, "--workers", "-j", help="Parallel worker processes."),
        top: str = typer.Option(None, "--top", help="Top module where a Verilog design's top is ambiguous."),
        family: str = typer.Option(
            None, "--family", help="Family name for every circuit (default: folders)."
        ),
        timeout: float = typer.Option(300.0, "--timeout", help="Seconds allowed per Yosys run."),
        exclude: list[str] = typer.Option(
            [], "--exclude", help="Leave out files or folders matching this glob (repeatable), e.g. '*_tb.v'."
        ),
        follow_symlinks: bool = typer.Option(
            False, "--follow-symlinks", help="Read symlinks in source folders that point outside them."
        ),
        strict: bool = typer.Option(False, "--strict", help="Stop at the first source that fails."),
        latch_error: bool = typer.Option(False, "--latch-error", help=LATCH_ERROR_HELP),
        max_memory: str = typer.Option(None, "--max-memory", help=MAX_MEMORY_HELP),
    ) -> None:
        """Build the processed dataset (safetensors per circuit + manifest.json) from circuit files; resumable.

        Bad sources are reported at the end and skipped (exit 2 when none could be built); files with identical
        content each get a record; testbenches are left out with that reason."""
        import shutil

        from circuitml.datasets import build_dataset
        from circuitml.errors import DatasetError
        from circuitml.yosys import apply_cli_limits

        apply_cli_limits(max_memory=max_memory)

        existed = out.exists()
        try:
            report = build_dataset(
                sources,
                out,
                workers=workers,
                top=top,
                family=family,
                timeout=timeout,
                exclude=exclude,
                follow_symlinks=follow_symlinks,
                strict=strict,
                latch_error=latch_error,
            )
        except KeyboardInterrupt:
            raise _interrupted(console, out) from None
        _print_report(console, report)
        if report.failed and report.built + report.aliased + report.skipped == 0:
            if not existed:  # leave no empty dataset behind
                shutil.rmtree(out, ignore_errors=True)
            raise DatasetError(f"{out}: nothing built, all {len(report.failed)} source(s) failed")

    @data_app.command("info")
    def info_cmd(
        root: Path = typer.Argument(..., help="Dataset folder."),
        as_json: bool = typer.Option(False, "--json", help="Print the statistics as JSON."),
    ) -> None:
        """Counts and size statistics of a dataset, per family."""
        from circuitml.datasets import dataset_stats

        stats = dataset_stats(root)
        if as_json:
            import json

            typer.echo(json.dumps(stats, indent=1))
            return
        console.print(_info_table(stats))
        if stats["failures"]:
            console.print(
                f"{stats['failures']} source(s) failed in the last build (see manifest.json 'failures')"
            )

    @data_app.command("export")
    def export_cmd(
        root: Path = typer.Argument(..., help="Dataset folder."),
        out: Path = typer.Argument(..., help="Folder for the circuit files."),
        fmt: str = typer.Option("aig", "--format", "-f", help="aig, aag or bench."),
        verilog: bool = typer.Option(False, "--verilog", help="Also write each circuit's Verilog (<id>.v)."),
        designs_only: bool = typer.Option(
            False,
            "--designs-only",
            help="Leave out a corpus's recipe variants: each design once, as generated (e.g. for `data qor`).",
        ),
    ) -> None:
        """Write a dataset's circuits as AIGER/bench files (with --verilog: Verilog + AIG pairs)."""
        from circuitml.datasets import export_dataset

        n = export_dataset(root, out, suffix=fmt, with_verilog=verilog, designs_only=designs_only)
        console.print(f"{n} circuits written to {out}", highlight=False)

    @app.command("convert")
    def convert_cmd(
        src: Path = typer.Argument(..., help="Input circuit (.aag/.aig/.bench/.v/.sv)."),
        dst: Path = typer.Argument(..., help="Output circuit (.aag/.aig/.bench)."),
        top: str = typer.Option(None, "--top", help="Top module for Verilog input."),
        latch_error: bool = typer.Option(False, "--latch-error", help=LATCH_ERROR_HELP),
        verbose: bool = typer.Option(False, "--verbose", "-v", help=VERBOSE_HELP),
        timeout: float = typer.Option(
            None, "--timeout", help="Seconds before Yosys is killed (default 300)."
        ),
        max_memory: str = typer.Option(None, "--max-memory", help=MAX_MEMORY_HELP),
    ) -> None:
        """Convert a circuit between formats (chosen by the file suffixes)."""
        from circuitml.formats import read_circuit, write_circuit
        from circuitml.yosys import apply_cli_limits

        apply_cli_limits(timeout=timeout, max_memory=max_memory)

        is_verilog = src.suffix.lower() in (".v", ".sv")
        if latch_error and not is_verilog:
            raise ConfigError(f"--latch-error: applies to Verilog input (.v/.sv), got {src.name}")
        with yosys_feedback(verbose):
            if is_verilog and src.is_file():
                from circuitml.verilog import verilog_to_aig

                aig = verilog_to_aig([src], top=top, latch_error=latch_error)
            else:
                aig = read_circuit(src, top=top)
        write_circuit(aig, dst)
        console.print(
            f"{src} → {dst}: {aig.num_inputs} inputs, {aig.num_outputs} outputs, "
            f"{aig.num_latches} latches, {aig.num_ands} ANDs",
            highlight=False,
        )
