"""Shipped pretrained encoders: found by name offline, listed by `circuitml encoders`, packaged as data."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

import circuitml
from circuitml.cli import main as cli_main
from circuitml.encoders.shipped import SHIPPED_DIR, resolve_encoder, shipped_encoders
from circuitml.errors import CheckpointError

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = shipped_encoders()


def test_at_least_one_encoder_is_shipped_with_a_model_card():
    assert SHIPPED, f"no encoder folder under {SHIPPED_DIR}"
    for folder in SHIPPED.values():
        card = (folder / "README.md").read_text(encoding="utf-8")
        for needed in ("objectives", "steps", "corpus"):
            assert needed in card.lower()
        assert "TODO" not in card and "TBD" not in card
        assert sum(f.stat().st_size for f in folder.iterdir()) < 8_000_000  # a few MB at most


@pytest.mark.parametrize("name", sorted(SHIPPED))
def test_shipped_encoder_loads_by_name_and_embeds(name):
    from circuitml.aig import AIGBuilder

    encoder = circuitml.load_encoder(name)
    b = AIGBuilder("t")
    x, y, z = b.add_pi(), b.add_pi(), b.add_pi()
    b.add_po(b.xor_(b.and_(x, y), z))
    out = encoder.embed(b.build())
    assert out.graph.shape == (1, encoder.hidden) and torch.isfinite(out.node).all()


def test_unknown_names_list_the_shipped_ones(capsys):
    with pytest.raises(CheckpointError, match="shipped"):
        resolve_encoder("no-such-encoder")
    assert cli_main(["encoders"]) == 0
    listing = capsys.readouterr().out
    for name in SHIPPED:
        assert name in listing


def test_package_data_globs_cover_every_shipped_file():
    tree = ast.parse((ROOT / "setup.py").read_text())
    globs = next(
        ast.literal_eval(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "PACKAGE_DATA"
    )["circuitml.encoders"]
    package = ROOT / "circuitml" / "encoders"
    covered = {p for g in globs for p in package.glob(g)}
    for folder in SHIPPED.values():
        for f in folder.iterdir():
            assert f in covered, f


def test_loading_a_shipped_encoder_probes_its_size_once(monkeypatch):
    import circuitml.encoders.builder as builder

    calls = []
    real = builder.encoder_size

    def spy(config, *args, **kwargs):
        calls.append(config.kind)
        return real(config, *args, **kwargs)

    monkeypatch.setattr(builder, "encoder_size", spy)
    name = sorted(SHIPPED)[0]
    encoder = circuitml.load_encoder(name)
    assert calls == [encoder.config.kind]  # the meta-device probe (4-26 ms) runs once, not per check


def test_encoders_listing_is_complete_when_piped(monkeypatch):
    from typer.testing import CliRunner

    from circuitml.cli import app
    from circuitml.encoders.shipped import describe_encoder

    monkeypatch.setenv("FORCE_COLOR", "1")  # a CI log that asks for colour is still no terminal
    result = CliRunner().invoke(app, ["encoders"])  # stdout is not a terminal: no 80-column squeeze
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line.split() for line in result.output.splitlines() if line.strip()}
    assert rows["name"][:2] == ["name", "kind"]
    for name, folder in SHIPPED.items():
        d = describe_encoder(folder)
        assert rows[name][1] == d["kind"]
        assert "+".join(d["objectives"] or []) in rows[name], rows[name]
        assert "…" not in result.output


def _chain(first_compl: int, depth: int = 8):
    """``AND(...AND(AND(p0, p1 ^ first_compl), p2)..., p3)``: ``depth`` + 1 ANDs deep, one output at the top."""
    from circuitml.aig import AIGBuilder

    b = AIGBuilder("chain")
    p = [b.add_pi() for _ in range(4)]
    g = b.and_(p[0], p[1] ^ first_compl)
    for k in range(depth):
        g = b.and_(g, p[2 + k % 2])
    b.add_po(g)
    return b.build()


@pytest.mark.skipif("dag64pi-equiv5k-corpus" not in SHIPPED, reason="the dag encoder is not shipped here")
def test_the_shipped_dag_encoder_sees_deeper_into_the_fan_in_cone_than_deepgcn():
    """The reason the dag encoder ships: after one forward sweep the output's embedding depends on its whole
    fan-in cone, so complementing one input 9 levels down changes it, where 7 rounds of deepgcn (with NOT and PO
    nodes taking hops) cannot see it at all. The influence fades with depth (measured: about 0.35 at 2 levels,
    4e-4 at 9, 3e-6 at 13), so the bound below is loose."""
    from circuitml.graph import PO, aig_to_data

    def output_shift(name: str) -> torch.Tensor:
        """How far the output's embedding moves when the deepest input is complemented."""
        enc = circuitml.load_encoder(name).eval()
        rows = []
        for first_compl in (0, 1):
            data = aig_to_data(_chain(first_compl), explicit_not=enc.config.explicit_not)
            with torch.no_grad():
                rows.append(enc.embed(data).node[data.x.view(-1) == PO][0])
        return rows[0] - rows[1]

    dag = output_shift("dag64pi-equiv5k-corpus")
    assert dag.abs().max() > 5e-5
    if "deepgcn64pi-equiv3k-corpus" in SHIPPED:
        deep = output_shift("deepgcn64pi-equiv3k-corpus")
        assert deep.abs().max() == 0
