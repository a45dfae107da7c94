"""QA on the shared expert core: SQuAD reading, official metrics, span features/decoding, Switch-FFN models."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from circuitml.datasets.squad import SquadAnswer, SquadExample, parse_squad, read_squad
from circuitml.moe.block import MoEBlock
from circuitml.tasks.qa.data import decode_answers, make_features, train_tokenizer
from circuitml.tasks.qa.metrics import exact_match, f1_score, normalize_answer, squad_scores
from circuitml.tasks.qa.model import SwitchQAConfig, SwitchTransformerQA, UpcycledHFQA

from circuitml.errors import DatasetError

FACTS = [
    ("Alice lives in Paris and works as a baker.", "Where does Alice live?", "Paris"),
    ("Bob drives a red truck to the harbor every morning.", "What color is Bob's truck?", "red"),
    ("The museum opens at nine and closes at five.", "When does the museum open?", "nine"),
    ("Carol plays the violin in the city orchestra.", "What instrument does Carol play?", "violin"),
    ("The river Tavo flows north into the cold sea.", "Which direction does the river flow?", "north"),
    ("Dan planted seven apple trees behind the barn.", "How many trees did Dan plant?", "seven"),
]


def _squad(tmp_path: Path, with_impossible: bool = True) -> Path:
    paragraphs = []
    for k, (ctx, q, ans) in enumerate(FACTS):
        qas = [
            {
                "id": f"q{k}",
                "question": q,
                "answers": [{"text": ans, "answer_start": ctx.index(ans)}],
                "is_impossible": False,
            }
        ]
        if with_impossible:
            qas.append(
                {
                    "id": f"n{k}",
                    "question": "What is the capital of Mars?",
                    "answers": [],
                    "is_impossible": True,
                }
            )
        paragraphs.append({"context": ctx, "qas": qas})
    path = tmp_path / "facts.json"
    path.write_text(json.dumps({"version": "v2.0", "data": [{"title": "facts", "paragraphs": paragraphs}]}))
    return path


def tiny_bert_config(**overrides):
    """A 3-layer, 32-wide BERT config without dropout (for upcycling and adapter tests)."""
    import transformers

    values = dict(
        vocab_size=60,
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return transformers.BertConfig(**{**values, **overrides})


# ---------------------------------------------------------------- metrics: hand-computed cases
def test_normalization_and_exact_match() -> None:
    assert normalize_answer("The  Eiffel-Tower!") == "eiffeltower"
    assert normalize_answer("an apple, a pear") == "apple pear"
    assert exact_match("the Normans", "Normans") == 1.0
    assert exact_match("Normans.", "the normans") == 1.0
    assert exact_match("Norman", "Normans") == 0.0


def test_f1_hand_computed() -> None:
    # pred tokens {10th, and, 11th, centuries}, gold {10th, 11th, centuries}: P=3/4, R=1, F1=6/7
    assert f1_score("10th and 11th centuries", "in the 10th 11th centuries") == pytest.approx(
        2 * 0.75 * 0.75 / 1.5
    )
    assert f1_score("10th and 11th centuries", "10th 11th centuries") == pytest.approx(6 / 7)
    assert f1_score("", "") == 1.0
    assert f1_score("something", "") == 0.0
    assert f1_score("a", "the") == 1.0  # both normalize to empty


def test_squad_scores_v2_split() -> None:
    golds = {"a": ["Paris", "paris france"], "b": [], "c": ["red"]}
    preds = {"a": "Paris, France", "b": "", "c": "blue"}
    s = squad_scores(preds, golds)
    assert s["exact"] == pytest.approx(100 * 2 / 3)  # a (max over golds) and b
    assert s["f1"] == pytest.approx(100 * (1 + 1 + 0) / 3)
    assert s["HasAns_total"] == 2 and s["NoAns_total"] == 1 and s["NoAns_exact"] == 100.0


# ---------------------------------------------------------------- reader
def test_reader_counts_real_sample(shared_data: Path) -> None:
    examples, version = read_squad(shared_data / "deepset-ai__haystack/test/samples/squad/small.json")
    assert version == "v2.0" and len(examples) == 626
    assert sum(e.is_impossible for e in examples) == 333


def _one_answer(text: str, start: int) -> dict:
    """A SQuAD file of one question over the context "abc" with one answer."""
    qa = {"id": "x", "question": "q", "answers": [{"text": text, "answer_start": start}]}
    return {"data": [{"paragraphs": [{"context": "abc", "qas": [qa]}]}]}


@pytest.mark.parametrize(
    ("obj", "path"),
    [
        ([], "$"),
        ({"data": {}}, "$.data"),
        ({"data": [{"paragraphs": [{"context": 3, "qas": []}]}]}, "data[0].paragraphs[0].context"),
        (_one_answer("b", 9), "data[0].paragraphs[0].qas[0].answers[0].answer_start"),  # start past the end
        (_one_answer("c", 0), "data[0].paragraphs[0].qas[0].answers[0]"),  # text not at its start
    ],
)
def test_reader_errors_name_the_json_path(obj, path) -> None:
    with pytest.raises(DatasetError) as err:
        parse_squad(obj, file="bad.json")
    assert str(err.value).startswith(f"bad.json: {path}: expected")


def test_reader_invalid_json_names_line(tmp_path: Path) -> None:
    p = tmp_path / "broken.json"
    p.write_text('{"data": [\n  {"title": "x",\n  "paragraphs": [}\n]}')
    with pytest.raises(DatasetError, match=r"broken.json:3: expected JSON"):
        read_squad(p)


# ---------------------------------------------------------------- features and decoding
def _examples() -> list[SquadExample]:
    return [
        SquadExample(f"q{k}", "t", c, q, [SquadAnswer(a, c.index(a))]) for k, (c, q, a) in enumerate(FACTS)
    ]


def test_feature_spans_point_at_the_answer_text() -> None:
    ex = _examples()
    tok = train_tokenizer([e.context + " " + e.question for e in ex], vocab_size=300, min_frequency=1)
    feats = make_features(ex, tok, max_length=18, stride=3)  # short windows force overflow
    assert len(feats) > len(ex)
    for f in range(len(feats)):
        e = ex[int(feats.example_index[f])]
        s, t = int(feats.start_positions[f]), int(feats.end_positions[f])
        if s == 0:
            continue
        a, b = feats.offsets[f, s, 0], feats.offsets[f, t, 1]
        assert e.context[a:b].lower() == e.answers[0].text.lower()
    # every answer is inside at least one window
    labelled = {int(feats.example_index[f]) for f in range(len(feats)) if int(feats.start_positions[f]) > 0}
    assert labelled == set(range(len(ex)))


def test_decode_picks_best_span_and_null() -> None:
    ex = _examples()[:2]
    tok = train_tokenizer([e.context + " " + e.question for e in ex], vocab_size=200, min_frequency=1)
    feats = make_features(ex, tok, max_length=48, stride=8)
    start = torch.zeros(len(feats), 48)
    end = torch.zeros(len(feats), 48)
    for f in range(len(feats)):
        start[f, int(feats.start_positions[f])] = 5.0
        end[f, int(feats.end_positions[f])] = 5.0
    preds = decode_answers(ex, feats, start, end, allow_impossible=True)
    assert preds == {"q0": "Paris", "q1": "red"}
    start[:, 0] = end[:, 0] = 9.0  # the null score now wins everywhere
    assert decode_answers(ex, feats, start, end, allow_impossible=True) == {"q0": "", "q1": ""}
    assert decode_answers(ex, feats, start, end, allow_impossible=False) == {"q0": "Paris", "q1": "red"}


# ---------------------------------------------------------------- models
def test_switch_layers_are_core_moe_blocks_and_skip_padding() -> None:
    cfg = SwitchQAConfig(
        vocab_size=50,
        d_model=32,
        num_layers=4,
        num_heads=2,
        d_ff=64,
        num_experts=4,
        capacity_factor=None,
        dropout=0.0,
    )
    model = SwitchTransformerQA(cfg)
    moe = model.moe_layers()
    assert len(moe) == 2 and all(isinstance(m.block, MoEBlock) for m in moe)  # middle layers 1 and 2
    assert moe[0].block.router.name == "switch"
    ids = torch.randint(5, 50, (3, 10))
    mask = torch.ones(3, 10, dtype=torch.long)
    mask[1, 6:] = 0
    out = model(ids, mask)
    assert all(int(c.sum()) == int(mask.sum()) for c in out.tokens_per_expert)  # padding not routed
    (out.start_logits.logsumexp(-1).sum() + out.aux_loss).backward()
    assert all(p.grad is not None for p in moe[0].block.experts.parameters())


@pytest.mark.parametrize("arch", ["distilbert", "bert"])
def test_upcycled_checkpoint_equals_dense_at_init(tmp_path: Path, arch: str) -> None:
    transformers = pytest.importorskip("transformers")
    if arch == "distilbert":
        hf_cfg = transformers.DistilBertConfig(
            vocab_size=60,
            dim=32,
            n_layers=3,
            n_heads=2,
            hidden_dim=64,
            max_position_embeddings=64,
            dropout=0.0,
            attention_dropout=0.0,
        )
    else:
        hf_cfg = tiny_bert_config()
    torch.manual_seed(0)
    dense = transformers.AutoModel.from_config(hf_cfg).eval()
    dense.save_pretrained(tmp_path / "ckpt")
    # identical experts + renormalized top-2 weights: the upcycled model is the dense one (a top-1 Switch router
    # keeps its raw probability as the weight so that the router gets a gradient, and scales the FFN by it)
    cfg = SwitchQAConfig(
        init_from=str(tmp_path / "ckpt"),
        num_experts=4,
        router="topk",
        top_k=2,
        capacity_factor=None,
        normalize_weights=True,
    )
    model = UpcycledHFQA(cfg).eval()
    assert len(model.moe_layers()) == 1  # the middle layer of three
    ids = torch.randint(0, 60, (2, 12))
    mask = torch.ones(2, 12, dtype=torch.long)
    with torch.no_grad():
        want = dense(input_ids=ids, attention_mask=mask).last_hidden_state
        model._set_mask(mask)
        got = model.backbone(input_ids=ids, attention_mask=mask).last_hidden_state
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_training_loss_falls_and_cli_round_trip(tmp_path: Path) -> None:
    from cli import main

    data = _squad(tmp_path)
    out = tmp_path / "model"
    code = main(
        [
            "qa",
            "train",
            "--data",
            str(data),
            "--eval-data",
            str(data),
            "--out",
            str(out),
            "--epochs",
            "40",
            "--batch-size",
            "4",
            "--lr",
            "3e-3",
            "--d-model",
            "32",
            "--layers",
            "3",
            "--max-length",
            "48",
            "--stride",
            "8",
            "--threads",
            "1",
            "--val-fraction",  # memorization: train on every context, null threshold 0
            "0",
        ]
    )
    assert code == 0
    metrics = json.loads((out / "config.json").read_text())["metrics"]
    assert metrics["loss_last_epoch"] < 0.5 * metrics["loss_first_epoch"]
    # memorizing its own 12 questions beats always answering "no answer" (50 here) by a wide margin
    assert metrics["eval"]["exact"] >= 75.0 > metrics["eval_baseline_no_answer"]["exact"]
    code = main(
        [
            "qa",
            "eval",
            "--model",
            str(out),
            "--data",
            str(data),
            "--out",
            str(tmp_path / "m.json"),
            "--device",
            "auto",
        ]
    )
    assert code == 0
    again = json.loads((tmp_path / "m.json").read_text())
    assert again["exact"] == pytest.approx(metrics["eval"]["exact"])


def test_cli_reports_malformed_file_in_one_line(tmp_path: Path, capsys) -> None:
    from cli import main

    bad = tmp_path / "bad.json"
    bad.write_text('{"data": [{"paragraphs": "nope"}]}')
    assert main(["qa", "train", "--data", str(bad), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err
    assert "data[0].paragraphs: expected a list" in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()
