"""QMoE on the project's own trained MoE models: a Switch-FFN QA model (``circuitml qa train``) and a ``moe_gnn``
encoder with FFN experts fine-tuned on ISCAS'85 signal probability.

For each model and each setting of ``--settings`` (``ternary``: QMoE's min-max grid; ``ternary@p``: the dead-zone
grid with ``p`` zeros per row; ``2``: GPTQ 2-bit), the experts are compressed by GPTQ (calibrated on the
model's training data) and, as the reference, by plain rounding to the same grid (RTN), written in the QMoE
format with :func:`circuitml.commands.moe.compress_saved_model` (what ``circuitml moe compress`` runs), and the
model is measured on held-out data before and after: QA held-out span loss and EM/F1; the encoder the MAE of a
probability head trained on its frozen node embeddings (same seed and budget for dense and compressed).
Throughput: the first MoE layer's experts of each model on ``--tokens`` routed tokens, dense vs decode +
matmul, best of ``--repeats`` CPU times (``time.process_time``), interleaved.

    circuitml qa train --data ../shared/data/deepset-ai__haystack/test/samples/squad/small.json --out qa_model \\
        --epochs 4 --max-length 192 --stride 64 --threads 1
    python bench/bench_qmoe_models.py --qa-model qa_model --circuits ../shared/data/ispras__hdl-benchmarks/iscas85/bench
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from circuitml.moe import FFNExperts
from circuitml.moe.systems.qmoe import QMoEExperts, load_qmoe

from circuitml.commands.moe import compress_saved_model, load_saved_model


def train_moe_gnn(circuits: Path, out: Path, hidden: int, experts: int, epochs: int, seed: int) -> float:
    """Fine-tune a moe_gnn (FFN experts) encoder on signal probability; save it to ``out``; its MAE."""
    from circuitml.tasks.common import TrainConfig, load_circuits
    from circuitml.tasks.probability import run_probability

    from circuitml.encoders import build_encoder

    torch.manual_seed(seed)
    config = {
        "kind": "moe_gnn",
        "hidden": hidden,
        "num_layers": 3,
        "options": {"expert": "ffn", "num_experts": experts, "top_k": 2, "ffn_hidden": 2 * hidden},
    }
    enc = build_encoder(config)
    res = run_probability(load_circuits(circuits), enc, "finetune", TrainConfig(epochs=epochs, seed=seed))
    enc.save_pretrained(out)
    return res.metrics["mae"]


def throughput(model_dir: Path, experts_file: Path, tokens: int, repeats: int, data: Path | None) -> tuple:
    """Best CPU seconds of the first MoE layer: dense experts vs the compressed ones (decode + matmul)."""
    saved = load_saved_model(model_dir, data, 0, 1)
    dense = next(m for m in saved.model.modules() if isinstance(m, FFNExperts))
    name = next(n for n, m in saved.model.named_modules() if m is dense)
    q: QMoEExperts = load_qmoe(experts_file)[name]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, dense.d_model, generator=g)
    idx = torch.randint(0, dense.num_experts, (tokens, 1), generator=g)
    w = torch.ones(tokens, 1)
    best = {"dense": float("inf"), "qmoe": float("inf")}
    with torch.no_grad():
        for _ in range(repeats):
            for key, mod in (("dense", dense), ("qmoe", q)):
                t0 = time.process_time()
                mod(x, idx, w)
                best[key] = min(best[key], time.process_time() - t0)
    return best["dense"], best["qmoe"]


def sweep(model_dir: Path, data: Path | None, settings: list[str], tmp: Path, args) -> list[dict]:
    saved = load_saved_model(model_dir, data, args.calib, args.probe_epochs)
    t0 = time.process_time()
    before = saved.evaluate(saved.model.eval())
    print(f"{model_dir}: dense {before} ({time.process_time() - t0:.0f} s CPU)", flush=True)
    reports = []
    for setting in settings:
        bits, _, zeros = setting.partition("@")
        for method in ("gptq", "rtn"):
            t0 = time.process_time()
            out = tmp / f"{model_dir.name}-{setting}-{method}.safetensors"
            rep = compress_saved_model(
                model_dir, out, bits=bits, zeros=float(zeros) if zeros else None, use_hessian=method == "gptq",
                data=data, calib=args.calib, epochs=args.probe_epochs, before=before,
            )  # fmt: skip
            rep["setting"], rep["cpu_s"], rep["file"] = setting, time.process_time() - t0, str(out)
            reports.append(rep)
            print(
                json.dumps({k: rep[k] for k in ("setting", "method", "bits_per_param", "after")}), flush=True
            )
    return reports


def show(title: str, reports: list[dict]) -> None:
    first = reports[0]
    keys = list(first["before"])
    print(f"\n{title}: expert params {first['expert_params']:,}, dense fp32 {first['dense_bytes']:,} bytes")
    print(
        f"  {'experts':<22} {'bits/param':>10} {'zeros':>6} {'file bytes':>11} "
        + " ".join(f"{k:>12}" for k in keys)
    )
    print(f"  {'dense fp32':<22} {32.0:>10.3f} {'':>6} {first['dense_bytes']:>11,} " + " ".join(
        f"{first['before'][k]:>12.4f}" for k in keys))  # fmt: skip
    for r in reports:
        name = f"{r['setting']} {r['method']}"
        cells = " ".join(f"{r['after'][k]:>12.4f}" for k in keys)
        print(
            f"  {name:<22} {r['bits_per_param']:>10.3f} {r['zero_fraction']:>6.3f} {r['file_bytes']:>11,} {cells}"
        )


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--qa-model", type=Path, help="a QA model directory (circuitml qa train --out)")
    p.add_argument("--circuits", type=Path, help="circuit folder for the moe_gnn encoder (trained here)")
    p.add_argument(
        "--encoder", type=Path, help="an already trained moe_gnn encoder directory (skips training)"
    )
    p.add_argument("--settings", default="ternary,ternary@0.85,ternary@0.9,2")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--experts", type=int, default=4)
    p.add_argument("--epochs", type=int, default=20, help="moe_gnn fine-tuning epochs")
    p.add_argument("--probe-epochs", type=int, default=20)
    p.add_argument("--calib", type=int, default=256)
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, help="write every report here")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    settings = args.settings.split(",")
    everything = {}
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        runs = []
        if args.qa_model:
            runs.append(("Switch-FFN QA model", args.qa_model, None))
        if args.circuits:
            enc = args.encoder
            if enc is None:
                t0 = time.process_time()
                enc = tmp / "moe_gnn"
                mae = train_moe_gnn(args.circuits, enc, args.hidden, args.experts, args.epochs, args.seed)
                print(f"moe_gnn fine-tuned: MAE {mae:.4f} ({time.process_time() - t0:.0f} s CPU)", flush=True)
            runs.append(("moe_gnn encoder (probability probe)", enc, args.circuits))
        for title, model_dir, data in runs:
            reports = sweep(model_dir, data, settings, tmp, args)
            show(title, reports)
            for setting in settings:
                rep = next(r for r in reports if r["setting"] == setting and r["method"] == "gptq")
                dense_t, q_t = throughput(model_dir, Path(rep["file"]), args.tokens, args.repeats, data)
                print(
                    f"  first MoE layer, {args.tokens} tokens, {setting}: dense {1e3 * dense_t:.1f} ms, "
                    f"decode+matmul {1e3 * q_t:.1f} ms (x{q_t / dense_t:.1f} CPU time)"
                )
            everything[title] = reports
    if args.json:
        args.json.write_text(json.dumps(everything, indent=2))


if __name__ == "__main__":
    main()
