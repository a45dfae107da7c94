"""QoR prediction in the OpenABC-D setting: from a design's AIG and a synthesis recipe, predict the result.

Chowdhury et al., "OpenABC-D" (2021), Sec. 5: the target is the design's AND count (or depth) after the recipe,
z-scored per design, ``z = (y - mu_d) / sigma_d`` over that design's recipes; test designs are held out whole.
Model (their SynthNet shape): ``z_hat = MLP([g_d ; r])`` with ``g_d`` the encoder's graph embedding of the
unoptimized design and ``r`` a recipe embedding — step-type embedding (7 types) + position embedding (20
positions), then a 1-D convolution stack, a GRU or a small transformer, mean-pooled.

Metrics on the held-out designs' rows: MSE, R² and Spearman on the z-scored targets, and MAPE on the
**de-normalized** counts, ``100 * mean(|(z_hat*sigma_d + mu_d) - y| / y)`` where ``mu_d, sigma_d`` are the held-out
design's statistics over its labelled recipes (the normalization the targets were built with; a design whose
recipes all tie has sigma_d = 0, so it maps back to its one value whatever z is predicted). MAPE on z-scores
divides by numbers near 0 and is meaningless — the error HOGA's authors (Deng et al., 2024) later corrected.
The trivial baseline predicts ``z = 0`` (each design's mean) for every recipe.

Two splits, OpenABC-D's two settings: ``designs`` holds out whole designs (all their recipes); ``recipes`` holds
out a share of the recipes on every design (the head has seen each design under other recipes).

Each training step takes a few designs and scores all of their training recipes from one encoding of each, so an
epoch runs the encoder once per training design (a step over shuffled rows touched almost every design and
re-encoded it at every step).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from circuitml.datasets.qor import QoRLabels
from circuitml.tasks.common import (
    GraphEncoding,
    TaskResult,
    TrainConfig,
    is_pretrained,
    make_encoder,
    mape,
    mlp,
    mse,
    param_groups,
    pretrained_head,
    r2_score,
    result_label,
    seed_everything,
    spearman,
    split_groups,
    train_loop,
    validation_split,
)
from torch import Tensor, nn

from circuitml.encoders.recipe import RecipeEncoder
from circuitml.errors import ConfigError

__all__ = ["RecipeEncoder", "QoRHead", "recipe_means", "run_qor"]

SPLITS = ("designs", "recipes")
# z: OpenABC-D's per-design z-score; ratio: log(y / y_unoptimized), which keeps how much a design shrinks
QOR_TARGETS = ("z", "ratio")


class QoRHead(nn.Module):
    """``z_hat = MLP([g ; RecipeEncoder(recipe)])``; as a linear probe (``head="linear"``),
    ``z_hat = W(r)^T g + b(r)`` with ``[W(r); b(r)] = A r`` — for each recipe a linear function of the graph
    embedding ``g``, since an additive ``w^T g + f(r)`` is constant per design and z-scores average to 0 there."""

    def __init__(
        self,
        graph_dim: int,
        recipe_dim: int = 32,
        hidden: int = 64,
        recipe_kind: str = "conv",
        head: str = "mlp",
    ) -> None:
        super().__init__()
        self.recipe = RecipeEncoder(recipe_dim, recipe_kind)
        self.linear = head == "linear"
        if self.linear:
            self.probe = nn.Linear(recipe_dim, graph_dim + 1)
        else:
            self.mlp = mlp(graph_dim + recipe_dim, hidden, 1)

    def forward(self, graph: Tensor, recipes: Tensor) -> Tensor:
        r = self.recipe(recipes)
        if self.linear:
            w = self.probe(r)
            return (w[:, :-1] * graph).sum(-1) + w[:, -1]
        return self.mlp(torch.cat([graph, r], dim=-1)).squeeze(-1)


def split_rows(
    labels: QoRLabels,
    split: str,
    test_fraction: float,
    seed: int,
    *,
    validation: bool = False,
    test_designs: Sequence[str] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """Train/test rows: whole designs held out (``designs``), or a share of the recipes on every design
    (``recipes``; the same recipes are held out on all designs); with ``validation``, train/validation rows
    inside the training side.

    ``test_designs``: hold out exactly these design ids at every seed (e.g. train on generated designs, test on
    real ones) instead of a seeded share; ``designs`` split only.
    """
    if split not in SPLITS:
        raise ConfigError(f"qor split: expected one of {', '.join(SPLITS)}, got {split!r}")
    key = labels.design if split == "designs" else labels.recipe
    if test_designs:
        if split != "designs":
            raise ConfigError(f"qor test designs: expected the 'designs' split, got {split!r}")
        index = {name: d for d, name in enumerate(labels.design_ids)}
        missing = sorted(set(test_designs) - set(index))
        if missing:
            raise ConfigError(f"qor test designs: expected designs of the labels, got {', '.join(missing)}")
        is_test = np.isin(key, [index[name] for name in test_designs])
        train, test = np.flatnonzero(~is_test), np.flatnonzero(is_test)
        if train.size == 0:
            raise ConfigError("qor test designs: every design is held out, none is left to train on")
    else:
        present = np.unique(key)
        tr, te = split_groups(len(present), test_fraction, seed)
        train, test = np.flatnonzero(np.isin(key, present[tr])), np.flatnonzero(np.isin(key, present[te]))
    if validation:
        return validation_split(key, train, test_fraction, seed)
    return train, test


def recipe_means(labels: QoRLabels, z: np.ndarray, rows: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """``float [num_recipes]`` mean target of each recipe over ``rows`` (``fill`` for a recipe absent from them):
    the prediction of a model that ignores the design."""
    return _means_by(labels.recipe, int(labels.recipe.max()) + 1, z, rows, fill)


def design_means(labels: QoRLabels, z: np.ndarray, rows: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """``float [num_designs]`` mean target of each design over ``rows`` (``fill`` for a design absent from them):
    with held-out recipes on seen designs, the prediction of a lookup that remembers each design and ignores
    the recipe (no graph needed)."""
    return _means_by(labels.design, len(labels.design_ids), z, rows, fill)


def _means_by(key: np.ndarray, n: int, z: np.ndarray, rows: np.ndarray, fill: float) -> np.ndarray:
    """``float [n]`` mean of ``z`` over ``rows`` per value of ``key`` (``fill`` where ``rows`` has none)."""
    total = np.bincount(key[rows], weights=z[rows], minlength=n)
    count = np.bincount(key[rows], minlength=n)
    return np.where(count > 0, total / np.maximum(count, 1), fill)


def _recipes_seen(pretrained: np.ndarray, recipes: np.ndarray) -> int:
    """How many of ``recipes`` (``[R, L]`` step ids) are rows of ``pretrained``."""
    known = {tuple(r) for r in np.asarray(pretrained).tolist()}
    return sum(tuple(r) in known for r in np.asarray(recipes).tolist())


def run_qor(
    labels: QoRLabels,
    encoder_source,
    mode: str,
    cfg: TrainConfig,
    *,
    metric: str = "ands",
    recipe_kind: str = "conv",
    split: str = "designs",
    target: str = "z",
    graphs: Sequence | None = None,
    encoder_config: dict | None = None,
    progress: Callable[[int, float], None] | None = None,
    cache: list | None = None,
) -> TaskResult:
    """Train the QoR head on the training rows; evaluate on the held-out designs (or recipes).

    ``cache``: embeddings of a frozen encoder shared between runs (see :class:`GraphEncoding`).
    """
    from circuitml.graph import aig_to_data

    cfg.validate()
    if target not in QOR_TARGETS:
        raise ConfigError(f"qor target: expected one of {', '.join(QOR_TARGETS)}, got {target!r}")
    seed_everything(cfg.seed)
    device = torch.device(cfg.device)
    encoder, trainable = make_encoder(encoder_source, mode, seed=cfg.seed, config=encoder_config)
    encoder.to(device)
    explicit_not = getattr(getattr(encoder, "config", None), "explicit_not", True)
    if graphs is None:
        graphs = [
            aig_to_data(labels.aig(d), explicit_not=explicit_not) for d in range(len(labels.design_ids))
        ]
    train_rows, test_rows = split_rows(
        labels, split, cfg.test_fraction, cfg.seed, validation=cfg.validation, test_designs=cfg.test_groups
    )
    y = labels.targets(metric) if target == "z" else labels.log_ratios(metric)
    z = torch.from_numpy(y).to(device)
    recipes = torch.from_numpy(labels.recipes.astype(np.int64)).to(device)
    torch.manual_seed(cfg.seed)
    if cfg.head == "pretrained":  # the pretraining recipe-response head (circuitml.pretrain.qor)
        head = pretrained_head(encoder_source, mode, cfg, "qor", split).to(device)
        if head.mlp[0].in_features != encoder.out_dim + head.recipe.out_dim:
            raise ConfigError(
                f"qor head pretrained: expected a head for {encoder.out_dim}-wide graph embeddings, got one for "
                f"{head.mlp[0].in_features - head.recipe.out_dim}"
            )
        seen = _recipes_seen(head.recipes.cpu().numpy(), labels.recipes)
        if cfg.zero_shot:
            raise ConfigError(
                "qor --zero-shot: the recipe-response head has no calibration to fit; fine-tune it"
            )
    else:
        head = QoRHead(encoder.out_dim, recipe_kind=recipe_kind, head=cfg.head).to(device)
        seen = None
    enc = GraphEncoding(encoder, graphs, trainable, device=device, cache=cache)

    def predict(rows: np.ndarray) -> Tensor:
        designs, inverse = np.unique(labels.design[rows], return_inverse=True)
        _, g, _, _ = enc(designs)  # each design of the batch is encoded once
        return head(g[torch.from_numpy(inverse.reshape(-1)).to(device)], recipes[labels.recipe[rows]])

    # steps over designs: each step scores every training recipe of its designs from one encoding of each
    train_designs = np.unique(labels.design[train_rows])
    rows_of = [train_rows[labels.design[train_rows] == d] for d in train_designs]
    recipes_per_design = max(1, round(len(train_rows) / max(len(train_designs), 1)))
    per_step = TrainConfig(**{**cfg.__dict__, "batch_size": max(1, cfg.batch_size // recipes_per_design)})

    def step(batch: np.ndarray) -> Tensor:
        rows = np.concatenate([rows_of[i] for i in batch])
        return torch.mean((predict(rows) - z[rows]) ** 2) + 0.01 * enc.aux_loss()

    groups = param_groups(head, encoder, trainable, is_pretrained(encoder_source, mode), cfg)
    modules = [head, encoder] if trainable else [head]
    history = train_loop(groups, step, len(train_designs), per_step, progress=progress, modules=modules)

    encoder.eval()
    head.eval()
    with torch.no_grad():
        pred = (
            torch.cat([predict(test_rows[s : s + 512]) for s in range(0, len(test_rows), 512)]).cpu().numpy()
        )
    true = z[test_rows].cpu().numpy()
    raw_true = labels.values[metric][test_rows]
    # trivial: z = 0 (each design's mean), or for ratios the training rows' mean shrink
    const = 0.0 if target == "z" else float(y[train_rows].mean())
    base_pred = np.full_like(true, const)
    if target == "z":
        raw_pred = labels.denormalize(pred, test_rows, metric)
        raw_base = labels.denormalize(base_pred, test_rows, metric)
    else:
        orig = np.maximum(labels.originals[metric][labels.design[test_rows]], 1.0)
        raw_pred, raw_base = np.exp(pred) * orig, np.exp(base_pred) * orig
    # a recipe can reduce a design to constants (0 ANDs), where a percentage error is undefined: MAPE skips them
    nonzero = raw_true != 0
    metrics = {
        "mse": mse(pred, true),
        "mape": mape(raw_pred[nonzero], raw_true[nonzero]) if nonzero.any() else float("nan"),
        "r2": r2_score(pred, true),
        "spearman": spearman(pred, true),
    }
    baseline = {
        "mse": mse(base_pred, true),
        # no graph at all: each recipe's mean target over the training rows (what the recipe alone tells)
        "mse_recipe_mean": mse(
            recipe_means(labels, y, train_rows, fill=const)[labels.recipe[test_rows]], true
        ),
        "mape": mape(raw_base[nonzero], raw_true[nonzero]) if nonzero.any() else float("nan"),
        # seen designs: remembering each design's mean (no graph, no recipe) is the bar an encoder must clear
        **(
            {
                "mse_design_mean": mse(
                    design_means(labels, y, train_rows, fill=const)[labels.design[test_rows]], true
                )
            }
            if split == "recipes"
            else {}
        ),
        "r2": r2_score(base_pred, true),
        "spearman": 0.0,
    }
    held_out = "designs" if split == "designs" else "recipes (on every design)"
    if cfg.test_groups:
        held_out = f"the {len(cfg.test_groups)} designs named by --test-designs"
    design_note = (
        " Baseline mse_design_mean predicts each design's mean target over its training rows (seen designs, no "
        "graph, no recipe)."
        if split == "recipes"
        else ""
    )
    if seen is not None:
        design_note += (
            f" Head: the encoder's recipe-response pretraining head; {seen} of the {len(labels.recipes)} recipes "
            "were among the recipes it was pretrained on (on other designs)."
        )
    zero_rows = int((~nonzero).sum())
    skipped = f" MAPE leaves out the {zero_rows} test rows whose {metric} is 0." if zero_rows else ""
    return TaskResult(
        "qor",
        result_label(encoder_source, mode),
        mode,
        cfg.seed,
        metrics,
        baseline,
        history,
        pred,
        true,
        labels.design[test_rows],
        list(labels.design_ids),
        notes=(
            f"target: per-design z-scored {metric}; held out: {held_out}; head: {cfg.head}; MSE/R2/Spearman on "
            f"z-scores; MAPE (%) on de-normalized {metric} (z*sigma_d + mu_d vs the raw count); baseline predicts "
            "z = 0 (each design's mean); baseline mse_recipe_mean predicts each recipe's mean z over the training rows "
            "(no graph)." + design_note
            if target == "z"
            else f"target: log({metric} after the recipe / {metric} of the unoptimized design); held out: "
            f"{held_out}; head: {cfg.head}; MSE/R2/Spearman on that log ratio; MAPE (%) on exp(pred) * the "
            f"unoptimized {metric}; baseline predicts the training rows' mean ratio; baseline mse_recipe_mean "
            "predicts each recipe's mean ratio over the training rows (no graph)." + design_note
        )
        + skipped,
    )
