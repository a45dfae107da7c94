"""Export a dataset's circuits as ordinary circuit files (AIGER or bench) for tools outside circuitml.

With ``with_verilog=True`` each circuit's Verilog copy is written beside its AIG, giving plain
``<id>.v`` / ``<id>.aig`` pairs.
"""

from __future__ import annotations

import os
from pathlib import Path

from circuitml.errors import ConfigError

from .dataset import CircuitDataset
from .format import atomic_write

__all__ = ["export_dataset", "EXPORT_SUFFIXES"]

EXPORT_SUFFIXES = (".aig", ".aag", ".bench")


def export_dataset(
    root: str | os.PathLike,
    out: str | os.PathLike,
    *,
    suffix: str = ".aig",
    with_verilog: bool = False,
    designs_only: bool = False,
) -> int:
    """Write every circuit of the dataset at ``root`` to ``out/<id><suffix>``; returns how many.

    ``designs_only``: leave out the recipe variants of a ``circuitml data corpus`` (records with a ``recipe``), so
    each design is written once, as generated (e.g. to label a corpus with ``circuitml data qor``).

    Raises:
        ConfigError: unsupported suffix; ``out`` is the dataset folder or inside it (nothing is written).
        DatasetError: corrupted dataset files.
    """
    from circuitml.formats import write_circuit

    suffix = suffix if suffix.startswith(".") else f".{suffix}"
    if suffix not in EXPORT_SUFFIXES:
        raise ConfigError(f"--format: expected one of {', '.join(EXPORT_SUFFIXES)}, got {suffix!r}")
    out = Path(out)
    # the exported files would join the dataset's own (an id named like a dataset file would replace it)
    if out.resolve() == Path(root).resolve() or out.resolve().is_relative_to(Path(root).resolve()):
        raise ConfigError(f"{out}: expected an export folder outside the dataset folder {root}")
    ds = CircuitDataset(root)
    out.mkdir(parents=True, exist_ok=True)
    written = 0
    for i, rec in enumerate(ds.records):
        if designs_only and rec.get("recipe") is not None:
            continue
        write_circuit(ds.aig(i), out / f"{rec['id']}{suffix}")
        written += 1
        if with_verilog:
            text = ds.verilog_source(i)
            if text is not None:
                atomic_write(out / f"{rec['id']}.v", text)
    return written
