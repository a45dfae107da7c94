"""The one on-disk dataset format: a JSON manifest plus one safetensors file per circuit. No pickle anywhere.

Layout of a dataset directory::

    manifest.json              {"format": "circuitml-dataset", "version": 1, "records": [...], "failures": [...]}
    circuits/<id>.safetensors  tensors ands int64[A,2], pos int64[O], latch_init int8[L],
                               verilog_tokens int32[T] (only with Verilog); JSON metadata in the header
    verilog/<id>.v             the design's Verilog (several source files are concatenated) when there is one

A record is a flat dict: ``id, family, source, sources, sha256, format, top, verilog`` (path relative to the
dataset root or ``None``), ``num_pis, num_pos, num_inputs, num_outputs, num_latches, num_ands, depth,
num_tokens, token_vocab`` (hash of the vocabulary the cached token ids use). ``sha256`` hashes the source file(s), so a rebuild skips sources it has already processed.

Everything is written to a temporary file in the same folder and then renamed, so a crash never leaves a
half-written circuit or manifest behind.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load as st_load
from safetensors.numpy import save as st_save

from circuitml.aig import AIG
from circuitml.errors import DatasetError
from circuitml.fileio import atomic_write, load_json, read_json

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MANIFEST",
    "CIRCUITS_DIR",
    "VERILOG_DIR",
    "atomic_write",
    "token_vocab_id",
    "circuit_bytes",
    "save_circuit",
    "load_circuit",
    "empty_manifest",
    "read_manifest",
    "write_manifest",
    "dataset_path",
]

FORMAT_NAME = "circuitml-dataset"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
CIRCUITS_DIR = "circuits"
VERILOG_DIR = "verilog"

# keys every record carries (checked when a manifest is read)
RECORD_KEYS = ("id", "family", "source", "sha256", "verilog", "num_pis", "num_pos", "num_ands", "depth")
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the JSON header


def token_vocab_id() -> str:
    """Short hash of the Verilog token vocabulary: cached token ids are only valid under the same one."""
    import hashlib

    from circuitml.verilog import VOCAB

    return hashlib.sha256("\n".join(VOCAB).encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------- circuits
def circuit_bytes(aig: AIG, record: dict[str, Any], verilog_tokens: np.ndarray | None = None) -> bytes:
    """Serialize one circuit: AIG arrays as tensors, names and the record as JSON header metadata."""
    tensors = {
        "ands": np.ascontiguousarray(aig.ands, dtype=np.int64),
        "pos": np.ascontiguousarray(aig.pos, dtype=np.int64),
        "latch_init": np.ascontiguousarray(aig.latch_init, dtype=np.int8),
    }
    if verilog_tokens is not None:
        tensors["verilog_tokens"] = np.ascontiguousarray(verilog_tokens, dtype=np.int32)
    meta = {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "num_pis": aig.num_pis,
        "num_latches": aig.num_latches,
        "pi_names": aig.pi_names,
        "po_names": aig.po_names,
        "name": aig.name,
        "comments": aig.comments,
        "record": record,
    }
    return st_save(tensors, metadata={"circuitml": json.dumps(meta, separators=(",", ":"))})


def save_circuit(
    path: str | os.PathLike, aig: AIG, record: dict[str, Any], verilog_tokens: np.ndarray | None = None
) -> None:
    """Write one circuit file atomically (see :func:`circuit_bytes`)."""
    atomic_write(path, circuit_bytes(aig, record, verilog_tokens))


def _read_header(data: bytes, file: Path) -> dict[str, Any]:
    if len(data) < 8:
        raise DatasetError(
            f"{file}: expected a safetensors file (8-byte header length), got {len(data)} bytes"
        )
    (size,) = struct.unpack("<Q", data[:8])
    if size > _MAX_HEADER or 8 + size > len(data):
        raise DatasetError(
            f"{file}: truncated safetensors file (header claims {size} bytes, file has {len(data)})"
        )
    header = load_json(data[8 : 8 + size], f"{file} (byte 8, safetensors header)", error=DatasetError)
    if not isinstance(header, dict):
        raise DatasetError(f"{file} (byte 8): expected a JSON object as safetensors header")
    return header


def load_circuit(path: str | os.PathLike) -> tuple[AIG, dict[str, Any], np.ndarray | None]:
    """Read one circuit file: ``(aig, record, verilog_tokens or None)``.

    Raises:
        DatasetError: the file is missing, truncated, corrupted, of another format, or holds an invalid AIG.
    """
    file = Path(path)
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise DatasetError(f"{file}: cannot read circuit file ({exc.strerror or exc})") from None
    header = _read_header(data, file)
    text = header.get("__metadata__", {})
    text = text.get("circuitml", "null") if isinstance(text, dict) else None
    if not isinstance(text, str):
        raise DatasetError(f"{file}: expected a string '__metadata__.circuitml' in the header")
    meta = load_json(text, f"{file} (header '__metadata__.circuitml')", error=DatasetError)
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise DatasetError(
            f"{file}: expected '__metadata__.circuitml' of format {FORMAT_NAME!r} in the header"
        )
    if meta.get("version") != FORMAT_VERSION:
        raise DatasetError(f"{file}: expected format version {FORMAT_VERSION}, got {meta.get('version')!r}")
    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises its own error type for any inconsistency
        raise DatasetError(f"{file}: corrupted safetensors data ({str(exc).splitlines()[0][:120]})") from None
    for key in ("ands", "pos", "latch_init"):
        if key not in tensors:
            raise DatasetError(f"{file}: expected tensor {key!r}")
    for key in ("num_pis", "num_latches"):
        if not _is_count(meta.get(key)):
            raise DatasetError(
                f"{file}: header key {key!r}: expected a non-negative integer, got {meta.get(key)!r}"
            )
    for key in ("pi_names", "po_names"):
        names = meta.get(key)
        if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
            raise DatasetError(f"{file}: header key {key!r}: expected a list of strings or null")
    comments = meta.get("comments") or []
    if not (isinstance(comments, list) and all(isinstance(c, str) for c in comments)):
        raise DatasetError(f"{file}: header key 'comments': expected a list of strings")
    if not isinstance(meta.get("record") or {}, dict):
        raise DatasetError(f"{file}: header key 'record': expected an object")
    try:
        aig = AIG(
            num_pis=int(meta["num_pis"]),
            ands=tensors["ands"],
            pos=tensors["pos"],
            num_latches=int(meta["num_latches"]),
            latch_init=tensors["latch_init"],
            pi_names=meta.get("pi_names"),
            po_names=meta.get("po_names"),
            name=str(meta.get("name", "")),
            comments=list(comments),
        )
        aig.validate()
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(f"{file}: expected a valid AIG, {exc}") from None
    tokens = tensors.get("verilog_tokens")
    return aig, dict(meta.get("record") or {}), tokens


# ---------------------------------------------------------------------------------------------- manifest
def empty_manifest() -> dict[str, Any]:
    return {"format": FORMAT_NAME, "version": FORMAT_VERSION, "records": [], "failures": []}


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """Read and check ``root/manifest.json``.

    Raises:
        DatasetError: missing, not JSON, another format or version, or a record without a required key
            (the message names the file and the JSON path).
    """
    file = Path(root) / MANIFEST
    if not file.exists():
        raise DatasetError(f"{file}: no dataset manifest here (build one with 'circuitml data build')")
    manifest = read_json(file, error=DatasetError, what="dataset manifest")
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        raise DatasetError(f'{file}: expected "format": {FORMAT_NAME!r}')
    if manifest.get("version") != FORMAT_VERSION:
        raise DatasetError(f'{file}: expected "version": {FORMAT_VERSION}, got {manifest.get("version")!r}')
    records = manifest.get("records")
    if not isinstance(records, list):
        raise DatasetError(f'{file}: expected a list at "records"')
    seen: set[str] = set()
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            raise DatasetError(f"{file}: expected an object at records[{i}]")
        for key in RECORD_KEYS:
            if key not in rec:
                raise DatasetError(f"{file}: expected key {key!r} at records[{i}]")
        if not _safe_id(rec["id"]) or rec["id"] in seen:
            raise DatasetError(
                f"{file}: expected a unique file-safe string at records[{i}].id, got {_short(rec['id'])}"
            )
        seen.add(rec["id"])
        _check_record(rec, f"{file}: records[{i}]")
    failures = manifest.setdefault("failures", [])
    if not isinstance(failures, list) or not all(
        isinstance(f, dict) and isinstance(f.get("source"), str) for f in failures
    ):
        raise DatasetError(f'{file}: expected a list of {{"source", "reason"}} objects at "failures"')
    return manifest


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _safe_id(value: Any) -> bool:
    # an id names files under circuits/ and verilog/: no separators, no "..", nothing hidden, bounded
    return (
        isinstance(value, str)
        and 0 < len(value) <= 200
        and not any(c in value for c in "/\\\0")
        and value not in (".", "..")
        and not value.startswith(".")
    )


def dataset_path(root: str | os.PathLike, rel: Any, where: str) -> Path:
    """``root / rel`` for a path a manifest names, refused unless it stays inside the dataset root.

    Manifests travel with shared datasets; a ``"verilog": "../../etc/passwd"`` (or an absolute path, or a
    symlink inside the dataset pointing out of it) would otherwise make readers and ``data export`` hand over
    a file the user never shared.
    """
    if not isinstance(rel, str) or not rel or "\0" in rel:
        raise DatasetError(f"{where}: expected a relative path inside the dataset, got {_short(rel)}")
    pure = Path(rel)
    if pure.is_absolute() or ".." in pure.parts:
        raise DatasetError(f"{where}: expected a path inside the dataset root, got {_short(rel)}")
    base = Path(root).resolve()
    target = (base / pure).resolve()
    if not target.is_relative_to(base):
        raise DatasetError(
            f"{where}: expected a path inside the dataset root, got {_short(rel)} (a link out)"
        )
    return base / pure


def _check_record(rec: dict[str, Any], where: str) -> None:
    for key in ("family", "source", "sha256"):
        if not isinstance(rec[key], str):
            raise DatasetError(f"{where}.{key}: expected a string, got {_short(rec[key])}")
    for key in ("num_pis", "num_pos", "num_ands", "depth", "num_inputs", "num_outputs", "num_latches"):
        if key in rec and not _is_count(rec[key]):
            raise DatasetError(f"{where}.{key}: expected a non-negative integer, got {_short(rec[key])}")
    if rec.get("num_tokens") is not None and not _is_count(rec["num_tokens"]):
        raise DatasetError(f"{where}.num_tokens: expected a non-negative integer or null")
    for key in ("format", "top", "token_vocab"):
        if rec.get(key) is not None and not isinstance(rec[key], str):
            raise DatasetError(f"{where}.{key}: expected a string or null, got {_short(rec[key])}")
    sources = rec.get("sources")
    if sources is not None and not (isinstance(sources, list) and all(isinstance(s, str) for s in sources)):
        raise DatasetError(f"{where}.sources: expected a list of strings")
    if rec["verilog"] is not None:
        if not isinstance(rec["verilog"], str):
            raise DatasetError(
                f"{where}.verilog: expected a path string or null, got {_short(rec['verilog'])}"
            )
        pure = Path(rec["verilog"])
        if pure.is_absolute() or ".." in pure.parts or not rec["verilog"] or "\0" in rec["verilog"]:
            raise DatasetError(
                f"{where}.verilog: expected a path inside the dataset root, got {_short(rec['verilog'])}"
            )


def write_manifest(root: str | os.PathLike, manifest: dict[str, Any]) -> None:
    """Write ``root/manifest.json`` atomically (records in a stable order: by id)."""
    out = dict(manifest)
    out["records"] = sorted(manifest["records"], key=lambda r: r["id"])
    atomic_write(Path(root) / MANIFEST, json.dumps(out, indent=1, sort_keys=False) + "\n")
