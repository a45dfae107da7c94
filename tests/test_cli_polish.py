"""The command line behaves like a well-made Typer tool: --version, -h, bare flags, plain messages."""

from __future__ import annotations

import re
from importlib.metadata import version
from pathlib import Path

from rich.console import Console

from circuitml.cli import main
from circuitml.commands.shift import domain_table


def test_version_and_short_help(capsys) -> None:
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"circuitml {version('circuitml')}"
    assert main(["-h"]) == 0
    assert "Usage:" in capsys.readouterr().out
    assert main(["data", "build", "-h"]) == 0
    assert "--exclude" in capsys.readouterr().out


def test_boolean_flags_have_no_value_placeholder(capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    for args in (["pretrain", "--help"], ["data", "build", "--help"], ["equiv", "--help"]):
        assert main(args) == 0
        out = capsys.readouterr().out
        assert "<bool>" not in out, args
    assert re.search(r"--by-position\s+Match ports", out)


def test_directory_where_a_file_is_expected_says_so(tmp_path: Path, capsys) -> None:
    assert main(["convert", str(tmp_path), str(tmp_path / "x.aig")]) == 2
    err = capsys.readouterr().err
    assert "is a directory, expected a file" in err and "no such file" not in err
    assert main(["convert", str(tmp_path / "nope.aig"), str(tmp_path / "x.aig")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_shift_prints_its_domains_as_a_table() -> None:
    console = Console(record=True, width=60)
    console.print(domain_table({"epfl_arith": [1, 2, 3], "iscas": [4]}))
    text = console.export_text()
    assert "domain" in text and "circuits" in text and "epfl_arith" in text and "{" not in text


def test_the_cli_imports_torch_only_for_commands_that_run_it() -> None:
    """Every command module is imported to build the CLI; a top-level ``import torch`` in any of them made a
    one-file ``convert`` pay ~1 s of torch import (5x raw Yosys' time on a small design)."""
    import subprocess
    import sys

    code = "import sys, circuitml.cli; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0
