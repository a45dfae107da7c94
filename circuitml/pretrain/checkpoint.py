"""Training checkpoints: safetensors for every tensor, JSON for everything else, written atomically.

A checkpoint of step ``s`` is two files in ``<out>/checkpoints/``:

* ``step_<s>.safetensors`` — model weights (``model.*``), optimizer moments (``optim.*``), RNG states
  (``rng.*``) as tensors;
* ``step_<s>.json`` — step, config, data-order position, learning-rate schedule, optimizer hyper-parameters,
  numpy/python RNG states, and the sha256 + size of the tensor file.

Each file is written to a temp name in the same folder and renamed with :func:`os.replace`; the JSON is written
last, so a process killed at any moment (even ``kill -9``) leaves either a complete checkpoint or an ignored
orphan tensor file. Loading verifies the sha256, so a truncated or corrupted file raises
:class:`~circuitml.errors.CheckpointError` instead of producing silent garbage. No pickle is involved.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from circuitml.errors import CheckpointError
from circuitml.fileio import atomic_write, check_format, read_json, safetensors_bytes

__all__ = [
    "CHECKPOINT_FORMAT",
    "save_checkpoint",
    "load_checkpoint",
    "latest_checkpoint",
    "list_checkpoints",
    "optimizer_state_to_tensors",
    "optimizer_state_from_tensors",
    "capture_rng_state",
    "restore_rng_state",
    "atomic_write_bytes",
    "atomic_write_text",
]

CHECKPOINT_FORMAT = "circuitml.pretrain.checkpoint"
CHECKPOINT_VERSION = 1
_NAME = re.compile(r"^step_(\d+)\.json$")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder and :func:`os.replace`."""
    atomic_write(path, data)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _atomic_save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
    # byte-stable, so the sha256 the JSON records is the same for the same state
    atomic_write(path, safetensors_bytes(tensors, metadata))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# ----------------------------------------------------------------------------- optimizer state as tensors
def optimizer_state_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors (``optim.<param>.<key>``) and JSON-able rest."""
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for key, value in st.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{pid}.{key}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(pid), {})[key] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def optimizer_state_from_tensors(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict, file: str
) -> None:
    """Inverse of :func:`optimizer_state_to_tensors`; raises CheckpointError on a mismatch."""
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        parts = name.split(".", 2)
        if len(parts) != 3 or not parts[1].isdigit():
            raise CheckpointError(f"{file}: tensor {name!r}: expected 'optim.<param id>.<key>'")
        state.setdefault(int(parts[1]), {})[parts[2]] = value
    for pid, scal in meta.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(scal)
    groups = meta["param_groups"]
    current = optimizer.state_dict()["param_groups"]
    if [len(g["params"]) for g in groups] != [len(g["params"]) for g in current]:
        raise CheckpointError(f"{file}: optimizer state is of another model (parameter groups differ)")
    try:
        optimizer.load_state_dict({"state": state, "param_groups": groups})
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"{file}: optimizer state does not match the model ({exc})") from None


# ----------------------------------------------------------------------------- RNG streams
def capture_rng_state() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Torch (CPU and CUDA) RNG states as tensors; numpy and python states as JSON-able lists."""
    tensors = {"rng.torch": torch.get_rng_state().clone()}
    if torch.cuda.is_available():
        for i, st in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = st.clone()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    py = random.getstate()
    meta = {
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "python": [py[0], list(py[1]), py[2]],
    }
    return tensors, meta


def _is_int(value: Any, lo: int, hi: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and lo <= value < hi


# the only state version random.setstate accepts (3 since Python 2.4)
_PY_RNG_VERSION = random.Random().getstate()[0]


def check_rng_meta(meta: Any, where: str) -> None:
    """Refuse an RNG record that :func:`restore_rng_state` could not restore (names the key)."""
    numpy_ok = (
        isinstance(meta, dict)
        and isinstance(meta.get("numpy"), list)
        and len(meta["numpy"]) == 5
        and meta["numpy"][0] == "MT19937"
        and isinstance(meta["numpy"][1], list)
        and len(meta["numpy"][1]) == 624
        and all(_is_int(k, 0, 1 << 32) for k in meta["numpy"][1])
        and _is_int(meta["numpy"][2], 0, 625)
        and _is_int(meta["numpy"][3], 0, 2)
        and isinstance(meta["numpy"][4], (int, float))
    )
    if not numpy_ok:
        raise CheckpointError(
            f"{where}: key 'rng.numpy': expected [\"MT19937\", 624 uint32 keys, pos, has_gauss, cached]"
        )
    py = meta.get("python")
    # random.setstate refuses any other version, and only after torch's and numpy's RNGs were set: check it here
    python_ok = (
        isinstance(py, list)
        and len(py) == 3
        and py[0] == _PY_RNG_VERSION
        and isinstance(py[1], list)
        and len(py[1]) == 625
        and all(_is_int(k, 0, 1 << 32) for k in py[1])
        and py[1][-1] <= 624
        and (py[2] is None or isinstance(py[2], (int, float)))
    )
    if not python_ok:
        raise CheckpointError(
            f"{where}: key 'rng.python': expected [{_PY_RNG_VERSION}, 625 uint32 words, gauss]"
        )


def restore_rng_state(
    tensors: dict[str, torch.Tensor], meta: dict[str, Any], where: str = "checkpoint"
) -> None:
    check_rng_meta(meta, where)
    try:
        torch.set_rng_state(tensors["rng.torch"])
    except (KeyError, RuntimeError, TypeError) as exc:
        raise CheckpointError(f"{where}: tensor 'rng.torch': expected a torch RNG state ({exc})") from None
    if torch.cuda.is_available():
        states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)
    kind, keys, pos, has_gauss, cached = meta["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["python"]
    try:
        random.setstate((version, tuple(internal), gauss))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{where}: key 'rng.python': {exc}") from None


def check_resume_state(record: dict[str, Any], where: str | Path) -> dict[str, Any]:
    """The ``state`` of a pretraining checkpoint, checked before ``pretrain --resume`` uses any of it.

    A hand-edited or foreign checkpoint then fails in one line naming the key, not with a KeyError or an
    IndexError halfway through restoring the run.
    """
    state = record.get("state")
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: key 'state': expected an object")
    if not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{where}: key 'state.config': expected the run's configuration object")
    if not _is_int(state.get("step"), 0, 1 << 62):
        raise CheckpointError(f"{where}: key 'state.step': expected a non-negative integer")
    opt = state.get("optimizer")
    if not (
        isinstance(opt, dict)
        and isinstance(opt.get("param_groups"), list)
        and all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in opt["param_groups"])
        and isinstance(opt.get("scalars", {}), dict)
        and all(isinstance(v, dict) and str(k).isdigit() for k, v in opt.get("scalars", {}).items())
    ):
        raise CheckpointError(
            f"{where}: key 'state.optimizer': expected param_groups and per-parameter scalars"
        )
    if state.get("scaler") is not None and not isinstance(state["scaler"], dict):
        raise CheckpointError(f"{where}: key 'state.scaler': expected an object")
    if not isinstance(state.get("wall_time_s", 0.0), (int, float)):
        raise CheckpointError(f"{where}: key 'state.wall_time_s': expected a number")
    check_rng_meta(state.get("rng"), where)
    return state


# ----------------------------------------------------------------------------- files
def save_checkpoint(
    directory: str | Path, step: int, tensors: dict[str, torch.Tensor], state: dict[str, Any], keep: int = 2
) -> Path:
    """Write checkpoint ``step`` atomically (tensors first, JSON last); prune to the newest ``keep``.

    Returns the JSON path.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob(".step_*.tmp"):  # left by a process killed mid-write
        stale.unlink(missing_ok=True)
    stem = f"step_{step:08d}"
    tensor_path = directory / f"{stem}.safetensors"
    json_path = directory / f"{stem}.json"
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    _atomic_save_tensors(tensor_path, tensors, {"format": CHECKPOINT_FORMAT, "step": str(step)})
    record = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "step": step,
        "tensors": tensor_path.name,
        "sha256": _sha256(tensor_path),
        "size": tensor_path.stat().st_size,
        "state": state,
    }
    atomic_write_text(json_path, json.dumps(record, indent=1, sort_keys=True))
    # the checkpoint just written always stays, whatever steps other files in the folder claim
    others = [p for p in list_checkpoints(directory) if p != json_path]
    for old in others[: max(0, len(others) - (keep - 1))]:
        old.with_suffix(".safetensors").unlink(missing_ok=True)
        old.unlink(missing_ok=True)
    return json_path


def list_checkpoints(directory: str | Path) -> list[Path]:
    """JSON files of the checkpoints in ``directory``, oldest first."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | Path) -> Path | None:
    found = list_checkpoints(directory)
    return found[-1] if found else None


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read and verify a checkpoint (its ``.json`` path, or the ``.safetensors`` next to it).

    Returns ``(tensors, record)`` where ``record["state"]`` is what :func:`save_checkpoint` was given.

    Raises:
        CheckpointError: missing, truncated, corrupted (sha256 mismatch) or of another format.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        path = path.with_suffix(".json")
    record = read_json(path, error=CheckpointError, what="checkpoint")
    check_format(record, path, name=CHECKPOINT_FORMAT, version=CHECKPOINT_VERSION, error=CheckpointError)
    for key in ("step", "tensors", "sha256", "size", "state"):
        if key not in record:
            raise CheckpointError(f"{path}: key {key!r} missing")
    name = record["tensors"]
    # the tensor file sits beside its JSON: a bare file name, never a path out of the folder
    if not isinstance(name, str) or not name or name != Path(name).name or name in (".", ".."):
        raise CheckpointError(
            f"{path}: key 'tensors': expected a file name beside the checkpoint, got {name!r:.60}"
        )
    if not isinstance(record["size"], int) or not isinstance(record["sha256"], str):
        raise CheckpointError(f"{path}: keys 'size'/'sha256': expected an integer and a hex digest")
    tensor_path = path.parent / name
    try:
        found = tensor_path.is_file()
    except OSError as exc:  # a name over the file system's limit (ENAMETOOLONG) is not swallowed by is_file
        raise CheckpointError(
            f"{path}: key 'tensors': expected a readable file name, got {name!r:.60} ({exc.strerror})"
        ) from None
    if not found:
        raise CheckpointError(f"{tensor_path}: tensor file of checkpoint {path.name} not found")
    size = tensor_path.stat().st_size
    if size != record["size"]:
        raise CheckpointError(
            f"{tensor_path}: expected {record['size']} bytes, found {size} (truncated or overwritten)"
        )
    if _sha256(tensor_path) != record["sha256"]:
        raise CheckpointError(f"{tensor_path}: sha256 does not match {path.name} (file corrupted)")
    try:
        tensors = load_file(str(tensor_path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{tensor_path}: expected a safetensors file ({exc})") from None
    return tensors, record
