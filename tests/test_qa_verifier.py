"""Read + Verify's answer verifier: its features against a per-example reference, its threshold against the SQuAD
script's search, and its fit on out-of-fold questions only."""

from __future__ import annotations

import math

import pytest
import torch
from circuitml.datasets.squad import read_squad
from circuitml.tasks.qa import train as qa_train
from circuitml.tasks.qa.data import QAFeatures, SpanPredictions, best_spans
from circuitml.tasks.qa.metrics import best_null_threshold, squad_scores
from circuitml.tasks.qa.model import SwitchQAConfig
from circuitml.tasks.qa.train import QATrainConfig, evaluate_qa, load_qa_model, train_qa
from circuitml.tasks.qa.verifier import FEATURES, AnswerVerifier, verifier_features

from circuitml.errors import ConfigError
from tests.test_qa import _squad

TINY = dict(d_model=16, num_layers=1, num_heads=2, d_ff=32, num_experts=2, capacity_factor=None)


def _windows(seed: int = 0, n_ex: int = 3, t: int = 9):
    g = torch.Generator().manual_seed(seed)
    example_index = torch.tensor([0, 0, 1, 2, 2])
    f = len(example_index)
    context = torch.zeros(f, t, dtype=torch.bool)
    context[:, 4:] = True
    context[3, 4:] = False  # example 2's first window holds no context: its second one must be chosen
    context[4, 7:] = False
    start, end = torch.randn(f, t, generator=g), torch.randn(f, t, generator=g)
    prior = torch.randn(f, t, 2, generator=g)
    feats = QAFeatures(
        torch.zeros(f, t, dtype=torch.long),
        torch.ones(f, t, dtype=torch.long),
        torch.zeros(f, dtype=torch.long),
        torch.zeros(f, dtype=torch.long),
        example_index,
        context,
        None,
        prior=prior,
    )
    independent = (torch.randn(f, t, generator=g), torch.randn(f, t, generator=g))
    return feats, start, end, independent


def test_verifier_features_equal_a_per_example_reference() -> None:
    feats, start, end, (s2, e2) = _windows()
    max_len = 3
    best = best_spans(3, feats, start, end, max_len)
    x = verifier_features(feats, best, start, end, (s2, e2), max_len)
    assert x.shape == (3, len(FEATURES))
    for k in range(3):
        # naive: every window of the example, every valid span, python loops
        cands, nulls = [], []
        for w in range(len(feats)):
            if int(feats.example_index[w]) != k:
                continue
            nulls.append(float(start[w, 0] + end[w, 0]))
            ctx = [i for i in range(start.shape[1]) if feats.context_mask[w, i]]
            for i in ctx:
                for j in ctx:
                    if i <= j < i + max_len:
                        cands.append((float(start[w, i] + end[w, j]), w, i, j))
        score, w, i, j = max(cands)
        ls, le = start[w].log_softmax(0), end[w].log_softmax(0)
        span2 = max(
            (float(s2[w, a] + e2[w, b]), a, b)
            for a in range(start.shape[1])
            for b in range(start.shape[1])
            if feats.context_mask[w, a] and feats.context_mask[w, b] and a <= b < a + max_len
        )
        overlap = max(0, min(j, span2[2]) - max(i, span2[1]) + 1)
        expect = [
            min(nulls) - score,
            score,
            min(nulls),
            float(ls[i] + le[j]),
            float(ls[0] + le[0]),
            math.log(j - i + 1),
            float(feats.prior[w, 0, 1]),
            float(feats.prior[w, i, 0]),
            2 * overlap / ((j - i + 1) + (span2[2] - span2[1] + 1)),
            span2[0] - float(s2[w, i] + e2[w, j]),
        ]
        torch.testing.assert_close(x[k], torch.tensor(expect), rtol=1e-5, atol=1e-5)


def _scored(n: int = 40, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    ids = [f"q{k}" for k in range(n)]
    golds = {q: (["paris"] if k % 2 else []) for k, q in enumerate(ids)}
    texts = ["paris" if k % 3 else "lyon" for k in range(n)]
    margin = torch.randn(n, generator=g) - 0.8 * torch.tensor([k % 2 for k in range(n)], dtype=torch.float)
    margin[5] = float("inf")  # no span at all: never answered
    return SpanPredictions(ids, texts, margin), golds


def test_verifier_threshold_maximizes_f1_over_every_cut() -> None:
    spans, golds = _scored()
    g = torch.Generator().manual_seed(2)
    x = torch.randn(len(spans.ids), len(FEATURES), generator=g)
    x[:, 0] = torch.where(torch.isfinite(spans.null_margin), spans.null_margin, 0.0)
    v = AnswerVerifier.fit(x, spans, golds)
    margins = v.margins(x, spans.null_margin)
    assert math.isinf(margins[5])
    # brute force: answer exactly the questions whose verifier margin is <= t, for t at every margin
    best = max(
        squad_scores(SpanPredictions(spans.ids, spans.texts, margins).answers(float(t)), golds)["f1"]
        for t in [*margins[torch.isfinite(margins)].tolist(), -1e9]
    )
    assert v.fitted_f1 == pytest.approx(best)
    got = squad_scores(v.verify(spans, x).answers(v.threshold), golds)["f1"]
    assert got == pytest.approx(v.fitted_f1)
    assert AnswerVerifier.from_dict(v.to_dict()) == v


def test_verifier_on_the_null_margin_alone_is_the_tuned_threshold() -> None:
    # one informative feature: the regression is monotone in it, so it answers the same questions as
    # the SQuAD script's threshold on the raw margin, at the same F1
    spans, golds = _scored(seed=3)
    x = torch.zeros(len(spans.ids), len(FEATURES))
    x[:, 0] = torch.where(torch.isfinite(spans.null_margin), spans.null_margin, 0.0)
    v = AnswerVerifier.fit(x, spans, golds)
    texts = dict(zip(spans.ids, spans.texts, strict=True))
    margins = dict(zip(spans.ids, spans.null_margin.tolist(), strict=True))
    _, plain_f1 = best_null_threshold(texts, margins, golds)
    assert v.coef[0] < 0 and v.fitted_f1 == pytest.approx(plain_f1)


def test_verifier_and_oof_fitting_refuse_what_they_cannot_honour(tmp_path) -> None:
    data = _squad(tmp_path)
    base = dict(
        data=str(data), epochs=1, batch_size=4, max_length=48, stride=16, model=SwitchQAConfig(**TINY)
    )
    with pytest.raises(ConfigError, match="val_fraction > 0 or oof_folds"):
        train_qa(QATrainConfig(**base, verifier=True, val_fraction=0.0), tmp_path / "m")
    with pytest.raises(ConfigError, match="null_threshold"):
        train_qa(QATrainConfig(**base, verifier=True, null_threshold=0.0), tmp_path / "m")
    with pytest.raises(ConfigError, match="oof_folds"):
        train_qa(QATrainConfig(**base, oof_folds=50), tmp_path / "m")
    with pytest.raises(ConfigError, match="oof_ensemble.*oof_folds"):
        train_qa(QATrainConfig(**base, oof_ensemble=True), tmp_path / "m")
    v1 = _squad(tmp_path, with_impossible=False)
    v1.write_text(v1.read_text().replace('"v2.0"', '"1.1"').replace(', "is_impossible": false', ""))
    with pytest.raises(ConfigError, match="v2.0"):
        train_qa(QATrainConfig(**{**base, "data": str(v1)}, verifier=True), tmp_path / "m")
    assert not (tmp_path / "m").exists()


def _spy_fit_reader(monkeypatch) -> list[tuple[object, set[str]]]:
    """Every reader ``_fit_reader`` trains from now on, with the contexts it trained on, in training order."""
    trained: list[tuple[object, set[str]]] = []
    fit_reader = qa_train._fit_reader

    def spy(cfg, model_cfg, tokenizer, train_ex, dev, on_step=None):
        model, stats = fit_reader(cfg, model_cfg, tokenizer, train_ex, dev, on_step)
        trained.append((model, {e.context for e in train_ex}))
        return model, stats

    monkeypatch.setattr(qa_train, "_fit_reader", spy)
    return trained


def _tiny_cfg(data, **overrides) -> QATrainConfig:
    """Two epochs of the tiny scratch reader on ``data``, a fifth of the contexts held out."""
    return QATrainConfig(
        data=str(data),
        eval_fraction=0.2,
        epochs=2,
        batch_size=4,
        max_length=48,
        stride=16,
        lr=1e-3,
        model=SwitchQAConfig(**TINY),
        **overrides,
    )


def test_verifier_is_fitted_on_out_of_fold_questions_only(tmp_path, monkeypatch) -> None:
    data = _squad(tmp_path)
    trained = _spy_fit_reader(monkeypatch)  # the list keeps the readers alive, so no id() is reused
    read: list[tuple[int, list[str]]] = []  # (reader, contexts of the questions it predicted)
    fitted: list[list[str]] = []
    predict, fit = qa_train.predict_with_features, AnswerVerifier.fit

    def spy_predict(model, tokenizer, examples, cfg):
        read.append((id(model), [e.context for e in examples]))
        return predict(model, tokenizer, examples, cfg)

    def spy_fit(x, spans, golds, l2=1.0):
        fitted.append(list(spans.ids))
        return fit(x, spans, golds, l2)

    monkeypatch.setattr(qa_train, "predict_with_features", spy_predict)
    monkeypatch.setattr(AnswerVerifier, "fit", staticmethod(spy_fit))
    metrics = train_qa(_tiny_cfg(data, verifier=True, oof_folds=2), tmp_path / "model")
    trained_on = {id(model): contexts for model, contexts in trained}
    examples, _ = read_squad(data)
    train_ex, eval_ex = qa_train.split_by_context(examples, 0.2, 0)
    # two fold readers, then the final one on every training context (no validation split is carved out)
    assert len(trained_on) == 3 and metrics["val_questions"] == 0
    final = [m for m, ctx in trained_on.items() if ctx == {e.context for e in train_ex}]
    assert len(final) == 1
    oof = [(m, ctx) for m, ctx in read if m != final[0]]
    assert len(oof) == 2
    for reader, contexts in oof:  # every out-of-fold question comes from a reader that never saw its context
        assert not set(contexts) & trained_on[reader]
    # the verifier saw exactly the training questions, each once, and none of the held-out ones
    assert len(fitted) == 1 and sorted(fitted[0]) == sorted(e.id for e in train_ex)
    assert metrics["oof_questions"] == len(train_ex)
    assert not set(fitted[0]) & {e.id for e in eval_ex}
    # the saved model applies the fitted verifier: a reload scores the held-out questions the same way
    model, tok, saved = load_qa_model(tmp_path / "model")
    assert saved.verifier_state is not None and saved.null_threshold == saved.verifier_state["threshold"]
    spans = qa_train.predict_examples(model, tok, eval_ex, saved)
    assert squad_scores(spans.answers(saved.null_threshold), qa_train._golds(eval_ex)) == metrics["eval"]
    assert {"eval_plain_threshold", "val_f1_plain_threshold"} <= set(metrics)


@pytest.mark.slow
def test_verifier_model_round_trips_through_qa_eval(tmp_path) -> None:
    data = _squad(tmp_path)
    cfg = QATrainConfig(
        data=str(data),
        eval_data=str(data),
        epochs=1,
        batch_size=4,
        max_length=48,
        stride=16,
        verifier=True,
        val_fraction=0.34,
        model=SwitchQAConfig(**TINY),
    )
    metrics = train_qa(cfg, tmp_path / "model")
    assert metrics["val_questions"] == 4
    assert evaluate_qa(tmp_path / "model", data) == metrics["eval"]


def test_verifier_run_stores_the_plain_tuned_threshold_beside_the_verifiers(tmp_path) -> None:
    import dataclasses

    torch.manual_seed(0)
    data = _squad(tmp_path)
    cfg = QATrainConfig(
        data=str(data),
        eval_fraction=0.34,
        val_fraction=0.3,
        epochs=1,
        batch_size=4,
        max_length=48,
        stride=16,
        threads=1,
        verifier=True,
        model=SwitchQAConfig(**TINY),
    )
    metrics = train_qa(cfg, tmp_path / "model")
    model, tok, saved = load_qa_model(tmp_path / "model")
    # the saved decision is the verifier's; null_threshold keeps naming the threshold the model applies
    assert metrics["verifier_threshold"] == saved.verifier_state["threshold"] == metrics["null_threshold"]
    # the plain threshold: tuned on the reader's null margins of the same validation questions
    examples, _ = read_squad(data)
    train_ex, eval_ex = qa_train.split_by_context(examples, 0.34, 0)
    _, val_ex = qa_train.split_by_context(train_ex, 0.3, 1)
    reader_cfg = dataclasses.replace(saved, verifier_state=None)
    spans = qa_train.predict_examples(model, tok, val_ex, reader_cfg)
    want, val_f1 = best_null_threshold(*qa_train._texts_and_margins(spans), qa_train._golds(val_ex))
    assert metrics["plain_null_threshold"] == want and metrics["val_f1_plain_threshold"] == val_f1
    spans = qa_train.predict_examples(model, tok, eval_ex, reader_cfg)
    assert squad_scores(spans.answers(want), qa_train._golds(eval_ex)) == metrics["eval_plain_threshold"]


def test_qa_train_cli_fits_the_verifier_out_of_fold_and_refuses_a_fixed_threshold(tmp_path, capsys) -> None:
    from cli import main

    data = _squad(tmp_path)
    tiny = ["--d-model", "16", "--layers", "1", "--experts", "2", "--epochs", "1", "--max-length", "48"]
    tiny += ["--stride", "16", "--batch-size", "4"]
    out = tmp_path / "model"
    code = main(
        ["qa", "train", "--data", str(data), "--out", str(out), "--verifier", "--oof-folds", "2", *tiny]
    )
    printed = capsys.readouterr().out
    assert code == 0 and "verifier threshold" in printed and "out-of-fold" in printed
    assert load_qa_model(out)[2].verifier_state is not None
    bad = [
        "qa",
        "train",
        "--data",
        str(data),
        "--out",
        str(tmp_path / "m"),
        "--verifier",
        "--null-threshold",
        "0",
    ]
    assert main(bad + tiny) == 2
    err = capsys.readouterr().err
    assert "qa: verifier:" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_qa_train_cli_refuses_a_validation_fraction_that_out_of_fold_fitting_would_ignore(
    tmp_path, capsys
) -> None:
    from cli import main

    data = _squad(tmp_path)
    out = tmp_path / "m"
    args = [
        "qa",
        "train",
        "--data",
        str(data),
        "--out",
        str(out),
        "--oof-folds",
        "2",
        "--val-fraction",
        "0.2",
    ]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--val-fraction 0.2 with --oof-folds 2" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_a_cross_fitted_model_is_its_fold_readers_and_its_decision_their_out_of_fold_scores(
    tmp_path, monkeypatch
) -> None:
    data = _squad(tmp_path)
    trained_on = _spy_fit_reader(monkeypatch)
    steps: list[tuple[int, int]] = []
    cfg = _tiny_cfg(data, oof_folds=3, oof_ensemble=True)
    metrics = train_qa(cfg, tmp_path / "model", on_step=lambda s, t, loss: steps.append((s, t)))
    examples, _ = read_squad(data)
    train_ex, eval_ex = qa_train.split_by_context(examples, 0.2, 0)
    everything = {e.context for e in train_ex}
    # three fold readers and no final one: each left out a third of the training contexts
    assert len(trained_on) == 3 and all(ctx < everything for _, ctx in trained_on)
    assert metrics["oof_questions"] == len(train_ex) and metrics["val_questions"] == 0
    assert metrics["steps"] == len(steps) and steps[-1][0] == steps[-1][1]  # every fold's steps shown
    model, tok, saved = load_qa_model(tmp_path / "model")
    # the decision: the best threshold on the fold readers' out-of-fold margins, recomputed here
    texts, margins = {}, {}
    for reader, ctx in trained_on:
        spans = qa_train.predict_examples(reader, tok, [e for e in train_ex if e.context not in ctx], saved)
        texts.update(zip(spans.ids, spans.texts, strict=True))
        margins.update(zip(spans.ids, spans.null_margin.tolist(), strict=True))
    assert len(margins) == len(train_ex)
    threshold, _ = best_null_threshold(texts, margins, qa_train._golds(train_ex))
    assert saved.null_threshold == metrics["plain_null_threshold"] == threshold
    # the saved model is the fold readers themselves, and a reload answers as the run did
    assert isinstance(model, qa_train.ReaderEnsemble) and len(model.members) == 3
    for member, (reader, _) in zip(model.members, trained_on, strict=True):
        for a, b in zip(member.state_dict().values(), reader.state_dict().values(), strict=True):
            assert torch.equal(a, b.cpu())
    spans = qa_train.predict_examples(model, tok, eval_ex, saved)
    assert squad_scores(spans.answers(saved.null_threshold), qa_train._golds(eval_ex)) == metrics["eval"]
    assert len(metrics["members"]) == 3 and all("eval" in m for m in metrics["members"])
    assert evaluate_qa(tmp_path / "model", data)["f1"] >= 0  # qa eval reloads the ensemble
