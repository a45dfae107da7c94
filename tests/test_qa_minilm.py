"""QA from a pretrained start: EDA keeps answer spans valid, MiniLM upcycles exactly, batches trim losslessly."""

from __future__ import annotations

import random

import pytest
import torch
from circuitml.datasets.squad import SquadAnswer, SquadExample
from circuitml.tasks.qa.augment import augment_examples, eda_words
from circuitml.tasks.qa.model import SwitchQAConfig, UpcycledHFQA
from circuitml.tasks.qa.train import QATrainConfig, _freeze_bottom, _predict, _resolve_init, train_qa
from hypothesis import given, settings
from hypothesis import strategies as st

from circuitml.errors import ConfigError
from tests.test_lm import needs_minilm
from tests.test_qa import _squad, tiny_bert_config

WORDS = st.text(alphabet="abcdefgh,.()'", min_size=1, max_size=6)


@settings(max_examples=60, deadline=None)
@given(
    before=st.lists(WORDS, max_size=12),
    answer=st.lists(WORDS, min_size=1, max_size=3),
    after=st.lists(WORDS, max_size=12),
    cut=st.integers(0, 2),
    seed=st.integers(0, 10_000),
)
def test_eda_keeps_every_answer_span(before, answer, after, cut, seed) -> None:
    # the answer may start or end inside a word ("France" in "France."), and a second gold answer overlaps it
    ctx = " ".join([*before, "X" + " ".join(answer) + "Y", *after])
    text = " ".join(answer)
    start = ctx.index("X" + text) + 1
    inner = text[: max(1, len(text) - cut)]
    ex = SquadExample(
        "q", "t", ctx, "what is the thing here ?", [SquadAnswer(text, start), SquadAnswer(inner, start)]
    )
    for aug in augment_examples([ex], copies=3, alpha=0.3, seed=seed)[1:]:
        assert [a.text for a in aug.answers] == [text, inner]
        for a in aug.answers:
            assert aug.context[a.start : a.start + len(a.text)] == a.text
        assert aug.question.split()  # deletion never empties a question


def test_eda_is_reproducible_and_changes_text() -> None:
    ex = SquadExample(
        "q1",
        "t",
        "the quick brown fox jumps over the lazy dog near the river bank today",
        "who jumps over the dog ?",
        [SquadAnswer("fox", 16)],
    )
    imp = SquadExample("q2", "t", ex.context, "what is the capital of mars ?", [], True)
    a = augment_examples([ex, imp], copies=2, alpha=0.2, seed=3)
    b = augment_examples([ex, imp], copies=2, alpha=0.2, seed=3)
    assert [(e.id, e.question, e.context) for e in a] == [(e.id, e.question, e.context) for e in b]
    assert [e.id for e in a] == ["q1", "q2", "q1~eda0", "q2~eda0", "q1~eda1", "q2~eda1"]
    assert any(e.context != ex.context or e.question != ex.question for e in a[2:])
    assert all(e.is_impossible and not e.answers for e in a if e.id.startswith("q2"))


def test_eda_operations_by_definition() -> None:
    rng = random.Random(0)
    words = "a b c d e f g h i j".split()
    assert sorted(eda_words(words, "swap", 0.2, rng)) == sorted(words)  # a permutation
    inserted = eda_words(words, "insert", 0.2, rng)
    assert len(inserted) == 12 and set(inserted) <= set(words)  # n = round(0.2 * 10) copies of its own words
    locked = [w in "cd" for w in words]
    for _ in range(20):
        out = eda_words(words, "delete", 0.5, rng, locked)
        assert "c" in out and "d" in out and out.index("c") + 1 == out.index("d")
    with pytest.raises(ConfigError, match="operation"):
        eda_words(words, "synonym", 0.1, rng)
    with pytest.raises(ConfigError, match="alpha"):
        augment_examples([], alpha=1.5)


def _tiny_bert(tmp_path):
    transformers = pytest.importorskip("transformers")
    cfg = tiny_bert_config()
    transformers.AutoModel.from_config(cfg).save_pretrained(tmp_path / "ckpt")
    return UpcycledHFQA(SwitchQAConfig(init_from=str(tmp_path / "ckpt"), num_experts=2)).eval()


def test_trimmed_prediction_equals_full_padding(tmp_path) -> None:
    from circuitml.tasks.qa.data import QAFeatures

    model = _tiny_bert(tmp_path)
    ids = torch.randint(5, 60, (5, 20))
    mask = torch.ones(5, 20, dtype=torch.long)
    mask[:, 13:] = 0  # every window right-padded: trimming drops 7 columns
    mask[1, 9:] = 0
    ids = ids * mask
    feats = QAFeatures(ids, mask, ids[:, 0], ids[:, 0], torch.arange(5), mask.bool(), None)
    start, end = _predict(model, feats, batch_size=2)
    with torch.no_grad():
        full = model(ids, mask)
    assert start.shape == (5, 20)
    torch.testing.assert_close(start, full.start_logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(end, full.end_logits, rtol=1e-5, atol=1e-5)


def test_freeze_bottom_freezes_embeddings_and_first_layers(tmp_path) -> None:
    model = _tiny_bert(tmp_path)
    _freeze_bottom(model, 1)
    assert not any(p.requires_grad for p in model.backbone.embeddings.parameters())
    assert not any(p.requires_grad for p in model._layers()[0].parameters())
    assert all(p.requires_grad for p in model._layers()[1].parameters())
    with pytest.raises(ConfigError, match="freeze_bottom"):
        _freeze_bottom(model, 9)


@needs_minilm
def test_minilm_upcycled_into_moe_is_the_dense_minilm_at_init() -> None:
    from circuitml.lm import load_lm

    cfg = _resolve_init(
        SwitchQAConfig(
            init_from="all-minilm-l6-v2", router="topk", top_k=2, capacity_factor=None, normalize_weights=True
        )
    )
    model = UpcycledHFQA(cfg).eval()
    assert len(model.moe_layers()) == 4  # the middle layers 1..4 of six
    dense, tok = load_lm("all-minilm-l6-v2")
    enc = tok(
        ["Who ruled Normandy?", "The Normans gave their name to Normandy, a region in France."],
        padding=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        want = dense(**enc).last_hidden_state
        model._set_mask(enc["attention_mask"])
        got = model.backbone(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]
        ).last_hidden_state
    keep = enc["attention_mask"].bool()
    torch.testing.assert_close(got[keep], want[keep], rtol=1e-4, atol=1e-4)


@needs_minilm
@pytest.mark.slow
def test_minilm_switch_eda_trains_end_to_end(tmp_path) -> None:
    data = _squad(tmp_path)
    cfg = QATrainConfig(
        data=str(data),
        eval_fraction=0.34,
        max_length=48,
        stride=16,
        batch_size=4,
        epochs=1,
        lr=1e-4,
        eda_copies=1,
        freeze_bottom=4,
        split_seed=0,
        model=SwitchQAConfig(init_from="all-minilm-l6-v2", num_experts=2, moe_layers=[4]),
    )
    metrics = train_qa(cfg, tmp_path / "model")
    # 4 contexts x 2 questions, one context of them kept to tune the null threshold; EDA copies come on top
    assert (metrics["train_questions"], metrics["val_questions"]) == (6, 2)
    assert metrics["train_questions_augmented"] == 12 and metrics["steps"] >= 3
    assert {"HasAns_f1", "NoAns_exact"} <= set(metrics["eval"])
