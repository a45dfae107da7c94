"""Tokenizers, training/evaluation features and answer-span decoding for extractive QA.

Features follow the standard sliding-window recipe of BERT on SQuAD (Devlin et al., NAACL 2019): the question and a
window of the context form one sequence; long contexts give several overlapping windows (``stride`` tokens of
overlap); an answer outside a window, or an unanswerable question, is labelled with the ``[CLS]`` position.
Decoding scores every valid span ``(i, j)`` of every window as ``start[i] + end[j]`` in one batched tensor op and
compares the best span with the null (``[CLS]``) score for SQuAD v2.0.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from circuitml.datasets.squad import SquadAnswer, SquadExample
from torch import Tensor

from circuitml.errors import CheckpointError, ConfigError, one_line

__all__ = [
    "train_tokenizer",
    "load_tokenizer",
    "QAFeatures",
    "make_features",
    "question_mask",
    "SpanPredictions",
    "BestSpans",
    "best_spans",
    "window_best",
    "spans_of",
    "predict_spans",
    "decode_answers",
]

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 8000, min_frequency: int = 2):
    """Train a lower-cased WordPiece tokenizer (BERT's scheme) on ``texts``; returns a fast HF tokenizer.

    The vocabulary is a pure function of the texts and settings (:func:`~circuitml.tasks.qa.wordpiece.wordpiece_vocab`,
    canonical tie-break): HF's ``WordPieceTrainer`` breaks ties by hash-map order and differs from call to call.
    """

    from circuitml.tasks.qa.wordpiece import wordpiece_vocab
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    vocab = wordpiece_vocab(
        _word_counts(texts, normalizer, pre_tokenizer), vocab_size, min_frequency, SPECIAL_TOKENS
    )
    tok = Tokenizer(
        models.WordPiece(
            {t: i for i, t in enumerate(vocab)}, unk_token="[UNK]", continuing_subword_prefix="##"
        )
    )
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.WordPiece()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
    )


def _word_counts(texts: Iterable[str], normalizer, pre_tokenizer) -> dict[str, int]:
    """Occurrences of each word the tokenizer's normalizer and pre-tokenizer make of ``texts``."""
    from collections import Counter

    words: Counter[str] = Counter()
    # a QA corpus repeats each context once per question: split each distinct text once, weighted by its copies
    for text, copies in Counter(texts).items():
        for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)):
            words[word] += copies
    return words


# a (question, context) pair with letters, digits, punctuation and non-ASCII text, encoded once at load
_PROBE = ("Where is Paris? 1,234 - naïve café", "Paris is in France; it's 2.5 km² (about) ünd 東京.")


def load_tokenizer(path: str | os.PathLike):
    """A fast tokenizer from a local directory (ours, or one saved with a DistilBERT/BERT checkpoint). It must
    encode a probe pair: a tokenizer that loads but cannot encode fails here, naming the folder."""
    from transformers import AutoTokenizer

    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: expected a tokenizer directory")
    try:
        tok = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        if getattr(tok, "is_fast", False):
            tok(*_PROBE, return_offsets_mapping=True)
    # tokenizers and transformers raise many types on bad files, even a bare Exception
    except Exception as exc:
        raise CheckpointError(f"{path}: expected a saved tokenizer ({one_line(exc)})") from None
    # the Rust tokenizer's panics are BaseExceptions (pyo3's PanicException): only those are caught here
    except BaseException as exc:
        if type(exc).__name__ != "PanicException":
            raise
        raise CheckpointError(f"{path}: expected a saved tokenizer ({one_line(exc)})") from None
    if not getattr(tok, "is_fast", False):
        raise ConfigError(f"{path}: expected a fast tokenizer (offset mappings are needed for answer spans)")
    return tok


@dataclass
class QAFeatures:
    """Tokenized windows. ``start_positions``/``end_positions`` are token indices (0 = [CLS] = no answer)."""

    input_ids: Tensor  # [F, T]
    attention_mask: Tensor  # [F, T]
    start_positions: Tensor  # [F]
    end_positions: Tensor  # [F]
    example_index: Tensor  # [F] index into the examples list
    context_mask: Tensor  # [F, T] True on context tokens
    offsets: np.ndarray  # [F, T, 2] character offsets into the example's context
    token_type_ids: Tensor | None = (
        None  # [F, T] BERT segment ids (0: question, 1: context), when the tokenizer has them
    )
    # [F] the span of the answer or, for an unanswerable question, of its plausible answer (0: none in the window)
    plausible_start: Tensor | None = None
    plausible_end: Tensor | None = None
    prior: Tensor | None = (
        None  # [F, T, 2] sentence-prior features (tasks.qa.sentence_prior), when the model uses them
    )

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def make_features(
    examples: Sequence[SquadExample], tokenizer, max_length: int = 256, stride: int = 96
) -> QAFeatures:
    """Tokenize ``examples`` into overlapping windows with span labels (first gold answer)."""
    if stride >= max_length // 2:
        raise ConfigError(f"qa: stride ({stride}) must be below half of max_length ({max_length})")
    enc = tokenizer(
        [e.question.lstrip() for e in examples],
        [e.context for e in examples],
        truncation="only_second",
        max_length=max_length,
        stride=stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length",
    )
    n = len(enc["input_ids"])
    sample = np.asarray(enc["overflow_to_sample_mapping"], dtype=np.int64)
    offsets = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(n, max_length, 2)
    seq_ids = np.array([[s if s is not None else -1 for s in enc.sequence_ids(i)] for i in range(n)])
    context = seq_ids == 1
    starts, ends = _span_labels([e.answers for e in examples], sample, offsets, context)
    # plausible answers of unanswerable questions; an answerable question's own answer otherwise
    p_starts, p_ends = _span_labels(
        [e.answers or e.plausible_answers for e in examples], sample, offsets, context
    )
    return QAFeatures(
        input_ids=torch.tensor(enc["input_ids"], dtype=torch.long),
        attention_mask=torch.tensor(enc["attention_mask"], dtype=torch.long),
        start_positions=torch.from_numpy(starts),
        end_positions=torch.from_numpy(ends),
        example_index=torch.from_numpy(sample),
        context_mask=torch.from_numpy(context),
        offsets=offsets,
        token_type_ids=torch.tensor(enc["token_type_ids"], dtype=torch.long)
        if "token_type_ids" in enc
        else None,
        plausible_start=torch.from_numpy(p_starts),
        plausible_end=torch.from_numpy(p_ends),
    )


def question_mask(attention_mask: Tensor, context_mask: Tensor) -> Tensor:
    """The question's tokens of each window: real tokens outside the context, [CLS] excluded (``[B, T]`` bool)."""
    question = attention_mask.bool() & ~context_mask
    question[:, 0] = False
    return question


def _span_labels(
    answers: Sequence[Sequence[SquadAnswer]], sample: np.ndarray, offsets: np.ndarray, context: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Token start/end of each window's span (the example's first answer), 0 ([CLS]) where the window does not
    hold the whole span. Vectorized over windows."""
    n, max_length = context.shape
    starts = np.zeros(n, dtype=np.int64)
    ends = np.zeros(n, dtype=np.int64)
    ans_start = np.array([a[0].start if a else -1 for a in answers], dtype=np.int64)[sample]
    ans_end = np.array([a[0].start + len(a[0].text) if a else -1 for a in answers], dtype=np.int64)[sample]
    tok_start, tok_end = offsets[..., 0], offsets[..., 1]
    big = np.iinfo(np.int64).max
    ctx_first = np.where(context, tok_start, big).min(axis=1)
    ctx_last = np.where(context, tok_end, -1).max(axis=1)
    inside = (ans_start >= 0) & (ans_start >= ctx_first) & (ans_end <= ctx_last)
    # first context token ending after the answer start; last context token starting before the answer end
    s_ok = context & (tok_end > ans_start[:, None])
    e_ok = context & (tok_start < ans_end[:, None])
    s_idx = np.argmax(s_ok, axis=1)
    e_idx = max_length - 1 - np.argmax(e_ok[:, ::-1], axis=1)
    starts[inside] = s_idx[inside]
    ends[inside] = e_idx[inside]
    return starts, ends


@dataclass
class SpanPredictions:
    """Per example: the best span's text and ``null_margin`` = (smallest null score over the example's windows)
    minus (best span score), ``+inf`` when no window has a valid span. SQuAD v2.0 answers "" when the margin
    exceeds the null threshold."""

    ids: list[str]
    texts: list[str]
    null_margin: Tensor  # [n_examples]

    def answers(self, null_threshold: float = 0.0, allow_impossible: bool = True) -> dict[str, str]:
        empty = ~torch.isfinite(self.null_margin) & (self.null_margin > 0)
        if allow_impossible:
            empty = empty | (self.null_margin > null_threshold)
        return {q: "" if e else t for q, t, e in zip(self.ids, self.texts, empty.tolist(), strict=True)}


@dataclass
class BestSpans:
    """Per window: best span score and its token ``(i, j)``, and the null score; per example: the window holding
    its best span (``window``), whether any window has a valid span (``found``), and its null margin."""

    score: Tensor  # [F]
    i: Tensor  # [F]
    j: Tensor  # [F]
    null: Tensor  # [F] start[0] + end[0]
    window: Tensor  # [n_examples]
    found: Tensor  # [n_examples] bool
    null_margin: (
        Tensor  # [n_examples] smallest null over the example's windows - best span; inf without a span
    )


@torch.no_grad()
def window_best(
    start_logits: Tensor,
    end_logits: Tensor,
    context_mask: Tensor,
    max_answer_length: int = 30,
    chunk: int = 64,
) -> tuple[Tensor, Tensor, Tensor]:
    """Per window ``[F, T]``: the best score ``start[i] + end[j]`` over spans ``i <= j < i + max_answer_length``
    inside the context (``-inf`` without one) and its ``(i, j)``; one ``[chunk, T, T]`` tensor op per chunk."""
    f, t = start_logits.shape
    best_score = torch.full((f,), -float("inf"))
    best_i = torch.zeros(f, dtype=torch.long)
    best_j = torch.zeros(f, dtype=torch.long)
    idx = torch.arange(t)
    band = (idx[None, :] >= idx[:, None]) & (idx[None, :] < idx[:, None] + max_answer_length)
    for lo in range(0, f, chunk):
        s = start_logits[lo : lo + chunk].float()
        e = end_logits[lo : lo + chunk].float()
        cm = context_mask[lo : lo + chunk]
        score = s[:, :, None] + e[:, None, :]
        valid = band[None] & cm[:, :, None] & cm[:, None, :]
        score = score.masked_fill(~valid, -float("inf")).reshape(score.shape[0], -1)
        val, flat = score.max(dim=1)
        best_score[lo : lo + chunk] = val
        best_i[lo : lo + chunk] = flat // t
        best_j[lo : lo + chunk] = flat % t
    return best_score, best_i, best_j


@torch.no_grad()
def best_spans(
    n_examples: int,
    features: QAFeatures,
    start_logits: Tensor,
    end_logits: Tensor,
    max_answer_length: int = 30,
    chunk: int = 64,
) -> BestSpans:
    """Every window scores all spans ``i <= j < i + max_answer_length`` inside the context in one ``[F, T, T]``
    tensor op (chunked over windows); an example takes its best-scoring window span and the smallest null score
    ``start[0] + end[0]`` over its windows."""
    start_logits, end_logits = start_logits.cpu(), end_logits.cpu()
    f = start_logits.shape[0]
    best_score, best_i, best_j = window_best(
        start_logits, end_logits, features.context_mask[:f], max_answer_length, chunk
    )
    null = (start_logits[:, 0] + end_logits[:, 0]).float()

    ex = features.example_index
    # best window per example: scatter-max over windows, then pick the window attaining it
    ex_best = torch.full((n_examples,), -float("inf")).scatter_reduce(0, ex, best_score, reduce="amax")
    ex_null = torch.full((n_examples,), float("inf")).scatter_reduce(0, ex, null, reduce="amin")
    is_best = best_score == ex_best[ex]
    chosen = torch.full((n_examples,), -1, dtype=torch.long)
    win = torch.arange(f)
    chosen.scatter_reduce_(0, ex[is_best], win[is_best], reduce="amax", include_self=True)
    found = torch.isfinite(ex_best) & (chosen >= 0)
    margin = torch.where(found, ex_null - ex_best, torch.tensor(float("inf")))
    return BestSpans(best_score, best_i, best_j, null, chosen, found, margin)


def predict_spans(
    examples: Sequence[SquadExample],
    features: QAFeatures,
    start_logits: Tensor,
    end_logits: Tensor,
    max_answer_length: int = 30,
    chunk: int = 64,
) -> SpanPredictions:
    """Best span and null margin per example (see :func:`best_spans`)."""
    best = best_spans(len(examples), features, start_logits, end_logits, max_answer_length, chunk)
    return spans_of(examples, features, best)


def spans_of(examples: Sequence[SquadExample], features: QAFeatures, best: BestSpans) -> SpanPredictions:
    """The text of each example's best span (\"\" without one) and its null margin."""
    texts: list[str] = []
    for k, example in enumerate(examples):
        w = int(best.window[k])
        if not bool(best.found[k]):
            texts.append("")
            continue
        a = int(features.offsets[w, int(best.i[w]), 0])
        b = int(features.offsets[w, int(best.j[w]), 1])
        texts.append(example.context[a:b])
    return SpanPredictions([e.id for e in examples], texts, best.null_margin)


def decode_answers(
    examples: Sequence[SquadExample],
    features: QAFeatures,
    start_logits: Tensor,
    end_logits: Tensor,
    max_answer_length: int = 30,
    allow_impossible: bool = True,
    null_threshold: float = 0.0,
    chunk: int = 64,
) -> dict[str, str]:
    """Best answer text per example id (see :func:`predict_spans`); with ``allow_impossible`` (SQuAD v2.0) the
    answer is "" when the null score exceeds the best span score by more than ``null_threshold``."""
    spans = predict_spans(examples, features, start_logits, end_logits, max_answer_length, chunk)
    return spans.answers(null_threshold, allow_impossible)
