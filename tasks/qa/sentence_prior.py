"""Sentence prior for extractive QA: which context sentence a frozen sentence encoder matches to the question.

Min, Zhong, Socher and Xiong, "Efficient and Robust Question Answering from Minimal Context over Documents",
ACL 2018: most SQuAD questions are answered from one or two sentences, and a sentence selector in front of the
reader makes it faster and more robust. Here the selector is a pretrained bi-encoder used as it ships — the
mean-pooled, normalised sentence embedding of Sentence-BERT (Reimers and Gurevych, "Sentence-BERT: Sentence
Embeddings using Siamese BERT-Networks", EMNLP 2019), which ``all-MiniLM-L6-v2`` was trained for — so a reader
fine-tuned on a few hundred questions starts with a question-dependent signal it would otherwise have to learn.

For question ``q`` and the sentences ``s_1..s_m`` of its context, with ``c_j = cos(e(q), e(s_j))`` and ``τ`` the
scale the encoder was trained with (``all-MiniLM-L6-v2``: Sentence-BERT's multiple-negatives ranking loss at
scale 20, so ``τ c_j`` are the logits of its own softmax over candidates), every window token gets two features:

* ``τ (c_{j(i)} - max_j c_j)`` on a context token ``i`` of sentence ``j(i)`` — the log-probability of its sentence
  under the encoder, up to a constant: 0 in the best-matching sentence, below 0 elsewhere; 0 off the context;
* ``τ max_j c_j`` on the [CLS] position (how well the question matches the context at all), 0 elsewhere.

The reader adds a learned linear map of them to its start/end logits (:class:`~circuitml.tasks.qa.model.UpcycledHFQA`
with ``sentence_prior``). The map starts as half the sentence log-probability on each of start and end, so a
span's score starts as the reader's plus ``log p(sentence | question)`` (a product of the two experts), and the
[CLS] feature starts unused.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np
import torch
from circuitml.datasets.squad import SquadExample
from torch import Tensor

__all__ = ["SentenceEncoder", "sentence_spans", "sentence_prior"]

# A sentence ends at . ! or ? (optionally closed by a quote or bracket) followed by white space and an upper-case
# letter, a digit or an opening quote; abbreviations ("e.g. the") rarely meet that, and a missed split only
# merges two sentences.
_BOUNDARY = re.compile(r"[.!?][\"')\]]*(\s+)(?=[\"'(\[]?[A-Z0-9])")


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Character ``(start, end)`` of each sentence of ``text``; together they cover every non-space character."""
    spans, pos = [], 0
    for m in _BOUNDARY.finditer(text):
        spans.append((pos, m.start(1)))
        pos = m.end(1)
    spans.append((pos, len(text)))
    return [(a, b) for a, b in spans if text[a:b].strip()] or [(0, len(text))]


class SentenceEncoder:
    """A frozen sentence encoder: mean-pooled last hidden states over real tokens, L2-normalised (Sentence-BERT's
    pooling, the one ``all-MiniLM-L6-v2`` is trained with). Embeddings are cached by text."""

    scale = 20.0  # the logit scale of all-MiniLM-L6-v2's training loss (sentence-transformers' default)

    def __init__(self, model, tokenizer, max_length: int = 128, batch_size: int = 64) -> None:
        self.model, self.tokenizer = model.eval(), tokenizer
        self.max_length, self.batch_size = max_length, batch_size
        self._cache: dict[str, Tensor] = {}

    @classmethod
    def load(cls, name_or_path: str) -> SentenceEncoder:
        from circuitml.lm import load_lm

        return cls(*load_lm(name_or_path))

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> Tensor:
        new = sorted({t for t in texts if t not in self._cache})
        dev = next(self.model.parameters()).device
        for lo in range(0, len(new), self.batch_size):
            chunk = new[lo : lo + self.batch_size]
            enc = self.tokenizer(
                chunk, truncation=True, max_length=self.max_length, padding=True, return_tensors="pt"
            )
            mask = enc["attention_mask"].to(dev)
            hidden = self.model(**{k: v.to(dev) for k, v in enc.items()}).last_hidden_state
            pooled = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
            for text, vec in zip(chunk, torch.nn.functional.normalize(pooled, dim=1).cpu(), strict=True):
                self._cache[text] = vec
        if not texts:
            return torch.zeros(0, 0)
        return torch.stack([self._cache[t] for t in texts])


def sentence_prior(examples: Sequence[SquadExample], features, encoder: SentenceEncoder) -> Tensor:
    """The ``[F, T, 2]`` prior features of ``features`` (windows of ``examples``), as the module docstring defines."""
    n_feat, t = features.input_ids.shape
    spans = [sentence_spans(e.context) for e in examples]
    sentences = [e.context[a:b].strip() for e, sp in zip(examples, spans, strict=True) for a, b in sp]
    sent_emb = encoder.encode(sentences)
    q_emb = encoder.encode([e.question.strip() for e in examples])
    # cosine of every sentence with its own question, then relative to the best sentence of that context
    owner = np.repeat(np.arange(len(examples)), [len(sp) for sp in spans])
    cos = encoder.scale * (sent_emb * q_emb[torch.from_numpy(owner)]).sum(1).numpy()
    first = np.concatenate([[0], np.cumsum([len(sp) for sp in spans])])
    best = np.maximum.reduceat(cos, first[:-1]) if len(cos) else np.zeros(0)
    out = np.zeros((n_feat, t, 2), dtype=np.float32)
    ex = features.example_index.numpy()
    # every token's sentence in one search: keys (example, character) sort sentences by example, then start
    stride = max(len(e.context) for e in examples) + 1
    sent_keys = owner * stride + np.array([a for sp in spans for a, _ in sp], dtype=np.int64)
    tok_keys = ex[:, None] * stride + features.offsets[..., 0]
    sent = np.searchsorted(sent_keys, tok_keys, side="right") - 1
    sent = np.clip(
        sent, first[ex][:, None], first[ex + 1][:, None] - 1
    )  # before the first sentence: the first
    out[..., 0] = np.where(features.context_mask.numpy(), cos[sent] - best[ex][:, None], 0.0)
    out[:, 0, 1] = best[ex]
    return torch.from_numpy(out)
