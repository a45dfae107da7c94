"""Easy Data Augmentation for extractive QA, keeping every gold answer span valid.

Wei and Zou, "EDA: Easy Data Augmentation Techniques for Boosting Performance on Text Classification Tasks",
EMNLP 2019, as used for robust QA by Zhou and Tan ("Build a Robust QA System with Transformer-based Mixture of
Experts", CS224N 2021). EDA has four operations; with ``alpha`` the fraction of words changed, a sentence of
``L`` words gets ``n = max(1, round(alpha * L))`` of one of them:

* random insertion (RI): insert ``n`` words at random positions;
* random swap (RS): swap two random words, ``n`` times;
* random deletion (RD): delete each word with probability ``alpha`` (never all of them);
* synonym replacement (SR) — **left out**: it needs a synonym list (WordNet), and no offline pip package ships
  one; RI therefore inserts a copy of another word of the same text instead of a synonym.

For QA the question gets the operation directly; the context gets it only on words outside every gold answer,
and the answers' character offsets are recomputed, so ``context[start:start + len(text)] == text`` still holds.
Unanswerable questions stay unanswerable.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from circuitml.datasets.squad import SquadAnswer, SquadExample

from circuitml.errors import ConfigError

__all__ = ["EDA_OPERATIONS", "eda_words", "augment_example", "augment_examples"]

EDA_OPERATIONS = ("insert", "swap", "delete")


def eda_words(
    words: list[str], op: str, alpha: float, rng: random.Random, locked: Sequence[bool] = ()
) -> list[str]:
    """Apply one EDA operation to ``words``; words flagged in ``locked`` are neither moved nor deleted,
    and nothing is inserted between two consecutive locked words (the inside of an answer)."""
    if op not in EDA_OPERATIONS:
        raise ConfigError(f"eda: operation: expected one of {EDA_OPERATIONS}, got {op!r}")
    lock = list(locked) if locked else [False] * len(words)
    free = [i for i, f in enumerate(lock) if not f]
    if not free:
        return list(words)
    n = max(1, round(alpha * len(words)))
    items = list(zip(words, lock, strict=True))
    if op == "delete":
        drop = {i for i in free if rng.random() < alpha}
        if len(drop) == len(free):  # EDA never deletes every word: keep one free word
            drop.discard(rng.choice(free))
        items = [it for i, it in enumerate(items) if i not in drop]
    elif op == "swap":
        for _ in range(n if len(free) > 1 else 0):
            a, b = rng.sample(free, 2)
            items[a], items[b] = items[b], items[a]
    else:  # insert: a copy of a free word (the stand-in for a synonym) at a position not inside an answer
        for _ in range(n):
            gaps = [
                g
                for g in range(len(items) + 1)
                if not (0 < g < len(items) and items[g - 1][1] and items[g][1])
            ]
            word = items[rng.choice([i for i, (_, f) in enumerate(items) if not f])][0]
            items.insert(rng.choice(gaps), (word, False))
    return [w for w, _ in items]


def _augment_context(example: SquadExample, op: str, alpha: float, rng: random.Random) -> SquadExample:
    text = example.context
    # the union of the gold answers' character intervals: each merged interval is one locked unit
    units: list[list[int]] = []
    for a, b in sorted((s.start, s.start + len(s.text)) for s in example.answers):
        if units and a <= units[-1][1]:
            units[-1][1] = max(units[-1][1], b)
        else:
            units.append([a, b])
    words: list[str] = []
    locked: list[bool] = []
    origin: dict[int, int] = {}  # word index of a locked unit -> its start in the original context
    pos = 0
    for a, b in [*units, [len(text), len(text)]]:
        for w in text[pos:a].split():
            words.append(w)
            locked.append(False)
        if b > a:
            origin[len(words)] = a
            words.append(f"\x00{len(words)}\x00")  # a tag, so the unit can be found after the operation
            locked.append(True)
        pos = b
    out = eda_words(words, op, alpha, rng, locked)
    pieces, moved, pos = [], {}, 0
    for w in out:
        if w.startswith("\x00"):
            a = origin[int(w.strip("\x00"))]
            moved[a] = pos
            w = text[a : next(b for u, b in units if u == a)]
        pieces.append(w)
        pos += len(w) + 1
    context = " ".join(pieces)
    answers = []
    for s in example.answers:
        u = max(u for u, _ in units if u <= s.start)
        answers.append(SquadAnswer(s.text, moved[u] + s.start - u))
    return SquadExample(example.id, example.title, context, example.question, answers, example.is_impossible)


def augment_example(example: SquadExample, alpha: float, rng: random.Random, suffix: str) -> SquadExample:
    """One augmented copy: a random EDA operation on the question and another on the context."""
    q_op, c_op = rng.choice(EDA_OPERATIONS), rng.choice(EDA_OPERATIONS)
    question = " ".join(eda_words(example.question.split(), q_op, alpha, rng))
    ctx = _augment_context(example, c_op, alpha, rng)
    return SquadExample(
        f"{example.id}{suffix}", example.title, ctx.context, question, ctx.answers, example.is_impossible
    )


def augment_examples(
    examples: Sequence[SquadExample], copies: int = 1, alpha: float = 0.1, seed: int = 0
) -> list[SquadExample]:
    """``examples`` followed by ``copies`` EDA copies of each (ids suffixed ``~eda<k>``), reproducible by seed.

    Args:
        copies: augmented copies per example (``n_aug`` of EDA).
        alpha: fraction of words changed per operation (EDA's ``alpha``, 0 < alpha < 1).
    """
    if copies < 0:
        raise ConfigError(f"eda: copies: expected a non-negative int, got {copies}")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"eda: alpha: expected a fraction in (0, 1), got {alpha}")
    rng = random.Random(seed)
    out = list(examples)
    for k in range(copies):
        out += [augment_example(e, alpha, rng, f"~eda{k}") for e in examples]
    return out
