"""Readers for the published OpenABC-D data (Chowdhury et al., 2021), without unpickling anything.

What OpenABC-D ships and what is read here:

* ``openabc_recipes.csv`` (``synth_id, recipe_abc, synthID2Vec``): the 1,500 recipes — :func:`read_recipes_csv`
  (both columns are parsed and must agree).
* ``referenceScripts.zip`` (``referenceScripts/abcN.script``): the same recipes as ABC scripts —
  :func:`read_reference_scripts` keeps the 20 steps between the first ``write_bench`` and ``dch``.
* ``statistics/finalAig/processed_<design>.csv`` (one row per synthesis id: BUFF/NOT edges, AND nodes, PI, PO,
  longest path ``LP``) and ``statistics/adp/adp_<design>.csv`` (``sid, area, delay``): the labels —
  :func:`load_openabc` turns them into a :class:`~circuitml.datasets.qor.QoRLabels` table with metrics
  ``ands``, ``depth`` (= ``LP``), ``nots`` and, when the adp file exists, ``area`` and ``delay``. Their
  ``collectGraphStatistics.py`` writes a six-name header (``desName,NOT,AND,PI,PO,LP``) above seven-value rows
  (``sid,BUFF,NOT,AND,PI,PO,LP``); that exact shape is recognized and read by position.
* ``bench_openabcd/<design>_orig.bench``: the unoptimized AIGs, read with :func:`circuitml.formats.read_bench`.
* NOT read: ``processed/*.pt`` graph files and ``synthesisStatistics.pickle`` — they are Python pickles, which
  can run arbitrary code when loaded; rebuild graphs from the ``.bench`` files instead (the same AIGs).
"""

from __future__ import annotations

import csv
import os
import re
import zipfile
import zlib
from pathlib import Path

import numpy as np
from circuitml.datasets.qor import STEPS, QoRLabels, parse_recipe

from circuitml.errors import DatasetError

__all__ = ["read_recipes_csv", "read_reference_scripts", "read_openabc_stats", "load_openabc"]


# OpenABC-D has 1,500 recipes of 20 steps; the bounds leave room for larger tables while refusing a file that
# would make us allocate per id (``synth_id=1e12``) or unpack a zip bomb.
MAX_SYNTH_ID = 1_000_000
MAX_SCRIPT_BYTES = 1 << 20
MAX_ZIP_MEMBERS = 100_000


def _csv_rows(path: Path):
    """Rows of a UTF-8 CSV file; undecodable bytes and CSV syntax errors are DatasetError."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            yield from csv.reader(fh)
    except UnicodeDecodeError:
        raise DatasetError(f"{path}: expected UTF-8 CSV text, got undecodable bytes") from None
    except csv.Error as exc:
        raise DatasetError(f"{path}: expected CSV ({exc})") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: expected a CSV file, got a directory") from None
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read ({exc.strerror or exc})") from None


def _synth_id(text: str, where: str) -> int:
    if not (text.isascii() and text.isdigit() and len(text) <= 7) or int(text) >= MAX_SYNTH_ID:
        raise DatasetError(
            f"{where}: expected an integer synthesis id in 0..{MAX_SYNTH_ID - 1}, got {text[:30]!r}"
        )
    return int(text)


def read_recipes_csv(path: str | os.PathLike) -> np.ndarray:
    """OpenABC-D's recipe table as ``int8 [R, 20]`` step ids, row ``k`` = ``synth_id`` ``k``."""
    path = Path(path)
    lines = iter(_csv_rows(path))
    header = [h.strip() for h in next(lines, [])]
    if not {"synth_id", "recipe_abc"} <= set(header):
        raise DatasetError(f"{path}:1: expected columns synth_id, recipe_abc[, synthID2Vec]")
    col = {h: header.index(h) for h in ("synth_id", "recipe_abc", "synthID2Vec") if h in header}
    rows: dict[int, np.ndarray] = {}
    for line, row in enumerate(lines, start=2):
        if not row:
            continue
        if len(row) != len(header):
            raise DatasetError(
                f"{path}:{line}: expected {len(header)} columns like the header, got {len(row)}"
            )
        sid = _synth_id(row[col["synth_id"]].strip(), f"{path}:{line}: synth_id")
        steps = parse_recipe(row[col["recipe_abc"]], where=f"{path}:{line}: recipe_abc")
        vec = row[col["synthID2Vec"]] if "synthID2Vec" in col else ""
        if vec.strip():
            parts = vec.split()
            if not all(p.isascii() and p.isdigit() and len(p) <= 3 for p in parts):
                raise DatasetError(f"{path}:{line}: synthID2Vec: expected step codes 0..{len(STEPS) - 1}")
            if [int(p) for p in parts] != steps.tolist():
                raise DatasetError(
                    f"{path}:{line}: synthID2Vec: expected the codes of recipe_abc, got {vec[:60]!r}"
                )
        if sid in rows:
            raise DatasetError(f"{path}:{line}: synth_id: expected unique ids, got {sid} twice")
        rows[sid] = steps
    return _dense(rows, str(path))


def read_reference_scripts(path: str | os.PathLike) -> np.ndarray:
    """The recipes of OpenABC-D's ``referenceScripts.zip`` (``abcN.script`` → row ``N``)."""
    path = Path(path)
    rows: dict[int, np.ndarray] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if len(infos) > MAX_ZIP_MEMBERS:
                raise DatasetError(
                    f"{path}: expected at most {MAX_ZIP_MEMBERS} archive members, got {len(infos)}"
                )
            for info in infos:
                m = re.search(r"abc(\d+)\.script$", info.filename)
                if not m:
                    continue
                # a member name is the archive's bytes, not ours: newlines and control characters are escaped so
                # the error stays one line
                name = info.filename[:80]
                where = f"{path}: {name if name.isprintable() else ascii(name)}"
                if info.file_size > MAX_SCRIPT_BYTES:
                    raise DatasetError(
                        f"{where}: expected a script of at most {MAX_SCRIPT_BYTES} bytes, got {info.file_size}"
                    )
                sid = _synth_id(m.group(1), f"{where}: synthesis id")
                with zf.open(info) as fh:
                    data = fh.read(MAX_SCRIPT_BYTES + 1)  # the header's size may lie
                if len(data) > MAX_SCRIPT_BYTES:
                    raise DatasetError(f"{where}: expected a script of at most {MAX_SCRIPT_BYTES} bytes")
                try:
                    text = data.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise DatasetError(f"{where} (byte {exc.start}): expected UTF-8 text") from None
                lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
                try:
                    start = next(i for i, ln in enumerate(lines) if ln.startswith("write_bench")) + 1
                    stop = next(
                        i for i, ln in enumerate(lines) if i >= start and ln.startswith("write_bench")
                    )
                except StopIteration:
                    raise DatasetError(f"{where}: expected the steps between two write_bench lines") from None
                if sid in rows:
                    raise DatasetError(f"{where}: expected one script per synthesis id, got {sid} twice")
                rows[sid] = parse_recipe(";".join(lines[start:stop]), where=where)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, zlib.error, UnicodeDecodeError) as exc:
        raise DatasetError(f"{path}: expected a zip archive of abcN.script files ({exc})") from None
    except (NotImplementedError, RuntimeError) as exc:  # unsupported compression method, encrypted member
        raise DatasetError(f"{path}: expected a plain zip archive ({exc})") from None
    except IsADirectoryError:
        raise DatasetError(f"{path}: expected a zip archive, got a directory") from None
    except OSError as exc:
        raise DatasetError(f"{path}: expected a readable zip archive ({exc.strerror or exc})") from None
    return _dense(rows, str(path))


def _dense(rows: dict[int, np.ndarray], where: str) -> np.ndarray:
    if not rows:
        raise DatasetError(f"{where}: expected at least one recipe")
    n = max(rows) + 1
    if len(rows) != n:
        present = np.zeros(n, dtype=bool)
        present[list(rows)] = True
        missing = np.flatnonzero(~present)[:5].tolist()
        raise DatasetError(f"{where}: expected synthesis ids 0..{n - 1}, missing {missing}")
    lengths = {len(r) for r in rows.values()}
    if len(lengths) != 1:
        raise DatasetError(f"{where}: expected recipes of one length, got lengths {sorted(lengths)}")
    return np.stack([rows[k] for k in range(n)]).astype(np.int8)


def read_openabc_stats(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """One OpenABC-D statistics CSV (``processed_<d>.csv`` or ``adp_<d>.csv``) as column → array, keyed by
    synthesis id (column ``sid``, sorted)."""
    path = Path(path)
    table = [(line, r) for line, r in enumerate(_csv_rows(path), start=1) if r]
    if not table:
        raise DatasetError(f"{path}:1: expected a header line")
    header = [h.strip() for h in table[0][1]]
    rows = table[1:]
    width = {len(r) for _, r in rows}
    if len(width) > 1:
        raise DatasetError(f"{path}: expected rows of one width, got widths {sorted(width)[:5]}")
    if header == ["desName", "NOT", "AND", "PI", "PO", "LP"] and width == {7}:
        header = ["sid", "BUFF", "NOT", "AND", "PI", "PO", "LP"]  # their writer's header is one name short
    if width and width != {len(header)}:
        raise DatasetError(
            f"{path}:2: expected {len(header)} values per row like the header, got {width.pop()}"
        )
    if "sid" not in header or len(set(header)) != len(header):
        raise DatasetError(
            f"{path}:1: expected distinct column names with a 'sid' column, got {', '.join(header)[:80]!r}"
        )
    cols: dict[str, list[float]] = {h: [] for h in header}
    for line, r in rows:
        for h, v in zip(header, r, strict=True):
            try:
                cols[h].append(float(v))
            except ValueError:
                raise DatasetError(f"{path}:{line}: {h}: expected a number, got {v[:30]!r}") from None
    sid = np.asarray(cols["sid"])
    if sid.size and not (np.isfinite(sid).all() and (sid == np.round(sid)).all() and sid.min() >= 0):
        raise DatasetError(f"{path}: sid: expected non-negative integer synthesis ids")
    if sid.size and sid.max() >= MAX_SYNTH_ID:
        raise DatasetError(f"{path}: sid: expected ids below {MAX_SYNTH_ID}, got {sid.max():.0f}")
    order = np.argsort(sid, kind="stable")
    return {h: np.asarray(v)[order] for h, v in cols.items()}


def load_openabc(
    root: str | os.PathLike,
    recipes: np.ndarray | str | os.PathLike,
    *,
    bench_dir: str | os.PathLike | None = None,
) -> QoRLabels:
    """OpenABC-D labels under ``root`` (searched for ``processed_*.csv`` / ``adp_*.csv``) as a QoR table.

    Args:
        root: the dataset folder (e.g. ``OPENABC_DATASET/statistics``).
        recipes: step ids ``[R, 20]``, or a path to ``openabc_recipes.csv`` / ``referenceScripts.zip``.
        bench_dir: folder with ``<design>_orig.bench`` files, so that ``labels.aig(d)`` works.
    """
    root = Path(root)
    if not isinstance(recipes, np.ndarray):
        p = Path(recipes)
        recipes = read_reference_scripts(p) if p.suffix == ".zip" else read_recipes_csv(p)
    final = {f.name[len("processed_") : -4]: f for f in sorted(root.rglob("processed_*.csv"))}
    adp = {f.name[len("adp_") : -4]: f for f in sorted(root.rglob("adp_*.csv"))}
    if not final:
        raise DatasetError(
            f"{root}: expected OpenABC-D statistics (statistics/finalAig/processed_<design>.csv)"
        )
    design_ids = sorted(final)
    design, recipe = [], []
    values: dict[str, list[np.ndarray]] = {"ands": [], "depth": [], "nots": []}
    with_adp = all(d in adp for d in design_ids)
    if with_adp:
        values["area"], values["delay"] = [], []
    for d, name in enumerate(design_ids):
        st = read_openabc_stats(final[name])
        for col in ("AND", "LP"):
            if col not in st:
                raise DatasetError(f"{final[name]}:1: expected an {col!r} column")
        sid = st["sid"].astype(np.int64)
        if sid.size and (sid.min() < 0 or sid.max() >= len(recipes)):
            raise DatasetError(f"{final[name]}: sid: expected ids below {len(recipes)} (the recipe table)")
        design.append(np.full(sid.size, d))
        recipe.append(sid)
        values["ands"].append(st["AND"])
        values["depth"].append(st["LP"])
        values["nots"].append(st.get("NOT", np.full(sid.size, np.nan)))
        if with_adp:
            ad = read_openabc_stats(adp[name])
            lookup = dict(zip(ad["sid"].astype(np.int64).tolist(), range(ad["sid"].size), strict=True))
            if any(s not in lookup for s in sid.tolist()):
                raise DatasetError(f"{adp[name]}: sid: expected every synthesis id of {final[name].name}")
            idx = np.array([lookup[s] for s in sid.tolist()], dtype=np.int64)
            values["area"].append(ad["area"][idx])
            values["delay"].append(ad["delay"][idx])
    bench = Path(bench_dir) if bench_dir is not None else None
    files = [
        (bench / f"{d}_orig.bench") if bench is not None and (bench / f"{d}_orig.bench").is_file() else None
        for d in design_ids
    ]
    return QoRLabels(
        root=root,
        design_ids=design_ids,
        recipes=np.asarray(recipes, dtype=np.int8),
        design=np.concatenate(design).astype(np.int64),
        recipe=np.concatenate(recipe).astype(np.int64),
        values={k: np.concatenate(v).astype(np.float64) for k, v in values.items()},
        originals={k: np.full(len(design_ids), np.nan) for k in values},
        aig_files=files,
    )
