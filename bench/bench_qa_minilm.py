"""Robust QA from a pretrained start: dense MiniLM vs MiniLM upcycled into Switch-FFN vs Switch + EDA.

Each variant fine-tunes the shipped MiniLM-L6 (``circuitml.lm``) on the SQuAD v2.0 sample with whole contexts held
out (``split_by_context``, fraction 0.2, ``--split-seed`` fixed, 0 by default, so every run sees the same held-out questions) and
reports the official EM/F1 with the HasAns/NoAns split, next to the always-no-answer baseline. The EDA variant
trains on the questions plus one augmented copy for half the epochs, so every variant takes the same number of
optimizer steps. The null threshold is tuned on 10 % of the training contexts (``val_fraction``); the Switch
variants upcycle with ``unit_weight`` (top-1, value 1, router gradient kept) and no capacity limit, so they start
as the dense model. Every variant shares the reader options: ``--span-head``, ``--sentence-prior``,
``--independent-span`` and ``--head-lr``, and the decision options ``--verifier`` (Read + Verify's answer verifier;
the F1 at the tuned null threshold of the same reader is printed beside it), ``--oof-folds`` (with
``--oof-ensemble``: the fold readers answer as an ensemble, cross-fitting, and each one's own F1 at the
out-of-fold threshold is printed under the run) and ``--val-fraction`` (see ``circuitml qa train --help``), and ``--synthetic-cloze N`` (a first stage on N cloze
questions from the training paragraphs, ``tasks.qa.cloze``), ``--ensemble K`` (K readers' logits averaged,
``tasks.qa.ensemble``), ``--layer-lr-decay`` and ``--keep-models DIR`` (the trained readers, for
``bench_qa_ensemble.py``). Each run also prints the reader's forced-answer HasAns F1 and answerability AUC on the
validation and held-out questions.

    nice -n 5 python bench/bench_qa_minilm.py --seeds 0 1 2 --out qa_minilm.json
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from circuitml.datasets.squad import read_squad
from circuitml.tasks.qa.model import SwitchQAConfig
from circuitml.tasks.qa.train import QATrainConfig, split_by_context, train_qa

from circuitml.fileio import atomic_write

DEFAULT_DATA = (
    Path(__file__).resolve().parents[1].parent
    / "shared/data/deepset-ai__haystack/test/samples/squad/small.json"
)


def variants(epochs: int, moe_layers: list[int]) -> dict[str, dict]:
    switch = dict(
        router="switch",
        top_k=1,
        num_experts=4,
        capacity_factor=None,
        normalize_weights=False,
        unit_weight=True,
        moe_layers=moe_layers,
    )
    return {
        "dense": dict(model=dict(moe_layers=[]), epochs=epochs),
        "switch": dict(model=switch, epochs=epochs),
        "switch+eda": dict(model=switch, epochs=max(1, epochs // 2), eda_copies=1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--variants", nargs="+", default=["dense", "switch", "switch+eda"])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--moe-layers", type=int, nargs="+", default=[3, 4], help="layers upcycled to Switch")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--freeze-bottom", type=int, default=3, help="frozen embeddings + first N layers")
    ap.add_argument("--stride", type=int, default=96)
    ap.add_argument("--span-head", default="linear", choices=["linear", "bilinear"])
    ap.add_argument("--sentence-prior", action="store_true")
    ap.add_argument("--independent-span", type=float, default=0.0)
    ap.add_argument("--head-lr", type=float, default=None)
    ap.add_argument("--layer-lr-decay", type=float, default=1.0, help="lr * decay^(L - l) per layer (1: off)")
    ap.add_argument("--verifier", action="store_true", help="Read+Verify's answer verifier decides")
    ap.add_argument("--oof-folds", type=int, default=0, help="fit the decision out-of-fold (K readers)")
    ap.add_argument(
        "--oof-ensemble", action="store_true", help="the fold readers answer as an ensemble (cross-fitting)"
    )
    ap.add_argument("--val-fraction", type=float, default=0.1)
    ap.add_argument(
        "--ensemble", type=int, default=1, help="readers averaged per run (seeds seed, seed+1, ...; K passes)"
    )
    ap.add_argument(
        "--synthetic-cloze", type=int, default=0, help="synthetic cloze questions (tasks.qa.cloze)"
    )
    ap.add_argument("--cloze-unanswerable", type=float, default=None, help="default: 0.3 on v2.0, 0 on v1.1")
    ap.add_argument("--cloze-epochs", type=int, default=1, help="first-stage epochs on them (0: mixed in)")
    ap.add_argument(
        "--split-seed",
        type=int,
        default=0,
        help="which contexts are held out (the same for every --seeds run)",
    )
    ap.add_argument("--limit", type=int, default=0, help="use only the first N questions (smoke runs)")
    ap.add_argument("--out", type=Path, default=Path("qa_minilm.json"))
    ap.add_argument(
        "--keep-models", type=Path, default=None, help="save each run's model to DIR/<variant>/seed<N>"
    )
    args = ap.parse_args()
    torch.set_num_threads(1)

    data = args.data
    if args.limit:
        examples, _ = read_squad(data)
        raw = json.loads(data.read_text())
        keep = {e.id for e in examples[: args.limit]}
        for art in raw["data"]:
            for para in art["paragraphs"]:
                para["qas"] = [q for q in para["qas"] if q["id"] in keep]
        tmp = Path(tempfile.mkdtemp()) / "subset.json"
        tmp.write_text(json.dumps(raw))
        data = tmp
    examples, _ = read_squad(data)
    train_ex, eval_ex = split_by_context(examples, 0.2, args.split_seed)
    print(f"{len(train_ex)} training / {len(eval_ex)} held-out questions", flush=True)

    results = json.loads(args.out.read_text()) if args.out.exists() else {}
    for seed in args.seeds:
        for name in args.variants:
            spec = variants(args.epochs, args.moe_layers)[name]
            key = f"{name}/seed{seed}"
            if key in results:  # resume: finished runs are kept
                continue
            model = SwitchQAConfig(
                init_from="all-minilm-l6-v2",
                span_head=args.span_head,
                sentence_prior=args.sentence_prior,
                independent_span=args.independent_span,
                **spec["model"],
            )
            cfg = QATrainConfig(
                data=str(data),
                eval_fraction=0.2,
                max_length=args.max_length,
                stride=args.stride,
                lr=args.lr,
                head_lr=args.head_lr,
                layer_lr_decay=args.layer_lr_decay,
                batch_size=args.batch_size,
                epochs=spec["epochs"],
                eda_copies=spec.get("eda_copies", 0),
                seed=seed,
                split_seed=args.split_seed,
                freeze_bottom=args.freeze_bottom,
                verifier=args.verifier,
                oof_folds=args.oof_folds,
                oof_ensemble=args.oof_ensemble,
                ensemble=args.ensemble,
                val_fraction=args.val_fraction,
                synthetic_cloze=args.synthetic_cloze,
                cloze_unanswerable=args.cloze_unanswerable,
                cloze_epochs=args.cloze_epochs,
                threads=1,
                model=model,
            )
            t0 = time.process_time()
            if args.keep_models:  # kept for bench_qa_ensemble.py
                m = train_qa(cfg, args.keep_models / key)
            else:
                with tempfile.TemporaryDirectory() as out:
                    m = train_qa(cfg, Path(out) / "model")
            m["cpu_seconds"] = time.process_time() - t0
            results[key] = m
            ev, base = m["eval"], m["eval_baseline_no_answer"]
            print(
                f"{key}: EM {ev['exact']:.1f} F1 {ev['f1']:.1f} HasAns F1 {ev.get('HasAns_f1', 0):.1f} "
                f"NoAns {ev.get('NoAns_exact', 0):.1f} | no-answer F1 {base['f1']:.1f} | "
                f"threshold {m['null_threshold']:.2f} ({_alternative(m)}) | "
                f"{m['steps']} steps, {m['cpu_seconds']:.0f} cpu-s | {_held(m)} | reader: "
                f"{'oof' if m.get('oof_questions') else 'val'} {_reader(m.get('val_reader'))}, "
                f"test {_reader(m.get('eval_reader'))}",
                flush=True,
            )
            for k, member in enumerate(m.get("members", [])):
                me = member["eval"]
                print(
                    f"  {f'fold reader {k}' if args.oof_ensemble else f'member {k} (seed {seed + k})'} alone: F1 {me['f1']:.1f} HasAns F1 {me.get('HasAns_f1', 0):.1f} "
                    f"| val F1 {member.get('val_f1', float('nan')):.1f} | reader: val "
                    f"{_reader(member.get('val_reader'))}, test {_reader(member.get('eval_reader'))}",
                    flush=True,
                )
            atomic_write(args.out, json.dumps(results, indent=2))
    summarize(results)


def _reader(d: dict | None) -> str:
    if not d:
        return "-"
    return f"forced HasAns F1 {d['forced_HasAns_f1']:.1f} AUC {d.get('answerability_auc', float('nan')):.3f}"


def _held(m: dict) -> str:
    """The F1 on the questions the decision was fitted on (validation, or out of fold), at the tuned threshold:
    the number settings are chosen by, never the held-out test's."""
    where = f"oof ({m['oof_questions']} q)" if m.get("oof_questions") else f"val ({m['val_questions']} q)"
    return f"{where} F1 at the tuned threshold {m.get('val_f1_plain_threshold', m.get('val_f1', float('nan'))):.1f}"


def _alternative(m: dict) -> str:
    """The same reader's F1 under the decision it replaces: the tuned null threshold next to the verifier,
    threshold 0 next to the tuned one."""
    if "eval_plain_threshold" in m:
        return f"F1 at the tuned null threshold: {m['eval_plain_threshold']['f1']:.1f}"
    return f"F1 at 0: {m.get('eval_threshold_0', m['eval'])['f1']:.1f}"


def summarize(results: dict) -> None:
    """Mean ± std (population, over the seeds present) per variant."""
    import numpy as np

    names = sorted({k.split("/")[0] for k in results})
    cols = ["exact", "f1", "HasAns_exact", "HasAns_f1", "NoAns_exact"]
    print("| variant | seeds | " + " | ".join(cols) + " |")
    print("|---|---|" + "---|" * len(cols))
    for name in names:
        runs = [v["eval"] for k, v in results.items() if k.split("/")[0] == name]
        cells = [
            f"{np.mean([r.get(c, 0.0) for r in runs]):.1f} ± {np.std([r.get(c, 0.0) for r in runs]):.1f}"
            for c in cols
        ]
        print(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
    plain = {k: v["eval_plain_threshold"]["f1"] for k, v in results.items() if "eval_plain_threshold" in v}
    for name in names:
        f1 = [v for k, v in plain.items() if k.split("/")[0] == name]
        if f1:
            print(
                f"{name}: F1 at the tuned null threshold instead of the verifier {np.mean(f1):.1f} ± {np.std(f1):.1f}"
            )


if __name__ == "__main__":
    main()
