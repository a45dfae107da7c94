"""Synthesis recipes as vectors: the recipe encoder of OpenABC-D's SynthNet.

Chowdhury et al., "OpenABC-D: A Large-Scale Dataset for Machine Learning Guided Integrated Circuit Synthesis"
(2021), Sec. 5: each step of an ABC recipe (one of :data:`circuitml.datasets.qor.STEPS`) is embedded with its
position and a small sequence model reads the steps. Used by the QoR task's head (:mod:`circuitml.tasks.qor`) and
by recipe-response pretraining (:mod:`circuitml.pretrain.qor`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from circuitml.datasets.qor import STEPS
from circuitml.errors import ConfigError

__all__ = ["RECIPE_ENCODERS", "RecipeEncoder"]

RECIPE_ENCODERS = ("conv", "gru", "transformer")


class RecipeEncoder(nn.Module):
    """Embeds a recipe ``long [B, L]`` of step ids into ``[B, dim]``.

    ``e_t = E_step[s_t] + E_pos[t]``, then ``kind``: ``conv`` — two 1-D convolutions (kernel 3, ReLU), as
    OpenABC-D's SynthNet; ``gru`` — a bidirectional GRU; ``transformer`` — one pre-norm encoder layer. Mean-pooled
    over the steps.
    """

    def __init__(
        self, dim: int = 32, kind: str = "conv", max_len: int = 64, num_steps: int = len(STEPS)
    ) -> None:
        super().__init__()
        if kind not in RECIPE_ENCODERS:
            raise ConfigError(f"recipe encoder: expected one of {', '.join(RECIPE_ENCODERS)}, got {kind!r}")
        self.kind = kind
        self.step = nn.Embedding(num_steps, dim)
        self.pos = nn.Embedding(max_len, dim)
        if kind == "conv":
            self.body = nn.Sequential(
                nn.Conv1d(dim, dim, 3, padding=1), nn.ReLU(), nn.Conv1d(dim, dim, 3, padding=1), nn.ReLU()
            )
        elif kind == "gru":
            self.body = nn.GRU(dim, dim // 2, batch_first=True, bidirectional=True)
        else:
            self.body = nn.TransformerEncoderLayer(
                dim, 4, 2 * dim, dropout=0.0, batch_first=True, norm_first=True
            )
        self.out_dim = dim

    def forward(self, recipes: Tensor) -> Tensor:
        pos = torch.arange(recipes.size(1), device=recipes.device)
        e = self.step(recipes) + self.pos(pos)[None]
        if self.kind == "conv":
            h = self.body(e.transpose(1, 2)).transpose(1, 2)
        elif self.kind == "gru":
            h, _ = self.body(e)
        else:
            h = self.body(e)
        return h.mean(dim=1)
