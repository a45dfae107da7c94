"""``circuitml equiv A B`` and ``circuitml simulate FILE``: equivalence checks and signal probabilities."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from circuitml.errors import ConfigError
from circuitml.fileio import atomic_write

METHODS = ("auto", "sim", "exhaustive", "cec")


def _read(path: Path):
    from circuitml.formats import read_circuit

    return read_circuit(path)


def equiv(
    first: Path = typer.Argument(..., help="circuit file (.aag .aig .bench .v .sv)"),
    second: Path = typer.Argument(..., help="circuit file to compare with"),
    method: str = typer.Option("auto", help="auto | sim | exhaustive | cec"),
    patterns: int = typer.Option(4096, help="random patterns for sim"),
    seed: int = typer.Option(0),
    by_position: bool = typer.Option(
        False, "--by-position", help="Match ports by position even when both circuits name them."
    ),
) -> None:
    """Check that two circuits compute the same outputs; exit 1 when they differ (prints a counterexample).

    Inputs and outputs are matched by name when both circuits name them (different names: exit 2, not
    compared), by position otherwise."""
    from circuitml.portmatch import align_ports
    from circuitml.sim import equivalent

    if method not in METHODS:
        raise ConfigError(f"--method: expected one of {', '.join(METHODS)}, got {method!r}")
    if patterns <= 0:
        raise ConfigError(f"--patterns: expected a positive integer, got {patterns}")
    match = align_ports(_read(first), _read(second), by_position=by_position)
    a, b = match.first, match.second
    console = Console()
    console.print(f"ports matched {match.how} ({match.why})", highlight=False)
    res = equivalent(a, b, method, num_patterns=patterns, seed=seed)
    verdict = "equivalent" if res.equal else "NOT equivalent"
    how = "proved" if res.proved else "not refuted"
    console.print(f"{verdict} ({res.method}, {how}): {res.reason}", highlight=False)
    if res.counterexample is not None:
        names = a.pi_names or [f"pi{i}" for i in range(a.num_pis)]
        bits = " ".join(f"{n}={int(v)}" for n, v in zip(names, res.counterexample, strict=True))
        out = (a.po_names or [f"po{i}" for i in range(a.num_pos)])[res.output]
        console.print(f"counterexample (output {out} differs): {bits}", highlight=False, soft_wrap=True)
    if not res.equal:
        raise typer.Exit(1)


def simulate(
    path: Path = typer.Argument(..., help="circuit file (.aag .aig .bench .v .sv)"),
    patterns: int = typer.Option(4096, help="random input patterns"),
    seed: int = typer.Option(0),
    out: Path = typer.Option(
        None, help="write every node's probability (float32, node-id order) to this .npy"
    ),
) -> None:
    """Random bit-parallel simulation: each output's probability of being 1 (and every node's, with --out)."""
    from circuitml.sim import signal_probability

    if patterns <= 0:
        raise ConfigError(f"--patterns: expected a positive integer, got {patterns}")
    if out is not None and not out.name:  # "" and "." have no name to give a .npy suffix
        raise ConfigError(f"--out: expected a .npy file path, got the folder {str(out)!r}")
    aig = _read(path)
    prob = signal_probability(aig, num_patterns=patterns, seed=seed)
    p_out = np.where(aig.pos & 1, 1 - prob[aig.pos >> 1], prob[aig.pos >> 1])
    table = Table(title=f"{path.name}: P(output = 1) over {patterns} random patterns (seed {seed})")
    table.add_column("output")
    table.add_column("P(1)", justify="right")
    names = aig.po_names or [f"po{i}" for i in range(aig.num_pos)]
    for name, p in zip(names, p_out, strict=True):
        table.add_row(name, f"{p:.4f}")
    Console().print(table)
    if out is not None:
        out = out.with_suffix(".npy") if out.suffix != ".npy" else out
        buf = io.BytesIO()
        np.save(buf, prob)
        atomic_write(out, buf.getvalue())


def register(app: typer.Typer, data_app: typer.Typer) -> None:
    app.command("equiv")(equiv)
    app.command("simulate")(simulate)
