"""The QA tokenizer trainer is a pure function of its texts: canonical WordPiece merges, same bytes every call."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from itertools import pairwise

from circuitml.tasks.qa import wordpiece
from circuitml.tasks.qa.data import SPECIAL_TOKENS, _word_counts, train_tokenizer
from circuitml.tasks.qa.wordpiece import wordpiece_vocab
from hypothesis import given, settings
from hypothesis import strategies as st


def _corpus() -> list[str]:
    """Random words over a small alphabet: many pairs tie, which is where HF's trainer varies from call to call."""
    rng = random.Random(3)
    words = ["".join(rng.choice("abcdeilnorst") for _ in range(rng.randint(2, 8))) for _ in range(400)]
    return [" ".join(rng.choice(words) for _ in range(12)) + "." for _ in range(150)]


_CHILD = """
import importlib.util, json, sys
spec = importlib.util.spec_from_file_location("wordpiece", sys.argv[1])  # the module alone: stdlib only
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
print(json.dumps(module.wordpiece_vocab(dict(json.loads(sys.stdin.read())), 400, 2, sys.argv[2:])))
"""


def test_train_tokenizer_gives_one_vocabulary_in_and_across_processes() -> None:
    from tokenizers import normalizers, pre_tokenizers

    texts = _corpus()
    # HF's WordPieceTrainer gave 5 different vocabularies in 5 calls on this corpus
    runs = {json.dumps(sorted(train_tokenizer(texts, vocab_size=400).get_vocab().items())) for _ in range(3)}
    assert len(runs) == 1
    vocab = sorted(json.loads(runs.pop()), key=lambda kv: kv[1])
    assert [i for _, i in vocab] == list(range(400))
    # the vocabulary is wordpiece_vocab's of the tokenizer's own word counts ...
    words = _word_counts(texts, normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer())
    assert wordpiece_vocab(words, 400, 2, SPECIAL_TOKENS) == [t for t, _ in vocab]
    # ... and in another process, with another string-hash seed and the counts in another order, the same
    items = sorted(words.items())
    random.Random(1).shuffle(items)
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, wordpiece.__file__, *SPECIAL_TOKENS],
        input=json.dumps(items),
        env={**os.environ, "PYTHONHASHSEED": "12345"},
        capture_output=True,
        text=True,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout) == [t for t, _ in vocab]


def _naive_vocab(
    word_counts: dict[str, int], vocab_size: int, min_frequency: int, specials: list[str]
) -> list[str]:
    """Recount every pair of every word before each merge; the most frequent wins, ties to the smallest ids."""
    vocab = list(dict.fromkeys(specials))
    words = sorted(word_counts)
    for tok in sorted({c for w in words for c in w}) + sorted({"##" + c for w in words for c in w[1:]}):
        if tok not in vocab:
            vocab.append(tok)
    seqs = [[w[0]] + ["##" + c for c in w[1:]] for w in words]
    while len(vocab) < vocab_size:
        counts: Counter[tuple[int, int]] = Counter()
        for seq, w in zip(seqs, words, strict=True):
            for a, b in pairwise(seq):
                counts[vocab.index(a), vocab.index(b)] += word_counts[w]
        if not counts:
            break
        (a, b), best = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        if best < min_frequency:
            break
        sa, sb = vocab[a], vocab[b]
        new = sa + sb[2:]
        if new not in vocab:
            vocab.append(new)
        for k, seq in enumerate(seqs):
            out, i = [], 0
            while i < len(seq):
                if i + 1 < len(seq) and seq[i] == sa and seq[i + 1] == sb:
                    out.append(new)
                    i += 2
                else:
                    out.append(seq[i])
                    i += 1
            seqs[k] = out
    return vocab


@settings(max_examples=40)
@given(
    st.dictionaries(st.text("abcab#", min_size=1, max_size=7), st.integers(1, 6), min_size=1, max_size=25),
    st.integers(0, 40),
    st.integers(1, 3),
)
def test_wordpiece_vocab_matches_a_naive_recount(
    words: dict[str, int], extra: int, min_frequency: int
) -> None:
    specials = ["[PAD]", "[UNK]"]
    size = len(specials) + 8 + extra
    assert wordpiece_vocab(words, size, min_frequency, specials) == _naive_vocab(
        words, size, min_frequency, specials
    )


def test_wordpiece_vocab_ignores_the_order_of_its_counts() -> None:
    words = Counter(" ".join(_corpus()).replace(".", "").split())
    items = list(words.items())
    random.Random(0).shuffle(items)
    assert wordpiece_vocab(dict(items), 300, 2, ["[UNK]"]) == wordpiece_vocab(words, 300, 2, ["[UNK]"])
