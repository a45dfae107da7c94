"""Keep evaluation circuits out of the pretraining corpus: no design, and no recipe variant of it, on both sides.

A recipe variant (the design after an ABC script) has another structure but the same function, and two generated
designs can coincide under different module names (a ripple-carry adder depends on its width only), so names and
structural hashes are not enough. A circuit is *seen* when its **functional fingerprint** — the hash of
``(#PIs, #POs, the POs' values under 256 fixed random input patterns)`` — or its name matches a corpus circuit.
Equal functions always match (patterns and PI order are fixed; ABC keeps PI/PO order); different functions match
with probability about ``2^-256`` per output. Not caught: the same function with permuted inputs.
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from circuitml.aig import AIG
from circuitml.errors import DatasetError

__all__ = ["functional_fingerprint", "corpus_fingerprints", "unseen"]

PATTERNS = 256


def functional_fingerprint(aig: AIG, *, num_patterns: int = PATTERNS) -> str:
    """``sha256`` of the interface and the output values under fixed random patterns (seed 0)."""
    from circuitml.sim import random_pi_words, simulate_outputs

    out = simulate_outputs(aig, random_pi_words(aig.num_pis, num_patterns, seed=0))
    h = hashlib.sha256(f"{aig.num_pis},{aig.num_pos}".encode())
    h.update(np.ascontiguousarray(out, dtype=np.uint64).tobytes())
    return h.hexdigest()


def corpus_fingerprints(corpus: str | os.PathLike) -> tuple[set[str], set[str]]:
    """Functional fingerprints and names (record ``name``, ``id``, ``design``) of every circuit of a dataset
    (computed once per folder and process)."""
    return _corpus_fingerprints(str(Path(corpus).resolve()))


@functools.lru_cache(maxsize=4)
def _corpus_fingerprints(corpus: str) -> tuple[frozenset[str], frozenset[str]]:
    from circuitml.datasets import CircuitDataset

    root = Path(corpus)
    if not (root / "manifest.json").is_file():
        raise DatasetError(f"{root}: expected a pretraining dataset folder (manifest.json)")
    ds = CircuitDataset(root)
    names = {str(r[k]) for r in ds.records for k in ("name", "id", "design") if r.get(k)}
    prints = {functional_fingerprint(ds.aig(i)) for i in range(len(ds))}
    return frozenset(prints), frozenset(names)


def unseen(
    circuits: Sequence[AIG], corpus: str | os.PathLike, *, names: Sequence[str] | None = None
) -> tuple[np.ndarray, dict]:
    """Indices of ``circuits`` that are not in ``corpus`` (by function or name), and counts for the report."""
    prints, corpus_names = corpus_fingerprints(corpus)
    names = [c.name for c in circuits] if names is None else list(names)
    by_function = np.array([functional_fingerprint(c) in prints for c in circuits], dtype=bool)
    by_name = np.array([n in corpus_names for n in names], dtype=bool)
    keep = np.flatnonzero(~(by_function | by_name))
    info = {
        "corpus": str(corpus),
        "circuits": len(circuits),
        "seen_by_function": int(by_function.sum()),
        "seen_by_name": int(by_name.sum()),
        "kept": int(keep.size),
    }
    return keep, info
