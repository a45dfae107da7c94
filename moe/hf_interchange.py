"""MoE block interchange with transformers checkpoints: Mixtral, Qwen2-MoE and DeepSeek-V3.

A saved transformers model directory (``config.json`` + ``model.safetensors``) holds each MoE layer as a router
matrix and per-expert SwiGLU projections (``gate_proj``/``up_proj``/``down_proj``; Mixtral's ``w1``/``w3``/``w2``),
plus shared experts for Qwen2-MoE and DeepSeek-V3. :func:`load_hf_moe_blocks` reads them — with safetensors only,
no transformers import and no pickle — into circuitml :class:`~circuitml.moe.block.MoEBlock` s computing the same
function:

* Mixtral (Jiang et al. 2024): softmax top-k, renormalized → ``"topk"`` router;
* Qwen2-MoE (Qwen team 2024): softmax top-k (renormalized iff ``norm_topk_prob``) and a sigmoid-gated shared
  expert → ``"topk"`` + gated :class:`~circuitml.moe.experts.shared.SharedExpert`;
* DeepSeek-V3 (DeepSeek-AI 2024): sigmoid, bias-corrected group-limited top-k with routed scaling →
  ``"deepseek"`` router (its ``e_score_correction_bias`` included) + ``n_shared_experts`` shared experts as one
  MLP of ``n_shared_experts * moe_intermediate_size`` hidden units (the same function).

:func:`export_hf_moe_blocks` writes the blocks back into a copy of the checkpoint, under the original names.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from circuitml.moe.block import MoEBlock
from circuitml.moe.experts.ffn import FFNExperts
from circuitml.moe.experts.shared import SharedExpert
from circuitml.moe.registry import build_router
from safetensors import safe_open
from torch import Tensor

from circuitml.errors import CheckpointError
from circuitml.fileio import atomic_write, safetensors_bytes


@dataclass(frozen=True)
class Family:
    """Where a model family keeps one MoE layer's tensors, relative to ``model.layers.<i>.``."""

    prefix: str
    gate: str
    up: str
    down: str
    shared: str | None = None
    shared_gate: str | None = None
    bias: str | None = None


FAMILIES: dict[str, Family] = {
    "mixtral": Family("block_sparse_moe", gate="w1", up="w3", down="w2"),
    "qwen2_moe": Family(
        "mlp", "gate_proj", "up_proj", "down_proj", shared="shared_expert", shared_gate="shared_expert_gate"
    ),
    "deepseek_v3": Family(
        "mlp", "gate_proj", "up_proj", "down_proj", shared="shared_experts", bias="e_score_correction_bias"
    ),
}


def _read_config(path: Path) -> dict[str, Any]:
    cfg_file = path / "config.json"
    try:
        cfg = json.loads(cfg_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{cfg_file}: expected a transformers config.json ({exc})") from None
    kind = cfg.get("model_type")
    if kind not in FAMILIES:
        raise CheckpointError(f"{cfg_file}: model_type {kind!r}: expected one of {sorted(FAMILIES)}")
    if cfg.get("hidden_act", "silu") != "silu":
        raise CheckpointError(
            f"{cfg_file}: hidden_act {cfg.get('hidden_act')!r}: expected 'silu' (SwiGLU experts)"
        )
    return cfg


def _shape(cfg: dict[str, Any], path: Path) -> dict[str, Any]:
    """Router name, options and expert widths of the family, from its config."""
    try:
        return _family_shape(cfg)
    except KeyError as exc:
        raise CheckpointError(
            f"{path / 'config.json'}: missing key {exc.args[0]!r} of a {cfg['model_type']} config"
        ) from None


def _family_shape(cfg: dict[str, Any]) -> dict[str, Any]:
    common = {
        "hidden_size": cfg["hidden_size"],
        "num_layers": cfg["num_hidden_layers"],
        "top_k": cfg["num_experts_per_tok"],
    }
    return {**common, **_router_shape(cfg)}


def _router_shape(cfg: dict[str, Any]) -> dict[str, Any]:
    kind = cfg["model_type"]
    if kind == "mixtral":
        return {
            "router": "topk",
            "options": {"normalize_weights": True},
            "num_experts": cfg["num_local_experts"],
            "d_hidden": cfg["intermediate_size"],
            "shared": None,
        }
    if kind == "qwen2_moe":
        return {
            "router": "topk",
            "options": {"normalize_weights": bool(cfg.get("norm_topk_prob", False))},
            "num_experts": cfg["num_experts"],
            "d_hidden": cfg["moe_intermediate_size"],
            "shared": cfg.get("shared_expert_intermediate_size") or None,
        }
    return {
        "router": "deepseek",
        "options": {
            "normalize_weights": bool(cfg.get("norm_topk_prob", True)),
            "n_group": cfg.get("n_group") or 1,
            "topk_group": cfg.get("topk_group") or 1,
            "routed_scaling_factor": float(cfg.get("routed_scaling_factor", 1.0)),
        },
        "num_experts": cfg["n_routed_experts"],
        "d_hidden": cfg["moe_intermediate_size"],
        "shared": cfg["moe_intermediate_size"] * cfg["n_shared_experts"]
        if cfg.get("n_shared_experts")
        else None,
    }


def _weights_file(path: Path) -> Path:
    file = path / "model.safetensors"
    if not file.is_file():
        raise CheckpointError(f"{path}: expected model.safetensors (one shard) next to config.json")
    return file


def load_hf_moe_blocks(path: str | Path) -> dict[int, MoEBlock]:
    """The MoE blocks of a saved Mixtral / Qwen2-MoE / DeepSeek-V3 model directory, by layer index."""
    path = Path(path)
    cfg = _read_config(path)
    weights = _weights_file(path)
    family, shape = FAMILIES[cfg["model_type"]], _shape(cfg, path)
    d, e = shape["hidden_size"], shape["num_experts"]
    blocks: dict[int, MoEBlock] = {}
    with safe_open(str(weights), framework="pt") as f:
        keys = set(f.keys())
        for i in range(shape["num_layers"]):
            p = f"model.layers.{i}.{family.prefix}."
            if p + "gate.weight" not in keys:
                continue  # a dense layer

            def get(name: str, p: str = p) -> Tensor:
                if p + name not in keys:
                    raise CheckpointError(f"{path}: missing tensor {p + name}")
                return f.get_tensor(p + name).float()

            router = build_router(
                shape["router"],
                d_model=d,
                num_experts=e,
                top_k=shape["top_k"],
                balance_loss=None,
                **shape["options"],
            )
            experts = FFNExperts(e, d, shape["d_hidden"], activation="swiglu")
            shared = None
            if shape["shared"]:
                shared = SharedExpert(d, shape["shared"], "swiglu", gated=family.shared_gate is not None)
            with torch.no_grad():
                router.gate.weight.copy_(get("gate.weight"))
                if family.bias:
                    getattr(router, family.bias).copy_(get(f"gate.{family.bias}"))
                for x in range(e):
                    ex = f"experts.{x}."
                    up = torch.cat([get(ex + family.gate + ".weight"), get(ex + family.up + ".weight")])
                    experts.gate_up_proj[x].copy_(up)
                    experts.down_proj[x].copy_(get(ex + family.down + ".weight"))
                if shared is not None:
                    s = f"{family.shared}."
                    shared.up.weight.copy_(
                        torch.cat([get(s + "gate_proj.weight"), get(s + "up_proj.weight")])
                    )
                    shared.down.weight.copy_(get(s + "down_proj.weight"))
                    if family.shared_gate:
                        shared.gate.weight.copy_(get(f"{family.shared_gate}.weight"))
            blocks[i] = MoEBlock(router, experts, shared)
    if not blocks:
        raise CheckpointError(
            f"{path}: no MoE layer found (expected model.layers.<i>.{family.prefix}.gate.weight)"
        )
    return blocks


def hf_block_tensors(block: MoEBlock, model_type: str, layer: int) -> dict[str, Tensor]:
    """``block``'s weights under the checkpoint names of ``model_type`` for layer ``layer``."""
    family = FAMILIES[model_type]
    p = f"model.layers.{layer}.{family.prefix}."
    out = {p + "gate.weight": block.router.gate.weight}
    if family.bias:
        out[p + f"gate.{family.bias}"] = getattr(block.router, family.bias)
    experts = block.experts
    h = experts.down_proj.shape[-1]
    for x in range(experts.num_experts):
        gate, up = experts.gate_up_proj[x].split(h)
        out[p + f"experts.{x}.{family.gate}.weight"] = gate
        out[p + f"experts.{x}.{family.up}.weight"] = up
        out[p + f"experts.{x}.{family.down}.weight"] = experts.down_proj[x]
    if block.shared_expert is not None and family.shared:
        s = block.shared_expert
        gate, up = s.up.weight.split(s.down.weight.shape[1])
        out[p + f"{family.shared}.gate_proj.weight"] = gate
        out[p + f"{family.shared}.up_proj.weight"] = up
        out[p + f"{family.shared}.down_proj.weight"] = s.down.weight
        if family.shared_gate:
            out[p + f"{family.shared_gate}.weight"] = s.gate.weight
    return out


def export_hf_moe_blocks(blocks: dict[int, MoEBlock], source: str | Path, target: str | Path) -> Path:
    """Write ``target/model.safetensors`` (and ``config.json``): the checkpoint ``source`` with its MoE layers
    replaced by ``blocks`` (cast to each tensor's stored dtype); returns ``target``."""
    source, target = Path(source), Path(target)
    cfg = _read_config(source)
    with safe_open(str(_weights_file(source)), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = f.metadata()
    for layer, block in blocks.items():
        for key, value in hf_block_tensors(block, cfg["model_type"], layer).items():
            if key not in tensors:
                raise CheckpointError(f"{source}: layer {layer}: the checkpoint has no tensor {key}")
            if tensors[key].shape != value.shape:
                raise CheckpointError(
                    f"{source}: {key}: shape {tuple(tensors[key].shape)} expected, block has {tuple(value.shape)}"
                )
            tensors[key] = value.detach().to(tensors[key].dtype).contiguous()
    atomic_write(target / "model.safetensors", safetensors_bytes(tensors, metadata))
    atomic_write(target / "config.json", json.dumps(cfg, indent=2))
    return target
