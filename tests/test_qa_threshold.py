"""QA decoding and running: the tuned null threshold, SQuAD v1.1/v2.0 files as users have them, --device,
and top-1 upcycling that keeps the router's task gradient."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from circuitml.datasets.squad import SquadAnswer, read_squad
from circuitml.tasks.common import configure_runtime, scoped_runtime
from circuitml.tasks.qa.data import SpanPredictions
from circuitml.tasks.qa.metrics import best_null_threshold, squad_scores
from circuitml.tasks.qa.model import SwitchQAConfig, UpcycledHFQA
from circuitml.tasks.qa.train import QATrainConfig, evaluate_qa, split_by_context, train_qa
from hypothesis import example, given, settings
from hypothesis import strategies as st

from circuitml.errors import ConfigError, DatasetError
from tests.test_qa import FACTS, _squad, tiny_bert_config

TINY = dict(d_model=32, num_layers=3, num_heads=2, d_ff=64, num_experts=2, dropout=0.0)


# ---------------------------------------------------------------- null threshold
QUESTION = st.tuples(
    st.sampled_from(["", "red", "blue car", "the red car"]),  # gold ("" = unanswerable)
    st.sampled_from(["red", "blue", "red car", "car"]),  # best span
    st.one_of(st.sampled_from([-1.0, 0.0, 0.5, 2.0]), st.floats(-5, 5), st.just(math.inf)),  # null margin
)


@settings(max_examples=80, deadline=None)
@given(st.lists(QUESTION, min_size=1, max_size=12))
@example([("red", "red", 0.0), ("", "red", 0.0)])  # tied margins are answered together, never split
def test_best_null_threshold_equals_brute_force(questions) -> None:
    ids = [f"q{k}" for k in range(len(questions))]
    golds = {q: ([g] if g else []) for q, (g, _, _) in zip(ids, questions, strict=True)}
    spans = SpanPredictions(ids, [s for _, s, _ in questions], torch.tensor([m for _, _, m in questions]))
    threshold, f1 = best_null_threshold(
        dict(zip(ids, spans.texts, strict=True)),
        dict(zip(ids, spans.null_margin.tolist(), strict=True)),
        golds,
    )
    # naive: every threshold that changes a decision (each finite margin, just below and at it), plus both ends
    finite = [m for _, _, m in questions if math.isfinite(m)]
    candidates = [-1e9, 1e9] + [m + d for m in finite for d in (-1e-6, 0.0)]
    best = max(squad_scores(spans.answers(t), golds)["f1"] for t in candidates)
    assert f1 == pytest.approx(best)
    # the returned threshold reaches that F1 when decoding
    assert squad_scores(spans.answers(threshold), golds)["f1"] == pytest.approx(best)


def test_threshold_is_tuned_on_training_contexts_stored_and_used(tmp_path: Path) -> None:
    data = _squad(tmp_path)  # 6 contexts, an answerable and an unanswerable question each
    cfg = QATrainConfig(
        data=str(data),
        eval_fraction=0.34,
        val_fraction=0.3,
        max_length=48,
        stride=8,
        batch_size=4,
        epochs=2,
        lr=3e-3,
        threads=1,
        model=SwitchQAConfig(**TINY),
    )
    m = train_qa(cfg, tmp_path / "model")
    # 2 held-out contexts, then 1 of the remaining 4 carved off for validation: no question is in two sets
    assert (m["eval_questions"], m["val_questions"], m["train_questions"]) == (4, 2, 6)
    assert isinstance(m["null_threshold"], float) and "val_f1" in m
    assert m["plain_null_threshold"] == m["null_threshold"] and "verifier_threshold" not in m
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert saved["train"]["null_threshold"] == m["null_threshold"]
    # `qa eval` decodes with the stored threshold: scoring the training file again gives the same F1 per split
    heldout = tmp_path / "heldout.json"
    obj = json.loads(data.read_text())
    _, ev = split_by_context(read_squad(data)[0], 0.34, 0)
    eval_ids = {e.id for e in ev}
    for para in obj["data"][0]["paragraphs"]:
        para["qas"] = [q for q in para["qas"] if q["id"] in eval_ids]
    heldout.write_text(json.dumps(obj))
    again = evaluate_qa(tmp_path / "model", heldout)
    assert again["f1"] == pytest.approx(m["eval"]["f1"])


# ---------------------------------------------------------------- SQuAD files as users have them
def _v11(tmp_path: Path) -> Path:
    """The official v1.1 layout: version "1.1", no is_impossible, several (repeated) gold answers, int ids."""
    paragraphs = [
        {
            "context": ctx,
            "qas": [
                {
                    "id": 100 + k,
                    "question": q,
                    "answers": [{"text": a, "answer_start": ctx.index(a)}] * 2
                    + [{"text": ctx[ctx.index(a) :].split()[0], "answer_start": ctx.index(a)}],
                }
            ],
        }
        for k, (ctx, q, a) in enumerate(FACTS)
    ]
    path = tmp_path / "v11.json"
    path.write_text(json.dumps({"version": "1.1", "data": [{"title": "facts", "paragraphs": paragraphs}]}))
    return path


def test_reader_accepts_official_v11_and_v20_layouts(tmp_path: Path) -> None:
    ex, version = read_squad(_v11(tmp_path))
    assert version == "v1.1" and len(ex) == 6 and ex[0].id == "100" and len(ex[0].answers) == 3
    # v2.0: unanswerable questions carry plausible_answers, which are not answers
    ctx = FACTS[0][0]
    obj = {
        "version": "v2.0",
        "data": [
            {
                "title": "t",
                "paragraphs": [
                    {
                        "context": ctx,
                        "qas": [
                            {
                                "id": "a",
                                "question": "Where?",
                                "answers": [{"text": "Paris", "answer_start": ctx.index("Paris")}],
                                "is_impossible": False,
                            },
                            {
                                "id": "b",
                                "question": "Who?",
                                "answers": [],
                                "plausible_answers": [{"text": "Alice", "answer_start": 0}],
                                "is_impossible": True,
                            },
                        ],
                    }
                ],
            }
        ],
    }
    path = tmp_path / "v20.json"
    # with a UTF-8 byte-order mark, as Windows editors write it
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps(obj).encode())
    ex, version = read_squad(path)
    assert version == "v2.0" and [e.answers for e in ex][1] == [] and ex[1].is_impossible
    assert ex[1].plausible_answers == [SquadAnswer("Alice", 0)] and ex[0].plausible_answers == []
    # a plausible answer is checked like an answer, and the error names its JSON path
    obj["data"][0]["paragraphs"][0]["qas"][1]["plausible_answers"][0]["answer_start"] = 5
    path.write_text(json.dumps(obj))
    with pytest.raises(DatasetError, match=r"qas\[1\]\.plausible_answers\[0\]: expected answer text at"):
        read_squad(path)


def test_v11_file_trains_without_a_null_answer(tmp_path: Path) -> None:
    cfg = QATrainConfig(
        data=str(_v11(tmp_path)),
        eval_fraction=0.34,
        max_length=48,
        stride=8,
        batch_size=4,
        epochs=1,
        threads=1,
        model=SwitchQAConfig(**TINY),
    )
    m = train_qa(cfg, tmp_path / "model")
    # v1.1 has no unanswerable questions: nothing is carved off for a threshold, and every answer is a span
    assert m["version"] == "v1.1" and m["val_questions"] == 0 and m["null_threshold"] is None
    assert m["eval"]["HasAns_total"] == m["eval"]["total"] == 2 and "NoAns_total" not in m["eval"]


# ---------------------------------------------------------------- --device
def test_device_auto_and_cpu_and_refused_cuda(tmp_path: Path, capsys) -> None:
    from cli import main

    want = "cuda" if torch.cuda.is_available() else "cpu"
    # scoped: the accepted calls must not leave this pytest process at 1 thread in deterministic mode
    with scoped_runtime(1, "auto") as dev:
        assert dev.type == want
    with scoped_runtime(1, "cpu") as dev:
        assert dev.type == "cpu"
    with pytest.raises(ConfigError, match="--device"):
        configure_runtime(1, "tpu")
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal cannot be checked")
    with pytest.raises(ConfigError, match="CUDA is not available"):
        configure_runtime(1, "cuda")
    code = main(
        ["qa", "train", "--data", str(_squad(tmp_path)), "--out", str(tmp_path / "m"), "--device", "cuda"]
    )
    err = capsys.readouterr().err
    assert code == 2 and "CUDA is not available" in err and "Traceback" not in err
    assert not (tmp_path / "m").exists()
    # qa eval takes the same option, checked before the model is read
    for bad in ("cuda", "tpu"):
        code = main(
            ["qa", "eval", "--model", str(tmp_path / "none"), "--data", str(tmp_path), "--device", bad]
        )
        err = capsys.readouterr().err
        assert code == 2 and ("--device" in err or "CUDA" in err)
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


# ---------------------------------------------------------------- top-1 upcycling
def _upcycled(tmp_path: Path, **router) -> tuple[UpcycledHFQA, torch.Tensor, torch.Tensor]:
    import transformers

    torch.manual_seed(0)
    bert = transformers.BertModel(tiny_bert_config())
    bert.save_pretrained(str(tmp_path / "bert"))
    cfg = SwitchQAConfig(
        init_from=str(tmp_path / "bert"),
        num_experts=3,
        moe_layers=[1],
        router="switch",
        capacity_factor=None,
        balance_loss_weight=0.0,
        z_loss_weight=0.0,
        **router,
    )
    model = UpcycledHFQA(cfg).eval()
    ids = torch.randint(5, 60, (2, 9))
    return model, ids, bert.eval()(input_ids=ids).last_hidden_state


def test_top1_unit_weight_is_dense_at_init_and_the_router_learns_from_the_task(tmp_path: Path) -> None:
    unit, ids, dense = _upcycled(tmp_path, unit_weight=True)
    torch.testing.assert_close(unit(ids).hidden, dense, rtol=1e-5, atol=1e-5)
    unit(ids).start_logits.square().sum().backward()
    gate = unit.moe_layers()[0].block.router.gate.weight
    assert gate.grad is not None and gate.grad.abs().sum() > 0
    # normalize_weights with top-1: also exact, but every weight is 1 and the router's task gradient is 0
    norm, ids, dense = _upcycled(tmp_path, normalize_weights=True)
    torch.testing.assert_close(norm(ids).hidden, dense, rtol=1e-5, atol=1e-5)
    norm(ids).start_logits.square().sum().backward()
    g = norm.moe_layers()[0].block.router.gate.weight.grad
    assert g is None or g.abs().sum() < 1e-6 * gate.grad.abs().sum()  # w / w is 1 up to rounding
    with pytest.raises(ConfigError, match="unit_weight"):
        UpcycledHFQA(
            SwitchQAConfig(init_from=str(tmp_path / "bert"), router="topk", top_k=2, unit_weight=True)
        )


def test_length_grouped_batches_cover_every_window_once_with_less_padding() -> None:
    from circuitml.tasks.qa.train import _length_grouped_batches

    gen = torch.Generator().manual_seed(0)
    lengths = torch.randint(20, 256, (1000,), generator=gen)
    batches = _length_grouped_batches(lengths, 8, gen)
    assert sorted(torch.cat(batches).tolist()) == list(range(1000)) and max(len(b) for b in batches) == 8
    padded = sum(int(lengths[b].max()) * len(b) for b in batches)
    shuffled = torch.randperm(1000, generator=gen).split(8)
    assert padded < 0.8 * sum(int(lengths[b].max()) * len(b) for b in shuffled)
    # reproducible from the generator's seed
    one, two = (_length_grouped_batches(lengths, 8, torch.Generator().manual_seed(1)) for _ in range(2))
    assert all(torch.equal(a, b) for a, b in zip(one, two, strict=True))
