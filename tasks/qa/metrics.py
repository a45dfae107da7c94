"""The official SQuAD metrics: exact match and token-level F1 after answer normalization.

Follows the official evaluation scripts of SQuAD v1.1 (Rajpurkar et al., 2016) and v2.0 (Rajpurkar et al., 2018):
answers are lower-cased, stripped of punctuation, of the articles a/an/the and of extra whitespace; a prediction
scores the maximum over the gold answers; an unanswerable question's only gold answer is the empty string, so
predicting "" scores EM = F1 = 1 and anything else 0.
"""

from __future__ import annotations

import collections
import math
import re
import string
from collections.abc import Mapping

import numpy as np

__all__ = ["normalize_answer", "exact_match", "f1_score", "squad_scores", "best_null_threshold"]

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCT = set(string.punctuation)


def normalize_answer(s: str) -> str:
    """Lower text and remove punctuation, articles and extra whitespace (the official normalization)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def exact_match(prediction: str, gold: str) -> float:
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction: str, gold: str) -> float:
    pred_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    if not pred_tokens or not gold_tokens:
        # v2.0 rule: an empty answer matches only an empty answer
        return float(pred_tokens == gold_tokens)
    common = collections.Counter(pred_tokens) & collections.Counter(gold_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(pred_tokens)
    recall = same / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def squad_scores(predictions: Mapping[str, str], golds: Mapping[str, list[str]]) -> dict[str, float]:
    """EM and F1 in percent over the questions in ``golds`` (missing predictions count as ""),
    split into answerable (``HasAns``) and unanswerable (``NoAns``) like the v2.0 script.

    Args:
        predictions: question id -> predicted answer text ("" for no answer).
        golds: question id -> gold answer texts (empty list for unanswerable).
    """
    em_has, f1_has, em_no = [], [], []
    for qid, answers in golds.items():
        pred = predictions.get(qid, "")
        refs = [a for a in answers if normalize_answer(a)] or [""]
        em = max(exact_match(pred, a) for a in refs)
        f1 = max(f1_score(pred, a) for a in refs)
        if answers and refs != [""]:
            em_has.append(em)
            f1_has.append(f1)
        else:
            em_no.append(em)
    n = len(em_has) + len(em_no)
    out = {
        "exact": 100.0 * (sum(em_has) + sum(em_no)) / max(n, 1),
        "f1": 100.0 * (sum(f1_has) + sum(em_no)) / max(n, 1),
        "total": float(n),
    }
    if em_has:
        out.update(
            HasAns_exact=100.0 * sum(em_has) / len(em_has), HasAns_f1=100.0 * sum(f1_has) / len(f1_has)
        )
        out["HasAns_total"] = float(len(em_has))
    if em_no:
        out.update(NoAns_exact=100.0 * sum(em_no) / len(em_no), NoAns_f1=100.0 * sum(em_no) / len(em_no))
        out["NoAns_total"] = float(len(em_no))
    return out


def best_null_threshold(
    predictions: Mapping[str, str], null_margin: Mapping[str, float], golds: Mapping[str, list[str]]
) -> tuple[float, float]:
    """The null-score threshold that maximizes F1, as the SQuAD v2.0 evaluation script's ``best_f1_thresh``.

    A question is answered "" when its ``null_margin`` (null score minus best span score) exceeds the threshold,
    else with its span in ``predictions``. Sorting the margins makes every candidate threshold one prefix of the
    questions answered with their span, so all thresholds are scored with one cumulative sum. Returns
    ``(threshold, F1 in percent)``; the threshold lies halfway between the two margins it separates.

    Args:
        predictions: question id -> best span text (never "", whatever the margin).
        null_margin: question id -> null score minus best span score (``inf``: no span at all).
        golds: question id -> gold answer texts (empty list for unanswerable).
    """
    ids = [q for q in golds if math.isfinite(null_margin.get(q, math.inf))]
    n = len(golds)
    no_answer_total = sum(1.0 for q in golds if not [a for a in golds[q] if normalize_answer(a)])
    if not ids or not n:
        return 0.0, 100.0 * no_answer_total / max(n, 1)
    ids.sort(key=lambda q: null_margin[q])
    span_f1, empty_f1 = [], []
    for q in ids:
        refs = [a for a in golds[q] if normalize_answer(a)] or [""]
        span_f1.append(max(f1_score(predictions.get(q, ""), a) for a in refs))
        empty_f1.append(float(refs == [""]))
    # answering the first m (smallest margin) with spans and the rest with "": score(m) for m = 0..len(ids)
    rest = no_answer_total - sum(empty_f1)  # questions without any span are "" at every threshold
    gain = [0.0]
    for s, e in zip(span_f1, empty_f1, strict=True):
        gain.append(gain[-1] + s - e)
    margins = [null_margin[q] for q in ids]
    # a threshold separates two margins only where they differ: tied questions are answered together
    cuts = [m for m in range(len(gain)) if m in (0, len(margins)) or margins[m - 1] < margins[m]]
    best = max(cuts, key=lambda m: (gain[m], -m))
    score = 100.0 * (sum(empty_f1) + rest + gain[best]) / n
    if best == 0:
        threshold = margins[0] - 1.0
    elif best == len(margins):
        threshold = margins[-1] + 1.0
    else:
        threshold = (margins[best - 1] + margins[best]) / 2
    return float(threshold), float(score)


def reader_diagnostics(
    predictions: Mapping[str, str], null_margin: Mapping[str, float], golds: Mapping[str, list[str]]
) -> dict[str, float]:
    """What a reader is worth before any answer decision: ``forced_HasAns_f1``, the F1 of its best span on the
    answerable questions (always answering), and ``answerability_auc``, the Mann-Whitney AUC with which a smaller
    null margin marks an answerable question (ties count half; 0.5 is chance)."""
    has = [q for q in golds if [a for a in golds[q] if normalize_answer(a)]]
    out = {"forced_HasAns_f1": squad_scores(predictions, {q: golds[q] for q in has}).get("HasAns_f1", 0.0)}
    answerable = set(has)
    pos = np.array([-null_margin[q] for q in has])
    neg = np.array([-null_margin[q] for q in golds if q not in answerable])
    if len(pos) and len(neg):
        out["answerability_auc"] = mann_whitney_auc(pos, neg)
    return out


def mann_whitney_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(score of a positive > score of a negative), ties counting half: the ROC AUC."""
    pos, neg = np.asarray(pos, dtype=float)[:, None], np.asarray(neg, dtype=float)[None]
    return float(((pos > neg).sum() + 0.5 * (pos == neg).sum()) / (pos.size * neg.size))
