"""Build the processed dataset from any mix of circuit files and folders — in parallel, resumable, fault-tolerant.

Sources are ``.v``/``.sv`` (synthesized by Yosys through ``circuitml.verilog.verilog_to_aig``), ``.aig``/``.aag``
(AIGER) and ``.bench`` (ISCAS) files, or folders searched recursively for them.

How Verilog files become designs:

* every Verilog file is its own design, **unless** files of one folder instantiate each other's modules: then
  the connected files form one design (an OpenABC-style RTL folder: ``i2c_master_top.v`` instantiating
  ``i2c_master_byte_ctrl`` from its sibling file becomes one ``i2c_master_top`` design);
* files that define no module (``timescale.v``, ``*_defines.v``) are not designs: Yosys finds them through
  ```include`` next to the including file; they join the hash and the Verilog copy of designs of their folder
  that include something;
* the top module is the one no other module of the design instantiates; ``top=`` / ``--top`` picks it where
  that is ambiguous (it applies to every design that defines a module of that name).

The family of a circuit is the name of the nearest folder holding it that is not a generic storage name
(``bench``, ``verilog``, ``src``, ``rtl``, ``benchmarks``...): ``rtl/adder_rc/x.v`` → ``adder_rc``,
``iscas85/bench/c17.bench`` → ``iscas85``; ``family=`` / ``--family`` overrides it.

Resuming: a source whose SHA-256 is already in the manifest (with its circuit file present) is skipped, and the
manifest is rewritten atomically as items finish, so an interrupted build loses at most the items in flight.
A file that fails is reported with a one-line reason and skipped; it is retried on the next run.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
import warnings
from collections.abc import Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from fnmatch import fnmatch
from multiprocessing import get_context
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from circuitml.errors import CircuitFormatError, DatasetError
from circuitml.fileio import check_input, file_kind, read_input_text

from .format import (
    CIRCUITS_DIR,
    MANIFEST,
    VERILOG_DIR,
    atomic_write,
    empty_manifest,
    read_manifest,
    save_circuit,
    token_vocab_id,
    write_manifest,
)

__all__ = ["SourceItem", "BuildReport", "discover_sources", "build_dataset", "build_item"]

VERILOG_SUFFIXES = (".v", ".sv")
AIGER_SUFFIXES = (".aig", ".aag")
BENCH_SUFFIXES = (".bench",)
CIRCUIT_SUFFIXES = VERILOG_SUFFIXES + AIGER_SUFFIXES + BENCH_SUFFIXES
_MANIFEST_EVERY_S = 0.25  # rewrite the manifest at most this often (and always at the end / on interrupt)


@dataclass(frozen=True)
class SourceItem:
    """One design to build: its file(s), kind, family, top module and content hash."""

    paths: tuple[Path, ...]
    kind: str  # "verilog" | "aiger" | "bench"
    family: str
    stem: str
    sha256: str
    top: str | None = None
    include_files: tuple[Path, ...] = ()

    @property
    def source(self) -> str:
        return str(self.paths[-1]) if len(self.paths) == 1 else str(self.paths[0].parent)


@dataclass
class BuildReport:
    """What a build did: counts, the failures (source, one-line reason) and the wall time."""

    out: Path
    total: int = 0
    built: int = 0
    skipped: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    records: int = 0  # records in the manifest after the build
    aliased: int = 0  # records of files whose content another record already stores
    ignored: list[tuple[str, str]] = field(default_factory=list)  # left out on purpose, with the reason
    warnings: list[tuple[str, str]] = field(default_factory=list)  # (source, Yosys warning) of built circuits

    def summary(self) -> str:
        alias = f", {self.aliased} identical to another source (aliased)" if self.aliased else ""
        return (
            f"{self.built} built{alias}, {self.skipped} already present, {len(self.failed)} failed "
            f"of {self.total} sources in {self.seconds:.1f} s; {self.records} circuits in {self.out}"
        )


# ---------------------------------------------------------------------------------------------- discovery
_COMMENTS = re.compile(r"//[^\n]*|/\*.*?\*/", re.S)
_MODULE = re.compile(r"\b(?:module|macromodule)\s+(\w+)")
_WORD_THEN_INSTANCE = re.compile(r"\b(\w+)\s*(?:#\s*\(|\w+\s*(?:\[[^\]]*\]\s*)?\()")
_MODULE_BODY = re.compile(r"\b(?:module|macromodule)\s+(\w+)(.*?)\bendmodule\b", re.S)
_INCLUDE = re.compile(r"`include\b")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _sha256_design(paths: Sequence[Path], top: str | None) -> str:
    if len(paths) == 1 and top is None:
        return _sha256_file(paths[0])
    h = hashlib.sha256()
    for p in paths:
        h.update(p.name.encode() + b"\0" + _sha256_file(p).encode() + b"\n")
    if top is not None:
        h.update(b"top=" + top.encode())
    return h.hexdigest()


# folder names that say how files are stored rather than what circuit family they hold
_GENERIC_FOLDERS = {
    "bench",
    "verilog",
    "v",
    "sv",
    "aig",
    "aag",
    "aiger",
    "src",
    "rtl",
    "benchmarks",
    "circuits",
    "data",
    "experiments",
    "designs",
    "sources",
}


def _family_of(path: Path) -> str:
    for folder in path.resolve().parents:
        if folder.name and folder.name.lower() not in _GENERIC_FOLDERS:
            return folder.name
    return "circuits"


def _verilog_groups(files: list[Path], top: str | None) -> list[tuple[list[Path], list[Path], str | None]]:
    """Split the Verilog files of one folder into designs: ``(files, include_files, top)`` each."""
    defines: dict[Path, set[str]] = {}
    texts: dict[Path, str] = {}
    for f in files:
        try:
            texts[f] = _COMMENTS.sub(" ", read_input_text(f, what="Verilog file"))
        except (OSError, CircuitFormatError):
            texts[f] = ""
        defines[f] = set(_MODULE.findall(texts[f]))
    owners: dict[str, list[Path]] = {}
    for f in files:
        for m in defines[f]:
            owners.setdefault(m, []).append(f)
    parent = {f: f for f in files}

    def find(f: Path) -> Path:
        while parent[f] != f:
            parent[f] = parent[parent[f]]
            f = parent[f]
        return f

    instantiated: set[str] = set()
    for f in files:
        for module, body in _MODULE_BODY.findall(texts[f]):
            for word in _WORD_THEN_INSTANCE.findall(body):
                if word == module or word not in owners:
                    continue
                instantiated.add(word)
                if word in defines[f]:
                    # a file that defines what it instantiates is self-contained (ISCAS89's Verilog: every file
                    # carries its own `dff`), even when other files of the folder define a module of that name
                    continue
                if len(owners[word]) == 1:  # defined in exactly one other file: one design with it
                    parent[find(f)] = find(owners[word][0])
                # Defined in several other files: which one is meant is ambiguous, so the file stays alone and
                # its build names the missing module, rather than this picking one or merging them all.
    support = [f for f in files if not defines[f]]
    groups: dict[Path, list[Path]] = {}
    for f in files:
        if defines[f]:
            groups.setdefault(find(f), []).append(f)
    out = []
    for members in groups.values():
        members.sort()
        mods = set().union(*(defines[f] for f in members))
        if top is not None and top in mods:
            chosen: str | None = top
        else:
            roots = sorted(mods - instantiated)
            chosen = roots[0] if len(roots) == 1 else None
        needs_includes = len(members) > 1 or any(_INCLUDE.search(texts[f]) for f in members)
        out.append((members, support if needs_includes else [], chosen))
    return out


_PORTLESS_HEADER = re.compile(
    r"\b(?:module|macromodule)\s+(\w+)\s*(?:#\s*\((?:[^()]|\([^()]*\))*\)\s*)?(?:\(\s*\))?\s*;"
)
_SIMULATION_ONLY = re.compile(r"\$finish\b|\$stop\b|\binitial\b")


def _is_testbench(path: Path) -> bool:
    """A file that runs a simulation (``$finish``/``$stop``/``initial``) from port-less top modules.

    "Top" means not instantiated by another module of the same file: real testbenches often carry helper
    modules with ports (VerilogEval's ``stimulus_gen``) that only the port-less ``tb`` instantiates.
    """
    try:
        text = _COMMENTS.sub(" ", read_input_text(path, what="Verilog file"))
    except (OSError, CircuitFormatError):
        return False
    bodies = _MODULE_BODY.findall(text)
    if not bodies or _SIMULATION_ONLY.search(text) is None:
        return False
    names = {name for name, _ in bodies}
    used = {w for name, body in bodies for w in _WORD_THEN_INSTANCE.findall(body) if w in names and w != name}
    tops = names - used
    return bool(tops) and tops <= set(_PORTLESS_HEADER.findall(text))


def _readable(path: Path, problems: list[tuple[str, str]]) -> bool:
    """Whether ``path`` may be read whole; if not (a FIFO or device, too large, gone), the reason goes to
    ``problems``, before the grouping, hashing and testbench checks that read every file."""
    try:
        check_input(path)
    except CircuitFormatError as exc:
        problems.append((str(path), f"expected {exc.expected}, got {exc.got}"))
        return False
    except OSError as exc:
        problems.append((str(path), f"cannot read ({(exc.strerror or str(exc)).lower()})"))
        return False
    return True


def _excluded(rel: PurePosixPath, globs: Sequence[str]) -> str | None:
    """The first glob that matches the path (relative to its source folder), its name, or a folder on the way."""
    for g in globs:
        if fnmatch(rel.as_posix(), g) or any(fnmatch(part, g) for part in rel.parts):
            return g
    return None


def _real(path: Path) -> Path:
    """``path`` with every symlink resolved; a symlink loop resolves as far as it goes (``Path.resolve`` raises
    ``RuntimeError`` on one before Python 3.13)."""
    return Path(os.path.realpath(path))


def _walk_circuit_files(
    root: Path, follow_symlinks: bool, ignored: list[tuple[str, str]], broken: list[tuple[str, str]]
) -> list[Path]:
    """Circuit files under ``root``; symlinks leaving ``root`` are ignored (with a reason that names the link,
    never its target) unless ``follow_symlinks``; folder symlink loops are walked once. Circuit-named symlinks
    that lead nowhere (dangling, or a loop) go to ``broken`` as ``(path, reason)``."""
    real_root = _real(root)
    found: list[Path] = []
    seen: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=follow_symlinks):
        folder = Path(dirpath)
        real = _real(folder)
        if real in seen:  # a link back to a folder already walked
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames.sort()
        if not follow_symlinks:
            for name in dirnames:
                link = folder / name
                if link.is_symlink() and not _real(link).is_relative_to(real_root):
                    ignored.append(
                        (str(link), f"symlink to a folder outside {root}, not followed (--follow-symlinks)")
                    )
        for name in sorted(filenames):
            path = folder / name
            if path.suffix.lower() not in CIRCUIT_SUFFIXES:
                if name.lower().endswith(tuple(f"{s}.gz" for s in CIRCUIT_SUFFIXES)):
                    ignored.append((str(path), "gzip-compressed, not read (gunzip it first)"))
                continue
            if not follow_symlinks and path.is_symlink() and not _real(path).is_relative_to(real_root):
                ignored.append((str(path), f"symlink to a file outside {root}, not read (--follow-symlinks)"))
                continue
            if path.is_file():
                found.append(path)
            elif path.is_symlink() and not path.exists():
                loop = _real(path).is_symlink()  # realpath stops inside a loop, at a link
                broken.append((str(path), "symlink loop, not read" if loop else "dangling symlink, not read"))
            elif path.exists() and not path.is_dir():  # a FIFO, device or socket named like a circuit
                ignored.append((str(path), f"{file_kind(path.stat().st_mode)}, not read"))
    return sorted(found)


def discover_sources(
    sources: Iterable[str | os.PathLike],
    *,
    top: str | None = None,
    family: str | None = None,
    exclude: Iterable[str | os.PathLike] = (),
    exclude_globs: Iterable[str] = (),
    follow_symlinks: bool = False,
    ignored: list[tuple[str, str]] | None = None,
) -> tuple[list[SourceItem], list[tuple[str, str]]]:
    """Expand files and folders into designs. Returns ``(items, problems)``; a problem is ``(path, reason)``.

    Files under the folders in ``exclude`` are ignored (the ``verilog/`` copies of the dataset being built,
    which would otherwise be read back as sources). Files that are left out on purpose go to ``ignored`` as
    ``(path, reason)`` rather than to the problems: those matching a glob of ``exclude_globs`` (against the path
    relative to the given folder, the file name or a folder name), Verilog testbenches (no ports, only
    simulation code), and symlinks in a folder that point outside it (unless ``follow_symlinks``).
    """
    skip = [_real(Path(e)) for e in exclude]
    globs = list(exclude_globs)
    ignored = [] if ignored is None else ignored
    items: list[SourceItem] = []
    problems: list[tuple[str, str]] = []
    seen: set[Path] = set()
    for src in sources:
        root = Path(src)
        if root.is_dir():
            before = len(ignored)
            files = _walk_circuit_files(root, follow_symlinks, ignored, problems)
            if globs:
                kept = []
                for f in files:
                    g = _excluded(PurePosixPath(f.relative_to(root).as_posix()), globs)
                    if g is None:
                        kept.append(f)
                    else:
                        ignored.append((str(f), f"excluded by --exclude {g}"))
                files = kept
            if not files and len(ignored) == before:
                problems.append(
                    (str(root), f"no circuit files ({', '.join(CIRCUIT_SUFFIXES)}) in this folder")
                )
        elif root.exists() or root.is_symlink():  # a FIFO, a device or a broken link is named by _readable
            if root.suffix.lower() not in CIRCUIT_SUFFIXES:
                problems.append(
                    (str(root), f"expected a file ending in one of {', '.join(CIRCUIT_SUFFIXES)}")
                )
                continue
            files = [root]
        else:
            problems.append((str(root), "no such file or folder"))
            continue
        files = [f for f in files if _real(f) not in seen]
        if skip:
            files = [f for f in files if not any(_real(f).is_relative_to(d) for d in skip)]
        seen.update(_real(f) for f in files)
        files = [f for f in files if _readable(f, problems)]
        by_folder: dict[Path, list[Path]] = {}
        for f in files:
            suffix = f.suffix.lower()
            if suffix in VERILOG_SUFFIXES:
                if _is_testbench(f):
                    ignored.append((str(f), "testbench (no ports; $finish/initial only), not a design"))
                else:
                    by_folder.setdefault(f.parent, []).append(f)
                continue
            kind = "aiger" if suffix in AIGER_SUFFIXES else "bench"
            try:
                sha = _sha256_design([f], None)
            except OSError as exc:
                problems.append((str(f), f"cannot read ({exc.strerror or exc})"))
                continue
            items.append(SourceItem((f,), kind, family or _family_of(f), f.stem, sha))
        for folder_files in by_folder.values():
            for members, includes, chosen in _verilog_groups(folder_files, top):
                try:
                    sha = _sha256_design(includes + members, chosen if len(members) > 1 or top else None)
                except OSError as exc:
                    problems.append((str(members[0]), f"cannot read ({exc.strerror or exc})"))
                    continue
                stem = chosen if len(members) > 1 and chosen else members[0].stem
                items.append(
                    SourceItem(
                        tuple(members),
                        "verilog",
                        family or _family_of(members[0]),
                        stem,
                        sha,
                        top=chosen,
                        include_files=tuple(includes),
                    )
                )
    return items, problems


# ---------------------------------------------------------------------------------------------- one item
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def _safe_id(text: str) -> str:
    return _SAFE.sub("_", text).strip("._") or "circuit"


def _verilog_text(item: SourceItem) -> str:
    parts = []
    for p in item.include_files + item.paths:
        text = read_input_text(p, what="Verilog file")
        if len(item.include_files) + len(item.paths) > 1:
            text = f"// ---- file: {p.name}\n{text}"
        parts.append(text if text.endswith("\n") else text + "\n")
    return "".join(parts)


def build_item(
    item: SourceItem,
    circuit_id: str,
    out: str | os.PathLike,
    timeout: float = 300.0,
    latch_error: bool = False,
    synthesized: tuple[Any, list[str]] | None = None,
) -> dict[str, Any]:
    """Read/synthesize one design and write its circuit file (and Verilog copy); returns its record.

    Yosys' meaning-changing warnings (latches inferred, undriven nets set to 0, multiple drivers) are kept
    in the record's ``warnings`` list. ``synthesized`` is ``(AIG or the error it raised, warnings)`` of a
    Verilog design already run through Yosys with others of its batch. Runs inside worker processes; raises
    whatever the readers raise.
    """
    from circuitml.formats import read_circuit

    out = Path(out)
    tokens = None
    verilog_rel = None
    notes: list[str] = []
    if item.kind == "verilog":
        from circuitml.verilog import SynthesisWarning, encode_tokens, tokenize_verilog, verilog_to_aig

        if synthesized is not None:
            aig, notes = synthesized
            if isinstance(aig, BaseException):
                raise aig
        else:
            # include files are found by Yosys next to the including file; they only join the hash and the copy
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", SynthesisWarning)
                aig = verilog_to_aig(list(item.paths), top=item.top, timeout=timeout, latch_error=latch_error)
            notes = [str(w.message) for w in caught if issubclass(w.category, SynthesisWarning)]
        text = _verilog_text(item)
        tokens = np.asarray(encode_tokens(tokenize_verilog(text)), dtype=np.int32)
        verilog_rel = f"{VERILOG_DIR}/{circuit_id}.v"
    else:
        aig = read_circuit(item.paths[0])
    aig.validate()
    record: dict[str, Any] = {
        "id": circuit_id,
        "family": item.family,
        "name": aig.name or item.stem,
        "source": item.source,
        "sources": [str(p) for p in item.include_files + item.paths],
        "sha256": item.sha256,
        "format": item.kind,
        "top": item.top,
        "verilog": verilog_rel,
        "num_pis": aig.num_pis,
        "num_pos": aig.num_pos,
        "num_inputs": aig.num_inputs,
        "num_outputs": aig.num_outputs,
        "num_latches": aig.num_latches,
        "num_ands": aig.num_ands,
        "depth": aig.depth(),
        "num_tokens": None if tokens is None else int(tokens.shape[0]),
        "token_vocab": None if tokens is None else token_vocab_id(),
        "warnings": notes,
    }
    if verilog_rel is not None:
        atomic_write(out / verilog_rel, text)
    save_circuit(out / CIRCUITS_DIR / f"{circuit_id}.safetensors", aig, record, tokens)
    return record


def _worker(
    item: SourceItem,
    circuit_id: str,
    out: str,
    timeout: float,
    latch_error: bool = False,
    synthesized: tuple[Any, list[str]] | None = None,
) -> tuple[dict[str, Any] | None, str | None]:
    """One item; never raises, so exception classes need not survive pickling."""
    try:
        return build_item(item, circuit_id, out, timeout, latch_error, synthesized), None
    except Exception as exc:  # report any failure of one file and go on with the others
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        if not first.startswith(str(item.paths[0])) and item.source not in first:
            first = f"{item.source}: {first}"
        return None, _clip(first, 400)


def _clip(text: str, limit: int) -> str:
    """At most ``limit`` characters, keeping the start and the end: a multi-file design's message begins with its
    file list and ends with Yosys' reason, which a plain cut would lose."""
    if len(text) <= limit:
        return text
    head = limit // 3
    return f"{text[:head]} … {text[-(limit - head - 3) :]}"


# ---------------------------------------------------------------------------------------------- driver
Job = tuple[SourceItem, str]
Result = tuple[dict[str, Any] | None, str | None]
_VERILOG_BATCH = 8  # Verilog designs per Yosys process (its ~0.3 s start paid once per batch)


def _worker_batch(batch: list[Job], out: str, timeout: float, latch_error: bool) -> list[Result]:
    """Process-pool entry: a batch of items; its Verilog designs share one Yosys process
    (:func:`circuitml.verilog.verilog_to_aig_many`, whose results do not depend on batch neighbours)."""
    synthesized: dict[int, tuple[Any, list[str]]] = {}
    verilog = [(k, it) for k, (it, _) in enumerate(batch) if it.kind == "verilog"]
    if len(verilog) > 1:
        from circuitml.verilog import SynthesisWarning, verilog_to_aig_many

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", SynthesisWarning)
            results = verilog_to_aig_many(
                [(list(it.paths), it.top) for _, it in verilog],
                timeout=timeout,
                latch_error=latch_error,
                batch_size=len(verilog),
            )
        notes = [str(w.message) for w in caught if issubclass(w.category, SynthesisWarning)]
        for (k, it), res in zip(verilog, results, strict=True):
            # a batch never holds two designs of one name (see _batches), so the prefix is unambiguous
            prefix = _design_name(it) + ": "
            synthesized[k] = (res, [n for n in notes if n.startswith(prefix)])
    return [
        _worker(it, cid, out, timeout, latch_error, synthesized.get(k)) for k, (it, cid) in enumerate(batch)
    ]


def _design_name(item: SourceItem) -> str:
    return ", ".join(p.name for p in item.paths)  # how verilog_to_aig names a design in its messages


def _batches(jobs: list[Job], workers: int) -> list[list[Job]]:
    """Verilog items in batches (small enough that every worker gets several), the others one by one."""
    verilog = [j for j in jobs if j[0].kind == "verilog"]
    size = max(1, min(_VERILOG_BATCH, -(-len(verilog) // max(1, 2 * workers))))
    batches: list[list[Job]] = []
    current: list[Job] = []
    names: set[str] = set()
    for job in verilog:
        name = _design_name(job[0])
        if len(current) >= size or name in names:
            batches.append(current)
            current, names = [], set()
        current.append(job)
        names.add(name)
    if current:
        batches.append(current)
    return batches + [[j] for j in jobs if j[0].kind != "verilog"]


def _run_parallel(
    jobs: list[list[Job]], workers: int, out: str, timeout: float, latch_error: bool, done
) -> list[list[Job]]:
    """Run batches of jobs in a process pool, calling ``done(job, result)`` for each job as its batch finishes.

    A pool whose worker dies (out of memory, killed) reports its in-flight items as failed and a fresh pool
    takes the rest. Returns the jobs left when a fresh pool cannot finish a single item (worker processes do
    not work in this environment, e.g. a ``__main__`` read from stdin): the caller runs those in-process.
    """
    queue = list(reversed(jobs))
    while queue:
        completed = 0
        broken = False
        futures: dict[Future, list[Job]] = {}
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("forkserver")) as pool:
            try:
                while (queue or futures) and not broken:
                    # at most 2 * workers items in flight, so an interrupt has little to cancel
                    while queue and len(futures) < 2 * workers:
                        job = queue.pop()
                        try:
                            futures[pool.submit(_worker_batch, job, out, timeout, latch_error)] = job
                        except BrokenProcessPool:
                            queue.append(job)
                            broken = True
                            break
                    if not futures:
                        break
                    finished, _ = wait(futures, return_when=FIRST_COMPLETED)
                    for fut in finished:
                        job = futures.pop(fut)
                        try:
                            result = fut.result()
                        except BrokenProcessPool:
                            broken = True
                            futures[fut] = job  # handled with the other in-flight jobs below
                            continue
                        completed += 1
                        for one, res in zip(job, result, strict=True):
                            done(one, res)
                if broken:
                    for job in futures.values():
                        if completed == 0:
                            queue.append(job)
                        else:
                            for one in job:
                                done(one, (None, f"{one[0].source}: worker process died (out of memory?)"))
                    futures.clear()
            except BaseException:
                for fut in futures:
                    fut.cancel()
                pool.shutdown(wait=False, cancel_futures=True)
                raise
        if broken and completed == 0:
            return list(reversed(queue))
    return []


def _id_candidates(it: SourceItem) -> list[str]:
    """Ids from short to specific: ``adder``, ``adder_aig``, ``arith__adder_aig``."""
    suffix = it.paths[-1].suffix.lstrip(".").lower()
    return [_safe_id(c) for c in (it.stem, f"{it.stem}_{suffix}", f"{it.family}__{it.stem}_{suffix}")]


def _assign_ids(items: list[SourceItem], manifest: dict[str, Any]) -> list[str]:
    """The shortest id that no other item of this build and no existing record uses.

    Computed over *all* discovered items, not only the ones still to build, and an item already in the manifest
    (same source, same content) keeps its id: so a build resumed after an interrupt gives every circuit the id a
    clean build gives it."""
    existing = {(rec["source"], rec["sha256"]): rec["id"] for rec in manifest["records"]}
    used = {rec["id"] for rec in manifest["records"]}
    counts: dict[str, int] = {}
    for it in items:
        for c in _id_candidates(it):
            counts[c] = counts.get(c, 0) + 1
    ids = []
    for it in items:
        known = existing.get((it.source, it.sha256))
        if known is not None:
            ids.append(known)
            continue
        candidates = _id_candidates(it)
        chosen = next((c for c in candidates if counts[c] == 1 and c not in used), None)
        if chosen is None:
            chosen = base = f"{candidates[-1]}-{it.sha256[:8]}"
            n = 2
            while chosen in used:  # identical files under one family and name
                chosen, n = f"{base}-{n}", n + 1
        used.add(chosen)
        ids.append(chosen)
    return ids


def _load_or_create(out: Path) -> dict[str, Any]:
    if (out / MANIFEST).exists():
        return read_manifest(out)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out}: expected a dataset folder, got a file")
    return empty_manifest()


def build_dataset(
    sources: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    workers: int = 2,
    *,
    top: str | None = None,
    family: str | None = None,
    timeout: float = 300.0,
    progress: bool = True,
    exclude: Iterable[str] = (),
    follow_symlinks: bool = False,
    strict: bool = False,
    latch_error: bool = False,
) -> BuildReport:
    """Turn circuit files and folders into the on-disk dataset at ``out`` (see the module docstring).

    The whole read-modify-write of the manifest holds the folder's lock (:func:`circuitml.locking.folder_lock`),
    so builds into one folder take turns and none loses the other's records.

    Args:
        sources: files and/or folders (searched recursively).
        out: dataset folder; an existing dataset there is extended (already-built sources are skipped).
        workers: worker processes (``<= 1`` builds in this process).
        top: top module for Verilog designs where it is ambiguous.
        family: family name for every circuit (default: derived from the folders).
        timeout: seconds allowed per Yosys run.
        progress: show a rich progress bar and print failures as they happen.
        exclude: globs of files or folders to leave out (see :func:`discover_sources`).
        follow_symlinks: read symlinks in source folders that point outside them.
        strict: stop at the first source that fails, with a :class:`DatasetError` naming it (what finished
            before stays in the dataset).
        latch_error: a Verilog design in which Yosys infers a latch fails instead of building with a warning.

    Returns:
        A :class:`BuildReport`; failures are listed there, never raised (unless ``strict``).

    Raises:
        DatasetError: ``out`` holds a corrupted manifest or is not a folder; with ``strict``, a failed source.
    """
    from circuitml.locking import folder_lock
    from circuitml.yosys import check_timeout

    # up front: a resumed build with nothing left to do never starts a child to check it
    check_timeout(timeout)
    start = time.perf_counter()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DatasetError(f"{out}: expected a dataset folder, got a file")
    console = None
    if progress:
        from rich.console import Console

        console = Console(stderr=True)

    def waiting() -> None:
        if console is not None:
            console.print(f"waiting for another command writing {out} to finish", highlight=False)

    settings = _Settings(workers, top, family, timeout, tuple(exclude), follow_symlinks, strict, latch_error)
    with folder_lock(out, on_wait=waiting):
        return _build_locked(sources, out, settings, console, start)


@dataclass(frozen=True)
class _Settings:
    """The options of one :func:`build_dataset` call."""

    workers: int
    top: str | None
    family: str | None
    timeout: float
    exclude: tuple[str, ...]
    follow_symlinks: bool
    strict: bool
    latch_error: bool


def _stored_id(rec: dict[str, Any]) -> str:
    return rec.get("alias_of") or rec["id"]


def _content_key(kind: str | None, sha256: str) -> tuple[str | None, str]:
    """What makes two sources one circuit: the same bytes read by the same reader (an empty ``.bench`` and an
    empty ``.aig`` share a hash, not a circuit or an error)."""
    return kind, sha256


def _own_reason(error: str, failed: SourceItem, item: SourceItem) -> str:
    """``failed``'s one-line error as the reader gives it for ``item``, whose bytes and reader are the same."""
    for old, new in ((str(failed.paths[0]), str(item.paths[0])), (failed.source, item.source)):
        error = error.replace(old, new)
    return error


def _build_locked(sources, out: Path, settings: _Settings, console, start: float) -> BuildReport:
    workers, timeout, strict, latch_error = (
        settings.workers,
        settings.timeout,
        settings.strict,
        settings.latch_error,
    )
    manifest = _load_or_create(out)
    (out / CIRCUITS_DIR).mkdir(parents=True, exist_ok=True)
    for folder in (CIRCUITS_DIR, VERILOG_DIR):
        # temporary files of writes that a killed worker never finished
        for stray in (out / folder).glob(".*.tmp"):
            stray.unlink(missing_ok=True)
    ignored: list[tuple[str, str]] = []
    items, problems = discover_sources(
        sources,
        top=settings.top,
        family=settings.family,
        exclude=[out / VERILOG_DIR, out / CIRCUITS_DIR],
        exclude_globs=settings.exclude,
        follow_symlinks=settings.follow_symlinks,
        ignored=ignored,
    )
    report = BuildReport(out=out, total=len(items) + len(problems), failed=list(problems), ignored=ignored)
    if strict and problems:
        raise DatasetError(f"{problems[0][0]}: {problems[0][1]} (--strict)")

    # records whose circuit file vanished are rebuilt (an alias goes with the circuit it points to)
    manifest["records"] = [
        rec
        for rec in manifest["records"]
        if (out / CIRCUITS_DIR / f"{_stored_id(rec)}.safetensors").is_file()
    ]
    present = {(rec["source"], rec["sha256"]) for rec in manifest["records"]}
    stored = {
        _content_key(rec.get("format"), rec["sha256"]): rec
        for rec in manifest["records"]
        if not rec.get("alias_of")
    }
    ids = _assign_ids(items, manifest)
    pending: list[Job] = []
    aliases: list[Job] = []
    building: set[tuple[str | None, str]] = set()
    for it, cid in zip(items, ids, strict=True):
        key = _content_key(it.kind, it.sha256)
        if (it.source, it.sha256) in present:
            report.skipped += 1
        elif key in stored or key in building:
            aliases.append((it, cid))  # identical content: a record of its own, one stored circuit
        else:
            building.add(key)
            pending.append((it, cid))
    retried = {it.source for it, _ in pending + aliases}
    manifest["failures"] = [f for f in manifest.get("failures", []) if f.get("source") not in retried]

    if console is not None:
        for src, reason in problems:
            console.print(f"[yellow]skipped[/] {src}: {reason}", highlight=False, soft_wrap=True)

    last_write = 0.0
    failed_first: dict[
        tuple[str | None, str], tuple[SourceItem, str]
    ] = {}  # key -> the item that failed, why

    def finish(item: SourceItem, result: tuple[dict[str, Any] | None, str | None]) -> None:
        nonlocal last_write
        record, error = result
        if record is not None:
            manifest["records"].append(record)
            stored.setdefault(_content_key(item.kind, item.sha256), record)
            report.built += 1
            report.warnings += [(item.source, w) for w in record.get("warnings", [])]
        else:
            failed_first.setdefault(_content_key(item.kind, item.sha256), (item, error or "failed"))
            report.failed.append((item.source, error or "failed"))
            manifest["failures"].append({"source": item.source, "reason": error})
            if console is not None:
                console.print(f"[yellow]skipped[/] {error}", highlight=False, soft_wrap=True)
            if strict:
                raise DatasetError(f"{error} (--strict)")
        now = time.perf_counter()
        if now - last_write >= _MANIFEST_EVERY_S:
            write_manifest(out, manifest)
            last_write = now

    bar = None
    task = None
    if console is not None and pending:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        bar = Progress(
            TextColumn("[bold]building[/]"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=console,
            transient=False,
        )
        bar.start()
        task = bar.add_task("build", total=len(pending))
    try:
        if workers <= 1 or len(pending) <= 1:
            for batch in _batches(pending, 1):
                for (it, _), result in zip(
                    batch, _worker_batch(batch, str(out), timeout, latch_error), strict=True
                ):
                    finish(it, result)
                    if bar is not None:
                        bar.advance(task)
        else:

            def done(job: tuple[SourceItem, str], result: tuple[dict[str, Any] | None, str | None]) -> None:
                finish(job[0], result)
                if bar is not None:
                    bar.advance(task)

            leftover = _run_parallel(
                _batches(pending, workers), workers, str(out), timeout, latch_error, done
            )
            if leftover and console is not None:
                console.print("[yellow]worker processes unavailable here; building in this process[/]")
            for batch in leftover:
                for job, result in zip(
                    batch, _worker_batch(batch, str(out), timeout, latch_error), strict=True
                ):
                    done(job, result)
        for it, cid in aliases:
            original = stored.get(_content_key(it.kind, it.sha256))
            if original is None:
                failed, error = failed_first[_content_key(it.kind, it.sha256)]
                finish(it, (None, _own_reason(error, failed, it)))
                continue
            record = dict(original)
            record.update(
                id=cid,
                family=it.family,
                source=it.source,
                sources=[str(p) for p in it.include_files + it.paths],
                alias_of=original["id"],
            )
            manifest["records"].append(record)
            report.aliased += 1
    finally:
        if bar is not None:
            bar.stop()
        write_manifest(out, manifest)
    report.records = len(manifest["records"])
    report.seconds = time.perf_counter() - start
    return report
