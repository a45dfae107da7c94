"""Circuit file formats: one entry point that picks the reader or writer from the file suffix.

=========  ==========================================  =====================
suffix     format                                      read / write
=========  ==========================================  =====================
``.aag``   AIGER ASCII                                 read, write
``.aig``   AIGER binary                                read, write
``.bench`` ISCAS bench (any gate mix, DFFs cut)        read, write
``.v/.sv`` Verilog (synthesized by Yosys)              read
=========  ==========================================  =====================
"""

from __future__ import annotations

import os
from pathlib import Path

from circuitml.aig import AIG
from circuitml.errors import CircuitFormatError
from circuitml.fileio import check_input
from circuitml.formats.aiger import aiger_bytes, parse_aiger, read_aiger, write_aiger
from circuitml.formats.bench import bench_text, parse_bench, read_bench, write_bench

__all__ = [
    "READ_SUFFIXES",
    "WRITE_SUFFIXES",
    "check_output_suffix",
    "aiger_bytes",
    "bench_text",
    "parse_aiger",
    "parse_bench",
    "read_aiger",
    "read_bench",
    "read_circuit",
    "write_aiger",
    "write_bench",
    "write_circuit",
]

READ_SUFFIXES = (".aag", ".aig", ".bench", ".v", ".sv")
WRITE_SUFFIXES = (".aag", ".aig", ".bench")


def read_circuit(path: str | os.PathLike, *, top: str | None = None) -> AIG:
    """Read any supported circuit file into an :class:`AIG`, choosing the reader by suffix.

    Args:
        path: a ``.aag``, ``.aig``, ``.bench``, ``.v`` or ``.sv`` file.
        top: top module for Verilog (detected when omitted).

    Raises:
        CircuitFormatError: unknown suffix, malformed file (names the file and the place), not a regular
            file (a FIFO, a device) or larger than :data:`circuitml.fileio.MAX_INPUT_BYTES`.
        FileNotFoundError: the file does not exist (or is a dangling symlink).
        IsADirectoryError: it is a directory.
        SynthesisError: Yosys rejected a Verilog design.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    check_input(path)  # a FIFO or device would block or never end; a huge file is refused before it is read
    if suffix in (".aag", ".aig"):
        return read_aiger(path)
    if suffix == ".bench":
        return read_bench(path)
    if suffix in (".v", ".sv"):
        from circuitml.verilog import verilog_to_aig  # Yosys is only needed for Verilog

        return verilog_to_aig([path], top=top)
    if suffix == ".gz" and Path(path.stem).suffix.lower() in READ_SUFFIXES:
        suffix = f"{Path(path.stem).suffix}.gz, gzip-compressed (gunzip it first)"
    raise CircuitFormatError(
        path, f"a file ending in one of {', '.join(READ_SUFFIXES)}", got=suffix or "no suffix"
    )


def check_output_suffix(path: str | os.PathLike) -> str:
    """The lower-cased suffix of an output ``path`` :func:`write_circuit` can write, else
    :class:`CircuitFormatError` (checked before a long job, so it does not fail only at the end)."""
    suffix = Path(path).suffix.lower()
    if suffix not in WRITE_SUFFIXES:
        raise CircuitFormatError(
            Path(path), f"an output suffix among {', '.join(WRITE_SUFFIXES)}", got=suffix or "none"
        )
    return suffix


def write_circuit(aig: AIG, path: str | os.PathLike) -> None:
    """Write ``aig`` in the format its suffix names (atomically: temp file, then rename)."""
    path = Path(path)
    if check_output_suffix(path) in (".aag", ".aig"):
        write_aiger(aig, path)
    else:
        write_bench(aig, path)
