"""The encoder contract: node + graph embeddings, MoE aux losses, save/load without pickle, and ``embed``.

Every encoder family subclasses :class:`Encoder` and implements :meth:`Encoder.encode_nodes`; the type
embedding, the graph readout, checkpoints and input conversion live here once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch_geometric.data import Batch, Data
from torch_geometric.nn import AttentionalAggregation, global_add_pool, global_max_pool, global_mean_pool

from circuitml.encoders.config import EncoderConfig
from circuitml.errors import CheckpointError, CircuitmlError, ConfigError
from circuitml.fileio import check_format, read_json

FORMAT_NAME = "circuitml-encoder"
FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"


@dataclass
class EncoderOutput:
    """``node``: ``[N, hidden]`` node embeddings; ``graph``: ``[B, hidden]`` pooled per graph of the batch."""

    node: Tensor
    graph: Tensor


class Encoder(nn.Module):
    """Base of every AIG encoder.

    Subclasses set ``kind`` and ``OPTIONS`` (the kind-specific option names with their defaults) and implement
    :meth:`encode_nodes`, which maps a graph and its node-type embedding ``[N, hidden]`` to node states.
    """

    kind: ClassVar[str] = ""
    OPTIONS: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: EncoderConfig) -> None:
        super().__init__()
        for key in config.options:
            if key not in self.OPTIONS:
                known = ", ".join(sorted(self.OPTIONS)) or "none"
                raise ConfigError(
                    f"encoder config: options.{key} is not an option of {config.kind!r} ({known})"
                )
        self.config = config
        self.hidden = config.hidden
        self.type_embedding = nn.Embedding(config.in_types, config.hidden)
        self.pi_projection = (
            nn.Linear(config.pi_features, config.hidden, bias=False) if config.pi_features else None
        )
        self.attention_pool = (
            AttentionalAggregation(nn.Linear(config.hidden, 1)) if config.pool == "attention" else None
        )
        self._aux_losses: dict[str, Tensor] = {}
        self.input_types: Tensor | None = None

    # ------------------------------------------------------------------ options
    def opt(self, name: str) -> Any:
        return self.config.options.get(name, self.OPTIONS[name])

    @property
    def out_dim(self) -> int:
        return self.hidden

    @property
    def device(self) -> torch.device:
        return self.type_embedding.weight.device

    # ------------------------------------------------------------------ forward
    def encode_nodes(self, data: Data, h: Tensor) -> Tensor:
        """Node states ``[N, hidden]`` from the graph and the embedded node types ``h``."""
        raise NotImplementedError

    def forward(self, data: Data | Batch, node_type: Tensor | None = None) -> EncoderOutput:
        """Encode a graph (or batch). ``node_type`` replaces ``data.x`` (e.g. with MASK_TYPE at masked gates)."""
        types = data.x if node_type is None else node_type
        if types is None:
            raise ConfigError("encoder input: the graph has no node types (data.x) and none were given")
        types = types.view(-1).long()
        self._aux_losses = {}
        self.input_types = types  # for layers that route by type (hash routers); masked types stay masked
        h = self.type_embedding(types)
        batch = getattr(data, "batch", None)
        if self.pi_projection is not None:
            from circuitml.encoders.random_features import pi_positions, random_pi_vectors

            nodes, rank = pi_positions(types, batch)
            r = random_pi_vectors(rank, self.config.pi_features, self.training, h.dtype)
            h = h.index_add(0, nodes, self.pi_projection(r))
        node = self.encode_nodes(data, h)
        num_graphs = int(getattr(data, "num_graphs", 1)) if batch is not None else 1
        if batch is None:
            batch = torch.zeros(node.size(0), dtype=torch.long, device=node.device)
        return EncoderOutput(node=node, graph=self.readout(node, batch, num_graphs))

    def readout(self, node: Tensor, batch: Tensor, num_graphs: int) -> Tensor:
        pool = self.config.pool
        if pool == "mean":
            return global_mean_pool(node, batch, num_graphs)
        if pool == "sum":
            return global_add_pool(node, batch, num_graphs)
        if pool == "max":
            return global_max_pool(node, batch, num_graphs)
        assert self.attention_pool is not None
        return self.attention_pool(node, batch, dim_size=num_graphs)

    def edge_attr(self, data: Data) -> Tensor | None:
        """The complement-bit edge features when the config asks for them (and checks they are there)."""
        if not self.config.use_edge_attr:
            return None
        attr = getattr(data, "edge_attr", None)
        if attr is None:
            raise ConfigError(
                "encoder input: use_edge_attr is set but the graph has no edge_attr "
                "(build it with aig_to_data(..., explicit_not=False))"
            )
        return attr.view(attr.size(0), -1).to(self.type_embedding.weight.dtype)

    # ------------------------------------------------------------------ MoE losses
    def add_aux_losses(self, losses: dict[str, Tensor], prefix: str = "") -> None:
        """Called by MoE layers during forward; summed by :meth:`aux_loss`."""
        for name, value in losses.items():
            key = f"{prefix}{name}"
            self._aux_losses[key] = self._aux_losses[key] + value if key in self._aux_losses else value

    def aux_losses(self) -> dict[str, Tensor]:
        return dict(self._aux_losses)

    def aux_loss(self) -> Tensor:
        """Sum of the MoE balancing losses of the last forward (0 for encoders without MoE layers)."""
        if not self._aux_losses:
            return torch.zeros((), device=self.device)
        return torch.stack([v.reshape(()) for v in self._aux_losses.values()]).sum()

    # ------------------------------------------------------------------ embed
    @torch.no_grad()
    def embed(self, x: Any) -> EncoderOutput:
        """Embed an AIG, a PyG Data/Batch, a circuit file path, or a list of those (no gradients, eval mode)."""
        batch = self._as_batch(x)
        was_training = self.training
        self.eval()
        try:
            return self(batch.to(self.device))
        finally:
            self.train(was_training)

    def _as_batch(self, x: Any) -> Data | Batch:
        if isinstance(x, Batch):
            return x
        if isinstance(x, (list, tuple)):
            if not x:
                raise ConfigError("embed: got an empty list")
            return Batch.from_data_list([self._as_data(item) for item in x])
        return self._as_data(x)

    def _as_data(self, x: Any) -> Data:
        from circuitml.aig import AIG

        if isinstance(x, Batch):
            raise ConfigError("embed: a list may hold AIGs, Data objects or paths, not batches")
        if isinstance(x, Data):
            return x
        if isinstance(x, (str, os.PathLike)):
            from circuitml.formats import read_circuit

            x = read_circuit(Path(x))
        if isinstance(x, AIG):
            from circuitml.graph import aig_to_data

            return aig_to_data(x, explicit_not=self.config.explicit_not)
        raise ConfigError(f"embed: cannot encode a {type(x).__name__} (expected AIG, Data, Batch or a path)")

    # ------------------------------------------------------------------ checkpoints
    def save_pretrained(self, directory: str | os.PathLike, card: dict[str, Any] | None = None) -> Path:
        """Write ``config.json``, ``model.safetensors`` and a ``README.md`` model card into ``directory``.

        Each file is written to a temporary name in the same folder and renamed into place, weights first and
        ``config.json`` last, so a reader never sees a half-written checkpoint.
        """
        import circuitml
        from circuitml.fileio import atomic_write, safetensors_bytes

        out = Path(directory)  # atomic_write creates it (an OutputError when it cannot)
        tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in self.state_dict().items()}
        meta = {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "circuitml_version": circuitml.__version__,
            "config": self.config.to_dict(),
            "num_parameters": sum(p.numel() for p in self.parameters()),
        }
        if card:
            meta["card"] = card
        # atomic_write: the files get a plain open()'s mode (mkstemp's 0600 hid shared encoders from colleagues)
        atomic_write(out / WEIGHTS_FILE, safetensors_bytes(tensors, {"format": FORMAT_NAME}))
        atomic_write(out / CARD_FILE, _model_card(meta))
        atomic_write(out / CONFIG_FILE, json.dumps(meta, indent=2, default=str) + "\n")
        return out

    @classmethod
    def from_pretrained(
        cls, directory: str | os.PathLike, *, map_location: str | torch.device = "cpu"
    ) -> Encoder:
        """Load an encoder written by :meth:`save_pretrained` (eval mode). Any defect raises CheckpointError."""
        encoder = load_encoder(directory, map_location=map_location)
        if not isinstance(encoder, cls):
            raise CheckpointError(
                f"{Path(directory) / CONFIG_FILE}: key 'config.kind': expected a {cls.__name__} "
                f"({cls.kind or 'any kind'}), got {encoder.config.kind!r}"
            )
        return encoder

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}, hidden={self.hidden}, layers={self.config.num_layers}"


def load_encoder(directory: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> Encoder:
    """Rebuild an encoder from ``config.json`` + ``model.safetensors`` (a folder, or the name of an encoder
    shipped with the package: :mod:`circuitml.encoders.shipped`); no pickle is involved."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from circuitml.encoders.builder import _build_sized
    from circuitml.encoders.shipped import resolve_encoder

    root = resolve_encoder(directory)
    cfg_path = root / CONFIG_FILE
    weights_path = root / WEIGHTS_FILE
    if not root.is_dir():
        raise CheckpointError(f"{root}: not an encoder directory (expected {CONFIG_FILE} and {WEIGHTS_FILE})")
    for path in (cfg_path, weights_path):
        if not path.is_file():
            raise CheckpointError(
                f"{path}: missing (an encoder directory holds {CONFIG_FILE} and {WEIGHTS_FILE})"
            )
    meta = read_json(cfg_path, error=CheckpointError, what="encoder config")
    check_format(
        meta,
        cfg_path,
        name=FORMAT_NAME,
        version=FORMAT_VERSION,
        error=CheckpointError,
        version_key="format_version",
    )
    if "config" not in meta:
        raise CheckpointError(f"{cfg_path}: key 'config': missing")
    try:
        config = EncoderConfig.from_dict(meta["config"], where=f"{cfg_path}: key 'config'")
        encoder = _build_sized(config, _check_size(config, cfg_path, weights_path))
    except CircuitmlError as exc:
        text = str(exc)
        raise CheckpointError(text if str(cfg_path) in text else f"{cfg_path}: {text}") from None
    try:
        state = load_file(str(weights_path), device=str(map_location))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{weights_path}: expected a safetensors file ({exc})") from None
    expected = encoder.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing tensors {_names(missing)}")
        if unexpected:
            parts.append(f"unexpected tensors {_names(unexpected)}")
        raise CheckpointError(
            f"{weights_path}: weights do not match the {config.kind!r} config: {'; '.join(parts)}"
        )
    for key, ref in expected.items():
        got = state[key]
        if got.shape != ref.shape or got.dtype != ref.dtype:
            raise CheckpointError(
                f"{weights_path}: tensor {key!r}: expected {ref.dtype} {tuple(ref.shape)}, "
                f"got {got.dtype} {tuple(got.shape)}"
            )
        if got.is_floating_point() and not torch.isfinite(got).all():
            raise CheckpointError(f"{weights_path}: tensor {key!r}: expected finite values, found NaN/inf")
    encoder.load_state_dict(state, strict=True)
    encoder.to(map_location)
    return encoder.eval()


def _check_size(config: EncoderConfig, cfg_path: Path, weights_path: Path) -> tuple[int, int]:
    """Refuse a config whose model would not fit its weights file, before any real allocation (a config is only
    read with its weights, so the weights file bounds the model it may describe). Raises CheckpointError, or
    ConfigError naming ``cfg_path`` and the key over its bound; returns :func:`encoder_size`'s ``(elements,
    bytes)``."""
    from circuitml.encoders.builder import encoder_size

    size = encoder_size(config, where=str(cfg_path), prefix="config.")
    need = size[1]
    have = weights_path.stat().st_size
    if need > 2 * have + (64 << 20):  # slack: small mismatches get the per-tensor message below
        raise CheckpointError(
            f"{cfg_path}: key 'config': describes {need} bytes of weights, but {weights_path.name} holds {have}"
        )
    return size


def _names(keys: Sequence[str], limit: int = 3) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


def _model_card(meta: dict[str, Any]) -> str:
    cfg = meta["config"]
    lines = [
        f"# circuitml encoder: {cfg['kind']}",
        "",
        f"A `{cfg['kind']}` AIG encoder ({meta['num_parameters']:,} parameters), saved by circuitml "
        f"{meta['circuitml_version']} in format `{FORMAT_NAME}` v{FORMAT_VERSION}.",
        "",
        "```python",
        "from circuitml.encoders import load_encoder",
        'encoder = load_encoder("path/to/this/folder")',
        'out = encoder.embed("circuit.aig")  # out.node [N, hidden], out.graph [1, hidden]',
        "```",
        "",
        "## Configuration",
        "",
        "| key | value |",
        "|---|---|",
    ]
    for key, value in cfg.items():
        lines.append(f"| {key} | `{json.dumps(value)}` |")
    card = meta.get("card")
    if card:
        lines += ["", "## Training", "", "| key | value |", "|---|---|"]
        for key, value in card.items():
            lines.append(f"| {key} | `{json.dumps(value, default=str)}` |")
    lines += ["", "Weights: `model.safetensors` (no pickle). Configuration: `config.json`.", ""]
    return "\n".join(lines)
