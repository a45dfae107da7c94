"""Synthetic cloze questions from training paragraphs, to teach the reader extraction before (or beside) the few
real questions.

Lewis, Denoyer and Riedel, "Unsupervised Question Answering by Cloze Translation", ACL 2019; Dhingra, Pruthi and
Rajagopal, "Simple and Effective Semi-Supervised Question Answering", NAACL 2018. From a paragraph ``c`` take a
sentence ``s`` and an answer span ``a`` in it; the cloze statement is ``s`` with ``a`` masked, and a rule-based
"translation" turns it into a question: the sub-clause around the mask (at most ``_CLAUSE`` words each side),
the mask replaced by a wh-word chosen by the span's type and moved to the front, then Lewis et al.'s noise
(each word dropped with probability 0.1, words shuffled locally, each moving at most 3 places) so the question
is not a copy of the context. The example is ``(q, c, a)`` with ``a``'s character offset in ``c``.

Answer spans come from heuristics, not a tagger (nothing may be downloaded): runs of capitalised words (an
entity), numbers and dates, and "the/a/an + up to three words" noun chunks.

A synthetic *unanswerable* pairs a cloze question with another paragraph of the same article that contains
neither its source sentence nor its answer text — SQuAD v2.0's "plausible but absent" questions, made offline.

Only the paragraphs of the examples given are read, so a caller that passes the training split never sees a
held-out context.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from circuitml.datasets.squad import SquadAnswer, SquadExample
from circuitml.tasks.qa.augment import _STOP

from circuitml.errors import ConfigError

__all__ = ["ClozeQuestion", "cloze_questions", "cloze_examples", "sentences", "answer_spans"]

_CLAUSE = 8  # words kept each side of the mask: Lewis et al.'s sub-clause, here a word window
_SENTENCE = re.compile(r"[^.!?]*(?:[.!?]+(?=\s|$)|$)")
_NUMBER = re.compile(r"\b\d[\d,.]*(?:\s+(?:BC|AD|century|centuries|percent|years?|km|miles|bits?))?\b")
_ENTITY = re.compile(r"\b[A-Z][\w'-]*(?:\s+(?:(?:of|de|the|and|la|von)\s+)?[A-Z][\w'-]*)*")
_CHUNK = re.compile(r"\b(?:the|a|an)\s+[a-z][\w-]*(?:\s+[a-z][\w-]*){0,2}")
_INITIAL = frozenset("Again Since However Although Though Also Thus Therefore Many Some Most Other".split())
_MONTH = re.compile(r"January|February|March|April|May|June|July|August|September|October|November|December")


def sentences(context: str) -> list[tuple[int, str]]:
    """``(character offset, text)`` of each sentence of ``context`` (split after . ! ? followed by space)."""
    out = []
    for m in _SENTENCE.finditer(context):
        text = m.group(0)
        lead = len(text) - len(text.lstrip())
        text = text.strip()
        if len(text.split()) >= 5:
            out.append((m.start() + lead, text))
    return out


def _kind(span: str) -> str:
    if _MONTH.search(span) or re.fullmatch(
        r"(?:1\d|20)\d\d(?:s)?|\d+(?:st|nd|rd|th)?\s+centur(?:y|ies)", span
    ):
        return "When"
    if span[0].isdigit():
        return "How many"
    if span[0].isupper():
        return "Who" if len(span.split()) >= 2 else "What"
    return "What"


def answer_spans(sentence: str) -> list[tuple[int, str, str]]:
    """``(offset in sentence, span, wh-word)`` of the answer candidates of ``sentence``: entities, numbers and
    dates, and noun chunks; never the whole sentence, at most 6 words each."""
    found: dict[tuple[int, int], str] = {}
    for pattern in (_NUMBER, _ENTITY, _CHUNK):
        for m in pattern.finditer(sentence):
            words = m.group(0).rstrip(".,;:").split()
            if pattern is _CHUNK:  # a noun chunk ends before its first function word
                cut = next((i for i, w in enumerate(words[1:], 1) if w.lower() in _STOP), len(words))
                words = words[:cut]
            while words and words[-1].lower() in _STOP:
                words.pop()
            start = m.start()
            # a sentence's first word is capitalised whatever it is: keep it only when it is no function word
            # or adverb ("The", "Again", "Since" start no entity)
            if (
                start == 0
                and words
                and (words[0].lower() in _STOP or words[0].endswith(("ly", ",")) or words[0] in _INITIAL)
            ):
                words = words[1:]
                if not words or not words[0][0].isupper():
                    continue
                start = sentence.index(words[0])
            if not words or len(words) > 6:
                continue
            text = sentence[start : start + len(" ".join(words))]
            if text != " ".join(words) or len(text) < 2:
                continue
            if not any(s <= start < e or start <= s < start + len(text) for s, e in found):
                found[(start, start + len(text))] = text
    return [(s, t, _kind(t)) for (s, _e), t in sorted(found.items())]


def _question(sentence: str, start: int, span: str, wh: str, rng: random.Random) -> str:
    """The cloze translation of ``sentence`` with ``span`` (at ``start``) masked: wh-word first, then the
    sub-clause around the mask with word dropout and a local shuffle."""
    left = sentence[:start].split()[-_CLAUSE:]
    right = sentence[start + len(span) :].rstrip(".!?").split()[:_CLAUSE]
    words = [w.strip(',;:()"') for w in left + right]
    words = [w for w in words if w and rng.random() >= 0.1] or [w for w in left + right if w]
    # local shuffle: sort by position + uniform noise in [0, 3]
    keys = [i + rng.uniform(0, 3) for i in range(len(words))]
    words = [w for _k, w in sorted(zip(keys, words, strict=True))]
    return f"{wh} {' '.join(words)}?"


@dataclass(frozen=True)
class ClozeQuestion:
    """A synthetic example and where it came from: the paragraph and sentence its question was made of
    (``example.context`` is another paragraph when it is unanswerable)."""

    example: SquadExample
    source: str
    sentence: str


def cloze_questions(
    examples: Sequence[SquadExample], n: int, seed: int, unanswerable: float = 0.0
) -> list[ClozeQuestion]:
    """``n`` synthetic questions over the paragraphs of ``examples``; a fraction ``unanswerable`` of them paired
    with another paragraph of the same article that lacks the source sentence and the answer text (fewer when an
    article has no such paragraph). Deterministic for ``seed``."""
    if n < 0:
        raise ConfigError(f"qa: synthetic_cloze: expected a number of questions >= 0, got {n}")
    if not 0 <= unanswerable < 1:
        raise ConfigError(f"qa: cloze_unanswerable: expected a fraction in [0, 1), got {unanswerable}")
    paragraphs: dict[str, str] = {}
    for e in examples:
        paragraphs.setdefault(e.context, e.title)
    if not n:
        return []
    candidates = []  # (title, context, sentence offset, sentence, span offset, span, wh)
    for context, title in sorted(paragraphs.items()):
        for off, sent in sentences(context):
            for s, span, wh in answer_spans(sent):
                candidates.append((title, context, off, sent, s, span, wh))
    if not candidates:
        raise ConfigError(
            "qa: synthetic_cloze: the training paragraphs have no sentence to make a question of"
        )
    rng = random.Random(seed)
    rng.shuffle(candidates)
    by_title: dict[str, list[str]] = {}
    for context, title in sorted(paragraphs.items()):
        by_title.setdefault(title, []).append(context)
    out: list[ClozeQuestion] = []
    for k in range(n):
        title, context, off, sent, s, span, wh = candidates[k % len(candidates)]
        question = _question(sent, s, span, wh, rng)
        qid = f"cloze-{seed}-{k}"
        example = SquadExample(qid, title, context, question, [SquadAnswer(span, off + s)])
        if rng.random() < unanswerable:
            others = [c for c in by_title[title] if sent not in c and span not in c]
            if others:
                example = SquadExample(qid, title, rng.choice(others), question, [], is_impossible=True)
        out.append(ClozeQuestion(example, context, sent))
    return out


def cloze_examples(
    examples: Sequence[SquadExample], n: int, seed: int, unanswerable: float = 0.0
) -> list[SquadExample]:
    """The examples of :func:`cloze_questions`."""
    return [c.example for c in cloze_questions(examples, n, seed, unanswerable)]
