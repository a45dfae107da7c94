"""``circuitml moe compress`` / ``moe eval``: QMoE on a saved QA model and a saved moe_gnn encoder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from circuitml.moe.systems.qmoe import QMoEExperts, apply_qmoe, load_qmoe, read_qmoe_header

FACTS = [
    ("Alice keeps a green parrot named Kiwi in her kitchen.", "What is the parrot called?", "Kiwi"),
    ("Bob drives a red truck to the harbor every morning.", "What color is Bob's truck?", "red"),
    ("The museum opens at nine and closes at five.", "When does the museum open?", "nine"),
    ("Carol plays the violin in the city orchestra.", "What instrument does Carol play?", "violin"),
    ("Dan planted seven apple trees behind the barn.", "How many trees did Dan plant?", "seven"),
]


def _squad(path: Path) -> Path:
    paragraphs = [
        {
            "context": ctx,
            "qas": [{"id": f"q{k}", "question": q, "answers": [{"text": a, "answer_start": ctx.index(a)}]}],
        }
        for k, (ctx, q, a) in enumerate(FACTS)
    ]
    path.write_text(json.dumps({"version": "v1.1", "data": [{"title": "facts", "paragraphs": paragraphs}]}))
    return path


@pytest.fixture(scope="module")
def qa_dir(tmp_path_factory) -> Path:
    from circuitml.tasks.qa import QATrainConfig, SwitchQAConfig, train_qa

    tmp = tmp_path_factory.mktemp("qa")
    data = _squad(tmp / "facts.json")
    model = SwitchQAConfig(d_model=32, num_layers=3, num_heads=2, d_ff=64, num_experts=2, dropout=0.0)
    cfg = QATrainConfig(
        data=str(data), eval_data=str(data), epochs=10, batch_size=4, lr=3e-3, max_length=48, stride=8,
        threads=1, model=model,
    )  # fmt: skip
    train_qa(cfg, tmp / "model")
    return tmp / "model"


@pytest.mark.parametrize("bits,extra", [("2", []), ("ternary", ["--zeros", "0.8"])])
def test_compress_a_qa_model_and_run_it_compressed(
    qa_dir: Path, tmp_path: Path, bits: str, extra, capsys
) -> None:
    from cli import main

    out, report = tmp_path / "experts.safetensors", tmp_path / "report.json"
    args = ["moe", "compress", str(qa_dir), "--out", str(out), "--bits", bits, "--json", str(report), *extra]
    assert main(args) == 0
    rep = json.loads(report.read_text())
    assert (
        rep["kind"] == "qa" and rep["method"] == "gptq" and set(rep["after"]) == {"span_loss", "exact", "f1"}
    )
    # 1 MoE layer (the middle one of 3) x 2 experts x (64x32 + 32x64 weights + 64 + 32 biases)
    assert rep["expert_params"] == 2 * (2 * 64 * 32 + 96) and rep["dense_bytes"] == 4 * rep["expert_params"]
    # tiny rows: a fp16 scale per row of 32 or 64 and the fp32 biases add ~1.1 bit/param here
    assert rep["bits_per_param"] < (4.0 if bits == "2" else 2.5)
    assert rep["file_bytes"] < rep["compressed_bytes"] + 4096 < rep["dense_bytes"]
    header = read_qmoe_header(out)
    assert header["info"]["bits"] == bits and header["info"]["model"] == str(qa_dir)
    # `moe eval` loads the model directory with the compressed experts and reproduces the numbers after
    from circuitml.commands.moe import evaluate_compressed

    again = evaluate_compressed(qa_dir, out, device="cpu")
    assert again == pytest.approx(rep["after"])
    capsys.readouterr()
    assert main(["moe", "eval", str(qa_dir), "--experts", str(out), "--device", "cpu"]) == 0
    printed = dict(line.split(": ") for line in capsys.readouterr().out.strip().splitlines())
    assert printed == {k: f"{v:.4f}" for k, v in again.items()}
    # the experts in the file are what runs: every FFNExperts of the model is replaced
    from circuitml.tasks.qa import load_qa_model

    model = apply_qmoe(load_qa_model(qa_dir)[0], load_qmoe(out))
    assert sum(isinstance(m, QMoEExperts) for m in model.modules()) == 1


def test_compress_a_moe_gnn_encoder(tmp_path: Path) -> None:
    from circuitml.aig import AIGBuilder
    from circuitml.commands.moe import compress_saved_model
    from circuitml.encoders import build_encoder
    from circuitml.formats import write_aiger

    circuits = tmp_path / "circuits"
    circuits.mkdir()
    for seed in range(4):
        rng = np.random.default_rng(seed)
        b = AIGBuilder(f"r{seed}")
        sigs = [b.add_pi() for _ in range(6)]
        for _ in range(40):
            x, y = (sigs[int(i)] ^ int(rng.integers(2)) for i in rng.integers(0, len(sigs), 2))
            sigs.append(b.and_(x, y) if rng.integers(2) else b.xor_(x, y))
        for s in sigs[-3:]:
            b.add_po(s)
        write_aiger(b.build(), circuits / f"r{seed}.aig")
    torch.manual_seed(0)
    enc = build_encoder(
        {"kind": "moe_gnn", "hidden": 16, "num_layers": 2, "options": {"expert": "ffn", "num_experts": 2}}
    )
    enc.save_pretrained(tmp_path / "enc")
    rep = compress_saved_model(
        tmp_path / "enc", tmp_path / "e.safetensors", bits="2", data=circuits, epochs=2
    )
    assert rep["kind"] == "encoder" and set(rep["after"]) == {"mae", "baseline_mae"}
    assert rep["expert_params"] == 2 * 2 * (2 * 32 * 16 + 16 * 32)  # swiglu: gate_up has 2 x ffn_hidden rows
    assert abs(rep["after"]["mae"] - rep["before"]["mae"]) < 0.1


def test_compress_errors_are_one_line(tmp_path: Path, capsys) -> None:
    from cli import main

    assert main(["moe", "compress", str(tmp_path / "nope"), "--out", str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert "nope: expected a model directory" in err and "Traceback" not in err
    assert main(["moe", "compress", str(tmp_path), "--out", str(tmp_path / "x"), "--bits", "3"]) == 2
    assert "--bits: expected one of ternary, 2, got '3'" in capsys.readouterr().err
    assert (
        main(
            ["moe", "compress", str(tmp_path), "--out", str(tmp_path / "x"), "--bits", "2", "--zeros", "0.9"]
        )
        == 2
    )
    assert "--zeros: expected a fraction in [0, 1) with --bits ternary" in capsys.readouterr().err


def test_moe_eval_refuses_a_device_it_cannot_use(tmp_path: Path, capsys, monkeypatch) -> None:
    from cli import main

    # a device this machine lacks, or no device at all: a one-line error before anything is read
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device, message in [
        ("cuda", "--device cuda: CUDA is not available on this machine (use --device cpu)"),
        ("cuda:1", "--device cuda:1: CUDA is not available on this machine (use --device cpu)"),
        ("tpu", "--device: expected auto, cpu or cuda[:N], got 'tpu'"),
    ]:
        args = [
            "moe",
            "eval",
            str(tmp_path / "no-model"),
            "--experts",
            str(tmp_path / "none"),
            "--device",
            device,
        ]
        assert main(args) == 2
        err = capsys.readouterr().err.strip()
        assert err.endswith(message) and "\n" not in err, err
