"""A WordPiece vocabulary learned by greedy pair merges, with a canonical tie-break (a pure function of its input).

Schuster and Nakajima, "Japanese and Korean Voice Search", ICASSP 2012, introduced word pieces; BERT (Devlin et
al., NAACL 2019) marks a piece that continues a word with ``##``. The vocabulary is learned as in byte-pair
encoding (Sennrich, Haddow and Birch, "Neural Machine Translation of Rare Words with Subword Units", ACL 2016),
which is what HF ``tokenizers``' ``WordPieceTrainer`` runs: start from the characters (``w`` → ``w_1 ##w_2 …
##w_n``) and repeatedly merge the adjacent pair with the largest corpus frequency

    (a, b)* = argmax_{(a, b)} Σ_w count(w) · #{i : s_i(w) = a, s_{i+1}(w) = b},    ab = a + b.removeprefix("##")

until the vocabulary holds ``vocab_size`` tokens or the best pair occurs fewer than ``min_frequency`` times.

HF's trainer breaks a tie between equally frequent pairs by token ids, the older pair first, but numbers the
``##`` characters in the iteration order of a randomly seeded hash map, so the same texts give a different
vocabulary on each call. Here ids are assigned in a fixed order (special tokens, characters, then ``##``
characters by code point, then merges in the order made) and a tie goes to the smallest ``(id(a), id(b))`` as in
HF, so the vocabulary depends on the word counts and settings alone. Pair counts are kept incrementally: a merge only revisits the words that contain the pair.
"""

from __future__ import annotations

import heapq
from collections.abc import Mapping, Sequence
from itertools import pairwise

__all__ = ["wordpiece_vocab"]


def wordpiece_vocab(
    word_counts: Mapping[str, int],
    vocab_size: int,
    min_frequency: int = 2,
    special_tokens: Sequence[str] = (),
    prefix: str = "##",
) -> list[str]:
    """The WordPiece vocabulary (index = token id) learned from ``word_counts`` (word → occurrences).

    Every special token and every character of the corpus is kept even when they alone exceed ``vocab_size``
    (HF's trainer does the same), so no word is out of vocabulary.
    """
    vocab: list[str] = []
    ids: dict[str, int] = {}

    def add(token: str) -> int:
        if token not in ids:
            ids[token] = len(vocab)
            vocab.append(token)
        return ids[token]

    for token in special_tokens:
        add(token)
    # sorted so that neither the order of the counts nor the hash seed reaches the result
    words = sorted(w for w, c in word_counts.items() if w and c > 0)
    for ch in sorted({ch for w in words for ch in w}):
        add(ch)
    for ch in sorted({ch for w in words for ch in w[1:]}):
        add(prefix + ch)
    counts = [int(word_counts[w]) for w in words]
    symbols = [[ids[w[0]], *(ids[prefix + ch] for ch in w[1:])] for w in words]

    pair_count: dict[tuple[int, int], int] = {}
    where: dict[tuple[int, int], set[int]] = {}
    for k, (sym, c) in enumerate(zip(symbols, counts, strict=True)):
        for pair in pairwise(sym):
            pair_count[pair] = pair_count.get(pair, 0) + c
            where.setdefault(pair, set()).add(k)
    # max-heap by count, ties to the smallest (id(a), id(b)); an entry whose count is no longer the pair's is stale
    heap = [(-c, a, b) for (a, b), c in pair_count.items()]
    heapq.heapify(heap)

    while len(vocab) < vocab_size and heap:
        neg, a, b = heapq.heappop(heap)
        count = pair_count.get((a, b), 0)
        if count != -neg:
            continue
        if count < min_frequency:
            break
        right = vocab[b][len(prefix) :] if vocab[b].startswith(prefix) else vocab[b]
        new = add(vocab[a] + right)
        changed: set[tuple[int, int]] = set()
        for k in where.pop((a, b)):
            sym, c = symbols[k], counts[k]
            merged, i = [], 0
            while i < len(sym):
                if i + 1 < len(sym) and sym[i] == a and sym[i + 1] == b:
                    merged.append(new)
                    i += 2
                else:
                    merged.append(sym[i])
                    i += 1
            if len(merged) == len(sym):
                continue  # the pair left this word with an earlier merge
            for pair in pairwise(sym):
                pair_count[pair] -= c
                changed.add(pair)
            for pair in pairwise(merged):
                pair_count[pair] = pair_count.get(pair, 0) + c
                where.setdefault(pair, set()).add(k)
                changed.add(pair)
            symbols[k] = merged
        pair_count.pop((a, b), None)
        changed.discard((a, b))
        for pair in changed:
            c = pair_count[pair]
            if c > 0:
                heapq.heappush(heap, (-c, *pair))
    return vocab
