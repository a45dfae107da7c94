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
from pathlib import Path

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
COMMAND_MODULES: list[str] = ["data", "qa", "pretrain", "evaluate", "verilog", "shift", "sim", "pill", "moe"]

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
    from circuitml.memory import tune_malloc

    tune_malloc()  # large-graph temporaries reuse heap memory instead of page-faulting fresh mmaps
    try:
        # with standalone_mode=False, click returns the code of a `typer.Exit(n)` (and of Ctrl-C: 130)
        returned = app(args=argv, standalone_mode=False)
    except CircuitmlError as exc:
        _error(str(exc))
        code = 2
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError) as exc:
        name = exc.filename or exc
        what = "no such file"
        if isinstance(exc, IsADirectoryError) or (exc.filename and Path(exc.filename).is_dir()):
            what = "is a directory, expected a file"
        elif exc.filename and os.path.islink(exc.filename):
            what = "a dangling symlink (its target does not exist)"
        elif isinstance(exc, NotADirectoryError):
            what = "a path component is a file, expected a directory"
        _error(f"{name}: {what}")
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
        if isinstance(exc, FileExistsError) and exc.filename and Path(exc.filename).is_file():
            what = "is a file, expected a folder"  # a makedirs through a file
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
