"""Which answer decision generalizes: the tuned null threshold or Read + Verify's answer verifier, out of fold.

The training contexts of the SQuAD v2.0 sample (held-out split ``--split-seed`` removed first and never read)
are cut into K folds; a reader is trained without each fold and reads that fold, so every training question gets
out-of-fold spans and verifier features (what ``qa train --oof-folds K`` fits its decision on). Then each decision
rule is fitted on one fold's questions and scored on every other fold's (another reader, unseen questions):

* ``no answer``: always "" (the baseline of that fold);
* ``threshold``: the SQuAD v2.0 script's best null threshold on the reader's null margin;
* ``verifier (features)``: :class:`~circuitml.tasks.qa.verifier.AnswerVerifier` on a subset of its features.

It also prints each fold's forced-answer HasAns F1 and the AUC with which each feature separates answerable from
unanswerable questions. The readers use the options of ``circuitml qa train`` (defaults: the measured MiniLM
reader).

    nice -n 10 python bench/bench_qa_verifier.py --folds 2 --out qa_verifier.json
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from circuitml.datasets.squad import read_squad
from circuitml.tasks.qa import train as qa_train
from circuitml.tasks.qa.metrics import best_null_threshold, mann_whitney_auc, squad_scores
from circuitml.tasks.qa.model import SwitchQAConfig
from circuitml.tasks.qa.verifier import FEATURES, AnswerVerifier

from circuitml.fileio import atomic_write

DEFAULT_DATA = (
    Path(__file__).resolve().parents[1].parent
    / "shared/data/deepset-ai__haystack/test/samples/squad/small.json"
)
SUBSETS = {
    "all": list(range(len(FEATURES))),
    "margin": [0],
    "margin+prior": [0, 6, 7],
    "margin+independent": [0, 8, 9],
    "probabilities": [0, 3, 4, 5, 6, 7, 8, 9],
}


def _auc(y: np.ndarray, score: np.ndarray) -> float:
    return mann_whitney_auc(score[y], score[~y])


def _only(x: torch.Tensor, cols: list[int]) -> torch.Tensor:
    z = torch.zeros_like(x)
    z[:, cols] = x[:, cols]
    return z


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--folds", type=int, default=2)
    ap.add_argument("--split-seed", type=int, default=0, help="held-out contexts removed first (never read)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--epochs", type=int, default=4)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--head-lr", type=float, default=2e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--freeze-bottom", type=int, default=3)
    ap.add_argument("--limit", type=int, default=0, help="only the first N training questions (smoke runs)")
    ap.add_argument("--out", type=Path, default=Path("qa_verifier.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)

    examples, _ = read_squad(args.data)
    train_ex, _ = qa_train.split_by_context(examples, 0.2, args.split_seed)
    train_ex = train_ex[: args.limit] if args.limit else train_ex
    cfg = qa_train.QATrainConfig(
        data=str(args.data),
        epochs=args.epochs,
        lr=args.lr,
        head_lr=args.head_lr,
        batch_size=args.batch_size,
        freeze_bottom=args.freeze_bottom,
        seed=args.seed,
        threads=1,
        model=SwitchQAConfig(
            init_from="all-minilm-l6-v2",
            moe_layers=[],
            span_head="bilinear",
            sentence_prior=True,
            independent_span=1.0,
        ),
    )
    model_cfg = qa_train._resolve_init(cfg.model)
    tokenizer = qa_train.load_tokenizer(model_cfg.init_from)
    contexts = sorted({e.context for e in train_ex})
    random.Random(args.seed + 123).shuffle(contexts)
    fold = {c: k % args.folds for k, c in enumerate(contexts)}

    parts, report = [], {"folds": []}
    for k in range(args.folds):
        t0 = time.process_time()
        inside = [e for e in train_ex if fold[e.context] != k]
        held = [e for e in train_ex if fold[e.context] == k]
        reader, _ = qa_train._fit_reader(cfg, model_cfg, tokenizer, inside, torch.device("cpu"))
        spans, x = qa_train.predict_with_features(reader, tokenizer, held, cfg)
        golds = qa_train._golds(held)
        y = np.array([any(golds[q]) for q in spans.ids])
        row = {
            "fold": k,
            "train_questions": len(inside),
            "questions": len(held),
            "forced_HasAns_f1": squad_scores(dict(zip(spans.ids, spans.texts, strict=True)), golds)[
                "HasAns_f1"
            ],
            "no_answer_f1": squad_scores({q: "" for q in golds}, golds)["f1"],
            "auc": {n: _auc(y, x[:, c].numpy()) for c, n in enumerate(FEATURES) if x[:, c].std() > 0},
            "cpu_seconds": time.process_time() - t0,
        }
        row["auc"]["-null_margin"] = _auc(y, -np.nan_to_num(spans.null_margin.numpy(), posinf=1e9))
        print(json.dumps(row), flush=True)
        report["folds"].append(row)
        parts.append((spans, x, golds))

    print(
        "| fitted on | scored on | no answer | threshold | "
        + " | ".join(f"verifier ({s})" for s in SUBSETS)
        + " |"
    )
    print("|---|---|---|---|" + "---|" * len(SUBSETS))
    report["cross"] = []
    for a, (spa, xa, ga) in enumerate(parts):
        for b, (spb, xb, gb) in enumerate(parts):
            if a == b:
                continue
            thr, _ = best_null_threshold(
                dict(zip(spa.ids, spa.texts, strict=True)),
                dict(zip(spa.ids, spa.null_margin.tolist(), strict=True)),
                ga,
            )
            cell = {
                "no_answer": squad_scores({q: "" for q in gb}, gb)["f1"],
                "threshold": squad_scores(spb.answers(thr), gb)["f1"],
            }
            for name, cols in SUBSETS.items():
                v = AnswerVerifier.fit(_only(xa, cols), spa, ga)
                cell[f"verifier ({name})"] = squad_scores(
                    v.verify(spb, _only(xb, cols)).answers(v.threshold), gb
                )["f1"]
            report["cross"].append({"fitted_on": a, "scored_on": b, **cell})
            print(f"| {a} | {b} | " + " | ".join(f"{v:.1f}" for v in cell.values()) + " |")
    atomic_write(args.out, json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
