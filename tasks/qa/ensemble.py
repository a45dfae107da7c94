"""A seed ensemble of QA readers: the members' start, end (and independent-head) logits averaged per token.

Dietterich, "Ensemble Methods in Machine Learning", MCS 2000; for extractive QA, Seo et al., "Bidirectional
Attention Flow for Machine Comprehension", ICLR 2017 (their ensemble averages the members' boundary scores) and
the ensembles of the SQuAD 2.0 leaderboard. With K readers fine-tuned from the same checkpoint on the same
questions, differing only in seed (head init, batch order, dropout), the ensemble's logits are

    s(i) = (1/K) Σ_k s_k(i),    e(j) = (1/K) Σ_k e_k(j),

so a span's score s(i) + e(j) and the no-answer score s(CLS) + e(CLS) are the members' mean scores. Averaging cuts
the seed variance that dominates when a reader learns from a few hundred questions; inference costs K passes.
"""

from __future__ import annotations

from typing import Any

import torch

from circuitml.errors import ConfigError

__all__ = ["ReaderEnsemble", "member_seeds"]


def member_seeds(seed: int, k: int) -> list[int]:
    """The seeds of a ``k``-member ensemble of run ``seed``: ``seed, seed + 1, …`` (member 0 is the single
    reader of the same seed, so an ensemble of one is that reader)."""
    if k < 1:
        raise ConfigError(f"qa: ensemble: expected a number of readers >= 1, got {k}")
    return [seed + i for i in range(k)]


class ReaderEnsemble(torch.nn.Module):
    """K readers of one configuration read the same windows; :meth:`window_logits` averages their logits.

    The members share the span head options (bilinear head, sentence prior, independent head), so one set of
    features (windows, question mask, prior) serves them all; the ensemble exposes those options as the members
    do. Its state dict is the members' under ``members.<k>.``.
    """

    def __init__(self, members: list[Any]) -> None:
        super().__init__()
        if not members:
            raise ConfigError("qa: ensemble: expected at least one reader")
        kinds = {
            (type(m), m.config.span_head, m.config.sentence_prior, m.config.independent_span) for m in members
        }
        if len(kinds) != 1:
            raise ConfigError("qa: ensemble: the readers must share the model class and span head options")
        self.members = torch.nn.ModuleList(members)

    @property
    def config(self) -> Any:
        return self.members[0].config

    @property
    def qa_prior(self) -> Any:
        return getattr(self.members[0], "qa_prior", None)

    @property
    def qa_independent(self) -> Any:
        return getattr(self.members[0], "qa_independent", None)

    @property
    def qa_bilinear(self) -> Any:
        return getattr(self.members[0], "qa_bilinear", None)

    @staticmethod
    def mean(per_member: list[list[torch.Tensor]]) -> list[torch.Tensor]:
        """The element-wise mean of each logit tensor over the members. Dividing before summing keeps the
        masked positions (the dtype's minimum) finite."""
        k = len(per_member)
        return [sum(x / k for x in column) for column in zip(*per_member, strict=True)]
