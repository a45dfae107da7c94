"""``circuitml verilog info|tokens|synth`` and ``circuitml abc``: the Verilog and Yosys/ABC side of the CLI."""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from circuitml.yosys import MAX_MEMORY_HELP

console = Console()
err_console = Console(stderr=True, soft_wrap=True)

LATCH_ERROR_HELP = "Fail when Yosys infers a latch (an if/case that does not assign on every path)."
VERBOSE_HELP = "Show Yosys' raw message behind a one-line error."


@contextmanager
def yosys_feedback(verbose: bool) -> Iterator[None]:
    """Print Yosys' meaning-changing warnings (latches, undriven nets, multiple drivers) once the block ends,
    and with ``verbose`` the raw Yosys text behind a one-line synthesis error."""
    from circuitml.errors import SynthesisError
    from circuitml.verilog import SynthesisWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", SynthesisWarning)
        try:
            yield
        except SynthesisError as exc:
            detail = getattr(exc, "detail", None)
            if verbose and detail and detail != str(exc):
                err_console.print(f"Yosys said: {detail}", highlight=False, markup=False)
            raise
        finally:
            for w in caught:
                if issubclass(w.category, SynthesisWarning):
                    err_console.print(f"[yellow]warning:[/] {w.message}", highlight=False)
                else:
                    warnings.showwarning(w.message, w.category, w.filename, w.lineno)


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    verilog_app = typer.Typer(help="Parse, tokenize and synthesize Verilog.", no_args_is_help=True)
    app.add_typer(verilog_app, name="verilog")

    @verilog_app.command("info")
    def info(
        sources: list[Path] = typer.Argument(..., help="Verilog files or folders."),
        top: str = typer.Option(None, help="Top module (detected when omitted)."),
        include: list[Path] = typer.Option([], "--include", "-I", help="Include folder (repeatable)."),
    ) -> None:
        """Modules, ports and hierarchy of a design (pyverilog, with a Yosys fallback)."""
        from circuitml.verilog import parse_verilog

        design = parse_verilog(sources, top=top, include_dirs=include)
        table = Table(title=f"top: {design.top}  (parsed by {design.backend})")
        for col in ("module", "inputs", "outputs", "instantiates"):
            table.add_column(col)
        hierarchy = design.hierarchy()
        for name, mod in design.modules.items():

            def ports(ps) -> str:
                return ", ".join(p.name if p.width == 1 else f"{p.name}[{p.width or '?'}]" for p in ps)

            table.add_row(name, ports(mod.inputs), ports(mod.outputs), ", ".join(hierarchy[name]))
        console.print(table)

    @verilog_app.command("tokens")
    def tokens(
        source: Path = typer.Argument(..., help="A Verilog file."),
        ids: bool = typer.Option(False, "--ids", help="Print vocabulary ids instead of tokens."),
        max_len: int = typer.Option(None, help="Cut the id sequence to this length."),
    ) -> None:
        """The normalized token stream a Verilog encoder reads."""
        from circuitml.errors import ConfigError
        from circuitml.fileio import read_input_text
        from circuitml.verilog import encode_tokens, tokenize_verilog

        if max_len is not None and (not ids or max_len < 1):  # never silently ignored
            raise ConfigError(f"--max-len: expected a length >= 1 together with --ids, got {max_len}")
        toks = tokenize_verilog(read_input_text(source, what="Verilog file"))
        if ids:
            typer.echo(json.dumps(encode_tokens(toks, max_len=max_len)))
        else:
            typer.echo(" ".join(toks))

    @verilog_app.command("synth")
    def synth(
        sources: list[Path] = typer.Argument(..., help="Verilog files or folders."),
        out: Path = typer.Option(..., "--out", "-o", help="Output circuit (.aig, .aag or .bench)."),
        top: str = typer.Option(None, help="Top module (detected when omitted)."),
        include: list[Path] = typer.Option([], "--include", "-I", help="Include folder (repeatable)."),
        timeout: float = typer.Option(300.0, help="Seconds before Yosys is killed."),
        latch_error: bool = typer.Option(False, "--latch-error", help=LATCH_ERROR_HELP),
        verbose: bool = typer.Option(False, "--verbose", "-v", help=VERBOSE_HELP),
        max_memory: str = typer.Option(None, "--max-memory", help=MAX_MEMORY_HELP),
    ) -> None:
        """Synthesize Verilog into an AIG with Yosys (flip-flops become latches)."""
        from circuitml.formats import write_circuit
        from circuitml.verilog import verilog_to_aig
        from circuitml.yosys import apply_cli_limits

        apply_cli_limits(max_memory=max_memory)

        with yosys_feedback(verbose):
            aig = verilog_to_aig(
                sources, top=top, include_dirs=include, timeout=timeout, latch_error=latch_error
            )
        write_circuit(aig, out)
        s = aig.stats()
        console.print(
            f"{aig.name}: {s['inputs']} inputs, {s['outputs']} outputs, {s['latches']} latches, "
            f"{s['ands']} ANDs, depth {s['depth']} -> {out}",
            highlight=False,
        )

    @app.command("abc")
    def abc(
        source: Path = typer.Argument(..., help="Input circuit (.aig, .aag, .bench, .v)."),
        out: Path = typer.Option(None, "--out", "-o", help="Where to write the optimized AIG."),
        script: str = typer.Option(
            "strash; rewrite; balance", "--script", "-s", help="ABC commands, ';'-separated."
        ),
        timeout: float = typer.Option(120.0, help="Seconds before ABC is killed."),
    ) -> None:
        """Run an ABC recipe on a circuit and print AND count and depth before and after."""
        from circuitml.formats import check_output_suffix, read_circuit, write_circuit
        from circuitml.yosys import run_abc

        if out is not None:  # before ABC runs, not after
            check_output_suffix(out)
        aig = read_circuit(source)
        res = run_abc(aig, script, timeout=timeout)
        before = aig.stats()
        console.print(
            f"{source.name}: and {before['ands']} -> {res.stats['and']}, "
            f"lev {before['depth']} -> {res.stats['lev']} ({res.stats['seconds']:.2f} s)",
            highlight=False,
        )
        if out is not None:
            write_circuit(res.aig, out)
