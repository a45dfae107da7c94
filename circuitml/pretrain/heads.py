r"""Pretraining heads shipped beside an encoder, reused as the heads of downstream tasks (transfer, zero-shot).

DeepGate's recipe (Li et al., "DeepGate: Learning Neural Representations of Logic Gates", DAC 2022) and
DeepGate2's (Shi et al., "DeepGate2: Functionality-Aware Circuit Representation Learning", ICCAD 2023) is that
an encoder pretrained on signal probability and functional similarity comes with heads for exactly those
questions. The pretraining objectives here have such heads (:mod:`~circuitml.pretrain.funcrec`,
:mod:`~circuitml.pretrain.funcsim`, :mod:`~circuitml.pretrain.contrastive`), so a task starts from the matching
one instead of a zero-knowledge MLP:

* **probability** ← funcrec's latent decoder + ``prob_head``. The decoder was trained on latent-masked graphs
  (a share ``r`` of the nodes replaced by the mask token), and on an unmasked graph it is off its training
  distribution (zero-shot MAE 0.162 unmasked vs 0.071 masked on the 43 real circuits). So it predicts every
  node *while that node is masked*: the nodes are split by a fixed permutation into :math:`\lceil 1/r \rceil`
  folds and the decoder runs once per fold,

  .. math:: \hat p_v = \sigma\big(w^\top g_\phi(\tilde H^{(k(v))}, G)_v + b
            + \mathrm{MLP}(h_v)\big), \qquad \tilde H^{(k)}_u = m \text{ if } k(u) = k \text{ else } H_u

  A masked node's own embedding never reaches the decoder, so the head adds an MLP of :math:`h_v` whose last
  layer starts at zero: the head starts as the pretraining head's prediction and fine-tuning adds what the node
  itself tells (a fine-tuned masked decoder alone scored MAE 0.052 on the validation split, a fresh MLP 0.044).

* **gate equivalence** ← funcsim's projection :math:`W`: :math:`\hat D_{ab} = \tfrac12(1 - \cos(W h_a, W h_b))`
  regresses the signature Hamming distance, so equivalent gates (:math:`D = 0`) sit at :math:`\hat D \approx 0`.
  The pair logit is a calibration of that distance plus an MLP residual whose last layer starts at zero, so the
  head starts as the pretrained similarity and fine-tuning adds what it lacks:

  .. math:: \ell_{ab} = e^{s}\,(t - \hat D_{ab}) + \mathrm{MLP}([z_a \odot z_b ; |z_a - z_b|])

* **circuit equivalence** ← the contrastive graph projection (recipe variants positive, mutants negative), with
  the same pair head on graph embeddings.

Zero-shot, only the two calibration scalars :math:`s, t` are fitted (AUC does not depend on them).

Files: ``heads.safetensors`` (tensors under the pretraining names, ``funcrec.*``, ``funcsim.proj.*``,
``contrast.graph_proj.*``) + ``heads.json`` beside ``config.json``/``model.safetensors``;
:func:`circuitml.load_encoder` does not read them.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from circuitml.errors import CheckpointError, CircuitmlError, ConfigError
from circuitml.fileio import atomic_write, check_format, read_json
from circuitml.pretrain.mgm import LatentDecoder
from circuitml.pretrain.qor import QoRPretrainHead

__all__ = [
    "HEADS_FILE",
    "HEADS_CONFIG",
    "TASK_HEADS",
    "ProbabilityDecoderHead",
    "SimilarityPairHead",
    "QoRTaskHead",
    "heads_from_state",
    "save_heads",
    "read_heads",
    "load_task_head",
]

HEADS_FILE = "heads.safetensors"
HEADS_CONFIG = "heads.json"
HEADS_FORMAT = "circuitml-heads"
HEADS_VERSION = 1

#: (task, setting) → the pretraining head it starts from
TASK_HEADS = {
    ("probability", "gates"): "funcrec",
    ("equivalence", "gates"): "funcsim",
    ("equivalence", "circuits"): "contrast",
    # held-out designs only: the head was trained on the corpus under its labels' recipes, which a held-out-recipes
    # evaluation must not have seen
    ("qor", "designs"): "qor",
}
# tensors kept per head: funcrec's bit head has no downstream use, the contrastive PO projection neither
_PREFIXES = {
    "funcrec": "funcrec.",
    "funcsim": "funcsim.proj.",
    "contrast": "contrast.graph_proj.",
    "qor": "qor.",
}
_DROP = ("funcrec.bit_head.",)


def _projection(hidden: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, hidden))


def _residual_mlp(d_in: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 1))


def _reset_residual(mlp: nn.Sequential) -> None:
    """Fresh weights with a zero last layer: the residual adds nothing until it is trained."""
    for layer in mlp:
        if isinstance(layer, nn.Linear):
            layer.reset_parameters()
    nn.init.zeros_(mlp[-1].weight)
    nn.init.zeros_(mlp[-1].bias)


class ProbabilityDecoderHead(LatentDecoder):
    """funcrec's decoder + probability head, predicting every node while it is masked (see the module docstring).

    Args:
        hidden: width of the encoder's node embeddings.
        num_layers: decoder layers (as pretrained).
        mask_ratio: pretraining mask ratio :math:`r`; ``ceil(1/r)`` decoder passes cover every node once.

    Shapes: ``node [N, hidden]``, ``edge_index [2, E]`` → probabilities ``[N]``.
    """

    def __init__(self, hidden: int, num_layers: int = 2, mask_ratio: float = 0.3):
        super().__init__(hidden, num_layers)
        if not 0.0 < mask_ratio <= 1.0:
            raise ConfigError(f"probability head: mask_ratio must be in (0, 1], got {mask_ratio}")
        self.folds = math.ceil(1.0 / mask_ratio)
        self.prob_head = nn.Linear(hidden, 1)
        self.residual = _residual_mlp(hidden)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self.prob_head.reset_parameters()
        _reset_residual(self.residual)

    def fold_of(self, num_nodes: int, device: torch.device) -> Tensor:
        """Fold of each node: a fixed permutation (seed 0), so a graph always gets the same prediction."""
        perm = torch.randperm(num_nodes, generator=torch.Generator().manual_seed(0))
        return (perm % self.folds).to(device)

    def forward(self, node: Tensor, edge_index: Tensor) -> Tensor:
        fold = self.fold_of(node.size(0), node.device)
        logit = self.residual(node)[:, 0]
        for k in range(self.folds):  # a few decoder passes, each vectorized over all nodes
            mask = fold == k
            decoded = self.prob_head(self.decode(node, mask, edge_index))[:, 0]
            logit = torch.where(mask, logit + decoded.to(logit.dtype), logit)
        return torch.sigmoid(logit)


class SimilarityPairHead(nn.Module):
    """A pretrained projection's cosine distance, calibrated, plus a zero-initialised MLP residual.

    Args:
        hidden: width of the embeddings scored.
        scale: initial :math:`e^s` (logit units per unit of distance).
        threshold: initial :math:`t`, the distance where the logit is 0.

    Shapes: ``a, b [P, hidden]`` → logits ``[P]``.
    """

    def __init__(self, hidden: int, scale: float = 20.0, threshold: float = 0.1):
        super().__init__()
        self.proj = _projection(hidden)
        self.log_scale = nn.Parameter(torch.tensor(math.log(scale)))
        self.threshold = nn.Parameter(torch.tensor(threshold))
        self.residual = _residual_mlp(2 * hidden)
        _reset_residual(self.residual)  # starts as the pretrained similarity alone

    def calibration(self) -> list[nn.Parameter]:
        """The parameters a zero-shot run fits (the rest stay as pretrained)."""
        return [self.log_scale, self.threshold]

    def distance(self, a: Tensor, b: Tensor) -> Tensor:
        r""":math:`\hat D = \tfrac12(1 - \cos(W a, W b))` in [0, 1]."""
        return 0.5 * (1.0 - F.cosine_similarity(self.proj(a), self.proj(b), dim=-1))

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        za, zb = self.proj(a), self.proj(b)
        dist = 0.5 * (1.0 - F.cosine_similarity(za, zb, dim=-1))
        res = self.residual(torch.cat([za * zb, (za - zb).abs()], dim=-1)).squeeze(-1)
        return self.log_scale.exp() * (self.threshold - dist) + res


class QoRTaskHead(QoRPretrainHead):
    """The recipe-response head of :mod:`circuitml.pretrain.qor` in the QoR task's interface: the same
    ``z_hat = MLP([g ; RecipeEncoder(recipe)])``, scored for a batch of (graph embedding, recipe) rows.

    Its ``recipes`` buffer ``[num_recipes, recipe_len]`` holds the recipes it was pretrained on, so a task can
    tell which of its recipes the head has seen. Shapes: ``graph [B, hidden]``, ``recipes long [B, L]`` → ``[B]``.
    """

    def __init__(
        self,
        hidden: int,
        num_recipes: int,
        recipe_len: int,
        recipe_dim: int = 32,
        mlp_hidden: int = 64,
        recipe_kind: str = "conv",
    ):
        recipes = torch.zeros(num_recipes, recipe_len, dtype=torch.long)
        super().__init__(hidden, recipes, torch.zeros(num_recipes), recipe_dim, mlp_hidden, recipe_kind)

    def forward(self, graph: Tensor, recipes: Tensor) -> Tensor:  # type: ignore[override]
        return self.score(graph, self.recipe(recipes))


def heads_from_state(state: dict[str, Tensor], prefix: str = "model.") -> dict[str, Tensor]:
    """The shippable head tensors of a pretraining model's state (keys under ``prefix``), renamed without it."""
    out = {}
    for key, value in state.items():
        if not key.startswith(prefix):
            continue
        name = key[len(prefix) :]
        if any(name.startswith(p) for p in _PREFIXES.values()) and not name.startswith(_DROP):
            value = value.detach().to("cpu")
            # the qor head's recipes stay step ids; weights are stored as float32
            out[name] = (value.float() if value.is_floating_point() else value).contiguous()
    return out


def save_heads(folder: str | os.PathLike, state: dict[str, Tensor], config: dict) -> Path | None:
    """Write ``heads.safetensors`` + ``heads.json`` into an encoder folder from a pretraining model's state
    (``model.*`` keys) and its config (a :class:`~circuitml.pretrain.config.PretrainConfig` as a dict).

    Returns the tensor file, or ``None`` when the run had none of the transferable objectives.
    """
    from safetensors.torch import save as save_tensors

    tensors = heads_from_state(state)
    if not tensors:
        return None

    def width(key: str) -> int:  # each head's own input width (a checkpoint's tensors come in sorted order)
        return int(tensors[key].shape[1])

    heads: dict[str, dict] = {}
    if any(k.startswith("funcrec.") for k in tensors):
        fr = config.get("funcrec", {})
        heads["funcrec"] = {
            "hidden": width("funcrec.prob_head.weight"),
            "decoder_layers": int(fr.get("decoder_layers", 2)),
            "mask_ratio": float(fr.get("mask_ratio", 0.3)),
            "task": "probability",
        }
    if any(k.startswith("funcsim.") for k in tensors):
        heads["funcsim"] = {"hidden": width("funcsim.proj.0.weight"), "task": "equivalence (gates)"}
    if any(k.startswith("contrast.") for k in tensors):
        heads["contrast"] = {
            "hidden": width("contrast.graph_proj.0.weight"),
            "task": "equivalence (circuits)",
        }
    if "qor.recipes" in tensors:
        q = config.get("qor", {})
        heads["qor"] = {
            "hidden": width("qor.mlp.0.weight") - width("qor.recipe.step.weight"),
            "recipe_dim": width("qor.recipe.step.weight"),
            "mlp_hidden": int(tensors["qor.mlp.0.weight"].shape[0]),
            "recipe_kind": str(q.get("recipe_kind", "conv")),
            "metric": str(q.get("metric", "ands")),
            "task": "qor (designs)",
        }
    folder = Path(folder)
    path = folder / HEADS_FILE
    atomic_write(path, save_tensors(tensors, metadata={"format": HEADS_FORMAT}))
    meta = {"format": HEADS_FORMAT, "version": HEADS_VERSION, "heads": heads}
    atomic_write(folder / HEADS_CONFIG, json.dumps(meta, indent=1) + "\n")
    return path


def read_heads(folder: str | os.PathLike) -> tuple[dict[str, Tensor], dict[str, dict]]:
    """``(tensors, head configs)`` of an encoder folder (or shipped name).

    Raises:
        CheckpointError: the folder has no pretraining heads, or a damaged file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from circuitml.encoders.shipped import resolve_encoder

    root = resolve_encoder(folder)
    cfg_path, path = root / HEADS_CONFIG, root / HEADS_FILE
    if not cfg_path.is_file() or not path.is_file():
        raise CheckpointError(
            f"{root}: no pretraining heads ({HEADS_CONFIG} + {HEADS_FILE}); re-export the encoder from its "
            "pretraining checkpoint (circuitml.pretrain.export_encoder) or use a fresh head"
        )
    meta = check_format(
        read_json(cfg_path, error=CheckpointError, what="heads config"),
        cfg_path,
        name=HEADS_FORMAT,
        version=HEADS_VERSION,
        error=CheckpointError,
    )
    heads = meta.get("heads")
    if not isinstance(heads, dict):
        raise CheckpointError(f"{cfg_path}: key 'heads': expected an object")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: expected a safetensors file ({exc})") from None
    return tensors, heads


def load_task_head(folder: str | os.PathLike, task: str, setting: str = "gates") -> nn.Module:
    """The task head of ``task``/``setting`` initialised from the matching pretraining head of an encoder folder.

    Raises:
        ConfigError: the task has no pretraining head (QoR).
        CheckpointError: the encoder was exported without heads, or pretrained without that objective.
    """
    name = TASK_HEADS.get((task, setting))
    if (task, setting) == ("qor", "recipes"):
        raise ConfigError(
            "--head pretrained: no pretraining head for qor (recipes): the recipe-response head learned its "
            "labels' recipes, which held-out recipes must not be; use it with --split designs"
        )
    if name is None:
        have = ", ".join(f"{t} ({s})" for t, s in TASK_HEADS)
        raise ConfigError(
            f"--head pretrained: no pretraining head for {task} ({setting}); heads exist for {have}"
        )
    tensors, heads = read_heads(folder)
    if name not in heads:
        raise CheckpointError(
            f"{folder}: no {name!r} head (the encoder was pretrained without that objective; has "
            f"{', '.join(heads) or 'none'})"
        )
    cfg = heads[name]
    if not isinstance(cfg, dict):
        raise CheckpointError(f"{folder}: {HEADS_CONFIG}: head {name!r}: expected an object")

    where = f"{folder}: {HEADS_CONFIG}: head {name!r}"

    def width(key: str, dim: int = 1) -> int:  # what the stored tensors hold: the sizes a config must repeat
        t = tensors.get(key)
        if t is None or t.dim() != 2:
            raise CheckpointError(f"{folder}: {HEADS_FILE}: head {name!r}: expected a 2-d tensor {key!r}")
        return int(t.shape[dim])

    def size(key: str, default: int, expected: int | None = None, limit: int = 16) -> int:
        # checked before any layer is allocated
        value = cfg.get(key, default)
        if expected is not None and value != expected:
            raise CheckpointError(f"{where}: {key}: expected {expected} (its stored tensors), got {value!r}")
        if (
            not isinstance(value, int)
            or isinstance(value, bool)
            or not 1 <= value <= max(limit, expected or 0)
        ):
            raise CheckpointError(f"{where}: {key}: expected an integer in [1, {limit}], got {value!r}")
        return value

    try:
        if name == "funcrec":
            hidden = size("hidden", 0, width("funcrec.prob_head.weight"))
            ratio = cfg.get("mask_ratio", 0.3)
            if not isinstance(ratio, int | float) or isinstance(ratio, bool):
                raise CheckpointError(f"{where}: mask_ratio: expected a number, got {ratio!r}")
            head: nn.Module = ProbabilityDecoderHead(hidden, size("decoder_layers", 2), float(ratio))
            target = head
        elif name == "qor":
            recipe_dim = size("recipe_dim", 32, width("qor.recipe.step.weight"))
            hidden = size("hidden", 0, width("qor.mlp.0.weight") - recipe_dim)
            mlp_hidden = size("mlp_hidden", 64, width("qor.mlp.0.weight", 0))
            head = QoRTaskHead(
                hidden,
                width("qor.recipes", 0),
                width("qor.recipes"),
                recipe_dim,
                mlp_hidden,
                str(cfg.get("recipe_kind", "conv")),
            )
            target = head
        else:
            proj = "funcsim.proj.0.weight" if name == "funcsim" else "contrast.graph_proj.0.weight"
            head = SimilarityPairHead(size("hidden", 0, width(proj)))
            target = head.proj
    except CheckpointError:
        raise
    except CircuitmlError as exc:  # a setting the head refuses (mask ratio, recipe encoder kind)
        raise CheckpointError(f"{where}: {exc}") from None
    prefix = _PREFIXES[name]
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    # every pretrained tensor must land; only the task-side residual MLP starts fresh (at zero)
    fresh = {k for k in target.state_dict() if k.startswith("residual.")}
    try:
        missing, unexpected = target.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{folder}: head {name!r} does not match its config ({first})") from None
    if set(missing) - fresh or unexpected:
        wrong = sorted(set(missing) - fresh) + sorted(unexpected)
        raise CheckpointError(f"{folder}: head {name!r}: tensors {', '.join(wrong[:3])} do not match")
    return head
