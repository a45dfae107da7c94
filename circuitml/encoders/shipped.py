"""Pretrained encoders that travel inside the package, loaded offline by name.

Each one is an encoder folder (``config.json`` + ``model.safetensors`` + ``README.md`` model card, exactly what
:meth:`~circuitml.encoders.Encoder.save_pretrained` writes) under ``circuitml/encoders/pretrained/<name>/``,
installed as package data by wheel and editable installs alike. As with python-deepgate's
``load_pretrained()``, nothing is downloaded:

>>> import circuitml
>>> enc = circuitml.load_encoder("mgvga-func-deepgcn")      # doctest: +SKIP
>>> circuitml.encoders.shipped.shipped_encoders()           # name -> folder    # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from circuitml.errors import CheckpointError

__all__ = ["SHIPPED_DIR", "shipped_encoders", "resolve_encoder", "describe_encoder"]

SHIPPED_DIR = Path(__file__).resolve().parent / "pretrained"


def shipped_encoders() -> dict[str, Path]:
    """Name → folder of every encoder shipped with this installation (sorted by name)."""
    if not SHIPPED_DIR.is_dir():
        return {}
    return {p.name: p for p in sorted(SHIPPED_DIR.iterdir()) if (p / "config.json").is_file()}


def resolve_encoder(name_or_path: str | os.PathLike) -> Path:
    """The folder of an encoder: an existing path as given, else a shipped name.

    Raises:
        CheckpointError: neither an existing folder nor a shipped name (the message lists the shipped ones).
    """
    path = Path(name_or_path)
    try:
        if path.exists():
            return path
    except OSError:  # a name longer than the file system allows (ENAMETOOLONG): not a folder, maybe a name
        pass
    shipped = shipped_encoders()
    if str(name_or_path) in shipped:
        return shipped[str(name_or_path)]
    names = ", ".join(shipped) or "none installed"
    raise CheckpointError(
        f"{name_or_path}: not an encoder directory nor a shipped encoder name (shipped: {names})"
    )


def describe_encoder(folder: Path) -> dict[str, Any]:
    """Summary of an encoder folder for listings: kind, width, layers, parameters, card fields, size."""
    meta = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    cfg, card = meta.get("config", {}), meta.get("card", {})
    size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
    return {
        "name": folder.name,
        "kind": cfg.get("kind"),
        "hidden": cfg.get("hidden"),
        "layers": cfg.get("num_layers"),
        "parameters": meta.get("num_parameters"),
        "objectives": card.get("objectives"),
        "steps": card.get("steps"),
        "data": card.get("data"),
        "bytes": size,
    }
