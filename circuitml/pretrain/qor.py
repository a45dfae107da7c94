r"""Recipe-response pretraining: from a design's graph embedding, predict how each ABC recipe ranks on it.

The QoR target of OpenABC-D (Chowdhury et al., "OpenABC-D: A Large-Scale Dataset for Machine Learning Guided
Integrated Circuit Synthesis", 2021, Sec. 5) — the AND count after a recipe, z-scored over the design's recipes —
is mostly design × recipe interaction (:mod:`circuitml.tasks.qor_anova`): which recipes suit *this* design. ABC
computes it for any circuit, so the pretraining corpus can carry it as a label that costs CPU, not people, the way
DeepGate (Li et al., DAC 2022) pretrains on simulated signal probabilities. With :math:`g_d` the encoder's graph
embedding of corpus design :math:`d`, :math:`r` a recipe's embedding (:class:`~circuitml.encoders.recipe.RecipeEncoder`,
SynthNet's) and :math:`z_{d,r}` the label:

.. math::
    \mathcal L_{QoR} = \frac{1}{|\mathcal R_d|}\sum_{r\in\mathcal R_d} \big(\mathrm{MLP}([g_d; r]) - z_{d,r}\big)^2

averaged over the designs drawn for the step. Beside the model's MSE, ``base_qor`` reports the MSE of a predictor
that ignores the design (each recipe's mean z over all labelled designs): only the gap between the two is
something a graph taught. Labels come from ``circuitml data qor`` run on the corpus's own circuits
(``circuitml data export``), matched to the corpus by circuit id; an evaluation should use other recipes and
designs (``evaluate qor --exclude-seen``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch_geometric.data import Batch, Data

from circuitml.encoders.recipe import RecipeEncoder
from circuitml.errors import ConfigError

__all__ = ["QoRBatch", "QoRLabelSet", "QoRPretrainHead", "QoRPretrainOutput"]


@dataclass
class QoRBatch:
    """Designs drawn for one micro-batch: their graphs and label rows (``z``: ``[B, R]``, NaN where unlabelled)."""

    graph: Batch
    z: Tensor

    def to(self, device: torch.device) -> QoRBatch:
        return QoRBatch(self.graph.to(device), self.z.to(device))


class QoRLabelSet:
    """The corpus circuits that a QoR labels folder covers, with their z-scored label rows.

    Args:
        labels: a :class:`~circuitml.datasets.qor.QoRLabels` (``circuitml data qor`` on exported corpus circuits).
        dataset: the pretraining dataset (``records`` with ``id`` and ``num_ands``, ``aig(i)``); a label design
            is matched to the circuit whose id equals its id, and must have the same AND count.
        explicit_not: graph construction of the encoder being trained.
        max_nodes: larger circuits are left out, as in :class:`~circuitml.pretrain.data.PretrainData`.
        metric: ``ands`` or ``depth``.
    """

    def __init__(
        self, labels: Any, dataset: Any, *, explicit_not: bool, max_nodes: int, metric: str = "ands"
    ):
        from circuitml.graph import aig_to_data

        if metric not in labels.values:
            raise ConfigError(f"qor.metric: expected one of {', '.join(labels.values)}, got {metric!r}")
        where = {str(rec.get("id")): i for i, rec in enumerate(dataset.records)}
        z = np.full((len(labels.design_ids), len(labels.recipes)), np.nan, dtype=np.float32)
        z[labels.design, labels.recipe] = labels.targets(metric)
        self.graphs: list[Data] = []
        rows: list[np.ndarray] = []
        self.unmatched = 0
        self.skipped = 0
        for d, name in enumerate(labels.design_ids):
            i = where.get(name)
            if i is None:
                self.unmatched += 1
                continue
            rec = dataset.records[i]
            ands = labels.originals["ands"][d] if "ands" in labels.originals else np.nan
            if np.isfinite(ands) and "num_ands" in rec and int(ands) != int(rec["num_ands"]):
                raise ConfigError(
                    f"{labels.root}: design {name!r}: expected the corpus circuit's {rec['num_ands']} ANDs, the "
                    f"labels were made from one with {int(ands)} (label the corpus's own exported circuits)"
                )
            if sum(rec.get(k, 0) for k in ("num_pis", "num_ands", "num_pos")) > max_nodes:
                self.skipped += 1
                continue
            graph = aig_to_data(dataset.aig(i), explicit_not=explicit_not)
            if graph.num_nodes > max_nodes:
                self.skipped += 1
                continue
            self.graphs.append(graph)
            rows.append(z[d])
        if not self.graphs:
            raise ConfigError(
                f"{labels.root}: qor.labels: expected designs whose ids are circuits of the pretraining data, "
                f"matched none of {len(labels.design_ids)} ({self.skipped} too large)"
            )
        self.z = torch.from_numpy(np.stack(rows))
        self.recipes = torch.from_numpy(labels.recipes.astype(np.int64))
        # the design-blind predictor: each recipe's mean z over the labelled designs
        self.recipe_mean = torch.nan_to_num(torch.nanmean(self.z, dim=0), nan=0.0)

    def __len__(self) -> int:
        return len(self.graphs)

    def batch(self, num_designs: int, generator: torch.Generator) -> QoRBatch:
        """``num_designs`` designs drawn without replacement (all of them when there are fewer)."""
        pick = torch.randperm(len(self.graphs), generator=generator)[: min(num_designs, len(self.graphs))]
        return QoRBatch(Batch.from_data_list([self.graphs[int(i)] for i in pick]), self.z[pick])


@dataclass
class QoRPretrainOutput:
    loss: Tensor
    mse: Tensor
    baseline_mse: Tensor


class QoRPretrainHead(nn.Module):
    """``z_hat[d, r] = MLP([g_d ; RecipeEncoder(recipe_r)])`` over every recipe of the labels.

    Args:
        graph_dim: width of the encoder's graph embedding.
        recipes: ``long [R, L]`` step ids of the labels' recipes (a buffer, saved with the head).
        recipe_mean: ``float [R]`` each recipe's mean z over the labelled designs (the ``base_qor`` predictor).
        recipe_kind: the recipe encoder's sequence model.
    """

    def __init__(
        self,
        graph_dim: int,
        recipes: Tensor,
        recipe_mean: Tensor,
        recipe_dim: int = 32,
        hidden: int = 64,
        recipe_kind: str = "conv",
    ):
        super().__init__()
        self.register_buffer("recipes", recipes.long().clone())
        self.register_buffer("recipe_mean", recipe_mean.float().clone())
        self.recipe = RecipeEncoder(recipe_dim, recipe_kind)
        self.mlp = nn.Sequential(nn.Linear(graph_dim + recipe_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def score(self, graph: Tensor, recipe: Tensor) -> Tensor:
        """``MLP([g ; r])`` for matching rows of graph embeddings ``[..., H]`` and recipe embeddings ``[..., D]``."""
        return self.mlp(torch.cat([graph.float(), recipe], dim=-1)).squeeze(-1)

    def predict(self, graph: Tensor) -> Tensor:
        """``z_hat [B, R]``: every recipe of the labels on every graph embedding ``[B, H]``."""
        b, r = graph.size(0), self.recipes.size(0)
        rec = self.recipe(self.recipes)  # [R, D]: every recipe encoded once
        return self.score(graph[:, None, :].expand(b, r, -1), rec[None].expand(b, r, -1))

    def forward(self, graph: Tensor, z: Tensor) -> QoRPretrainOutput:
        """Loss over the labelled (design, recipe) cells of ``z`` ``[B, R]`` given graph embeddings ``[B, H]``."""
        b, r = z.shape
        pred = self.predict(graph)
        seen = ~torch.isnan(z)
        err = (pred - torch.nan_to_num(z)) ** 2
        count = seen.sum().clamp(min=1)
        loss = (err * seen).sum() / count
        with torch.no_grad():
            base = ((self.recipe_mean[None].expand(b, r) - torch.nan_to_num(z)) ** 2 * seen).sum() / count
        return QoRPretrainOutput(loss=loss, mse=loss.detach(), baseline_mse=base)
