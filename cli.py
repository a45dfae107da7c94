"""The ``circuitml`` command: parses arguments, calls the library, shows progress and one-line errors.

Each area keeps its commands in ``circuitml/commands/<area>.py`` with a ``register(app, data_app)`` function;
this file only assembles them and maps library errors to a one-line message and exit code 2.
"""

from __future__ import annotations

import importlib
import sys

import click
import typer
from rich.console import Console

from circuitml.errors import CircuitmlError

app = typer.Typer(
    name="circuitml",
    help="Graph learning for digital circuits: AIGs, GNN encoders, MGVGA pretraining, synthesis tasks, MoE.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
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
    except FileNotFoundError as exc:
        err_console.print(
            f"[bold red]error:[/] {exc.filename or exc}: no such file", highlight=False, soft_wrap=True
        )
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
