"""Union-of-Experts on the QA transformer: multiply-adds per token against held-out quality.

Every variant trains the scratch QA transformer (``--d-model`` d, 4 layers, 4 heads, FFN 4d, no Switch layers) with
``circuitml qa train``'s own loop (:func:`~circuitml.tasks.qa.train.train_qa`) on the SQuAD v2.0 sample, whole
contexts held out (fraction 0.2, split seed 0 for every run, so all runs score the same questions), for the same
number of optimizer steps. ``dense`` is the plain model; the UoE rows (``--uoe`` of ``qa train``) make every
attention a selective multi-head attention over 4 head-group experts and every FFN a union of 8 MLP experts, and
keep fewer of them per token.

A from-scratch model on 500 questions predicts "no answer" everywhere, so EM/F1 do not separate the variants;
the quality measure that moves is the held-out span cross-entropy — the mean of the start and end
cross-entropies over the held-out windows (label = the answer's token span, or position 0 for a window without
the answer), as in training. It is reported beside EM/F1 and their HasAns/NoAns split. Multiply-adds per real
token count the transformer layers (routers included) and the span head at the held-out windows' mean length.

    nice -n 15 python bench/bench_qa_uoe.py --seeds 0 1 2 --epochs 4 --d-model 64 --out qa_uoe.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from circuitml.datasets.squad import read_squad
from circuitml.tasks.qa.data import make_features
from circuitml.tasks.qa.model import SwitchQAConfig
from circuitml.tasks.qa.train import QATrainConfig, _trimmed, load_qa_model, split_by_context, train_qa

from circuitml.fileio import atomic_write

DEFAULT_DATA = (
    Path(__file__).resolve().parents[1].parent
    / "shared/data/deepset-ai__haystack/test/samples/squad/small.json"
)
VARIANTS = {
    "dense": None,
    "UoE attn 4/4, MLP 8/8": {"attn_top_k": 4, "mlp_top_k": 8},
    "UoE attn 2/4, MLP 4/8": {"attn_top_k": 2, "mlp_top_k": 4},
    "UoE attn 1/4, MLP 2/8": {"attn_top_k": 1, "mlp_top_k": 2, "mlp_groups": 2, "mlp_top_groups": 1},
}


@torch.no_grad()
def span_cross_entropy(model, feats, batch_size: int) -> float:
    """Mean of the start and end cross-entropies (nats) over the windows of ``feats``."""
    model.eval()
    total = 0.0
    for lo in range(0, len(feats), batch_size):
        sl = slice(lo, lo + batch_size)
        out = model(*_trimmed(feats.input_ids[sl], feats.attention_mask[sl]))
        ce = F.cross_entropy(out.start_logits, feats.start_positions[sl], reduction="sum")
        ce = ce + F.cross_entropy(out.end_logits, feats.end_positions[sl], reduction="sum")
        total += float(ce) / 2
    return total / len(feats)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS))
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--stride", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("qa_uoe.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)

    examples, _ = read_squad(args.data)
    train_ex, eval_ex = split_by_context(examples, 0.2, 0)
    print(f"{len(train_ex)} training / {len(eval_ex)} held-out questions", flush=True)
    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for seed in args.seeds:
        for name in args.variants:
            key = f"{name}/seed{seed}"
            if key in results:  # resume: finished runs are kept
                continue
            d = args.d_model
            model = SwitchQAConfig(d_model=d, num_layers=4, num_heads=4, d_ff=4 * d, moe_layers=[])
            model.uoe = VARIANTS[name]
            cfg = QATrainConfig(
                data=str(args.data),
                max_length=args.max_length,
                stride=args.stride,
                epochs=args.epochs,
                seed=seed,
                split_seed=0,
                threads=1,
                model=model,
            )
            t0 = time.process_time()
            with tempfile.TemporaryDirectory() as out:
                m = train_qa(cfg, Path(out) / "model")
                trained, tokenizer, _ = load_qa_model(Path(out) / "model")
            feats = make_features(eval_ex, tokenizer, args.max_length, args.stride)
            seq_len = float(feats.attention_mask.sum(1).float().mean())
            m["span_ce"] = span_cross_entropy(trained, feats, cfg.batch_size)
            m["flops_per_token"] = trained.flops_per_token(round(seq_len))
            m["eval_seq_len"] = seq_len
            m["cpu_seconds"] = time.process_time() - t0
            results[key] = m
            ev = m["eval"]
            print(
                f"{key}: span CE {m['span_ce']:.4f} | {m['flops_per_token'] / 1e3:.1f} kMAC/token | "
                f"EM {ev['exact']:.1f} F1 {ev['f1']:.1f} HasAns F1 {ev.get('HasAns_f1', 0):.1f} "
                f"NoAns EM {ev.get('NoAns_exact', 0):.1f} | {m['steps']} steps, {m['cpu_seconds']:.0f} cpu-s",
                flush=True,
            )
            atomic_write(args.out, json.dumps(results, indent=2))
    table(results, args.variants)


def table(results: dict, names: list[str]) -> None:
    print("\n| model | kMAC/token | held-out span CE (nats) | EM | F1 | HasAns F1 | NoAns EM | seeds |")
    print("|---|---|---|---|---|---|---|---|")
    for name in names:
        runs = [v for k, v in results.items() if k.rsplit("/", 1)[0] == name]
        if not runs:
            continue

        def ms(values: list[float], fmt: str) -> str:
            sd = statistics.stdev(values) if len(values) > 1 else 0.0
            return f"{statistics.fmean(values):{fmt}} ± {sd:{fmt}}"

        ev = [r["eval"] for r in runs]
        print(
            f"| {name} | {runs[0]['flops_per_token'] / 1e3:.1f} | {ms([r['span_ce'] for r in runs], '.4f')} "
            f"| {ms([e['exact'] for e in ev], '.1f')} | {ms([e['f1'] for e in ev], '.1f')} "
            f"| {ms([e.get('HasAns_f1', 0.0) for e in ev], '.1f')} "
            f"| {ms([e.get('NoAns_exact', 0.0) for e in ev], '.1f')} | {len(runs)} |"
        )


if __name__ == "__main__":
    main()
