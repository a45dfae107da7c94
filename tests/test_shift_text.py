"""MixDA's text side on MiniLM: BERT masking, the MLM head tied to MiniLM's embeddings, the folded FFN that MixDA
wraps, stage 0/1 learning the masked tokens, and the text domain-shift run."""

from __future__ import annotations

import pytest
import torch
from circuitml.datasets.squad import SquadAnswer, SquadExample
from circuitml.tasks.shift.base import fit
from circuitml.tasks.shift.mixda import MixDAFFN, apply_mixda

from circuitml.errors import ConfigError
from circuitml.lm import MaskedLMHead, mask_tokens
from tests.test_lm import needs_minilm


def test_mask_tokens_is_berts_80_10_10() -> None:
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 1000, (64, 256), generator=gen)
    maskable = torch.rand(ids.shape, generator=gen) < 0.7
    out, chosen = mask_tokens(ids, maskable, mask_token_id=3, vocab_size=1000, rate=0.15, generator=gen)
    assert not (chosen & ~maskable).any()  # only maskable tokens are chosen
    assert torch.equal(out[~chosen], ids[~chosen])  # and only chosen ones change
    n = int(chosen.sum())
    assert n / int(maskable.sum()) == pytest.approx(0.15, abs=0.01)
    as_mask = int((out[chosen] == 3).sum()) / n
    kept = int((out[chosen] == ids[chosen]).sum()) / n
    assert as_mask == pytest.approx(0.8, abs=0.02) and kept == pytest.approx(0.1, abs=0.02)
    # nothing drawn at a tiny rate: one token is still chosen, so the loss is defined
    _, one = mask_tokens(ids[:1, :4], maskable[:1, :4] | True, 3, 1000, rate=0.0, generator=gen)
    assert int(one.sum()) == 1


def test_masked_lm_head_is_berts_with_the_decoder_tied() -> None:
    torch.manual_seed(0)
    words = torch.nn.Embedding(50, 8)
    head = MaskedLMHead(words, 8)
    # the tied matrix is the encoder's, not a second parameter of the head
    assert {n for n, _ in head.named_parameters()} == {
        "dense.weight",
        "dense.bias",
        "norm.weight",
        "norm.bias",
        "bias",
    }
    h = torch.randn(5, 8)
    t = torch.nn.functional.gelu(h @ head.dense.weight.T + head.dense.bias)
    t = (t - t.mean(-1, keepdim=True)) / torch.sqrt(t.var(-1, unbiased=False, keepdim=True) + 1e-12)
    want = (t * head.norm.weight + head.norm.bias) @ words.weight.T + head.bias
    torch.testing.assert_close(head(h), want, rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        words.weight.mul_(2.0)  # a change of the embeddings is seen by the head
    assert not torch.allclose(head(h), want)


@pytest.fixture(scope="module")
def minilm_task():
    from circuitml.tasks.qa.data import make_features
    from circuitml.tasks.shift.qa import QAShiftTask, qa_batches
    from transformers import AutoTokenizer

    from circuitml.lm import resolve_lm

    task = QAShiftTask(lm="all-minilm-l6-v2", seed=0)
    tok = AutoTokenizer.from_pretrained(str(resolve_lm("all-minilm-l6-v2")), local_files_only=True)
    ex = [
        SquadExample(
            f"q{k}",
            "t",
            f"The Normans settled in Normandy in the year {900 + k} and spoke a dialect of French.",
            f"When did the Normans settle in Normandy (case {k})?",
            [SquadAnswer(str(900 + k), len("The Normans settled in Normandy in the year "))],
        )
        for k in range(4)
    ]
    return task, qa_batches(make_features(ex, tok, max_length=48, stride=8), 2)


@needs_minilm
@pytest.mark.slow
def test_minilm_shift_model_folds_the_ffn_and_mixda_starts_as_it(minilm_task) -> None:
    from circuitml.lm import load_lm

    task, batches = minilm_task
    model = task.make_model().eval()
    dense, _ = load_lm("all-minilm-l6-v2")
    b = batches[0]
    with torch.no_grad():
        segments = b["token_type_ids"]  # question 0, context 1, as BERT reads a pair
        want = dense(
            input_ids=b["input_ids"], attention_mask=b["attention_mask"], token_type_ids=segments
        ).last_hidden_state
        got = model.run(b).hidden
    keep = b["attention_mask"].bool()
    torch.testing.assert_close(got[keep], want[keep], rtol=1e-4, atol=1e-4)  # folding changed nothing
    names = task.ffn_names(model)
    assert len(names) == 6
    apply_mixda(model, names, 384)
    assert len([m for m in model.modules() if isinstance(m, MixDAFFN)]) == 6
    with torch.no_grad():
        torch.testing.assert_close(model.run(b).hidden[keep], want[keep], rtol=1e-4, atol=1e-4)
    # only the head's own transform and bias train: MiniLM's embeddings stay the decoder
    assert model.lm_head._embeddings[0] is model.qa.backbone.embeddings.word_embeddings


@needs_minilm
@pytest.mark.slow
def test_stage0_mlm_head_learns_masked_tokens_on_frozen_minilm(minilm_task) -> None:
    task, batches = minilm_task
    model = task.make_model()
    for p in model.parameters():
        p.requires_grad_(False)
    head = [p for p in model.lm_head.parameters()]
    for p in head:
        p.requires_grad_(True)
    torch.manual_seed(0)
    losses = fit(model, task.unsup_loss, batches, 12, lr=3e-3, params=head)
    # a fresh head over tied embeddings starts near uniform (ln 30522 = 10.3) and learns quickly
    assert sum(losses[:3]) / 3 > 8.0 > sum(losses[-3:]) / 3


@needs_minilm
@pytest.mark.slow
def test_text_shift_runs_every_method() -> None:
    from circuitml.tasks.shift.qa import TextShiftConfig, run_text_shift

    ex = []
    for title, place in (("a", "Paris"), ("b", "Rome")):
        for k in range(3):
            ctx = f"Item {k} of {title} is kept in {place} near the old gate."
            ex.append(
                SquadExample(
                    f"{title}{k}", title, ctx, f"Where is item {k}?", [SquadAnswer(place, ctx.index(place))]
                )
            )
    # qa train's reader options reach the shift model (a crash or a missing prior would fail here)
    cfg = TextShiftConfig(
        max_length=32,
        stride=8,
        batch_size=3,
        steps=2,
        adapt_steps=2,
        span_head="bilinear",
        sentence_prior=True,
        head_lr=1e-2,
    )
    row = run_text_shift(ex, "b", cfg)
    for m in ("no_answer", "all_sources", "mixda", "mixda_no_stage1"):
        assert 0.0 <= row[m] <= 1.0
        # every window holds its answer: the answer-window error is the error
        assert row[f"{m}_answerable"] == pytest.approx(row[m])
        assert m == "no_answer" or 0.0 <= row[f"{m}_forced"] <= 1.0
    assert row["no_answer"] == 1.0  # every window holds its answer, so [CLS] is always wrong
    assert row["test_questions"] == 3 and "stage1_loss_first" in row


@needs_minilm
def test_shift_text_reader_is_qa_trains_reader() -> None:
    import dataclasses

    from circuitml.tasks.qa import train as qa_train
    from circuitml.tasks.qa.model import SwitchQAConfig
    from circuitml.tasks.shift.qa import QAShiftTask, qa_batches
    from transformers import AutoTokenizer

    from circuitml.lm import resolve_lm

    reader = SwitchQAConfig(moe_layers=[], span_head="bilinear", sentence_prior=True)
    torch.manual_seed(0)
    model = QAShiftTask(reader, lm="all-minilm-l6-v2").make_model().eval()
    torch.manual_seed(0)
    ref = qa_train.build_reader(dataclasses.replace(reader, init_from="all-minilm-l6-v2")).eval()
    with torch.no_grad():  # a non-zero question-conditioned term, the same in both
        bil = torch.randn_like(ref.qa_bilinear.weight) * 0.05
        ref.qa_bilinear.weight.copy_(bil)
        model.qa.qa_bilinear.weight.copy_(bil)
    tok = AutoTokenizer.from_pretrained(str(resolve_lm("all-minilm-l6-v2")), local_files_only=True)
    ctx = "Rollo was a Viking leader. He ruled Normandy from 911. The duchy grew strong under his heirs."
    ex = [
        SquadExample("a", "t", ctx, "Who ruled Normandy?", [SquadAnswer("Rollo", 0)]),
        SquadExample("b", "t", ctx, "When did he rule?", [SquadAnswer("911", ctx.index("911"))]),
    ]
    feats = qa_train.reader_features(model.qa, tok, ex, 40, 8)
    assert feats.prior is not None and bool(feats.prior[..., 0].ne(0).any())
    batch = qa_batches(feats, len(feats))[0]
    with torch.no_grad():
        got = model.run(batch)
        want = qa_train._run(ref, feats, slice(0, len(feats)))
    keep = batch["attention_mask"].bool()
    t = want.start_logits.shape[1]
    torch.testing.assert_close(got.start_logits[keep], want.start_logits[keep[:, :t]], rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got.end_logits[keep], want.end_logits[keep[:, :t]], rtol=1e-4, atol=1e-4)
    with pytest.raises(ConfigError, match="dense"):
        QAShiftTask(SwitchQAConfig(moe_layers=[2]), lm="all-minilm-l6-v2").make_model()


def test_answer_window_error_counts_only_windows_with_an_answer() -> None:
    from circuitml.tasks.shift.qa import QAShiftTask, _null_preds, answer_window_error

    task = QAShiftTask(lm="unused")
    mask = torch.ones(4, 5, dtype=torch.long)
    context = torch.zeros(4, 5, dtype=torch.bool)
    context[:, 2:] = True
    batch = {
        "attention_mask": mask,
        "context_mask": context,
        "start": torch.tensor([0, 2, 0, 3]),
        "end": torch.tensor([0, 2, 0, 4]),
    }
    preds = torch.zeros(4, 5, 2)
    preds[:, 2, :] = 1.0  # every window predicts the span (2, 2): right for window 1 only
    flat = preds[mask.bool()]
    assert answer_window_error(task, lambda b: flat, [batch]) == pytest.approx(0.5)
    # forced: [CLS] and the question (token 1) win, but the best context span is (3, 4), right for window 3 only
    preds = torch.zeros(4, 5, 2)
    preds[:, 0, :], preds[:, 1, :] = 9.0, 8.0
    preds[:, 3, 0], preds[:, 4, 1] = 1.0, 1.0
    flat = preds[mask.bool()]
    assert answer_window_error(task, lambda b: flat, [batch]) == 1.0
    assert answer_window_error(task, lambda b: flat, [batch], forced=True) == pytest.approx(0.5)
    assert (
        answer_window_error(task, _null_preds, [batch]) == 1.0
    )  # [CLS] is wrong wherever there is an answer
    assert task.metric(_null_preds(batch), batch) == pytest.approx(0.5)  # ... and right on the other windows


def test_shift_text_cli_names_the_articles_on_a_bad_held_out(tmp_path, shared_data, capsys) -> None:
    from cli import main

    data = shared_data / "deepset-ai__haystack/test/samples/squad/small.json"
    code = main(["shift", "text", "--data", str(data), "--out", str(tmp_path), "--held-out", "Vikings"])
    err = capsys.readouterr().err
    assert code == 2 and "'Vikings': expected one of ['Computational_complexity_theory', 'Normans']" in err
    assert "Traceback" not in err and not (tmp_path / "results.json").exists()


@pytest.mark.parametrize("bad", [["--device", "tpu"], ["--threads", "0"]])
def test_shift_text_rejects_bad_runtime_options_before_reading_data(tmp_path, capsys, bad) -> None:
    from cli import main

    code = main(["shift", "text", "--data", str(tmp_path / "none.json"), "--out", str(tmp_path / "o"), *bad])
    err = capsys.readouterr().err
    assert code == 2 and bad[0] in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()
