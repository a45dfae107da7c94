"""The ``circuitml`` command: parses arguments, calls the library, shows progress and one-line errors.

Each area keeps its commands in ``circuitml/commands/<area>.py`` with a ``register(app, data_app)`` function;
this file only assembles them and maps library errors to a one-line message and exit code 2.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
import traceback

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


def _click_classes(name: str) -> tuple[type, ...]:
    """``name`` (ClickException, Exit, Abort) from click and from the click that typer vendors (>= 0.23,
    ``typer._click``): usage errors of either must be caught whatever the installed versions."""
    found = []
    for module in ("click.exceptions", "typer._click.exceptions", "typer"):
        try:
            cls = getattr(importlib.import_module(module), name, None)
        except ImportError:
            continue
        if isinstance(cls, type) and cls not in found:
            found.append(cls)
    return tuple(found)


_USAGE = _click_classes("ClickException")
_EXIT = _click_classes("Exit")
_ABORT = _click_classes("Abort")

# OS errors that mean "you gave me the wrong path", not "circuitml is broken"
_USER_OS_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)
_USER_ERRNOS = {errno.ENAMETOOLONG, errno.ELOOP, errno.ENOSPC, errno.EROFS, errno.EDQUOT}


def _one_line(text: str) -> str:
    # argv may carry undecodable bytes (surrogateescape); a message must print on any terminal
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    return " ".join(text.split("\n")) if "\n" in text else text


def _error(text: str) -> None:
    err_console.print(f"[bold red]error:[/] {_one_line(text)}", highlight=False, soft_wrap=True, markup=True)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the console script; returns (and exits with) the process exit code.

    Exit codes: 0 success, 2 bad usage or bad input (one line, no traceback), 130 interrupted, 1 an internal
    error (a bug in circuitml: the only case that prints a traceback, and it says so).
    """
    try:
        # with standalone_mode=False, click returns the code of a `typer.Exit(n)` (and of Ctrl-C: 130)
        returned = app(args=argv, standalone_mode=False)
    except CircuitmlError as exc:
        _error(str(exc))
        code = 2
    except _EXIT as exc:
        code = getattr(exc, "exit_code", 0)
    except _USAGE as exc:
        exc.show()
        code = getattr(exc, "exit_code", 2) or 2
    except (*_ABORT, KeyboardInterrupt):
        err_console.print("interrupted")
        code = 130
    except OSError as exc:
        if not (isinstance(exc, _USER_OS_ERRORS) or exc.errno in _USER_ERRNOS):
            raise
        what = os.strerror(exc.errno) if exc.errno else type(exc).__name__
        _error(f"{exc.filename or ''}: {what.lower()}" if exc.filename else str(exc))
        code = 2
    except Exception:
        err_console.print(
            "[bold red]internal error[/] (a bug in circuitml, not in your input; please report it with "
            "this trace):",
            highlight=False,
        )
        traceback.print_exc()
        code = 1
    else:
        code = returned if isinstance(returned, int) else 0
    if argv is None:
        sys.exit(code)
    return code


if __name__ == "__main__":
    main()
