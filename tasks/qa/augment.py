"""Easy Data Augmentation for extractive QA, keeping every gold answer span valid.

Wei and Zou, "EDA: Easy Data Augmentation Techniques for Boosting Performance on Text Classification Tasks",
EMNLP 2019, as used for robust QA by Zhou and Tan ("Build a Robust QA System with Transformer-based Mixture of
Experts", CS224N 2021). EDA has four operations; with ``alpha`` the fraction of words changed, a sentence of
``L`` words gets ``n = max(1, round(alpha * L))`` of one of them:

* random insertion (RI): insert ``n`` words at random positions;
* random swap (RS): swap two random words, ``n`` times;
* random deletion (RD): delete each word with probability ``alpha`` (never all of them);
* synonym replacement (SR): replace ``n`` words by one of their synonyms.

EDA takes its synonyms from WordNet, which no offline pip package ships. What is offline is the language model
being fine-tuned, so :class:`SynonymTable` takes them from its input word embeddings: the nearest whole-word
tokens by cosine similarity, without morphological variants of the word itself — embedding neighbours as the
word-replacement source, as TinyBERT's augmentation does with GloVe (Jiao et al., "TinyBERT: Distilling BERT for
Natural Language Understanding", Findings of EMNLP 2020). Without a table there is no SR, and RI inserts a copy of
another word of the same text instead of a synonym (with a table, RI inserts a synonym of a random word, as EDA).

For QA the question gets the operation directly; the context gets it only on words outside every gold answer,
and the answers' character offsets are recomputed, so ``context[start:start + len(text)] == text`` still holds.
Unanswerable questions stay unanswerable, and their plausible answers (SQuAD v2.0) stay valid spans too.
"""

from __future__ import annotations

import random
import re
from collections.abc import Mapping, Sequence

from circuitml.datasets.squad import SquadAnswer, SquadExample

from circuitml.errors import ConfigError

__all__ = [
    "EDA_OPERATIONS",
    "SynonymTable",
    "eda_words",
    "augment_example",
    "augment_examples",
]

EDA_OPERATIONS = ("insert", "swap", "delete", "synonym")

# EDA leaves stop words alone; a short list of English function words (the choice is EDA's, the list ours)
_STOP = frozenset(
    """a about above after again against all am an and any are as at be because been before being below between
    both but by can did do does doing down during each few for from further had has have having he her here hers
    him his how i if in into is it its itself just me more most my no nor not now of off on once only or other our
    out over own same she should so some such than that the their them then there these they this those through to
    too under until up very was we were what when where which while who whom why will with you your""".split()
)
_CORE = re.compile(r"^(\W*)([A-Za-z]+)(\W*)$")


class SynonymTable:
    """Synonyms of lower-case words: ``table[word]`` is a tuple of replacements (empty when it has none).

    Built from a language model's input embedding matrix by :meth:`from_embeddings`, or given as a mapping.
    """

    def __init__(self, synonyms: Mapping[str, Sequence[str]]) -> None:
        self._syn = {w.lower(): tuple(s) for w, s in synonyms.items() if s}

    def __getitem__(self, word: str) -> tuple[str, ...]:
        return self._syn.get(word.lower(), ())

    def __len__(self) -> int:
        return len(self._syn)

    @classmethod
    def from_embeddings(
        cls, vocab: Mapping[str, int], embeddings, words: Sequence[str], k: int = 5, min_cosine: float = 0.45
    ):
        """Up to ``k`` synonyms of each of ``words``: the whole-word alphabetic vocabulary tokens nearest by
        cosine similarity of the rows of ``embeddings`` (``[V, H]``), at least ``min_cosine``, excluding stop words
        and tokens sharing the word's first four letters (plurals and other forms of the word itself)."""
        import torch

        emb = torch.nn.functional.normalize(torch.as_tensor(embeddings).float(), dim=1)
        cand = [
            (t, i) for t, i in vocab.items() if t.isalpha() and t.isascii() and t not in _STOP and len(t) > 2
        ]
        cand_tok = [t for t, _ in cand]
        cand_emb = emb[torch.tensor([i for _, i in cand])]
        query = sorted(
            {w.lower() for w in words if w.lower() in vocab and w.lower() not in _STOP and len(w) > 2}
        )
        table: dict[str, list[str]] = {}
        for lo in range(0, len(query), 512):
            chunk = query[lo : lo + 512]
            sims = emb[torch.tensor([vocab[w] for w in chunk])] @ cand_emb.T
            val, idx = sims.topk(min(4 * k + 8, len(cand_tok)), dim=1)
            for w, vs, js in zip(chunk, val.tolist(), idx.tolist(), strict=True):
                picks = [
                    cand_tok[j]
                    for v, j in zip(vs, js, strict=True)
                    if v >= min_cosine and cand_tok[j][:4] != w[:4]
                ]
                table[w] = picks[:k]
        return cls(table)


def _replace(word: str, synonyms: SynonymTable, rng: random.Random) -> str | None:
    """``word`` with its letters replaced by a synonym (punctuation around it and capitalisation kept)."""
    m = _CORE.match(word)
    if m is None or m.group(2).lower() in _STOP:
        return None
    options = synonyms[m.group(2)]
    if not options:
        return None
    new = rng.choice(options)
    if m.group(2)[0].isupper():
        new = new[0].upper() + new[1:]
    return m.group(1) + new + m.group(3)


def eda_words(
    words: list[str],
    op: str,
    alpha: float,
    rng: random.Random,
    locked: Sequence[bool] = (),
    synonyms: SynonymTable | None = None,
) -> list[str]:
    """Apply one EDA operation to ``words``; words flagged in ``locked`` are neither moved nor deleted,
    and nothing is inserted between two consecutive locked words (the inside of an answer).
    ``"synonym"`` needs ``synonyms``."""
    if op not in EDA_OPERATIONS:
        raise ConfigError(f"eda: operation: expected one of {EDA_OPERATIONS}, got {op!r}")
    if op == "synonym" and synonyms is None:
        raise ConfigError("eda: operation 'synonym' needs a synonym table (SynonymTable)")
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
    elif op == "synonym":  # n distinct free words that have a synonym, each replaced by one of them
        order = list(free)
        rng.shuffle(order)
        done = 0
        for i in order:
            if done == n:
                break
            new = _replace(items[i][0], synonyms, rng)
            if new is not None:
                items[i] = (new, False)
                done += 1
    else:  # insert: a synonym of a free word (EDA) or, with no table, a copy of one, not inside an answer
        for _ in range(n):
            gaps = [
                g
                for g in range(len(items) + 1)
                if not (0 < g < len(items) and items[g - 1][1] and items[g][1])
            ]
            word = items[rng.choice([i for i, (_, f) in enumerate(items) if not f])][0]
            if synonyms is not None:
                word = _replace(word, synonyms, rng) or word
            items.insert(rng.choice(gaps), (word, False))
    return [w for w, _ in items]


def _augment_context(
    example: SquadExample, op: str, alpha: float, rng: random.Random, synonyms: SynonymTable | None
) -> SquadExample:
    text = example.context
    # the union of the gold (and plausible) answers' character intervals: each merged interval is one locked unit
    spans = [*example.answers, *example.plausible_answers]
    units: list[list[int]] = []
    for a, b in sorted((s.start, s.start + len(s.text)) for s in spans):
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
    out = eda_words(words, op, alpha, rng, locked, synonyms)
    pieces, moved, pos = [], {}, 0
    for w in out:
        if w.startswith("\x00"):
            a = origin[int(w.strip("\x00"))]
            moved[a] = pos
            w = text[a : next(b for u, b in units if u == a)]
        pieces.append(w)
        pos += len(w) + 1
    context = " ".join(pieces)

    def remap(answers: list[SquadAnswer]) -> list[SquadAnswer]:
        out = []
        for s in answers:
            u = max(u for u, _ in units if u <= s.start)
            out.append(SquadAnswer(s.text, moved[u] + s.start - u))
        return out

    return SquadExample(
        example.id,
        example.title,
        context,
        example.question,
        remap(example.answers),
        example.is_impossible,
        remap(example.plausible_answers),
    )


def augment_example(
    example: SquadExample,
    alpha: float,
    rng: random.Random,
    suffix: str,
    synonyms: SynonymTable | None = None,
) -> SquadExample:
    """One augmented copy: a random EDA operation on the question and another on the context (SR only with
    ``synonyms``)."""
    ops = EDA_OPERATIONS if synonyms is not None else EDA_OPERATIONS[:3]
    q_op, c_op = rng.choice(ops), rng.choice(ops)
    question = " ".join(eda_words(example.question.split(), q_op, alpha, rng, synonyms=synonyms))
    ctx = _augment_context(example, c_op, alpha, rng, synonyms)
    return SquadExample(
        f"{example.id}{suffix}",
        example.title,
        ctx.context,
        question,
        ctx.answers,
        example.is_impossible,
        ctx.plausible_answers,
    )


def augment_examples(
    examples: Sequence[SquadExample],
    copies: int = 1,
    alpha: float = 0.1,
    seed: int = 0,
    synonyms: SynonymTable | None = None,
) -> list[SquadExample]:
    """``examples`` followed by ``copies`` EDA copies of each (ids suffixed ``~eda<k>``), reproducible by seed.

    Args:
        copies: augmented copies per example (``n_aug`` of EDA).
        alpha: fraction of words changed per operation (EDA's ``alpha``, 0 < alpha < 1).
        synonyms: a :class:`SynonymTable` to enable synonym replacement (all four EDA operations).
    """
    if copies < 0:
        raise ConfigError(f"eda: copies: expected a non-negative int, got {copies}")
    if not 0.0 < alpha < 1.0:
        raise ConfigError(f"eda: alpha: expected a fraction in (0, 1), got {alpha}")
    rng = random.Random(seed)
    out = list(examples)
    for k in range(copies):
        out += [augment_example(e, alpha, rng, f"~eda{k}", synonyms) for e in examples]
    return out
