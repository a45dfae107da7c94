"""Size statistics of a dataset, per family and overall (what ``circuitml data info`` shows)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .format import read_manifest

__all__ = ["dataset_stats", "STAT_KEYS"]

STAT_KEYS = ("num_inputs", "num_outputs", "num_latches", "num_ands", "depth")


def _summary(values: list[int]) -> dict[str, float]:
    arr = np.asarray(values, dtype=np.float64)
    return {"min": float(arr.min()), "median": float(np.median(arr)), "max": float(arr.max())}


def _group(records: list[dict[str, Any]]) -> dict[str, Any]:
    row: dict[str, Any] = {
        "circuits": len(records),
        "with_verilog": sum(r.get("verilog") is not None for r in records),
        "sequential": sum(int(r.get("num_latches", 0) or 0) > 0 for r in records),
    }
    for key in STAT_KEYS:
        # older records may lack the split PI/PO counts: fall back to the totals
        fallback = {"num_inputs": "num_pis", "num_outputs": "num_pos"}.get(key, key)
        row[key] = _summary([int(r.get(key, r.get(fallback, 0)) or 0) for r in records])
    return row


def dataset_stats(root: str | os.PathLike) -> dict[str, Any]:
    """``{"root", "circuits", "failures", "families": {family: row}, "total": row}``; a row holds counts
    (circuits, with_verilog, sequential) and min/median/max of inputs, outputs, latches, ANDs and depth."""
    manifest = read_manifest(Path(root))
    records = manifest["records"]
    families: dict[str, list[dict[str, Any]]] = {}
    for r in records:
        families.setdefault(r["family"], []).append(r)
    return {
        "root": str(root),
        "circuits": len(records),
        "failures": len(manifest.get("failures", [])),
        "families": {name: _group(recs) for name, recs in sorted(families.items())},
        "total": _group(records) if records else None,
    }
