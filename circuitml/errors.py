"""Errors that carry where a problem is and what was expected, so the CLI can print one line and exit 2."""

from __future__ import annotations

from pathlib import Path


def one_line(exc: BaseException) -> str:
    """An exception's type and message on one line (libraries' messages may span several, shortened)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text if len(text) <= 300 else text[:297] + '...'}"


class CircuitmlError(Exception):
    """Base class of every error circuitml raises on bad input; the CLI prints it as one line and exits 2."""


class CircuitFormatError(CircuitmlError, ValueError):
    """A circuit file does not follow its format.

    Args:
        file: the file (or ``"<string>"`` for in-memory input).
        expected: what the reader expected to find.
        line: 1-based line number, for text formats.
        byte: 0-based byte offset, for binary formats.
        got: what it found instead (shortened).
    """

    def __init__(
        self,
        file: str | Path | None,
        expected: str,
        *,
        line: int | None = None,
        byte: int | None = None,
        got: str | None = None,
    ) -> None:
        self.file = str(file) if file is not None else "<string>"
        self.expected = expected
        self.line = line
        self.byte = byte
        self.got = got
        where = self.file
        if line is not None:
            where += f":{line}"
        if byte is not None:
            where += f" (byte {byte})"
        msg = f"{where}: expected {expected}"
        if got is not None:
            shown = got if len(got) <= 60 else got[:57] + "..."
            msg += f", got {shown!r}"
        super().__init__(msg)


class SynthesisError(CircuitmlError):
    """Yosys or ABC failed on a design (the message holds the tool's own first error line)."""


class DatasetError(CircuitmlError):
    """An on-disk dataset is missing, inconsistent or corrupted."""


class CheckpointError(CircuitmlError):
    """A checkpoint or exported encoder is missing, truncated, corrupted or of another model."""


class OutputError(CircuitmlError, OSError):
    """An output path cannot be written: a folder where a file is meant, a file where a folder is meant, a
    read-only or missing place. Also an ``OSError``, so code that handles failed writes still catches it."""


class ConfigError(CircuitmlError, ValueError):
    """A configuration file or override is invalid (names the key and what was expected)."""
