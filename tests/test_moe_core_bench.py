"""Smoke run of bench/bench_moe.py: our block equals transformers' Mixtral block with the same weights."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "bench_moe.py"


@pytest.mark.slow
def test_bench_quick_row_runs_and_matches_hf(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("transformers")
    spec = importlib.util.spec_from_file_location("bench_moe", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    # run_row raises SystemExit if HF's MixtralSparseMoeBlock and ours disagree on the copied weights.
    module.main(["--quick", "--rows", "2", "--repeats", "1", "--warmup", "0", "--clock", "thread"])
    out = capsys.readouterr().out
    row = [line for line in out.splitlines() if line.strip().startswith("16")]
    assert row and row[0].count("x") >= 4, out
