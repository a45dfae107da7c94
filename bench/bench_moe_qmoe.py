"""QMoE on two MoE models trained in this run: bits per expert parameter, file size, quality change, and
decode-and-matmul throughput of the compressed experts against the dense ones.

Models (``moe_tasks``): a character-level MoE language model on the SQuAD sample (bits/char) and an MoE GNN
for ISCAS'85 signal probability (MAE). After training, every MoE layer's experts are quantized GPTQ-style from
calibration inputs (training batches), and, as the reference, by plain rounding to the same grid (RTN), to
each setting of ``--settings``: ``ternary`` (QMoE's min-max grid), ``ternary@p`` (the dead-zone grid with a
``p``-quantile zero threshold per row) and ``2`` (GPTQ 2-bit); all are entropy-coded in the QMoE format.
Throughput: one MoE layer's experts on ``--tokens`` routed tokens, compressed (decode the routed experts +
matmul) vs dense ``FFNExperts``, best of ``--repeats`` CPU-time measurements (``time.process_time``),
interleaved.

    python bench/bench_moe_qmoe.py
    python bench/bench_moe_qmoe.py --quick
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch
from circuitml.moe import FFNExperts, MoEBlock
from circuitml.moe.systems.pr_moe import build_standard_moe
from circuitml.moe.systems.qmoe import compress_model, save_qmoe

sys.path.insert(0, str(Path(__file__).resolve().parent))
import moe_tasks as T  # noqa: E402


def _bench_throughput(model, q_models: dict, x: torch.Tensor, repeats: int) -> dict[str, float]:
    """Best CPU time of the first MoE layer's experts, dense and each compressed variant, interleaved."""
    dense_block = next(m for m in model.modules() if isinstance(m, MoEBlock))
    variants = {"dense": dense_block.experts}
    for tag, q_model in q_models.items():
        variants[tag] = next(m for m in q_model.modules() if isinstance(m, MoEBlock)).experts
    with torch.no_grad():
        r = dense_block.router(x)
    best = dict.fromkeys(variants, float("inf"))
    with torch.no_grad():
        for _ in range(repeats):
            for name, experts in variants.items():
                t0 = time.process_time()
                experts(x, r.indices, r.weights)
                best[name] = min(best[name], time.process_time() - t0)
    return best


def parse_setting(text: str) -> tuple[str, float | None]:
    """``ternary`` / ``ternary@0.9`` / ``2`` -> (bits, zeros)."""
    bits, _, zeros = text.partition("@")
    return bits, float(zeros) if zeros else None


def _compress(model, calib_run, setting: str, use_hessian: bool, tmp: Path, tag: str):
    q_model = copy.deepcopy(model)
    bits, zeros = parse_setting(setting)
    experts = compress_model(q_model, calib_run(q_model), bits=bits, zeros=zeros, use_hessian=use_hessian)
    path = tmp / f"{tag}.qmoe.safetensors"
    save_qmoe(experts, path)
    n = sum(q.num_params() for q in experts.values())
    bits_pp = sum(q.bits_per_param() * q.num_params() for q in experts.values()) / n
    all_syms = [m.symbols(torch.arange(m.shape[0])) for q in experts.values() for m in (q.gate_up, q.down)]
    zero = sum(int((s == 0).sum()) for s in all_syms) / sum(s.numel() for s in all_syms)
    return q_model, bits_pp, path.stat().st_size, n, zero


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--d-model", type=int, default=256)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--task", choices=["text", "circuit", "both"], default="both")
    p.add_argument(
        "--settings",
        default="ternary,ternary@0.85,ternary@0.9,ternary@0.93,2",
        help="comma-separated: ternary (min-max grid), ternary@P (dead zone at the P-quantile), 2 (2-bit)",
    )
    p.add_argument("--throughput", default="ternary@0.9,2", help="settings whose decode+matmul is timed")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.d_model, args.hidden, args.repeats = 20, 128, 256, 2
    torch.set_num_threads(args.threads)
    tasks = ("text", "circuit") if args.task == "both" else (args.task,)
    with tempfile.TemporaryDirectory() as tmp:
        for task in tasks:
            torch.manual_seed(args.seed)
            stack = build_standard_moe(args.d_model, args.layers, args.experts, args.hidden, top_k=2)
            g = torch.Generator().manual_seed(args.seed)
            if task == "text":
                train_ids, test_ids, vocab = T.text_data()
                model = T.CharLM(stack, vocab, args.d_model)
                T.train(model, T.text_loss(model, train_ids, g), args.steps)
                evaluate = lambda m, ids=test_ids: T.text_eval(m, ids)  # noqa: E731
                calib = [
                    T.text_batch(train_ids, 16, 128, torch.Generator().manual_seed(99))[0] for _ in range(4)
                ]
                calib_run = lambda m, cs=calib: lambda: [m(c) for c in cs]  # noqa: E731
                metric = "bits/char"
            else:
                train_g, test_g = T.circuit_data()
                model = T.CircuitNet(stack, args.d_model)
                T.train(model, T.circuit_loss(model, train_g, g), args.steps)
                evaluate = lambda m, gs=test_g: T.circuit_eval(m, gs)  # noqa: E731
                from torch_geometric.data import Batch

                calib_batch = Batch.from_data_list(train_g)
                calib_run = lambda m, b=calib_batch: lambda: m(b)  # noqa: E731
                metric = "MAE"
            model.eval()
            base = evaluate(model)
            rows = [
                (
                    "dense fp32",
                    32.0,
                    0.0,
                    sum(
                        p.numel() * 4
                        for b in model.modules()
                        if isinstance(b, FFNExperts)
                        for p in b.parameters()
                    ),
                    base,
                )
            ]
            q_models = {}
            timed = args.throughput.split(",")
            for setting in args.settings.split(","):
                for method, use_h in (("gptq", True), ("rtn", False)):
                    t0 = time.process_time()
                    q_model, bits, size, n, zero = _compress(
                        model, calib_run, setting, use_h, Path(tmp), f"{task}-{setting}-{method}"
                    )
                    if use_h and setting in timed:
                        q_models[setting] = q_model
                    name = f"{setting} {method} ({time.process_time() - t0:.0f} s)"
                    rows.append((name, bits, zero, size, evaluate(q_model)))
            x = torch.randn(args.tokens, args.d_model)
            best = _bench_throughput(model, q_models, x, args.repeats)
            print(
                f"{task}: layers={args.layers} E={args.experts} d={args.d_model} h={args.hidden} steps={args.steps} "
                f"seed={args.seed}; expert params {n:,}"
            )
            print(
                f"  {'experts':<28} {'bits/param':>10} {'zeros':>6} {'bytes':>11} {metric:>10} {'change':>8}"
            )
            for name, bits, zero, size, q in rows:
                print(f"  {name:<28} {bits:>10.3f} {zero:>6.3f} {size:>11,} {q:>10.4f} {q - base:>+8.4f}")
            dense_t = best.pop("dense")
            for tag, q_t in best.items():
                print(
                    f"  one layer, {args.tokens} tokens, {tag}: dense {1e3 * dense_t:.1f} ms, decode+matmul "
                    f"{1e3 * q_t:.1f} ms (x{q_t / dense_t:.1f} CPU time; {args.tokens / q_t:,.0f} vs "
                    f"{args.tokens / dense_t:,.0f} tokens/s)"
                )


if __name__ == "__main__":
    main()
