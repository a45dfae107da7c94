"""The pretraining corpus: designs x random ABC recipes, structurally deduplicated, equivalent, resumable."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from circuitml.datasets import CircuitDataset
from circuitml.datasets.corpus import (
    RECIPE_STEPS,
    build_corpus,
    plan_corpus,
    random_recipe,
    recipe_variants,
    structural_hash,
)

from circuitml.errors import ConfigError
from circuitml.sim import random_pi_words, simulate_outputs


def test_plan_fills_from_rich_families_and_is_deterministic():
    plan = plan_corpus(40, seed=3, families=["adder_rc", "fsm"])
    assert plan == plan_corpus(40, seed=3, families=["adder_rc", "fsm"])
    fams = [d.family for d in plan]
    assert len(plan) == 40 and len({d.module for d in plan}) == 40
    # adder_rc has one design per width (2..32 -> 31); the rest is filled with FSMs
    assert fams.count("adder_rc") <= 31 and fams.count("fsm") >= 9
    with pytest.raises(ConfigError, match="designs"):
        plan_corpus(0)


def test_recipes_give_equivalent_variants_and_the_hash_ignores_fanin_order():
    from circuitml.aig import AIGBuilder

    b = AIGBuilder("t")
    xs = [b.add_pi() for _ in range(6)]
    acc = xs[0]
    for x in xs[1:]:
        acc = b.xor_(acc, b.or_(x, b.and_(acc, x)))
    b.add_po(acc)
    b.add_po(b.and_many(xs))
    aig = b.build()
    recipes = [random_recipe(random.Random(k)) for k in range(3)]
    assert all(step.strip() in RECIPE_STEPS for r in recipes for step in r.split(";"))
    words = random_pi_words(aig.num_pis, 256, seed=1)
    ref = simulate_outputs(aig, words)
    for var in recipe_variants(aig, recipes):
        assert np.array_equal(simulate_outputs(var, words), ref)
    swapped = aig.copy()
    swapped.ands = swapped.ands[:, ::-1].copy()
    assert structural_hash(swapped) == structural_hash(aig)
    other = aig.copy()
    other.pos = other.pos ^ 1
    assert structural_hash(other) != structural_hash(aig)


def test_corpus_is_distinct_grouped_by_design_and_resumes(tmp_path):
    out = tmp_path / "corpus"
    kwargs = dict(variants=2, seed=0, families=["comparator", "parity", "mux"], workers=1, progress=False)

    class Stop(Exception):
        pass

    def stop(_design: str) -> None:
        raise Stop

    with pytest.raises(Stop):
        build_corpus(out, 3, on_design=stop, **kwargs)
    first = json.loads((out / "manifest.json").read_text())
    assert len(first["corpus"]["designs_done"]) == 1
    report = build_corpus(out, 3, **kwargs)
    assert report.designs == 3 and report.circuits == report.designs + report.variants
    assert report.variants + report.duplicates == 3 * 2

    ds = CircuitDataset(out)
    assert len(ds) == report.circuits
    hashes = [r["struct_hash"] for r in ds.records]
    assert len(set(hashes)) == len(hashes)
    by_design: dict[str, list[int]] = {}
    for i, r in enumerate(ds.records):
        by_design.setdefault(r["design"], []).append(i)
        assert r["verilog"] is not None and ds.verilog_tokens(i)  # variants keep their design's Verilog
    assert len(by_design) == 3
    for members in by_design.values():
        base = next(i for i in members if ds.records[i]["recipe"] is None)
        words = random_pi_words(ds.aig(base).num_pis, 128, seed=0)
        ref = simulate_outputs(ds.aig(base), words)
        for i in members:
            assert np.array_equal(simulate_outputs(ds.aig(i), words), ref)

    with pytest.raises(ConfigError, match="same settings"):
        build_corpus(out, 3, **{**kwargs, "variants": 3})
