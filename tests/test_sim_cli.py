"""``circuitml equiv`` and ``circuitml simulate`` through a Typer app holding only these commands."""

from __future__ import annotations

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from circuitml.commands import sim as sim_commands
from circuitml.errors import ConfigError
from circuitml.formats import write_circuit
from circuitml.sim import signal_probability
from tests.test_sim import two_xors


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    sim_commands.register(app, typer.Typer())
    return app


@pytest.fixture
def files(tmp_path):
    a, b = two_xors(6)
    bad = b.copy()
    bad.ands[2, 1] ^= 1
    paths = {}
    for name, aig, suffix in (("a", a, ".aag"), ("b", b, ".aig"), ("bad", bad, ".bench")):
        paths[name] = tmp_path / f"{name}{suffix}"
        write_circuit(aig, paths[name])
    return paths


def test_equiv_equal_and_different(app, files):
    runner = CliRunner()
    ok = runner.invoke(app, ["equiv", str(files["a"]), str(files["b"])])
    assert ok.exit_code == 0 and "equivalent (exhaustive, proved)" in ok.output
    diff = runner.invoke(app, ["equiv", str(files["a"]), str(files["bad"]), "--method", "sim"])
    assert diff.exit_code == 1 and "NOT equivalent" in diff.output and "counterexample" in diff.output


def test_equiv_rejects_unknown_method(app, files):
    res = CliRunner().invoke(app, ["equiv", str(files["a"]), str(files["b"]), "--method", "bdd"])
    assert isinstance(res.exception, ConfigError) and "--method" in str(res.exception)


def test_simulate_writes_probabilities(app, files, tmp_path):
    out = tmp_path / "p.npy"
    res = CliRunner().invoke(app, ["simulate", str(files["a"]), "--patterns", "1000", "--out", str(out)])
    assert res.exit_code == 0, res.output
    from circuitml.formats import read_circuit

    np.testing.assert_array_equal(
        np.load(out), signal_probability(read_circuit(files["a"]), num_patterns=1000)
    )
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("tmp")]  # no temp file left behind
