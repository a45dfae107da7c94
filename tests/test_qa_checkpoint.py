"""A saved QA model directory is read without trusting it: typed settings, sizes checked against the stored
tensors' shapes before anything is allocated (circuitml/untrusted.py); and a local transformers checkpoint's
config is bounded by its safetensors before ``from_pretrained`` builds it."""

from __future__ import annotations

import json

import pytest
import torch
from circuitml.tasks.qa import train as qa_train
from circuitml.tasks.qa.data import train_tokenizer
from circuitml.tasks.qa.ensemble import ReaderEnsemble
from circuitml.tasks.qa.model import SwitchQAConfig, build_qa_model
from circuitml.tasks.qa.train import QATrainConfig, load_qa_model, save_qa_model

from circuitml.errors import CheckpointError, ConfigError

TINY = dict(d_model=8, num_layers=1, num_heads=2, d_ff=16, num_experts=2, capacity_factor=None)


def _saved(tmp_path, readers: int = 1):
    tok = train_tokenizer(["where is paris", "paris is in france"] * 3, vocab_size=120)
    cfg_model = SwitchQAConfig(vocab_size=len(tok), max_position=64, **TINY)
    torch.manual_seed(0)
    if readers == 1:
        model, cfg = build_qa_model(cfg_model), QATrainConfig(max_length=32, stride=8, model=cfg_model)
    else:
        model = ReaderEnsemble([build_qa_model(cfg_model) for _ in range(readers)])
        cfg = QATrainConfig(max_length=32, stride=8, oof_folds=readers, oof_ensemble=True, model=cfg_model)
    save_qa_model(model, tok, cfg, tmp_path / "m", {})
    return tmp_path / "m", model


def _edit(folder, change) -> None:
    raw = json.loads((folder / "config.json").read_text())
    change(raw)
    (folder / "config.json").write_text(json.dumps(raw))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r["train"]["model"].update(d_model=10**9), r"train\.model\.d_model: expected at most 64"),
        (
            lambda r: r["train"]["model"].update(num_layers=10**9),
            r"train\.model\.num_layers: expected at most",
        ),
        (lambda r: r["train"].update(ensemble=10**9), r"settings name 1000000000 reader\(s\).*stores 1"),
        (lambda r: r["train"].update(max_length=10**12), r"train\.max_length: expected 8\.\.64 tokens"),
        (
            lambda r: r["train"]["model"].update(num_heads="2"),
            r"train\.model\.num_heads: expected an integer",
        ),
        (
            lambda r: r["train"].update(null_threshold="0.5"),
            r"null_threshold: expected a finite number",
        ),
        (lambda r: r["train"].update(bogus=1), r"train: unknown key 'bogus'"),
        (lambda r: r["train"].update(model=[1]), r"train\.model: expected a mapping"),
        (lambda r: r.update(train="x"), r"train: expected a mapping"),
        (lambda r: r["train"].update(verifier_state={"mean": [0.0]}), r"verifier_state: expected a fitted"),
    ],
)
def test_bad_settings_are_refused_in_one_line_naming_the_file(tmp_path, change, message) -> None:
    folder, _ = _saved(tmp_path)
    _edit(folder, change)
    with pytest.raises(CheckpointError, match=message) as info:
        load_qa_model(folder)
    assert str(folder / "config.json") in str(info.value) and "\n" not in str(info.value)


def test_sizes_that_disagree_with_the_stored_tensors_fail_before_any_weight_is_allocated(
    tmp_path, monkeypatch
) -> None:
    folder, _ = _saved(tmp_path)
    _edit(folder, lambda r: r["train"]["model"].update(d_ff=12))  # under every bound, but not what was saved
    built: list[str] = []
    real_build = qa_train.build_qa_model

    def spy(cfg):
        model = real_build(cfg)
        built.append(next(model.parameters()).device.type)
        return model

    monkeypatch.setattr(qa_train, "build_qa_model", spy)
    with pytest.raises(
        CheckpointError, match=r"down_proj\' of shape \(2, 8, 12\), model\.safetensors stores \(2, 8, 16\)"
    ):
        load_qa_model(folder)
    assert built == ["meta"]  # the only model built was the one that allocates nothing


def test_the_reader_count_must_match_the_stored_members(tmp_path) -> None:
    folder, model = _saved(tmp_path, readers=3)
    loaded, _, cfg = load_qa_model(folder)
    assert isinstance(loaded, ReaderEnsemble) and len(loaded.members) == 3 == qa_train.reader_count(cfg)
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    _edit(folder, lambda r: r["train"].update(oof_folds=2))
    with pytest.raises(CheckpointError, match=r"settings name 2 reader\(s\).*stores 3"):
        load_qa_model(folder)
    _edit(folder, lambda r: r["train"].update(oof_folds=3, oof_ensemble=False))  # one reader, three stored
    with pytest.raises(CheckpointError, match=r"settings name 1 reader\(s\).*stores 3"):
        load_qa_model(folder)


def test_a_model_saved_before_cross_fitting_existed_still_loads(tmp_path) -> None:
    folder, model = _saved(tmp_path)
    _edit(folder, lambda r: r["train"].pop("oof_ensemble"))
    loaded, _, cfg = load_qa_model(folder)
    assert cfg.oof_ensemble is False
    assert all(
        torch.equal(a, b)
        for a, b in zip(loaded.state_dict().values(), model.state_dict().values(), strict=True)
    )


def test_a_tokenizer_larger_than_the_embedding_table_is_refused(tmp_path) -> None:
    folder, _ = _saved(tmp_path)
    big = train_tokenizer([f"word{k} other{k}" for k in range(200)] * 2, vocab_size=400)
    big.save_pretrained(str(folder / "tokenizer"))
    with pytest.raises(
        CheckpointError, match=r"tokenizer: expected at most \d+ tokens \(the model's embeddings\)"
    ):
        load_qa_model(folder)


def test_a_local_checkpoint_whose_config_outgrows_its_weights_is_refused_before_it_is_built(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    from circuitml.lm import load_lm
    from tests.test_qa import tiny_bert_config

    folder = tmp_path / "bert"
    transformers.BertModel(tiny_bert_config()).save_pretrained(str(folder))
    raw = json.loads((folder / "config.json").read_text())
    raw["hidden_size"] = 10**6  # 60 x 10**6 floats for the embeddings alone, before any weight is read
    (folder / "config.json").write_text(json.dumps(raw))
    with pytest.raises(
        CheckpointError, match=r"--init-from: .*config\.json\.hidden_size: expected at most 64"
    ):
        build_qa_model(SwitchQAConfig(init_from=str(folder)))
    with pytest.raises(ConfigError, match=r"config\.json\.hidden_size: expected at most 64"):
        load_lm(folder)
