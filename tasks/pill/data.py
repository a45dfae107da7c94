"""The description–AIG data set: generated designs, their AIGs and descriptions, with held-out widths and seeds.

:func:`build_pill_dataset` enumerates designs of every described family (:mod:`.descriptions`), writes their RTL,
synthesizes it into the project's one dataset format (:func:`circuitml.datasets.build_dataset`: ``manifest.json``
+ ``circuits/``), and writes one small derived file beside it, ``pill.json``: per design its family, width,
design seed, attributes, split and descriptions. Same arguments, same files; a second call rebuilds nothing.

Splits (disjoint by construction: a design is one Verilog text, module name aside):

* ``test_width`` — every design at a held-out width of its family (every third width, starting with the second,
  so they lie between trained widths);
* ``test_seed`` — at the trained widths, the last distinct variant (a design seed not used for training);
* ``train`` — the other variants at the trained widths.

:func:`matching_pairs` and :func:`choice_items` sample the two tasks from a split with hard negatives: designs
of the same family whose attributes (width or an option) differ.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from circuitml.datasets import FAMILIES, build_dataset, get_family
from circuitml.datasets.generate.pipeline import DesignSpec, write_sources

from circuitml.errors import ConfigError, DatasetError
from circuitml.fileio import atomic_write, check_format, read_json

from .descriptions import DESCRIBED_FAMILIES, attributes, describe, num_templates

__all__ = [
    "PILL_FILE",
    "SPLITS",
    "PillDesign",
    "PillDataConfig",
    "build_pill_dataset",
    "load_pill_designs",
    "matching_pairs",
    "choice_items",
]

PILL_FILE = "pill.json"
FORMAT_NAME = "circuitml-pill"
FORMAT_VERSION = 1
SPLITS = ("train", "test_seed", "test_width")


@dataclass(frozen=True)
class PillDataConfig:
    """What :func:`build_pill_dataset` makes.

    Attributes:
        families: families to use (default: every described family).
        variants: distinct designs per (family, width); at trained widths the last one is ``test_seed``.
        max_width: family widths above this are left out (keeps graphs small).
        seed: seeds the design-seed draws.
    """

    families: tuple[str, ...] = DESCRIBED_FAMILIES
    variants: int = 4
    max_width: int = 16
    seed: int = 0

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class PillDesign:
    """One design: dataset record id, family, generator width and seed, attributes, split, descriptions."""

    id: str
    family: str
    width: int
    seed: int
    attrs: dict[str, Any]
    split: str
    descriptions: tuple[str, ...] = field(default=())

    @property
    def attr_key(self) -> str:
        return json.dumps(self.attrs, sort_keys=True)


def _normalized(text: str, module: str) -> str:
    return re.sub(rf"\b{re.escape(module)}\b", "M", text)


def plan_pill_designs(cfg: PillDataConfig) -> list[tuple[DesignSpec, dict[str, Any], str]]:
    """The designs of ``cfg`` as ``(spec, attrs, split)``, in a fixed order (no synthesis)."""
    if cfg.variants < 2:
        raise ConfigError(f"pill data: variants: expected at least 2 (one for test_seed), got {cfg.variants}")
    for name in cfg.families:
        get_family(name)  # unknown family -> ConfigError
        if name not in DESCRIBED_FAMILIES:
            raise ConfigError(f"pill data: family {name!r}: expected one of {', '.join(DESCRIBED_FAMILIES)}")
    plan: list[tuple[DesignSpec, dict[str, Any], str]] = []
    for name in cfg.families:
        fam = FAMILIES[name]
        widths = sorted({min(w, fam.max_width) for w in fam.widths if w <= cfg.max_width})
        if not widths:
            raise ConfigError(f"pill data: family {name!r} has no widths up to max_width {cfg.max_width}")
        held_out = set(widths[1::3])
        seen: set[str] = set()
        for width in widths:
            found: list[tuple[DesignSpec, dict[str, Any]]] = []
            for k in range(8 * cfg.variants):
                if len(found) == cfg.variants:
                    break
                design_seed = zlib.crc32(f"pill:{cfg.seed}:{name}:{width}:{k}".encode()) % 1_000_000
                module, text = fam.generate(width, design_seed)
                norm = _normalized(text, module)
                if norm in seen:
                    continue
                seen.add(norm)
                found.append((DesignSpec(name, width, design_seed, module, text), attributes(name, text)))
            for j, (spec, attrs) in enumerate(found):
                if width in held_out:
                    split = "test_width"
                else:
                    split = "test_seed" if j == len(found) - 1 and len(found) > 1 else "train"
                plan.append((spec, attrs, split))
    return plan


def build_pill_dataset(
    out: str | os.PathLike,
    cfg: PillDataConfig | None = None,
    *,
    workers: int = 1,
    progress: bool = True,
) -> list[PillDesign]:
    """Build (or reuse) the description–AIG data set at ``out``; returns its designs.

    Designs whose synthesis fails are left out (the build report lists them in the manifest's failures).
    """
    cfg = cfg or PillDataConfig()
    out = Path(out)
    pill_path = out / PILL_FILE
    if pill_path.is_file():
        meta = read_json(pill_path, error=DatasetError, what="pill data")
        if isinstance(meta, dict) and meta.get("config_key") == cfg.key():
            return load_pill_designs(out)
    plan = plan_pill_designs(cfg)
    paths = write_sources([spec for spec, _, _ in plan], out)
    build_dataset(paths, out, workers=workers, progress=progress)
    from circuitml.datasets import read_manifest

    by_top = {rec.get("top"): rec["id"] for rec in read_manifest(out)["records"]}
    designs = []
    for spec, attrs, split in plan:
        if spec.module not in by_top:
            continue
        texts = tuple(describe(spec.family, attrs, t) for t in range(num_templates(spec.family)))
        designs.append(
            PillDesign(by_top[spec.module], spec.family, spec.width, spec.seed, attrs, split, texts)
        )
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "config": asdict(cfg),
        "config_key": cfg.key(),
        "designs": [asdict(d) for d in designs],
    }
    atomic_write(pill_path, json.dumps(meta, indent=1))
    return designs


def load_pill_designs(root: str | os.PathLike, split: str | None = None) -> list[PillDesign]:
    """The designs listed in ``root/pill.json`` (optionally one split)."""
    path = Path(root) / PILL_FILE
    if not path.is_file():
        raise DatasetError(f"{path}: missing (build it with `circuitml pill data {root}`)")
    meta = read_json(path, error=DatasetError, what="pill data")
    check_format(meta, path, name=FORMAT_NAME, version=FORMAT_VERSION, error=DatasetError)
    if split is not None and split not in SPLITS:
        raise ConfigError(f"pill: split {split!r}: expected one of {', '.join(SPLITS)}")
    designs = []
    for i, d in enumerate(meta.get("designs", [])):
        try:
            design = PillDesign(**{**d, "descriptions": tuple(d["descriptions"])})
        except (TypeError, KeyError) as exc:
            raise DatasetError(f"{path}: designs[{i}]: expected a design record ({exc})") from None
        if split is None or design.split == split:
            designs.append(design)
    return designs


# ------------------------------------------------------------------------------------------------ the tasks
def _negatives(designs: Sequence[PillDesign], pool: Sequence[PillDesign]) -> dict[str, list[int]]:
    """For each design id, positions in ``pool`` of same-family designs with other attributes."""
    by_family: dict[str, list[int]] = {}
    for j, d in enumerate(pool):
        by_family.setdefault(d.family, []).append(j)
    return {d.id: [j for j in by_family.get(d.family, []) if pool[j].attr_key != d.attr_key] for d in designs}


def _hard_pool(
    designs: Sequence[PillDesign], fallback: Sequence[PillDesign]
) -> tuple[list[PillDesign], dict[str, list[int]]]:
    """Negatives come from the same split; a design whose family has one attribute set there borrows from
    ``fallback`` (all designs), so every design gets hard negatives."""
    pool = list(designs)
    neg = _negatives(designs, pool)
    extra = [d for d in fallback if d not in pool]
    if any(not v for v in neg.values()) and extra:
        pool = pool + extra
        neg = _negatives(designs, pool)
    return pool, neg


def matching_pairs(
    designs: Sequence[PillDesign], rng: random.Random, fallback: Sequence[PillDesign] = ()
) -> list[tuple[str, PillDesign, int]]:
    """Per design one positive and one hard-negative ``(description, design, label)``, templates drawn by ``rng``."""
    pool, neg = _hard_pool(designs, fallback)
    pairs = []
    for d in designs:
        pairs.append((d.descriptions[rng.randrange(len(d.descriptions))], d, 1))
        if neg[d.id]:
            other = pool[rng.choice(neg[d.id])]
            pairs.append((other.descriptions[rng.randrange(len(other.descriptions))], d, 0))
    return pairs


def choice_items(
    designs: Sequence[PillDesign], k: int, rng: random.Random, fallback: Sequence[PillDesign] = ()
) -> list[tuple[list[str], list[PillDesign]]]:
    """Multiple-choice items with ``k`` same-family candidates, the right one first (callers score all).

    Each item is ``(texts, circuits)`` with either one text and ``k`` circuits (pick the circuit) or ``k`` texts
    (of distinct attribute sets) and one circuit (pick the description), alternating by design. Distractors come
    from the same split, topped up from ``fallback`` when the split has fewer than ``k - 1`` other attribute sets
    of the family; designs that still have too few are skipped.
    """
    if k < 2:
        raise ConfigError(f"pill: choices: expected k >= 2, got {k}")
    pool = list(designs) + [d for d in fallback if d not in designs]
    own = len(designs)
    neg = _negatives(designs, pool)
    items = []
    for i, d in enumerate(designs):
        by_attr: dict[str, int] = {}
        for j in sorted(neg[d.id], key=lambda j: j >= own):  # same split first
            by_attr.setdefault(pool[j].attr_key, j)  # one candidate per attribute set: a single right answer
        in_split = sorted(key for key, j in by_attr.items() if j < own)
        keys = in_split if len(in_split) >= k - 1 else sorted(by_attr)
        if len(keys) < k - 1:
            continue
        others = [pool[by_attr[key]] for key in rng.sample(keys, k - 1)]
        t = rng.randrange(len(d.descriptions))
        if i % 2 == 0:
            items.append(([d.descriptions[t]], [d, *others]))
        else:
            texts = [d.descriptions[t]] + [o.descriptions[rng.randrange(len(o.descriptions))] for o in others]
            items.append((texts, [d]))
    return items
