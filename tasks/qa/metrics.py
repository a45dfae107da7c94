"""The official SQuAD metrics: exact match and token-level F1 after answer normalization.

Follows the official evaluation scripts of SQuAD v1.1 (Rajpurkar et al., 2016) and v2.0 (Rajpurkar et al., 2018):
answers are lower-cased, stripped of punctuation, of the articles a/an/the and of extra whitespace; a prediction
scores the maximum over the gold answers; an unanswerable question's only gold answer is the empty string, so
predicting "" scores EM = F1 = 1 and anything else 0.
"""

from __future__ import annotations

import collections
import re
import string
from collections.abc import Mapping

__all__ = ["normalize_answer", "exact_match", "f1_score", "squad_scores"]

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
