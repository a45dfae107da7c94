"""QA from a pretrained start: EDA keeps answer spans valid, MiniLM upcycles exactly, batches trim losslessly."""

from __future__ import annotations

import random

import pytest
import torch
from circuitml.datasets.squad import SquadAnswer, SquadExample
from circuitml.tasks.qa.augment import SynonymTable, augment_examples, eda_words
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
    table = SynonymTable({"abc": ["xyz"], "fed": ["qq", "rr"], "bad": ["Good"]})
    for aug in [
        *augment_examples([ex], copies=3, alpha=0.3, seed=seed)[1:],
        *augment_examples([ex], copies=3, alpha=0.3, seed=seed, synonyms=table)[1:],
    ]:
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
        eda_words(words, "paraphrase", 0.1, rng)
    with pytest.raises(ConfigError, match="synonym table"):
        eda_words(words, "synonym", 0.1, rng)
    with pytest.raises(ConfigError, match="alpha"):
        augment_examples([], alpha=1.5)


def test_synonym_replacement_by_definition() -> None:
    table = SynonymTable({"fox": ["wolf"], "river": ["stream", "creek"], "lazy": ["idle"]})
    words = "The Fox, saw the river near a lazy dog".split()
    rng = random.Random(1)
    for _ in range(20):
        out = eda_words(words, "synonym", 0.2, rng, synonyms=table)  # n = round(0.2 * 9) = 2 replacements
        changed = [(a, b) for a, b in zip(words, out, strict=True) if a != b]
        assert len(changed) == 2
        for before, after in changed:
            core = before.strip(",").lower()
            assert after.strip(",").lower() in table[core]
            assert after[0].isupper() == before[0].isupper() and after.endswith(",") == before.endswith(",")
    locked = [w in ("river", "lazy") for w in words]
    assert eda_words(words, "synonym", 0.5, rng, locked, table) == ["The", "Wolf,", *words[2:]]
    # insertion with a table inserts a synonym of a word of the text
    inserted = eda_words("fox river".split(), "insert", 0.5, random.Random(0), synonyms=table)
    assert len(inserted) == 3 and set(inserted) - {"fox", "river"} <= {"wolf", "stream", "creek"}


def test_synonym_table_from_embeddings_equals_brute_force() -> None:
    gen = torch.Generator().manual_seed(0)
    vocab = {
        w: i for i, w in enumerate("alpha alphas beta gamma delta the epsilon ##ing zeta eta theta".split())
    }
    emb = torch.randn(len(vocab), 8, generator=gen)
    table = SynonymTable.from_embeddings(vocab, emb, ["Alpha", "beta", "the", "unknown"], k=3, min_cosine=0.0)
    unit = torch.nn.functional.normalize(emb, dim=1)
    for word in ("alpha", "beta"):
        ranked = sorted(
            (t for t in vocab if t.isalpha() and t != "the" and t[:4] != word[:4]),
            key=lambda t: -float(unit[vocab[word]] @ unit[vocab[t]]),
        )
        want = [t for t in ranked if float(unit[vocab[word]] @ unit[vocab[t]]) >= 0.0][:3]
        assert list(table[word]) == want
    assert table["the"] == () and table["unknown"] == ()  # stop words and unknown words get none


def test_eda_synonyms_need_a_pretrained_model_and_eda(tmp_path) -> None:
    data = _squad(tmp_path)
    cfg = QATrainConfig(data=str(data), eda_copies=1, eda_synonyms=True, epochs=1)
    with pytest.raises(ConfigError, match="word embeddings"):
        train_qa(cfg, tmp_path / "m")
    with pytest.raises(ConfigError, match="eda_copies"):
        train_qa(QATrainConfig(data=str(data), eda_synonyms=True, epochs=1), tmp_path / "m")
    assert not (tmp_path / "m").exists()


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
    start, end, _ = _predict(model, feats, batch_size=2)
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


# ---------------------------------------------------------------- span head: DrQA's bilinear term, sentence prior
SENT_WORDS = st.text(alphabet="abcXY. !?\n'", min_size=0, max_size=60)


@settings(max_examples=200, deadline=None)
@given(text=SENT_WORDS)
def test_sentence_spans_cover_every_character_in_order(text) -> None:
    from circuitml.tasks.qa.sentence_prior import sentence_spans

    spans = sentence_spans(text)
    assert spans and all(a < b or (a, b) == (0, len(text)) for a, b in spans)
    assert all(b1 <= a2 for (_, b1), (a2, _) in zip(spans, spans[1:], strict=False))
    covered = {i for a, b in spans for i in range(a, b)}
    assert all(i in covered for i, c in enumerate(text) if not c.isspace())


def test_sentence_spans_split_at_sentence_ends() -> None:
    from circuitml.tasks.qa.sentence_prior import sentence_spans

    text = 'Rollo came in 911. He was a Viking! "Why?" Nobody knows. It was e.g. fine'
    assert [text[a:b] for a, b in sentence_spans(text)] == [
        "Rollo came in 911.",
        "He was a Viking!",
        '"Why?"',
        "Nobody knows.",
        "It was e.g. fine",
    ]


class _BagEncoder:
    """A stand-in sentence encoder: normalised letter counts (deterministic, easy to recompute)."""

    scale = 7.0

    def encode(self, texts):
        rows = [[t.lower().count(c) + 0.1 for c in "abcdefghijklmnopqrstuvwxyz"] for t in texts]
        return torch.nn.functional.normalize(torch.tensor(rows), dim=1)


def test_sentence_prior_equals_a_naive_per_token_computation(tmp_path) -> None:
    from circuitml.tasks.qa.data import make_features, train_tokenizer
    from circuitml.tasks.qa.sentence_prior import sentence_prior, sentence_spans

    context = "Rollo was a Viking. He ruled Normandy from 911. The Normans spoke French. Paris is far."
    examples = [
        SquadExample("q1", "t", context, "Who ruled Normandy?", [SquadAnswer("Rollo", 0)]),
        SquadExample("q2", "t", context, "What language did they speak?", [], True),
    ]
    tok = train_tokenizer([context, *(e.question for e in examples)], vocab_size=120, min_frequency=1)
    feats = make_features(examples, tok, max_length=24, stride=8)  # several windows per example
    enc = _BagEncoder()
    got = sentence_prior(examples, feats, enc) / enc.scale
    for f in range(len(feats)):
        e = examples[int(feats.example_index[f])]
        sents = [(a, b) for a, b in sentence_spans(e.context)]
        q = enc.encode([e.question])[0]
        cos = [float(enc.encode([e.context[a:b].strip()])[0] @ q) for a, b in sents]
        for i in range(feats.input_ids.shape[1]):
            want_rel = 0.0
            if feats.context_mask[f, i]:
                start = int(feats.offsets[f, i, 0])
                j = max(k for k, (a, _) in enumerate(sents) if a <= start)
                want_rel = cos[j] - max(cos)
            assert got[f, i, 0].item() == pytest.approx(want_rel, abs=1e-6)
            assert got[f, i, 1].item() == pytest.approx(max(cos) if i == 0 else 0.0, abs=1e-6)


def test_bilinear_head_and_sentence_prior_start_as_linear_head_plus_sentence_log_prob(tmp_path) -> None:
    transformers = pytest.importorskip("transformers")
    transformers.AutoModel.from_config(tiny_bert_config()).save_pretrained(tmp_path / "ckpt")
    torch.manual_seed(0)
    plain = UpcycledHFQA(SwitchQAConfig(init_from=str(tmp_path / "ckpt"), moe_layers=[])).eval()
    torch.manual_seed(0)
    rich = UpcycledHFQA(
        SwitchQAConfig(
            init_from=str(tmp_path / "ckpt"), moe_layers=[], span_head="bilinear", sentence_prior=True
        )
    ).eval()
    ids = torch.randint(5, 60, (3, 12))
    mask = torch.ones(3, 12, dtype=torch.long)
    qmask = torch.zeros(3, 12, dtype=torch.bool)
    qmask[:, 1:4] = True
    prior = torch.randn(3, 12, 2)
    want = plain(ids, mask)
    got = rich(ids, mask, question_mask=qmask, prior=prior)
    # at init: the linear head plus half the sentence log-probability on start and on end
    torch.testing.assert_close(got.start_logits, want.start_logits + 0.5 * prior[..., 0])
    torch.testing.assert_close(got.end_logits, want.end_logits + 0.5 * prior[..., 0])
    (got.start_logits[:, 5].sum() - got.end_logits[:, 7].sum()).backward()
    assert rich.qa_bilinear.weight.grad.abs().sum() > 0 and rich.qa_prior.weight.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="question mask"):
        rich(ids, mask, prior=prior)
    with pytest.raises(ConfigError, match="sentence prior"):
        rich(ids, mask, question_mask=qmask)


def test_bilinear_head_and_prior_refuse_the_scratch_model() -> None:
    from circuitml.tasks.qa.model import build_qa_model

    for opts in ({"span_head": "bilinear"}, {"sentence_prior": True}, {"independent_span": 1.0}):
        with pytest.raises(ConfigError, match="pretrained checkpoint"):
            build_qa_model(SwitchQAConfig(vocab_size=50, **opts))


@needs_minilm
@pytest.mark.slow
def test_minilm_bilinear_prior_model_round_trips_through_qa_eval(tmp_path) -> None:
    from circuitml.tasks.qa.train import evaluate_qa

    data = _squad(tmp_path)
    cfg = QATrainConfig(
        data=str(data),
        eval_data=str(data),
        max_length=48,
        stride=16,
        batch_size=4,
        epochs=1,
        lr=1e-3,
        freeze_bottom=5,
        null_threshold=0.0,
        model=SwitchQAConfig(
            init_from="all-minilm-l6-v2", moe_layers=[], span_head="bilinear", sentence_prior=True
        ),
    )
    metrics = train_qa(cfg, tmp_path / "model")
    assert evaluate_qa(tmp_path / "model", data) == metrics["eval"]


# ---------------------------------------------------------------- Read + Verify: the independent span loss
def _plausible_examples() -> list[SquadExample]:
    ctx = "Rollo was a Viking leader. He ruled Normandy from 911 until his death near Rouen."
    return [
        SquadExample("a", "t", ctx, "Who ruled Normandy?", [SquadAnswer("Rollo", 0)]),
        SquadExample("b", "t", ctx, "Who ruled Paris?", [], True, [SquadAnswer("Rouen", ctx.index("Rouen"))]),
        SquadExample("c", "t", ctx, "Why?", [], True),
    ]


def test_plausible_span_labels_point_at_the_plausible_answer() -> None:
    from circuitml.tasks.qa.data import make_features, train_tokenizer

    ex = _plausible_examples()
    tok = train_tokenizer([ex[0].context, *(e.question for e in ex)], vocab_size=120, min_frequency=1)
    feats = make_features(ex, tok, max_length=20, stride=6)  # the context spans several windows
    for f in range(len(feats)):
        e = ex[int(feats.example_index[f])]
        s, t = int(feats.plausible_start[f]), int(feats.plausible_end[f])
        if e.answers:  # an answerable question: the plausible labels are its answer labels
            assert (s, t) == (int(feats.start_positions[f]), int(feats.end_positions[f]))
        elif s:  # an unanswerable question: never a main label, the plausible span where the window holds it
            assert int(feats.start_positions[f]) == 0
            a, b = int(feats.offsets[f, s, 0]), int(feats.offsets[f, t, 1])
            assert e.context[a:b] == e.plausible_answers[0].text
        assert not (e.id == "c" and s)
    assert any(int(feats.plausible_start[f]) for f in range(len(feats)) if int(feats.example_index[f]) == 1)


def test_eda_keeps_plausible_answers_valid() -> None:
    for aug in augment_examples(_plausible_examples(), copies=5, alpha=0.4, seed=1)[3:]:
        for a in aug.plausible_answers:
            assert aug.context[a.start : a.start + len(a.text)] == a.text
        assert aug.is_impossible == (not aug.answers)


def test_independent_span_loss_equals_a_per_window_reference(tmp_path) -> None:
    from circuitml.tasks.qa.data import QAFeatures
    from circuitml.tasks.qa.train import _independent_span_loss

    transformers = pytest.importorskip("transformers")
    transformers.AutoModel.from_config(tiny_bert_config()).save_pretrained(tmp_path / "ckpt")
    model = UpcycledHFQA(
        SwitchQAConfig(init_from=str(tmp_path / "ckpt"), moe_layers=[], independent_span=0.5)
    ).eval()
    ids = torch.randint(5, 60, (4, 10))
    mask = torch.ones(4, 10, dtype=torch.long)
    mask[2, 7:] = 0
    ps, pe = torch.tensor([3, 0, 2, 5]), torch.tensor([4, 0, 6, 5])
    feats = QAFeatures(ids, mask, ps * 0, pe * 0, torch.arange(4), mask.bool(), None, None, ps, pe)
    out = model(ids, mask)
    got = _independent_span_loss(model, out, feats, torch.arange(4), torch.device("cpu"))
    terms = []
    for w in (0, 2, 3):  # window 1 holds no span
        logits = model.qa_independent(out.hidden[w])  # [T, 2]
        valid = mask[w].bool().clone()
        valid[0] = False  # no-answer is not an option
        for k, target in ((0, ps[w]), (1, pe[w])):
            z = logits[valid, k]
            terms.append(torch.logsumexp(z, 0) - logits[target, k])
    want = torch.stack(terms).view(3, 2).mean(0).sum() / 2
    torch.testing.assert_close(got, want)
    with pytest.raises(ConfigError, match="independent_span"):
        UpcycledHFQA(SwitchQAConfig(init_from=str(tmp_path / "ckpt"), independent_span=-1.0))
