"""The ``circuitml`` command: parses arguments, calls the library, shows progress and one-line errors.

Each area keeps its commands in ``circuitml/commands/<area>.py`` with a ``register(app, data_app)`` function;
this file only assembles them and maps library errors to a one-line message and exit code 2.
"""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import click
import typer
from rich.console import Console

from circuitml.errors import CircuitmlError


def _flags_without_placeholder() -> None:
    """typer 0.2x renders every option's type in help, so a flag reads ``--resume <bool>`` as if it took a
    value; show flags bare (``--resume``), as click does."""
    try:
        from typer.core import TyperOption
    except ImportError:
        return
    shown = getattr(TyperOption, "display_type_rich", None)
    if shown is None or getattr(shown, "_circuitml_flags", False):
        return

    def display_type_rich(self, ctx):
        return None if getattr(self, "is_flag", False) else shown(self, ctx)

    display_type_rich._circuitml_flags = True  # type: ignore[attr-defined]
    TyperOption.display_type_rich = display_type_rich


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            typer.echo(f"circuitml {version('circuitml')}")
        except PackageNotFoundError:
            typer.echo("circuitml (not installed as a package)")
        raise typer.Exit(0)


_flags_without_placeholder()
app = typer.Typer(
    name="circuitml",
    help="Graph learning for digital circuits: AIGs, GNN encoders, MGVGA pretraining, synthesis tasks, MoE.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", "-V", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Graph learning for digital circuits: AIGs, GNN encoders, MGVGA pretraining, synthesis tasks, MoE."""


data_app = typer.Typer(help="Generate, build and inspect circuit datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")

# Modules under circuitml/commands/, each with register(app, data_app).
COMMAND_MODULES: list[str] = ["data", "qa", "pretrain", "evaluate", "verilog", "shift", "sim"]

for _name in COMMAND_MODULES:
    importlib.import_module(f"circuitml.commands.{_name}").register(app, data_app)

err_console = Console(stderr=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns (and exits with) the process exit code."""
    from circuitml.memory import tune_malloc

    tune_malloc()  # large-graph temporaries reuse heap memory instead of page-faulting fresh mmaps
    try:
        # with standalone_mode=False, click returns the code of a `typer.Exit(n)` (and of Ctrl-C: 130)
        returned = app(args=argv, standalone_mode=False)
    except CircuitmlError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        code = 2
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        name = exc.filename or exc
        what = "no such file"
        if isinstance(exc, IsADirectoryError) or (exc.filename and Path(exc.filename).is_dir()):
            what = "is a directory, expected a file"
        elif isinstance(exc, NotADirectoryError):
            what = "a path component is a file, expected a directory"
        err_console.print(f"[bold red]error:[/] {name}: {what}", highlight=False, soft_wrap=True)
        code = 2
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.ClickException as exc:
        exc.show()
        code = exc.exit_code
    except (click.exceptions.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        code = 130
    else:
        code = returned if isinstance(returned, int) else 0
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
