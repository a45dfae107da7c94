"""The built-in dataset: plan designs over families, widths and seeds, write their RTL, build the dataset.

``generate(out)`` leaves a complete dataset directory::

    out/rtl/<family>/<module>.v   the generated Verilog sources (inputs of the build)
    out/manifest.json, out/circuits/, out/verilog/   the processed dataset (see circuitml.datasets.format)

Same arguments, same files: the plan depends only on ``seed``, the family list and the widths, and each
family's text only on ``(width, design seed)``.
"""

from __future__ import annotations

import os
import random
import re
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from circuitml.errors import ConfigError

from ..build import BuildReport, build_dataset
from ..format import atomic_write
from .registry import FAMILIES, get_family

__all__ = ["DesignSpec", "plan_designs", "write_sources", "generate", "DEFAULT_COUNT", "RTL_DIR"]

DEFAULT_COUNT = 240
RTL_DIR = "rtl"
_MAX_TRIES_PER_DESIGN = 12  # attempts to find a not-yet-seen variant before a family is considered exhausted


@dataclass(frozen=True)
class DesignSpec:
    family: str
    width: int
    seed: int
    module: str
    verilog: str


def _normalized(spec_text: str, module: str) -> str:
    # two designs are duplicates when they differ only by module name
    return re.sub(rf"\b{re.escape(module)}\b", "M", spec_text)


def plan_designs(
    count: int = DEFAULT_COUNT,
    families: Sequence[str] | None = None,
    widths: Sequence[int] | None = None,
    seed: int = 0,
) -> list[DesignSpec]:
    """Choose ``count`` distinct designs, round-robin over ``families`` (default: all registered).

    Each family draws widths from ``widths`` (default: its own list) in a seeded order and a fresh design
    seed per design; a variant whose text duplicates an earlier one is redrawn. A family that runs out of
    distinct variants stops contributing, so the result can be shorter than ``count``.
    """
    if count < 0:
        raise ConfigError(f"count: expected a non-negative number of designs, got {count}")
    names = list(families) if families else sorted(FAMILIES)
    fams = [get_family(n) for n in names]
    if widths is not None and any(w < 1 for w in widths):
        raise ConfigError(f"widths: expected positive bit widths, got {list(widths)}")
    rngs = {f.name: random.Random(zlib.crc32(f"{seed}:{f.name}".encode())) for f in fams}
    orders: dict[str, list[int]] = {}
    seen: set[tuple[str, str]] = set()
    modules: set[str] = set()
    plan: list[DesignSpec] = []
    active = list(fams)
    while len(plan) < count and active:
        for fam in list(active):
            if len(plan) >= count:
                break
            rng = rngs[fam.name]
            for _ in range(_MAX_TRIES_PER_DESIGN):
                order = orders.setdefault(fam.name, [])
                if not order:
                    order.extend(widths if widths is not None else fam.widths)
                    rng.shuffle(order)
                width = min(order.pop(), fam.max_width)
                design_seed = rng.randrange(1_000_000)
                module, text = fam.generate(width, design_seed)
                key = (fam.name, _normalized(text, module))
                if key in seen or module in modules:
                    continue
                seen.add(key)
                modules.add(module)
                plan.append(DesignSpec(fam.name, width, design_seed, module, text))
                break
            else:
                active.remove(fam)
    return plan


def write_sources(plan: Sequence[DesignSpec], out: str | os.PathLike) -> list[Path]:
    """Write each design to ``out/rtl/<family>/<module>.v`` (unchanged files are left alone)."""
    paths = []
    for spec in plan:
        path = Path(out) / RTL_DIR / spec.family / f"{spec.module}.v"
        if not (path.is_file() and path.read_text(encoding="utf-8") == spec.verilog):
            atomic_write(path, spec.verilog)
        paths.append(path)
    return paths


def generate(
    out: str | os.PathLike,
    count: int = DEFAULT_COUNT,
    *,
    families: Sequence[str] | None = None,
    widths: Sequence[int] | None = None,
    seed: int = 0,
    workers: int = 2,
    timeout: float = 300.0,
    progress: bool = True,
) -> BuildReport:
    """Generate the built-in dataset at ``out``: RTL Verilog of every family, synthesized into AIGs.

    Re-running with the same arguments rewrites nothing and builds nothing (every source hash is already in
    the manifest); an interrupted run resumes where it stopped.

    Returns:
        The :class:`~circuitml.datasets.build.BuildReport` of the build step.
    """
    plan = plan_designs(count, families=families, widths=widths, seed=seed)
    paths = write_sources(plan, out)
    return build_dataset(paths, out, workers=workers, timeout=timeout, progress=progress)
