"""Reading model folders someone else may have written, without trusting them.

A model folder's JSON decides what is built before any weight is read. So every setting is type-checked
(:func:`typed_fields`), and every size is checked against the shapes stored in the folder's safetensors files,
read from their headers with no tensor data: first a bound (:func:`check_sizes`: no count above the number of
stored tensors, no width above the largest stored dimension), then the model is built on the ``meta`` device,
which allocates nothing, and its tensor names and shapes must be the stored ones exactly (:func:`check_built`).
Only then is it built for real. Used by the QA model reader (``qa eval``, ``qa ensemble``) and, for a local
transformers checkpoint (``--init-from``, ``load_lm``), by :func:`check_hf_folder`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any

from circuitml.errors import CheckpointError, ConfigError, one_line

__all__ = ["check_built", "check_hf_folder", "check_sizes", "stored_shapes", "typed_fields"]

# settings that count things that are stored (layers, experts, readers) and settings that are widths; head
# counts allocate nothing (they split a width), and the meta build refuses a count that does not divide it
_COUNTS = ("num_layers", "num_experts", "top_k", "ensemble", "oof_folds")
_WIDTHS = ("vocab_size", "max_position", "d_model", "d_ff")
_HF_COUNTS = ("num_hidden_layers", "n_layers")
_HF_WIDTHS = (
    "hidden_size",
    "dim",
    "intermediate_size",
    "hidden_dim",
    "vocab_size",
    "max_position_embeddings",
)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _typed(value: Any, hint: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        return _typed(value, next(a for a in args if a is not type(None)), where)
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise CheckpointError(f"{where}: expected true or false, got {_show(value)}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise CheckpointError(f"{where}: expected an integer, got {_show(value)}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            try:
                number = float(value)
            except OverflowError:
                number = math.inf
            if math.isfinite(number):
                return number
        raise CheckpointError(f"{where}: expected a finite number, got {_show(value)}")
    if hint is str:
        if isinstance(value, str):
            return value
        raise CheckpointError(f"{where}: expected a string, got {_show(value)}")
    if origin is list:
        (inner,) = typing.get_args(hint)
        if not isinstance(value, list):
            raise CheckpointError(f"{where}: expected a list, got {_show(value)}")
        return [_typed(v, inner, f"{where}[{k}]") for k, v in enumerate(value)]
    if origin is dict or hint is dict:
        key_hint, value_hint = typing.get_args(hint) or (str, Any)
        if not isinstance(value, dict):
            raise CheckpointError(f"{where}: expected a mapping, got {_show(value)}")
        return {_typed(k, key_hint, where): _typed(v, value_hint, f"{where}.{k}") for k, v in value.items()}
    raise CheckpointError(f"{where}: a setting of a type this reader does not know ({hint!r})")


def typed_fields(cls: type, values: Any, where: str, skip: tuple[str, ...] = ()) -> dict[str, Any]:
    """``values`` (a parsed JSON object) checked against the dataclass ``cls``'s fields: known keys only, each of
    its field's type; raises :class:`CheckpointError` naming ``where`` and the key. Keys in ``skip`` are left
    out (a nested section the caller checks)."""
    if not isinstance(values, dict):
        raise CheckpointError(f"{where}: expected a mapping of settings, got {_show(values)}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    out = {}
    for key, value in values.items():
        if key in skip:
            continue
        if key not in names:
            raise CheckpointError(f"{where}: unknown key {_show(key)}; expected one of {sorted(names)}")
        out[key] = _typed(value, hints[key], f"{where}.{key}")
    return out


def stored_shapes(file: Path, error: type[Exception] = CheckpointError) -> dict[str, tuple[int, ...]]:
    """Each stored tensor's shape, from the safetensors header (no tensor data is read)."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types on truncated or corrupted files
        raise error(f"{file}: expected a valid safetensors file ({one_line(exc)})") from None


def check_sizes(
    values: dict[str, Any],
    shapes: dict[str, tuple[int, ...]],
    where: str,
    hf: bool = False,
    widths: bool = True,
    error: type[Exception] = CheckpointError,
) -> None:
    """No count of ``values`` above the number of stored tensors and no width above the largest stored dimension
    (``widths``: off for an upcycled reader, whose widths are its backbone config's): a bound that holds for
    every model this project saves, checked before anything is built."""
    counts, width_keys = (_HF_COUNTS, _HF_WIDTHS) if hf else (_COUNTS, _WIDTHS if widths else ())
    most = max((d for s in shapes.values() for d in s), default=0)
    for name in counts:
        v = values.get(name)
        if isinstance(v, int) and not 0 <= v <= max(1, len(shapes)):
            raise error(
                f"{where}.{name}: expected at most {len(shapes)} (the stored tensors), got {_show(v)}"
            )
    for name in width_keys:
        v = values.get(name)
        if isinstance(v, int) and not 0 <= v <= most:
            raise error(f"{where}.{name}: expected at most {most} (the largest stored size), got {_show(v)}")


def check_built(
    build: typing.Callable[[], Any], shapes: dict[str, tuple[int, ...]], file: Path, where: str
) -> None:
    """Build the model on the ``meta`` device (nothing allocated) and check its tensors are the stored ones."""
    import torch

    try:
        with torch.device("meta"):
            model = build()
    except (ConfigError, CheckpointError) as exc:
        raise CheckpointError(f"{where}: {' '.join(str(exc).split())}") from None
    except Exception as exc:  # model code (transformers' too) raises many types on settings it cannot build
        raise CheckpointError(f"{where}: expected settings that build the model ({one_line(exc)})") from None
    built = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for k in sorted(built.keys() | shapes.keys()):
        if built.get(k) != shapes.get(k):
            raise CheckpointError(
                f"{where}: the settings build tensor {_show(k)} of shape {built.get(k)}, {file.name} stores "
                f"{shapes.get(k)}"
            )


def check_hf_folder(folder: Path, where: str, error: type[Exception] = CheckpointError) -> None:
    """A local transformers checkpoint's ``config.json`` sizes bounded by its safetensors files (every shard),
    before ``from_pretrained`` builds it: a config claiming ``hidden_size: 10**6`` would allocate first."""
    from circuitml.fileio import read_json

    config = folder / "config.json"
    files = sorted(folder.glob("*.safetensors"))
    if not config.is_file() or not files:
        return  # transformers says what is missing
    raw = read_json(config, error=error, what="model config")
    if not isinstance(raw, dict):
        raise error(f"{where}: {config}: expected a mapping of the model's settings")
    shapes: dict[str, tuple[int, ...]] = {}
    for f in files:
        shapes.update(stored_shapes(f, error))
    check_sizes(raw, shapes, f"{where}: {config}", hf=True, error=error)
