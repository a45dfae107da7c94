"""A pretraining corpus at scale: generated designs over many widths and seeds, each through random ABC recipes.

The same design after different ABC recipes is the same Boolean function in another structure; such recipe
variants are the positives of equivalence-aware contrastive pretraining (Wang et al., "FGNN2 / functionality
matters in netlist representation learning", DAC 2022; Shi et al., "DeepGate2", ICCAD 2023) and a cheap way to
multiply a few hundred RTL designs into thousands of distinct AIGs, as OpenABC-D (Chowdhury et al., NeurIPS
Datasets 2021) does with 1500 recipes per design.

``build_corpus(out)`` leaves::

    out/base/                  the synthesized designs (a dataset of its own: rtl/, manifest, circuits, verilog)
    out/manifest.json, out/circuits/, out/verilog/   the corpus: every structurally distinct AIG once

Every corpus record carries ``design`` (the id of the RTL design it comes from: split on it so that no design
and no recipe variant of it is on both sides), ``recipe`` (``None`` for the synthesized design itself) and
``struct_hash``; recipe variants share their design's Verilog. Both stages are parallel, resumable (finished
designs are skipped; the manifest is rewritten as they finish) and show progress (log lines when stderr is not
a terminal).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import shutil
import subprocess
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from circuitml.aig import AIG
from circuitml.errors import ConfigError, SynthesisError

from .build import BuildReport, build_dataset
from .format import (
    CIRCUITS_DIR,
    MANIFEST,
    VERILOG_DIR,
    atomic_write,
    empty_manifest,
    load_circuit,
    read_manifest,
    save_circuit,
    write_manifest,
)
from .generate import FAMILIES, get_family
from .generate.pipeline import DesignSpec, plan_designs, write_sources

__all__ = [
    "RECIPE_STEPS",
    "CorpusReport",
    "build_corpus",
    "plan_corpus",
    "random_recipe",
    "recipe_variants",
    "structural_hash",
]

BASE_DIR = "base"
_SIZE_KEYS = ("num_pis", "num_pos", "num_inputs", "num_outputs", "num_latches", "num_ands")
#: ABC commands a random recipe draws from (all keep an AIG; the OpenABC-D step set plus ``dc2``/``fraig``).
RECIPE_STEPS = (
    "rewrite",
    "rewrite -z",
    "rewrite -l",
    "refactor",
    "refactor -z",
    "refactor -l",
    "resub",
    "resub -z",
    "resub -K 8",
    "resub -K 8 -N 2",
    "balance",
    "balance -l",
    "dc2",
    "drw",
    "drf",
    "fraig",
)


def structural_hash(aig: AIG) -> str:
    """SHA-256 of the graph structure (fanin order and names ignored): equal iff ``same_structure``."""
    h = hashlib.sha256()
    h.update(np.array([aig.num_pis, aig.num_latches, aig.num_ands, aig.num_pos], dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(np.sort(aig.ands, axis=1)).tobytes())
    h.update(np.ascontiguousarray(aig.pos).tobytes())
    h.update(np.ascontiguousarray(aig.latch_init).tobytes())
    return h.hexdigest()


def random_recipe(rng: random.Random, min_len: int = 2, max_len: int = 8) -> str:
    """A random ABC recipe of ``min_len..max_len`` steps from :data:`RECIPE_STEPS`."""
    return "; ".join(rng.choice(RECIPE_STEPS) for _ in range(rng.randint(min_len, max_len)))


def _with_interface(out: AIG, like: AIG) -> AIG:
    """``out`` (what ABC wrote, latches seen as PIs/POs) with ``like``'s latches, resets and names back."""
    if out.num_pis != like.num_pis or out.num_pos != like.num_pos:
        raise SynthesisError(
            f"ABC changed the interface of {like.name or 'a design'}: {like.num_pis}/{like.num_pos} PIs/POs "
            f"became {out.num_pis}/{out.num_pos}"
        )
    result = like.copy()  # names, latch count and resets come from the input; the graph from ABC
    result.ands, result.pos, result.comments = out.ands, out.pos, []
    return result


def recipe_variants(aig: AIG, recipes: Sequence[str], timeout: float = 120.0) -> list[AIG]:
    """``aig`` after each recipe, in order (equivalent AIGs of other structure).

    Uses a native ``berkeley-abc``/``yosys-abc`` on PATH when there is one (one process for all recipes),
    else the ABC inside Yosys (:func:`circuitml.yosys.run_abc`, one run per recipe).

    Raises:
        SynthesisError: ABC failed or timed out.
    """
    from circuitml.formats.aiger import aiger_bytes, parse_aiger
    from circuitml.yosys import abc_script_commands

    native = shutil.which("berkeley-abc") or shutil.which("yosys-abc")
    if native is None:
        from circuitml.yosys import run_abc

        return [run_abc(aig, r, timeout=timeout).aig for r in recipes]
    comb = AIG(num_pis=aig.num_pis, ands=aig.ands, pos=aig.pos)
    lines = []
    for k, recipe in enumerate(recipes):
        lines += [
            "read_aiger in.aig",
            "strash",
            *abc_script_commands(recipe),
            "strash",
            f"write_aiger -s v{k}.aig",
        ]
    with tempfile.TemporaryDirectory(prefix="circuitml-corpus-") as tmp:
        Path(tmp, "in.aig").write_bytes(aiger_bytes(comb, binary=True, symbols=False))
        Path(tmp, "script.abc").write_text("\n".join(lines) + "\n", encoding="utf-8")
        try:
            proc = subprocess.run(
                [native, "-q", "source script.abc"],
                cwd=tmp,
                capture_output=True,
                timeout=timeout * max(1, len(recipes)),
            )
        except subprocess.TimeoutExpired:
            raise SynthesisError(f"{native}: recipes on {aig.name or 'a design'} timed out") from None
        outs = []
        for k in range(len(recipes)):
            file = Path(tmp, f"v{k}.aig")
            if not file.is_file():
                tail = (proc.stdout + proc.stderr).decode(errors="replace").strip().splitlines()[-1:]
                raise SynthesisError(
                    f"{native}: recipe {recipes[k]!r} on {aig.name or 'a design'} wrote no AIG ({' '.join(tail)})"
                )
            outs.append(_with_interface(parse_aiger(file.read_bytes(), file=f"<ABC output {k}>"), aig))
    return outs


def _extended_widths(family: str) -> list[int]:
    """Every width between the family's smallest and largest default width (more designs per family)."""
    fam = get_family(family)
    return list(range(min(fam.widths), min(max(fam.widths), fam.max_width) + 1))


def plan_corpus(designs: int, seed: int = 0, families: Sequence[str] | None = None) -> list[DesignSpec]:
    """``designs`` distinct RTL designs, round-robin over families (each over all widths of its range), so
    that families with few variants (adders: one per width) give all they have and the rest is filled by
    families with many (FSMs, random control, ALUs)."""
    if designs < 1:
        raise ConfigError(f"designs: expected a positive number of designs, got {designs}")
    names = list(families) if families else sorted(FAMILIES)
    per_family = {
        n: plan_designs(designs, families=[n], widths=_extended_widths(n), seed=seed) for n in names
    }
    plan: list[DesignSpec] = []
    modules: set[str] = set()
    depth = 0
    while len(plan) < designs and any(depth < len(p) for p in per_family.values()):
        for n in names:
            if depth < len(per_family[n]) and len(plan) < designs:
                spec = per_family[n][depth]
                if spec.module not in modules:
                    modules.add(spec.module)
                    plan.append(spec)
        depth += 1
    return plan


@dataclass
class CorpusReport:
    """What a corpus build did."""

    out: Path
    base: BuildReport | None = None
    designs: int = 0  # synthesized designs in the corpus
    variants: int = 0  # distinct recipe variants in the corpus
    duplicates: int = 0  # AIGs dropped because an identical structure was already in the corpus
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def circuits(self) -> int:
        return self.designs + self.variants

    def summary(self) -> str:
        return (
            f"{self.circuits} distinct AIGs ({self.designs} designs + {self.variants} recipe variants; "
            f"{self.duplicates} structural duplicates dropped, {len(self.failed)} failed) "
            f"in {self.seconds:.1f} s; corpus in {self.out}"
        )


def _variant_job(
    path: str, base_id: str, recipes: list[str], timeout: float
) -> tuple[str, list[tuple[str, AIG]] | None, str | None]:
    """Process-pool entry: never raises."""
    try:
        aig = load_circuit(path)[0]
        return base_id, list(zip(recipes, recipe_variants(aig, recipes, timeout), strict=True)), None
    except Exception as exc:  # one design's failure is reported; the others go on
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return base_id, None, f"{base_id}: {first[:300]}"


class _Ticker:
    """A rich progress bar on a terminal, a log line every few seconds otherwise."""

    def __init__(self, what: str, total: int, enabled: bool):
        self.what, self.total, self.done = what, total, 0
        self.bar = None
        self.console = None
        self.last = time.perf_counter()
        self.start = self.last
        if not enabled:
            return
        from rich.console import Console

        self.console = Console(stderr=True)
        if self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn(f"[bold]{what}[/]"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.bar.start()
            self.task = self.bar.add_task(what, total=total)

    def advance(self, note: str = "") -> None:
        self.done += 1
        if self.bar is not None:
            self.bar.advance(self.task)
        elif self.console is not None:
            now = time.perf_counter()
            if now - self.last >= 10.0 or self.done == self.total:
                self.last = now
                self.console.print(
                    f"{self.what}: {self.done}/{self.total} ({now - self.start:.0f} s){note}", highlight=False
                )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def build_corpus(
    out: str | os.PathLike,
    designs: int = 1000,
    *,
    variants: int = 6,
    seed: int = 0,
    families: Sequence[str] | None = None,
    workers: int = 2,
    timeout: float = 300.0,
    progress: bool = True,
    on_design: Callable[[str], None] | None = None,
) -> CorpusReport:
    """Build (or complete) the corpus at ``out``; see the module docstring.

    Args:
        designs: RTL designs to plan (see :func:`plan_corpus`).
        variants: random ABC recipes per design (a recipe's structural duplicates are dropped).
        seed: plans the designs and draws the recipes (same arguments, same corpus).
        workers: processes for Yosys and ABC.
        on_design: called with each design id once its variants are stored (tests use it to interrupt).

    Raises:
        DatasetError: ``out`` holds a manifest of another format, or is a file.
        ConfigError: a bad count or an unknown family.
    """
    if variants < 0:
        raise ConfigError(f"variants: expected a non-negative number of recipes per design, got {variants}")
    start = time.perf_counter()
    out = Path(out)
    report = CorpusReport(out=out)
    plan = plan_corpus(designs, seed=seed, families=families)
    base_root = out / BASE_DIR
    report.base = build_dataset(
        write_sources(plan, base_root), base_root, workers=workers, timeout=timeout, progress=progress
    )
    report.failed += report.base.failed
    base = read_manifest(base_root)
    wanted = {spec.module for spec in plan}
    # a record aliasing another's identical content (alias_of) stores the same AIG: it adds nothing here
    bases = sorted(
        (r for r in base["records"] if r["name"] in wanted and not r.get("alias_of")), key=lambda r: r["id"]
    )

    manifest = read_manifest(out) if (out / MANIFEST).is_file() else empty_manifest()
    info = manifest.setdefault(
        "corpus", {"seed": seed, "variants": variants, "designs_done": [], "duplicates": 0}
    )
    if (info.get("seed"), info.get("variants")) != (seed, variants):
        raise ConfigError(
            f"{out / MANIFEST}: corpus was built with seed {info.get('seed')} and {info.get('variants')} variants "
            f"per design; resume with the same settings or use another folder"
        )
    done = set(info["designs_done"])
    hashes = {r["struct_hash"] for r in manifest["records"]}
    (out / CIRCUITS_DIR).mkdir(parents=True, exist_ok=True)
    # round-robin over families, so that a corpus still being built (or interrupted) is balanced
    by_family: dict[str, list[dict[str, Any]]] = {}
    for r in bases:
        if r["id"] not in done:
            by_family.setdefault(r["family"], []).append(r)
    todo = [r for group in itertools.zip_longest(*by_family.values()) for r in group if r is not None]

    def store(rec: dict[str, Any], results: list[tuple[str | None, AIG]]) -> None:
        base_aig, _, tokens = load_circuit(base_root / CIRCUITS_DIR / f"{rec['id']}.safetensors")
        verilog = None
        if rec.get("verilog"):
            verilog = f"{VERILOG_DIR}/{rec['id']}.v"
            atomic_write(out / verilog, (base_root / rec["verilog"]).read_bytes())
        for k, (recipe, aig) in enumerate([(None, base_aig), *results]):
            key = structural_hash(aig)
            if key in hashes:
                report.duplicates += 1
                info["duplicates"] += 1
                continue
            hashes.add(key)
            cid = rec["id"] if recipe is None else f"{rec['id']}__r{k}"
            record = {
                **{
                    k2: rec[k2]
                    for k2 in ("family", "source", "sources", "format", "top", "num_tokens", "token_vocab")
                },
                "id": cid,
                "name": rec["name"],
                "design": rec["id"],
                "recipe": recipe,
                "struct_hash": key,
                "sha256": key,
                "verilog": verilog,
                **{k2: getattr(aig, k2) for k2 in _SIZE_KEYS},
                "depth": aig.depth(),
            }
            save_circuit(out / CIRCUITS_DIR / f"{cid}.safetensors", aig, record, tokens)
            manifest["records"].append(record)
            if recipe is None:
                report.designs += 1
            else:
                report.variants += 1
        info["designs_done"].append(rec["id"])

    def recipes_of(rec: dict[str, Any]) -> list[str]:
        rng = random.Random(zlib.crc32(f"{seed}:{rec['id']}".encode()))
        return [random_recipe(rng) for _ in range(variants)]

    by_id = {r["id"]: r for r in todo}
    ticker = _Ticker("recipe variants", len(todo), progress)
    last_write = time.perf_counter()

    def finish(base_id: str, results: list[tuple[str, AIG]] | None, error: str | None) -> None:
        nonlocal last_write
        if results is None:
            report.failed.append((base_id, error or "failed"))
        else:
            store(by_id[base_id], results)
            if on_design is not None:
                on_design(base_id)
        ticker.advance(f", {len(manifest['records'])} AIGs")
        if time.perf_counter() - last_write > 2.0:
            write_manifest(out, manifest)
            last_write = time.perf_counter()

    def job_args(rec: dict[str, Any]) -> tuple[str, str, list[str], float]:
        return (
            str(base_root / CIRCUITS_DIR / f"{rec['id']}.safetensors"),
            rec["id"],
            recipes_of(rec),
            timeout,
        )

    try:
        if workers <= 1 or len(todo) <= 1:
            for rec in todo:
                finish(*_variant_job(*job_args(rec)))
        else:
            queue = list(reversed(todo))
            with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("forkserver")) as pool:
                futures: set = set()
                try:
                    while queue or futures:
                        while queue and len(futures) < 2 * workers:
                            futures.add(pool.submit(_variant_job, *job_args(queue.pop())))
                        finished, futures = wait(futures, return_when=FIRST_COMPLETED)
                        for fut in finished:
                            finish(*fut.result())
                except BaseException:
                    for fut in futures:
                        fut.cancel()
                    pool.shutdown(wait=False, cancel_futures=True)
                    raise
    finally:
        ticker.close()
        write_manifest(out, manifest)
    # totals of the corpus (a resumed build reports everything, not only what this call added)
    report.designs = sum(r["recipe"] is None for r in manifest["records"])
    report.variants = len(manifest["records"]) - report.designs
    report.duplicates = info["duplicates"]
    report.seconds = time.perf_counter() - start
    return report
