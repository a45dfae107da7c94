"""Embed circuit files with a pretrained encoder into one safetensors file (``circuitml embed``)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from circuitml.errors import ConfigError
from circuitml.fileio import atomic_write, safetensors_bytes

__all__ = ["embed_files"]


def embed_files(
    encoder_dir: str | Path,
    files: list[str | Path],
    out: str | Path,
    *,
    strict: bool = True,
    failures: list[tuple[str, str]] | None = None,
    device: torch.device | str = "cpu",
    dtype: str = "float32",
) -> dict[str, str]:
    """Embed each circuit file (any format :func:`circuitml.formats.read_circuit` reads) with the encoder
    saved in ``encoder_dir``; write ``<key>/node`` ``[N, h]`` and ``<key>/graph`` ``[h]`` tensors to ``out``.

    Keys are file stems; repeated stems get ``#2``, ``#3``... The safetensors metadata ``index`` maps each key to
    its source path and node count. Written atomically. Returns the key → path index.

    Args:
        strict: raise on the first file that cannot be read; when False, such a file is skipped, its
            ``(path, one-line reason)`` appended to ``failures``, and the others are embedded.
        device: where the encoder runs (the tensors written are on the CPU either way).
        dtype: ``"float32"`` (default) or ``"bf16"``: the encoder's matmuls under bf16 autocast, at bf16
            precision (on a CPU with bf16 units it sped up ``dag`` and ``deepgcn`` at 1M ANDs and slowed ``gcn``,
            which has no bf16 sparse CPU kernel; ``bench/bench_encoders.py --amp`` measures it); the written
            tensors are float32 either way and the metadata records the dtype.

    Raises:
        CircuitmlError: a bad file (``strict``), or no file could be embedded at all.
    """
    from circuitml.encoders import load_encoder
    from circuitml.errors import CircuitmlError, DatasetError
    from circuitml.formats import read_circuit

    if not files:
        raise ConfigError("embed: expected at least one circuit file")
    if dtype not in ("float32", "bf16"):
        raise ConfigError(f"embed: --dtype must be float32 or bf16, got {dtype!r}")
    out = Path(out)
    if not out.name or out.is_dir():
        raise ConfigError(f"embed: --out {out} is a directory, expected a .safetensors file path")
    for file in files:  # atomic_write would replace the circuit by its embeddings
        if out.exists() and Path(file).exists() and out.samefile(file):
            raise ConfigError(f"embed: --out {out} is one of the input circuits, expected a new file")
    failures = [] if failures is None else failures
    encoder = load_encoder(encoder_dir).to(device)
    device_type = torch.device(device).type
    tensors: dict[str, torch.Tensor] = {}
    index: dict[str, dict[str, object]] = {}
    for file in files:
        path = Path(file)
        try:
            if path.is_dir():
                raise DatasetError(f"{path}: expected a circuit file, got a directory")
            aig = read_circuit(path)
        except (CircuitmlError, OSError) as exc:
            if strict:
                raise
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if isinstance(exc, FileNotFoundError):
                reason = f"{path}: no such file"
            failures.append((str(path), reason))
            continue
        key = path.name.split(".")[0] or path.name
        n = 2
        base = key
        while key in index:
            key = f"{base}#{n}"
            n += 1
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
            result = encoder.embed(aig)
        tensors[f"{key}/node"] = result.node.detach().float().cpu().contiguous()
        tensors[f"{key}/graph"] = result.graph[0].detach().float().cpu().contiguous()
        index[key] = {"path": str(path), "num_nodes": int(result.node.size(0))}
    if not index:
        raise DatasetError(
            f"embed: no circuit could be read ({len(failures)} failed); nothing written to {out}"
        )
    meta = {
        "format": "circuitml.embeddings",
        "encoder": str(encoder_dir),
        "dtype": dtype,
        "index": json.dumps(index),
    }
    atomic_write(out, safetensors_bytes(tensors, meta))
    return {k: str(v["path"]) for k, v in index.items()}
