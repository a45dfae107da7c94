"""Answer verifier for SQuAD v2.0: answer or abstain from the reader's own evidence, fitted on held-out scores.

Hu, Peng, Huang, Li, Sun and Zhou, "Read + Verify: Machine Reading Comprehension with Unanswerable Questions",
AAAI 2019: a reader proposes an answer and a separate *answer verifier* decides whether the question is answerable
at all. Their verifiers are neural models over the question and the answer's sentence; with a few hundred training
questions this one is a logistic regression over the features the reader already computed (their Model-I idea of
scoring the proposal, at the size the data supports):

    p(answerable | x) = σ(wᵀ (x - μ) / s + b),

``x`` per question: the reader's null margin, best span score and null score, the window softmax log-probabilities
of the span and of no-answer, the span's log length, the sentence prior's question–context match and the prior of
the span's sentence (when the reader has the prior), and the agreement of Read + Verify's independent span head
with the main span (when it has one). The decision answers when the verifier's margin ``-logit p`` is below a
threshold; that threshold, like the weights, is fitted on questions the reader did not train on (validation
contexts or out-of-fold predictions over the training contexts), maximizing F1 exactly as the SQuAD v2.0
script's ``best_f1_thresh`` does. The overall F1 scores +F1 for an answered answerable question and -1 for an
answered unanswerable one, so the fitted threshold answers where ``p · E[F1] > 1 - p`` on those questions.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np
import torch
from circuitml.tasks.qa.data import BestSpans, QAFeatures, SpanPredictions, window_best
from circuitml.tasks.qa.metrics import best_null_threshold
from torch import Tensor

from circuitml.errors import ConfigError

__all__ = ["FEATURES", "AnswerVerifier", "verifier_features"]

FEATURES = (
    "null_margin",
    "span_score",
    "null_score",
    "log_p_span",
    "log_p_null",
    "log_span_length",
    "question_context_match",
    "span_sentence_log_prob",
    "independent_agreement",
    "independent_regret",
)


@torch.no_grad()
def verifier_features(
    features: QAFeatures,
    best: BestSpans,
    start_logits: Tensor,
    end_logits: Tensor,
    independent: tuple[Tensor, Tensor] | None = None,
    max_answer_length: int = 30,
) -> Tensor:
    """The ``[n_examples, len(FEATURES)]`` verifier inputs, read from each example's chosen window; the prior and
    independent-head columns are 0 when the reader has no prior or no independent head. Examples without any
    valid span get zeros (they are never answered)."""
    n = best.window.shape[0]
    x = torch.zeros(n, len(FEATURES))
    ok = best.found
    w = best.window[ok]
    i, j = best.i[w], best.j[w]
    s, e = start_logits[w].float(), end_logits[w].float()
    rows = torch.arange(len(w))
    log_s, log_e = s.log_softmax(-1), e.log_softmax(-1)
    x[ok, 0] = best.null_margin[ok]
    x[ok, 1] = best.score[w]
    x[ok, 2] = (best.null_margin + best.score[best.window.clamp(min=0)])[ok]  # the example's null score
    x[ok, 3] = log_s[rows, i] + log_e[rows, j]
    x[ok, 4] = log_s[:, 0] + log_e[:, 0]
    x[ok, 5] = torch.log((j - i + 1).float())
    if features.prior is not None:
        x[ok, 6] = features.prior[w, 0, 1]
        x[ok, 7] = features.prior[w, i, 0]
    if independent is not None:
        s2, e2 = independent[0][w].float(), independent[1][w].float()
        score2, i2, j2 = window_best(s2, e2, features.context_mask[w], max_answer_length)
        overlap = (torch.minimum(j, j2) - torch.maximum(i, i2) + 1).clamp(min=0).float()
        # token-overlap F1 of the two heads' spans, and how far the independent head ranks the main span below its own
        x[ok, 8] = 2 * overlap / ((j - i + 1) + (j2 - i2 + 1)).float()
        x[ok, 9] = score2 - (s2[rows, i] + e2[rows, j])
    return x


@dataclass
class AnswerVerifier:
    """Standardization, logistic-regression weights and the fitted decision threshold (JSON-serializable)."""

    mean: list[float]
    scale: list[float]
    coef: list[float]
    bias: float
    threshold: float  # answer when -logit p(answerable) <= threshold
    fitted_on: int = 0  # questions the weights and threshold were fitted on
    fitted_f1: float = 0.0  # F1 at the threshold on those questions

    @classmethod
    def fit(
        cls,
        x: Tensor,
        spans: SpanPredictions,
        golds: Mapping[str, list[str]],
        l2: float = 1.0,
    ) -> AnswerVerifier:
        """Fit on held-out questions: ``x`` their features, ``spans`` the reader's proposals, ``golds`` their
        answers (empty: unanswerable). ``l2`` is the inverse regularization strength ``C`` of the regression."""
        from sklearn.linear_model import LogisticRegression

        y = np.array([any(a.strip() for a in golds[q]) for q in spans.ids])
        if len(set(y.tolist())) < 2:
            raise ConfigError(
                f"qa: verifier: the {len(y)} fitting questions need both answerable and unanswerable ones"
            )
        xn = x.double().numpy()
        mean = xn.mean(0)
        scale = xn.std(0)
        scale[scale == 0] = 1.0  # constant columns (no prior, no independent head) stay 0 after scaling
        reg = LogisticRegression(C=l2, max_iter=1000).fit((xn - mean) / scale, y)
        v = cls(mean.tolist(), scale.tolist(), reg.coef_[0].tolist(), float(reg.intercept_[0]), 0.0)
        margin = v.margins(x, spans.null_margin)
        texts = dict(zip(spans.ids, spans.texts, strict=True))
        v.threshold, v.fitted_f1 = best_null_threshold(
            texts, dict(zip(spans.ids, margin.tolist(), strict=True)), golds
        )
        v.fitted_on = len(spans.ids)
        return v

    def logits(self, x: Tensor) -> Tensor:
        """``logit p(answerable)`` per question."""
        mean, scale = torch.tensor(self.mean), torch.tensor(self.scale)
        return ((x.double() - mean) / scale) @ torch.tensor(self.coef, dtype=torch.float64) + self.bias

    def margins(self, x: Tensor, null_margin: Tensor) -> Tensor:
        """The verifier's no-answer margin ``-logit p``, ``inf`` where the reader found no span at all."""
        return torch.where(torch.isfinite(null_margin), -self.logits(x), torch.tensor(float("inf"))).float()

    def verify(self, spans: SpanPredictions, x: Tensor) -> SpanPredictions:
        """The reader's spans with the verifier's margin: ``answers(self.threshold)`` then applies its decision."""
        return SpanPredictions(spans.ids, spans.texts, self.margins(x, spans.null_margin))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping) -> AnswerVerifier:
        v = cls(**dict(d))
        if not len(v.mean) == len(v.scale) == len(v.coef) == len(FEATURES):
            raise ConfigError(f"qa: verifier: expected {len(FEATURES)} features, got {len(v.coef)}")
        return v
