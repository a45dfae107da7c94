"""Layer-wise learning-rate decay: every backbone parameter's group learns at lr · ξ^(L − depth)."""

from __future__ import annotations

import re

import pytest
import torch
from circuitml.tasks.qa.model import SwitchQAConfig, UpcycledHFQA, build_qa_model
from circuitml.tasks.qa.train import QATrainConfig, _param_groups

from circuitml.errors import ConfigError
from tests.test_qa import tiny_bert_config


def _depth(name: str, num_layers: int) -> int:
    """The reference depth from a parameter's name: embeddings 0, encoder layer i at i + 1, the rest on top."""
    if name.startswith("backbone.embeddings."):
        return 0
    m = re.match(r"backbone\.encoder\.layer\.(\d+)\.", name)
    return int(m.group(1)) + 1 if m else num_layers


def test_layer_lr_decay_gives_each_layer_lr_times_decay_to_its_distance_from_the_top() -> None:
    torch.manual_seed(0)
    model = UpcycledHFQA(
        SwitchQAConfig(span_head="bilinear", moe_layers=[1], capacity_factor=None),
        backbone_config=tiny_bert_config(),
    )
    cfg = QATrainConfig(lr=1e-3, head_lr=5e-3, layer_lr_decay=0.5, weight_decay=0.01)
    lr_of = {id(p): g["lr"] for g in _param_groups(model, cfg) for p in g["params"]}
    names = dict(model.named_parameters())
    assert set(lr_of) == {id(p) for p in names.values()}  # every trainable parameter, once
    for name, p in names.items():
        want = 5e-3 if name.startswith("qa_") else 1e-3 * 0.5 ** (3 - _depth(name, 3))
        assert lr_of[id(p)] == pytest.approx(want), name
    assert {_depth(n, 3) for n in names if not n.startswith("qa_")} == {0, 1, 2, 3}
    # decay 1 is the plain grouping: the same parameters at the same rates
    plain = QATrainConfig(lr=1e-3, head_lr=5e-3)
    assert {id(p): g["lr"] for g in _param_groups(model, plain) for p in g["params"]} == {
        id(p): 5e-3 if n.startswith("qa_") else 1e-3 for n, p in names.items()
    }


def test_layer_lr_decay_refuses_a_scratch_model_and_bad_factors() -> None:
    scratch = build_qa_model(SwitchQAConfig(d_model=16, num_layers=1, num_heads=2, d_ff=32, num_experts=2))
    with pytest.raises(ConfigError, match="upcycled"):
        _param_groups(scratch, QATrainConfig(layer_lr_decay=0.8))
    torch.manual_seed(0)
    model = UpcycledHFQA(SwitchQAConfig(moe_layers=[]), backbone_config=tiny_bert_config())
    for bad in (0.0, 1.5):
        with pytest.raises(ConfigError, match="layer_lr_decay"):
            _param_groups(model, QATrainConfig(layer_lr_decay=bad))
