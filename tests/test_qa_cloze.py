"""Synthetic cloze questions (tasks.qa.cloze): made from training paragraphs only, exact answer offsets, real
unanswerables, deterministic; and ``qa train`` feeds them the training split, never a held-out context."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from circuitml.datasets.squad import SquadAnswer, SquadExample, read_squad
from circuitml.tasks.qa import train as qa_train
from circuitml.tasks.qa.cloze import answer_spans, cloze_examples, cloze_questions, sentences
from circuitml.tasks.qa.model import SwitchQAConfig
from hypothesis import given, settings
from hypothesis import strategies as st

from circuitml.errors import ConfigError

ARTICLES = {
    "Rivers": [
        "The Tavo River rises in the Kessel Mountains. It flows north for 320 kilometres. "
        "In 1854 the Duke of Orlan built a bridge at Marrow.",
        "Fishing on the river was banned in March 1921. The ban was lifted by Queen Ada twenty years later. "
        "Today the river carries a small trade in timber.",
        "The delta of the river holds 14 islands. Most of them were settled by Frisian farmers in the 9th century.",
    ],
    "Engines": [
        "James Corder designed the first compound engine in 1802. It used two cylinders of different sizes.",
        "The engine was tested at the Leeds works. A later model reached 40 horsepower in 1830.",
        "Steam engines powered the mills of Northern England. Their use spread to ships after the war.",
    ],
}


def _examples() -> list[SquadExample]:
    out = []
    for title, paragraphs in ARTICLES.items():
        for k, context in enumerate(paragraphs):
            word = context.split()[1]
            out.append(
                SquadExample(
                    f"{title}{k}", title, context, "Which word?", [SquadAnswer(word, context.index(word))]
                )
            )
    return out


def test_cloze_answers_are_exact_substrings_at_their_offsets() -> None:
    questions = cloze_questions(_examples(), 60, seed=0, unanswerable=0.0)
    assert len(questions) == 60
    for c in questions:
        e = c.example
        (answer,) = e.answers
        assert e.context == c.source and c.sentence in e.context
        assert e.context[answer.start : answer.start + len(answer.text)] == answer.text
        assert answer.text in c.sentence and answer.text != c.sentence
        assert e.question.endswith("?") and e.question.split()[0] in {"What", "Who", "When", "How"}
    # dropout and the local shuffle make the question no copy of its sentence (rarely, a short one still is)
    copies = [c for c in questions if " ".join(c.example.question[:-1].split()[1:]) in c.source]
    assert len(copies) <= len(questions) // 10


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.sampled_from("the a Tavo River of 1854 North in March built ships, 40 and Ada . ;".split()),
        max_size=30,
    )
)
def test_answer_spans_are_substrings_of_their_sentence_at_their_offset(words: list[str]) -> None:
    text = " ".join(words)
    for off, sentence in sentences(text):
        assert text[off : off + len(sentence)] == sentence
        for s, span, wh in answer_spans(sentence):
            assert sentence[s : s + len(span)] == span and 0 < len(span.split()) <= 6
            assert wh in {"What", "Who", "When", "How many"}


def test_cloze_unanswerables_pair_a_question_with_a_paragraph_without_its_sentence() -> None:
    questions = cloze_questions(_examples(), 80, seed=1, unanswerable=0.5)
    impossible = [c for c in questions if c.example.is_impossible]
    assert 20 <= len(impossible) <= 60
    titles = {c: t for t, ps in ARTICLES.items() for c in ps}
    for c in impossible:
        e = c.example
        assert e.answers == [] and e.context != c.source
        assert c.sentence in c.source and c.sentence not in e.context
        assert titles[e.context] == titles[c.source] == e.title  # same article: a plausible distractor


def test_cloze_is_deterministic_for_a_seed() -> None:
    a = cloze_examples(_examples(), 40, seed=3, unanswerable=0.3)
    assert a == cloze_examples(_examples(), 40, seed=3, unanswerable=0.3)
    assert a != cloze_examples(_examples(), 40, seed=4, unanswerable=0.3)


def test_cloze_questions_come_only_from_the_paragraphs_given() -> None:
    train = [e for e in _examples() if e.id not in {"Rivers2", "Engines1"}]
    held = {e.context for e in _examples()} - {e.context for e in train}
    for c in cloze_questions(train, 100, seed=0, unanswerable=0.3):
        assert c.source in {e.context for e in train} and c.example.context not in held


def test_cloze_refuses_what_it_cannot_honour() -> None:
    with pytest.raises(ConfigError, match="synthetic_cloze"):
        cloze_examples(_examples(), -1, seed=0)
    with pytest.raises(ConfigError, match="cloze_unanswerable"):
        cloze_examples(_examples(), 5, seed=0, unanswerable=1.0)
    short = [SquadExample("x", "t", "Too short.", "Why?", [])]
    with pytest.raises(ConfigError, match="no sentence"):
        cloze_examples(short, 5, seed=0)
    assert cloze_examples(short, 0, seed=0) == []


def test_qa_train_makes_cloze_questions_from_the_training_contexts_only(tmp_path: Path, monkeypatch) -> None:
    paragraphs = {title: [{"context": c, "qas": []} for c in ps] for title, ps in ARTICLES.items()}
    for title, ps in paragraphs.items():
        for k, p in enumerate(ps):
            word = p["context"].split()[1]
            p["qas"] = [
                {
                    "id": f"{title}{k}",
                    "question": "Which word?",
                    "is_impossible": False,
                    "answers": [{"text": word, "answer_start": p["context"].index(word)}],
                },
                {"id": f"{title}{k}n", "question": "Who is absent?", "is_impossible": True, "answers": []},
            ]
    data = tmp_path / "squad.json"
    data.write_text(
        json.dumps(
            {"version": "v2.0", "data": [{"title": t, "paragraphs": p} for t, p in paragraphs.items()]}
        )
    )
    seen: list[set[str]] = []

    def spy(examples, n, seed, unanswerable=0.0):
        seen.append({e.context for e in examples})
        return cloze_examples(examples, n, seed, unanswerable)

    monkeypatch.setattr(qa_train, "cloze_examples", spy)
    cfg = qa_train.QATrainConfig(
        data=str(data),
        eval_fraction=0.34,
        val_fraction=0.25,
        epochs=1,
        batch_size=8,
        max_length=64,
        stride=16,
        synthetic_cloze=12,
        cloze_epochs=1,
        threads=1,
        seed=0,
        model=SwitchQAConfig(d_model=32, num_layers=1, num_heads=1, d_ff=64, num_experts=2),
    )
    m = qa_train.train_qa(cfg, tmp_path / "model")
    examples, _ = read_squad(data)
    train, held = qa_train.split_by_context(examples, 0.34, 0)
    train, val = qa_train.split_by_context(train, 0.25, 1)
    assert seen == [{e.context for e in train}]
    assert not seen[0] & {e.context for e in held + val}
    assert m["synthetic_questions"] == 12 and m["steps"] == 2 + 1  # one cloze epoch, then the real questions
    assert {"forced_HasAns_f1", "answerability_auc"} <= set(m["eval_reader"])


def test_reader_diagnostics_equal_a_per_question_reference() -> None:
    from circuitml.tasks.qa.metrics import f1_score, reader_diagnostics

    golds = {"a": ["Paris"], "b": ["red truck"], "c": [], "d": [], "e": ["seven"]}
    texts = {"a": "Paris", "b": "a red car", "c": "nine", "d": "north", "e": "six"}
    margins = {"a": -2.0, "b": 0.5, "c": 0.5, "d": -1.0, "e": float("inf")}
    got = reader_diagnostics(texts, margins, golds)
    f1 = [f1_score(texts[q], golds[q][0]) for q in "abe"]
    assert got["forced_HasAns_f1"] == pytest.approx(100 * sum(f1) / 3)
    # pairs (answerable, unanswerable) ordered right: a>c, a>d, b=c (half), b<d, e<c, e<d
    assert got["answerability_auc"] == pytest.approx((1 + 1 + 0.5) / 6)


def test_qa_train_cli_takes_cloze_options_and_refuses_bad_ones_in_one_line(tmp_path: Path, capsys) -> None:
    from cli import main

    paragraphs = [{"context": c, "qas": []} for ps in ARTICLES.values() for c in ps]
    for k, p in enumerate(paragraphs):
        word = p["context"].split()[1]
        p["qas"] = [
            {
                "id": f"q{k}",
                "question": "Which word?",
                "answers": [{"text": word, "answer_start": p["context"].index(word)}],
            }
        ]
    data = tmp_path / "v11.json"
    data.write_text(json.dumps({"version": "1.1", "data": [{"title": "all", "paragraphs": paragraphs}]}))
    tiny = ["--d-model", "16", "--layers", "1", "--experts", "2", "--epochs", "1", "--max-length", "48"]
    tiny += ["--stride", "16", "--batch-size", "8", "--data", str(data), "--out", str(tmp_path / "m")]
    assert main(["qa", "train", "--synthetic-cloze", "8", "--cloze-epochs", "0", *tiny]) == 0
    assert "8 synthetic cloze questions" in capsys.readouterr().out
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())["train"]
    assert cfg["cloze_unanswerable"] == 0.0  # v1.1 has no unanswerable questions to imitate
    assert main(["qa", "train", "--synthetic-cloze", "8", "--cloze-unanswerable", "0.3", *tiny]) == 2
    err = capsys.readouterr().err
    assert "qa: cloze_unanswerable:" in err and "1.1" in err and len(err.strip().splitlines()) == 1
    assert main(["qa", "train", "--synthetic-cloze", "8", "--cloze-epochs", "-1", *tiny]) == 2
    err = capsys.readouterr().err
    assert "qa: cloze_epochs:" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
