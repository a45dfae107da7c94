"""Each task trains on small fixtures and beats its trivial baseline by the margin stated in the test."""

from __future__ import annotations

import numpy as np
from circuitml.datasets.qor import generate_qor_labels, load_qor_labels
from circuitml.tasks.common import TrainConfig
from circuitml.tasks.equivalence import gate_pairs, merge_with_copy, prepare_equivalence, run_equivalence
from circuitml.tasks.probability import run_probability
from circuitml.tasks.qor import run_qor

from circuitml.aig import AIG, AIGBuilder
from circuitml.formats import write_aiger

SMALL = {"kind": "deepgcn", "hidden": 32, "num_layers": 3}


def random_circuit(seed: int, num_pis: int = 8, num_gates: int = 60, name: str | None = None) -> AIG:
    """A seeded random multi-level circuit of AND/OR/XOR gates over earlier signals (strashed)."""
    rng = np.random.default_rng(seed)
    b = AIGBuilder(name or f"rand{seed}")
    sigs = [b.add_pi() for _ in range(num_pis)]
    for _ in range(num_gates):
        x, y = (sigs[int(i)] ^ int(rng.integers(2)) for i in rng.integers(0, len(sigs), 2))
        op = rng.integers(3)
        sigs.append(b.and_(x, y) if op == 0 else b.or_(x, y) if op == 1 else b.xor_(x, y))
    for s in sigs[-4:]:
        b.add_po(s)
    return b.build()


def qor_design(seed: int, num_pis: int = 12, num_gates: int = 150) -> AIG:
    """A seeded random design with many outputs and redundant gates, so ABC recipes differ on it."""
    rng = np.random.default_rng(seed)
    b = AIGBuilder(f"d{seed}")
    sigs = [b.add_pi() for _ in range(num_pis)]
    for _ in range(num_gates):
        i, j, k = (int(v) for v in rng.integers(max(0, len(sigs) - 24), len(sigs), 3))
        x, y, z = sigs[i] ^ int(rng.integers(2)), sigs[j] ^ int(rng.integers(2)), sigs[k]
        sigs.append([b.and_(x, y), b.or_(x, y), b.xor_(x, y), b.mux_(z, x, y)][int(rng.integers(4))])
    for s in sigs[num_pis::5]:
        b.add_po(s)
    return b.build()


def redundant_multiplier(n: int, m: int, seed: int) -> AIG:
    """An n x m array multiplier whose adders mix two redundant sum forms at random (seeded).

    Designs of one family: the recipes remove the redundancy in similar ways, so a recipe's effect on the AND
    count carries over from the training designs to the held-out ones — the setting where QoR prediction is
    learnable from a few designs.
    """
    rng = np.random.default_rng(seed)
    b = AIGBuilder(f"mul{n}x{m}_{seed}")
    a = [b.add_pi() for _ in range(n)]
    c = [b.add_pi() for _ in range(m)]
    rows = [[b.and_(a[i], c[j]) for i in range(n)] for j in range(m)]
    acc = rows[0] + [0] * m
    for j in range(1, m):
        carry = 0
        for i in range(n):
            x, y = acc[i + j], rows[j][i]
            if rng.integers(2):
                s = b.xor_many([x, y, carry])
            else:
                s = b.or_(b.and_(b.xor_(x, y), carry ^ 1), b.and_(b.xor_(x, y) ^ 1, carry))
            carry = b.or_many([b.and_(x, y), b.and_(x, carry), b.and_(y, carry)])
            acc[i + j] = s
        acc[n + j] = carry
    for lit in acc:
        b.add_po(lit)
    return b.build()


def test_probability_head_beats_the_mean_predictor_by_30_percent() -> None:
    circuits = [random_circuit(s) for s in range(16)]
    cfg = TrainConfig(epochs=25, seed=0, batch_size=64, lr=5e-3)
    res = run_probability(circuits, "scratch", "scratch", cfg, encoder_config=SMALL)
    assert res.metrics["mae"] < 0.7 * res.baseline["mae"], (res.metrics, res.baseline)
    assert res.pred.shape == res.true.shape and ((res.pred >= 0) & (res.pred <= 1)).all()


def test_gate_pairs_are_balanced_and_labelled_by_truth_tables() -> None:
    from circuitml.sim import projection_words, simulate_words

    c = random_circuit(3)
    opt = random_circuit(3)  # same function, same structure: every gate has a twin
    merged = merge_with_copy(c, opt)
    pairs, labels = gate_pairs(merged, max_pairs=200, seed=0)
    assert labels.sum() == (labels == 0).sum() > 0
    tt = simulate_words(merged, projection_words(merged.num_pis))
    naive = np.array([np.array_equal(tt[a], tt[b]) for a, b in pairs])  # reference: compare tables one by one
    assert np.array_equal(naive, labels == 1)
    assert (pairs[:, 0] != pairs[:, 1]).all()


def test_gate_equivalence_beats_majority_class_by_15_points() -> None:
    circuits = [random_circuit(s, num_gates=40) for s in range(12)]
    prepared = prepare_equivalence(circuits, "gates", seed=0)
    cfg = TrainConfig(epochs=30, seed=0, batch_size=64, lr=5e-3)
    res = run_equivalence(
        circuits, "scratch", "scratch", cfg, setting="gates", prepared=prepared, encoder_config=SMALL
    )
    assert res.metrics["accuracy"] >= res.baseline["accuracy"] + 0.15, (res.metrics, res.baseline)
    assert res.metrics["auc"] > 0.7


def test_circuit_pairs_have_abc_positives_and_verified_negatives() -> None:
    from circuitml.sim import equivalent

    circuits = [random_circuit(s, num_gates=30) for s in range(3)]
    graphs, rows = prepare_equivalence(circuits, "circuits", seed=0)
    assert rows[:, 2].sum() == 3 and (rows[:, 2] == 0).sum() >= 1
    assert len(graphs) == len({int(x) for x in rows[:, :2].reshape(-1)})
    assert equivalent(circuits[0], circuits[0], method="exhaustive").equal


def test_qor_holds_out_designs_and_its_metrics_match_a_naive_reference(tmp_path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for s in range(8):
        write_aiger(qor_design(s), src / f"d{s}.aig")
    generate_qor_labels([src], tmp_path / "labels", num_recipes=64, seed=0, workers=2, chunk_size=64)
    labels = load_qor_labels(tmp_path / "labels")
    assert len(labels) == 8 * 64
    cfg = TrainConfig(epochs=10, seed=0, batch_size=64, lr=3e-3)
    res = run_qor(labels, "scratch", "scratch", cfg, encoder_config=SMALL)
    # whole designs are held out
    test_designs = set(np.unique(res.group).tolist())
    assert 0 < len(test_designs) < 8 and len(res.pred) == 64 * len(test_designs)
    # reference metrics computed naively, design by design, from the raw AND counts
    from scipy.stats import spearmanr

    rows = np.flatnonzero(np.isin(labels.design, sorted(test_designs)))
    raw = labels.values["ands"]
    z_true, raw_pred = np.empty(len(rows)), np.empty(len(rows))
    for k, r in enumerate(rows):
        mine = raw[labels.design == labels.design[r]]
        sd = mine.std() if mine.std() > 0 else 1.0
        z_true[k] = (raw[r] - mine.mean()) / sd
        raw_pred[k] = res.pred[k] * sd + mine.mean()
    assert np.allclose(res.true, z_true, atol=1e-5)
    assert abs(res.metrics["mse"] - np.mean((res.pred - z_true) ** 2)) < 1e-6
    assert abs(res.metrics["mape"] - 100 * np.mean(np.abs(raw_pred - raw[rows]) / raw[rows])) < 1e-6
    assert abs(res.metrics["spearman"] - spearmanr(res.pred, z_true).statistic) < 1e-6
    assert abs(res.baseline["mse"] - np.mean(z_true**2)) < 1e-6
    # MAPE is on de-normalized AND counts: a few percent, not the hundreds z-scores would give
    assert 0 < res.metrics["mape"] < 50


def test_qor_beats_the_mean_predictor_on_held_out_designs_of_one_family(tmp_path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for k, (n, s) in enumerate((n, s) for n in (4, 5, 6, 7) for s in range(2)):
        write_aiger(redundant_multiplier(n, n - 1 + s, s), src / f"m{k}.aig")
    generate_qor_labels([src], tmp_path / "labels", num_recipes=48, seed=0, workers=2, chunk_size=48)
    labels = load_qor_labels(tmp_path / "labels")
    cfg = TrainConfig(epochs=25, seed=0, batch_size=64, lr=3e-3)
    res = run_qor(
        labels, "scratch", "scratch", cfg, encoder_config={"kind": "gcn", "hidden": 32, "num_layers": 2}
    )
    # the mean predictor (z = 0 for every recipe) has MSE ~1 on z-scores; ask for less than half of it
    assert res.metrics["mse"] < 0.5 * res.baseline["mse"]
    assert res.metrics["spearman"] > 0.6
    assert res.metrics["mape"] < res.baseline["mape"]
