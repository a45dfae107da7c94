"""Domain shift on the shared core: MixDA, Meta-DMoE and GE/LE/GN with circuit encoders and the QA transformer."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from circuitml.tasks.shift.base import fit, frozen_copy
from circuitml.tasks.shift.circuits import (
    CircuitProbModel,
    CircuitProbTask,
    ShiftConfig,
    _batches,
    results_markdown,
    run_circuit_shift,
)
from circuitml.tasks.shift.gelegn import GlobalLocalGate, run_gelegn
from circuitml.tasks.shift.meta_dmoe import MetaDMoE
from circuitml.tasks.shift.mixda import MixDAFFN, run_mixda
from torch import nn

from circuitml.aig import AIGBuilder
from circuitml.encoders import EncoderConfig
from circuitml.errors import ConfigError
from circuitml.graph import aig_to_data


def _adder(n: int):
    b = AIGBuilder(f"add{n}")
    a = [b.add_pi() for _ in range(n)]
    c = [b.add_pi() for _ in range(n)]
    carry = 0
    for i in range(n):
        b.add_po(b.xor_many([a[i], c[i], carry]))
        carry = b.or_(b.and_(a[i], c[i]), b.and_(carry, b.xor_(a[i], c[i])))
    b.add_po(carry)
    return b.build()


def _and_tree(n: int, seed: int):
    rng = np.random.default_rng(seed)
    b = AIGBuilder(f"ctrl{n}_{seed}")
    lits = [b.add_pi() for _ in range(n)]
    for _ in range(3 * n):
        i, j = rng.integers(0, len(lits), 2)
        lits.append(b.and_(lits[i] ^ int(rng.integers(2)), lits[j] ^ int(rng.integers(2))))
    for lit in lits[-4:]:
        b.add_po(lit)
    return b.build()


def _parity(n: int):
    b = AIGBuilder(f"par{n}")
    b.add_po(b.xor_many([b.add_pi() for _ in range(n)]))
    return b.build()


@pytest.fixture(scope="module")
def domains():
    return {
        "arith": [aig_to_data(_adder(n), with_prob=True, num_patterns=1024) for n in (3, 4, 5, 6)],
        "control": [aig_to_data(_and_tree(8, s), with_prob=True, num_patterns=1024) for s in range(4)],
        "parity": [aig_to_data(_parity(n), with_prob=True, num_patterns=1024) for n in (4, 6, 8, 10)],
    }


ENC = EncoderConfig(kind="gcn", hidden=16, num_layers=2)


def test_mixda_starts_as_the_frozen_ffn_and_gates_sum_to_one() -> None:
    ffn = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
    layer = MixDAFFN(ffn, 8, num_adapters=2, bottleneck=4)
    x = torch.randn(5, 3, 8)
    torch.testing.assert_close(layer(x), ffn(x))  # zero-initialized adapters: exactly the frozen FFN
    assert all(not p.requires_grad for p in ffn.parameters())
    routing = layer.gate(x.reshape(-1, 8))
    torch.testing.assert_close(routing.weights.sum(-1), torch.ones(15))


def test_mixda_adapters_read_the_ffn_input() -> None:
    # MixDA puts the adapters beside the FFN: y = f(x) + sum_a w_a(x) U_a act(D_a x + b_a), checked naively
    torch.manual_seed(1)
    ffn = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8))
    layer = MixDAFFN(ffn, 8, num_adapters=2, bottleneck=4)
    ad = layer.adapters
    with torch.no_grad():
        ad.up.normal_()
        ad.down_bias.normal_()
    x = torch.randn(7, 8)
    probs = torch.softmax(layer.gate.gate(x), dim=-1)  # the dense gate keeps all 1 + A slots
    want = ffn(x)
    for a in range(2):
        delta = torch.relu(x @ ad.down[a].T + ad.down_bias[a]) @ ad.up[a].T
        want = want + probs[:, a + 1 : a + 2] * delta
    torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)
    # an FFN whose output is constant: the layer still varies with x, only because the adapters read x
    const = MixDAFFN(nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 8)), 8, 2, 4)
    with torch.no_grad():
        const.ffn[0].weight.zero_()
        const.adapters.up.normal_()
    y = const(x)
    assert (y - const.ffn(x)).abs().amax() > 1e-3 and (y[0] - y[1]).abs().amax() > 1e-3


def test_mixda_stage0_trains_the_self_supervised_head_then_freezes_it(domains) -> None:
    task = CircuitProbTask(ENC)
    model = task.make_model()
    src = _batches(domains["arith"] + domains["control"], 2)
    fit(model, lambda m, b: task.loss(m(b), b), src, 5)
    before = model.type_head.weight.clone()
    snapshots = []
    task_unsup = task.unsup_loss

    def spy(m, b):  # record the head as each stage sees it
        snapshots.append(m.type_head.weight.detach().clone())
        return task_unsup(m, b)

    task.unsup_loss = spy
    model, curves = run_mixda(task, model, model.head, 16, src, _batches(domains["parity"], 2), steps=(6, 4))
    assert len(curves["stage0"]) == 6 and curves["stage0"][-1] < curves["stage0"][0]
    assert not torch.equal(snapshots[5], before)  # stage 0 moved it
    torch.testing.assert_close(snapshots[6], snapshots[-1])  # stage 1 read a frozen, trained head
    torch.testing.assert_close(model.type_head.weight, snapshots[-1])


def test_mixda_stages_train_only_their_adapter(domains) -> None:
    task = CircuitProbTask(ENC)
    model = task.make_model()
    src = _batches(domains["arith"] + domains["control"], 2)
    fit(model, lambda m, b: task.loss(m(b), b), src, 10)
    enc_before = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    model, curves = run_mixda(task, model, model.head, 16, src, _batches(domains["parity"], 2), steps=(8, 8))
    layer = model.ffn
    assert isinstance(layer, MixDAFFN)
    assert layer.adapters.up[0].abs().sum() > 0  # stage 1 moved the domain adapter
    assert layer.adapters.up[1].abs().sum() > 0  # stage 2 moved the task adapter
    for k, v in model.encoder.state_dict().items():  # the backbone stays frozen throughout
        torch.testing.assert_close(v, enc_before[k])
    assert len(curves["stage1"]) == 8 and all(math.isfinite(x) for x in curves["stage1"] + curves["stage2"])


def test_meta_dmoe_meta_training_reaches_the_aggregator_and_adaptation_moves_the_student(domains) -> None:
    task = CircuitProbTask(ENC)
    teachers = []
    for name in ("arith", "control"):
        t = task.make_model()
        fit(t, lambda m, b: task.loss(m(b), b), _batches(domains[name], 2), 5)
        teachers.append(frozen_copy(t))
    meta = MetaDMoE(teachers, task.make_model(), 16)
    agg_before = [p.clone() for p in meta.aggregator.parameters()]
    losses = meta.meta_train(task, [_batches(domains[n], 2) for n in ("arith", "control")], steps=6)
    assert len(losses) == 6
    assert any(not torch.equal(a, b) for a, b in zip(agg_before, meta.aggregator.parameters(), strict=True))
    params = meta.adapt(_batches(domains["parity"], 2), steps=3)
    moved = [n for n, p in meta.student.named_parameters() if not torch.equal(p, params[n])]
    assert moved and not any(n.startswith("head") for n in moved)  # the head is not adapted
    preds = meta.predict(params, _batches(domains["parity"], 4)[0])
    assert preds.shape[0] == sum(g.num_nodes for g in domains["parity"]) and torch.isfinite(preds).all()


def test_meta_dmoe_meta_trains_a_deepgcn_student(domains) -> None:
    # second order through DeeperGCN's softmax aggregation: the fused kernel has no double backward, so
    # meta-training must take the torch path (it once failed with "differentiate twice")
    task = CircuitProbTask(EncoderConfig(kind="deepgcn", hidden=8, num_layers=2))
    teachers = [frozen_copy(task.make_model()) for _ in range(2)]
    meta = MetaDMoE(teachers, task.make_model(), 8)
    losses = meta.meta_train(task, [_batches(domains[n], 2) for n in ("arith", "control")], steps=2)
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)


def test_meta_dmoe_advances_the_students_annealing_routers_once_per_optimizer_step(domains) -> None:
    from circuitml.moe.inference import routers_of

    enc = EncoderConfig(
        kind="moe_gnn",
        hidden=16,
        num_layers=2,
        options={"router": "evomoe", "num_experts": 4, "top_k": 1, "router_options": {"anneal_steps": 2}},
    )
    task = CircuitProbTask(enc)
    teachers = [frozen_copy(task.make_model()) for _ in range(2)]
    meta = MetaDMoE(teachers, task.make_model(), 16)
    src = [_batches(domains[n][:2], 1) for n in ("arith", "control")]
    meta.meta_train(task, src, steps=3)
    students = routers_of(meta.student)
    assert len(students) == 2 and [int(r.step) for r in students] == [3, 3]  # 3 meta-optimizer steps
    assert all(int(r.step) == 0 for t in teachers for r in routers_of(t))  # frozen teachers do not anneal
    meta.adapt(_batches(domains["parity"][:1], 1), steps=2)  # functional steps leave the module alone
    assert [int(r.step) for r in students] == [3, 3]
    ffn = EncoderConfig(kind="moe_gnn", hidden=16, num_layers=1, options={"expert": "ffn"})
    with pytest.raises(ConfigError, match="double backward"):
        MetaDMoE(teachers, CircuitProbTask(ffn).make_model(), 16)


def test_gelegn_gate_mixes_global_and_local_per_row(domains) -> None:
    task = CircuitProbTask(ENC)
    glob = task.make_model()
    fit(glob, lambda m, b: task.loss(m(b), b), _batches(domains["arith"], 2), 5)
    local = CircuitProbModel(EncoderConfig(kind="gcn", hidden=16, num_layers=1))
    mix, curves = run_gelegn(
        task, frozen_copy(glob), local, 16, _batches(domains["parity"][:2], 1), steps=(15, 15)
    )
    batch = _batches(domains["parity"][2:], 2)[0]
    out = mix(batch)
    w = mix.last_gate
    torch.testing.assert_close(w.sum(-1), torch.ones(w.shape[0]))
    with torch.no_grad():
        want = w[:, 0] * mix.global_model(batch).preds + w[:, 1] * mix.local_model(batch).preds
    torch.testing.assert_close(out.preds, want)
    assert curves["local"][-1] < curves["local"][0]


def test_circuit_benchmark_end_to_end(domains, tmp_path) -> None:
    cfg = ShiftConfig(
        encoder="gcn", hidden=16, num_layers=2, graphs_per_batch=2, steps=20, adapt_steps=6, meta_steps=4
    )
    results = run_circuit_shift(domains, cfg, held_out=["parity"])
    row = results["parity"]
    for method in ("source_mean", "all_sources", "mixda", "meta_dmoe", "gelegn"):
        assert 0.0 <= row[method] <= 1.0
    assert "| parity | 3 |" in results_markdown(results)
    json.dumps(results)


def test_methods_run_with_the_qa_transformer() -> None:
    from circuitml.datasets.squad import SquadAnswer, SquadExample
    from circuitml.tasks.qa.data import make_features, train_tokenizer
    from circuitml.tasks.qa.model import SwitchQAConfig
    from circuitml.tasks.shift.qa import QAShiftTask, qa_batches

    ex = [
        SquadExample(
            f"q{k}",
            "t",
            f"Item {k} is stored in box {k + 3} near the door.",
            f"Where is item {k}?",
            [SquadAnswer(f"box {k + 3}", len(f"Item {k} is stored in "))],
        )
        for k in range(6)
    ]
    tok = train_tokenizer([e.context + " " + e.question for e in ex], vocab_size=120, min_frequency=1)
    feats = make_features(ex, tok, max_length=32, stride=4)
    batches = qa_batches(feats, 3)
    cfg = SwitchQAConfig(
        vocab_size=len(tok),
        max_position=32,
        d_model=32,
        num_layers=3,
        num_heads=2,
        d_ff=64,
        num_experts=2,
        capacity_factor=None,
        dropout=0.0,
    )
    task = QAShiftTask(cfg)
    base = task.make_model()
    losses = fit(base, lambda m, b: task.loss(m(b), b), batches, 10)
    assert losses[-1] < losses[0]
    # MixDA wraps the dense FFNs (first and last layer; the middle one is a Switch MoE layer)
    import copy

    mix, _ = run_mixda(task, copy.deepcopy(base), base.qa.qa_outputs, 32, batches, batches, steps=(3, 3))
    assert len([m for m in mix.modules() if isinstance(m, MixDAFFN)]) == 2
    assert 0.0 <= task.metric(mix(batches[0]).preds, batches[0]) <= 1.0
    # Meta-DMoE with two teachers (Switch layers) and a dense student: meta-gradients go through the student's
    # inner step twice, and the core's sorted dispatch is differentiable once
    dense = QAShiftTask(SwitchQAConfig(**{**cfg.to_dict(), "moe_layers": []})).make_model()
    meta = MetaDMoE([frozen_copy(base), frozen_copy(base)], dense, 32, adapt_exclude=("qa.qa_outputs",))
    meta.meta_train(task, [batches[:1], batches[1:]], steps=2)
    params = meta.adapt(batches, steps=1)
    assert torch.isfinite(meta.predict(params, batches[0])).all()
    gate = GlobalLocalGate(frozen_copy(base), task.make_model(), 32)
    assert gate(batches[0]).preds.shape == base(batches[0]).preds.shape


def test_new_parts_follow_the_device_of_the_model_they_wrap() -> None:
    # "meta" stands in for a GPU: a part created on the CPU beside a model elsewhere would show up here
    meta = torch.device("meta")
    ffn = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 8)).to(meta)
    assert {p.device for p in MixDAFFN(ffn, 8).parameters()} == {meta}
    enc = EncoderConfig(kind="gcn", hidden=8, num_layers=1)
    glob, local = CircuitProbModel(enc).to(meta), CircuitProbModel(enc).to(meta)
    assert {p.device for p in GlobalLocalGate(glob, local, 8).parameters()} == {meta}
    student = CircuitProbModel(enc).to(meta)
    assert {p.device for p in MetaDMoE([frozen_copy(glob)], student, 8).parameters()} == {meta}
    task = CircuitProbTask(enc, device=meta)
    assert {p.device for p in task.make_model().parameters()} == {meta}
    assert {b.x.device for b in _batches([aig_to_data(_parity(3))], 1, meta)} == {meta}


@pytest.mark.parametrize("bad", [["--threads", "0"], ["--device", "tpu"], ["--device", "cuda:7"]])
def test_shift_circuits_rejects_bad_runtime_options_before_reading_data(tmp_path, capsys, bad) -> None:
    from circuitml.cli import main

    if bad[-1] == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has a cuda:7")
    code = main(
        ["shift", "circuits", "--out", str(tmp_path / "o"), "--generated", str(tmp_path / "none"), *bad]
    )
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert "--threads" in err or "--device" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.slow  # reads the shared circuits; ~10 s of CPU
def test_shift_circuits_command_runs_with_threads_and_device(shared_data, tmp_path) -> None:
    from circuitml.cli import main

    out = tmp_path / "o"
    args = ["shift", "circuits", "--out", str(out), "--shared", str(shared_data), "--max-ands", "400"]
    args += ["--steps", "3", "--adapt-steps", "2", "--hidden", "8", "--layers", "1", "--encoder", "gcn"]
    assert main([*args, "--held-out", "iscas", "--threads", "1", "--device", "cpu"]) == 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["config"]["device"] == "cpu" and 0.0 <= saved["results"]["iscas"]["gelegn"] <= 1.0
