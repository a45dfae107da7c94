"""Seed ensembles of QA readers: one member is that reader, K members give the mean of their logits, and a saved
ensemble reloads and scores as trained."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from circuitml.datasets.squad import read_squad
from circuitml.tasks.qa import train as qa_train
from circuitml.tasks.qa.data import QAFeatures, question_mask, train_tokenizer
from circuitml.tasks.qa.ensemble import ReaderEnsemble, member_seeds
from circuitml.tasks.qa.model import SwitchQAConfig, UpcycledHFQA
from circuitml.tasks.qa.train import (
    QATrainConfig,
    _predict,
    ensemble_qa,
    evaluate_qa,
    load_qa_model,
    train_qa,
)

from circuitml.errors import ConfigError
from tests.test_qa import _squad, tiny_bert_config

TINY = dict(d_model=16, num_layers=1, num_heads=2, d_ff=32, num_experts=2, capacity_factor=None)


def _reader(seed: int) -> UpcycledHFQA:
    """A tiny BERT reader with every span-head option (bilinear, sentence prior, independent head), its
    bilinear term moved off zero so it matters."""
    torch.manual_seed(seed)
    cfg = SwitchQAConfig(
        span_head="bilinear",
        sentence_prior=True,
        independent_span=1.0,
        moe_layers=[1],
        capacity_factor=None,  # no token dropped, so a window's logits do not depend on its batch
    )
    model = UpcycledHFQA(cfg, backbone_config=tiny_bert_config())
    with torch.no_grad():
        model.qa_bilinear.weight.normal_(std=0.1)
    return model.eval()


def _windows() -> QAFeatures:
    g = torch.Generator().manual_seed(0)
    f, t = 5, 20
    ids = torch.randint(5, 60, (f, t), generator=g)
    mask = torch.ones(f, t, dtype=torch.long)
    mask[:, 14:] = 0
    mask[2, 9:] = 0  # right-padded windows of different lengths: prediction trims the common padding
    ids = ids * mask
    context = mask.bool().clone()
    context[:, :6] = False
    segments = context.long()
    feats = QAFeatures(ids, mask, ids[:, 0], ids[:, 0], torch.arange(f), context, None, segments)
    feats.prior = torch.randn(f, t, 2, generator=g)
    return feats


def test_an_ensemble_of_one_reader_is_that_reader() -> None:
    reader, feats = _reader(0), _windows()
    alone = _predict(reader, feats, batch_size=2)
    ensemble = _predict(ReaderEnsemble([reader]), feats, batch_size=2)
    for a, b in [(alone[0], ensemble[0]), (alone[1], ensemble[1]), *zip(alone[2], ensemble[2], strict=True)]:
        assert torch.equal(a, b)
    assert member_seeds(7, 1) == [7]


def test_ensemble_logits_are_the_mean_of_the_members_full_forward() -> None:
    readers, feats = [_reader(s) for s in (1, 2, 3)], _windows()
    start, end, (ind_start, ind_end) = _predict(ReaderEnsemble(readers), feats, batch_size=2)
    # reference: each member on the untrimmed windows, one at a time, then averaged where a token is real
    per_member = []
    with torch.no_grad():
        for r in readers:
            out = r(
                feats.input_ids,
                feats.attention_mask,
                token_type_ids=feats.token_type_ids,
                question_mask=question_mask(feats.attention_mask, feats.context_mask),
                prior=feats.prior,
            )
            ind = r.qa_independent(out.hidden)
            per_member.append(torch.stack([out.start_logits, out.end_logits, ind[..., 0], ind[..., 1]]))
    reference = torch.stack(per_member).mean(0)
    real = feats.attention_mask.bool()
    for got, want in zip([start, end, ind_start, ind_end], reference, strict=True):
        torch.testing.assert_close(got[real], want[real], rtol=1e-5, atol=1e-5)
        assert torch.isfinite(got).all()  # padding stays at the dtype's minimum, never -inf
    assert not torch.allclose(per_member[0][0][real], start[real], atol=1e-3)  # the members do differ


def test_ensemble_refuses_mixed_span_heads_and_bad_counts() -> None:
    torch.manual_seed(0)
    linear = UpcycledHFQA(SwitchQAConfig(moe_layers=[1]), backbone_config=tiny_bert_config())
    with pytest.raises(ConfigError, match="span head"):
        ReaderEnsemble([_reader(0), linear])
    with pytest.raises(ConfigError, match=">= 1"):
        member_seeds(0, 0)


def test_qa_train_ensemble_saves_reloads_and_keeps_each_member_as_trained_alone(tmp_path) -> None:
    data = _squad(tmp_path)
    # no --tokenizer: each run trains its own on the same training contexts, and the WordPiece trainer is
    # deterministic (tasks/qa/wordpiece.py), so the readers read the same tokens and combine
    base = dict(
        data=str(data),
        eval_data=str(data),
        epochs=1,
        batch_size=4,
        max_length=48,
        stride=16,
        lr=1e-3,
        val_fraction=0.34,
        seed=3,
        split_seed=3,  # every run carves the same validation contexts
    )
    metrics = train_qa(QATrainConfig(**base, ensemble=2, model=SwitchQAConfig(**TINY)), tmp_path / "ens")
    model, tok, cfg = load_qa_model(tmp_path / "ens")
    assert isinstance(model, ReaderEnsemble) and len(model.members) == 2 and cfg.ensemble == 2
    assert (
        evaluate_qa(tmp_path / "ens", data) == metrics["eval"]
    )  # the reload applies the ensemble's threshold
    # member k is the reader a single run of seed 3 + k trains: same weights, same scores at its own threshold
    for k, seed in enumerate(member_seeds(3, 2)):
        single = train_qa(
            QATrainConfig(**{**base, "seed": seed}, model=SwitchQAConfig(**TINY)), tmp_path / f"s{k}"
        )
        alone = load_qa_model(tmp_path / f"s{k}")[0]
        for key, value in alone.state_dict().items():
            assert torch.equal(model.members[k].state_dict()[key], value), (k, key)
        member = metrics["members"][k]
        assert member["eval"] == single["eval"]
        assert member["null_threshold"] == single["null_threshold"]
        assert np.isclose(member["val_f1"], single["val_f1"])
    # the saved single readers, combined afterwards, are the same ensemble with the same decision and scores
    saved_tokenizers = [sorted((tmp_path / d / "tokenizer").iterdir()) for d in ("ens", "s0", "s1")]
    for files in saved_tokenizers[1:]:
        assert [f.read_bytes() for f in files] == [f.read_bytes() for f in saved_tokenizers[0]]
    combined = ensemble_qa([tmp_path / "s0", tmp_path / "s1"], tmp_path / "combined")
    assert combined["eval"] == metrics["eval"] and combined["null_threshold"] == metrics["null_threshold"]
    assert combined["member_seeds"] == [3, 4] and evaluate_qa(tmp_path / "combined", data) == metrics["eval"]
    other = QATrainConfig(**{**base, "seed": 5, "epochs": 2}, model=SwitchQAConfig(**TINY))
    train_qa(other, tmp_path / "other")
    with pytest.raises(ConfigError, match="differs in epochs"):
        ensemble_qa([tmp_path / "s0", tmp_path / "other"], tmp_path / "bad")
    with pytest.raises(ConfigError, match="single reader"):
        ensemble_qa([tmp_path / "ens", tmp_path / "s0"], tmp_path / "bad")
    assert not (tmp_path / "bad").exists()
    from cli import main

    argv = ["qa", "ensemble", "--model", str(tmp_path / "s0"), "--model", str(tmp_path / "s1")]
    assert main([*argv, "--out", str(tmp_path / "cli")]) == 0
    assert evaluate_qa(tmp_path / "cli", data) == metrics["eval"]
    assert main([*argv[:4], "--out", str(tmp_path / "one")]) == 2  # one reader is no ensemble


def test_ensemble_cli_combines_readers_of_one_split_and_tokenizer_and_refuses_the_rest(
    tmp_path, capsys
) -> None:
    from cli import main

    data = _squad(tmp_path)
    tiny = ["--d-model", "16", "--layers", "1", "--experts", "2", "--epochs", "1", "--max-length", "48"]
    tiny += ["--stride", "16", "--batch-size", "4"]
    for bad in (["--ensemble", "2", "--oof-folds", "2"], ["--ensemble", "0"]):
        argv = ["qa", "train", "--data", str(data), "--out", str(tmp_path / "m"), *bad, *tiny]
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "qa: ensemble:" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "m").exists()
    # readers trained by the CLI with one split seed (so one tokenizer trained from it) combine; other tokens
    # (a tokenizer given with --tokenizer) are refused
    examples, _ = read_squad(data)
    texts = [e.context for e in examples] + [e.question for e in examples]
    train_tokenizer(texts, vocab_size=150).save_pretrained(str(tmp_path / "tok2"))
    for seed, tok in ((0, []), (1, []), (2, ["--tokenizer", str(tmp_path / "tok2")])):
        argv = ["qa", "train", "--data", str(data), "--out", str(tmp_path / f"r{seed}"), "--seed", str(seed)]
        assert main([*argv, "--split-seed", "5", *tok, *tiny]) == 0
    combine = ["qa", "ensemble", "--model", str(tmp_path / "r0"), "--model", str(tmp_path / "r1")]
    assert main([*combine, "--out", str(tmp_path / "e")]) == 0
    assert load_qa_model(tmp_path / "e")[2].split_seed == 5
    capsys.readouterr()
    assert main([*combine, "--model", str(tmp_path / "r2"), "--out", str(tmp_path / "e2")]) == 2
    err = capsys.readouterr().err
    assert "tokenizer" in err and len(err.strip().splitlines()) == 1
    with pytest.raises(ConfigError, match="out-of-fold"):
        qa_train.train_qa(
            QATrainConfig(data=str(data), ensemble=3, oof_folds=2, model=SwitchQAConfig(**TINY)),
            tmp_path / "m",
        )
