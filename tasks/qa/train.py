"""Train and evaluate the Switch-FFN QA model; read top to bottom: config, data, model, optimizer, loop, save.

The saved model directory holds ``config.json`` (model and training config), ``model.safetensors``, ``tokenizer/``
and, for upcycled checkpoints, ``backbone/config.json`` — no pickle anywhere.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import random
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from circuitml.datasets.squad import SquadExample, read_squad
from circuitml.moe.schedule import step_routers
from circuitml.tasks.common import scoped_runtime
from circuitml.tasks.qa.augment import SynonymTable, augment_examples
from circuitml.tasks.qa.cloze import cloze_examples
from circuitml.tasks.qa.data import (
    QAFeatures,
    SpanPredictions,
    best_spans,
    load_tokenizer,
    make_features,
    predict_spans,
    question_mask,
    spans_of,
    train_tokenizer,
)
from circuitml.tasks.qa.ensemble import ReaderEnsemble, member_seeds
from circuitml.tasks.qa.layer_decay import layer_lr_scales
from circuitml.tasks.qa.metrics import best_null_threshold, reader_diagnostics, squad_scores
from circuitml.tasks.qa.model import SwitchQAConfig, UpcycledHFQA, build_qa_model
from circuitml.tasks.qa.sentence_prior import SentenceEncoder, sentence_prior
from circuitml.tasks.qa.verifier import AnswerVerifier, verifier_features
from safetensors.torch import load_file, save_file

from circuitml.errors import CheckpointError, ConfigError, one_line
from circuitml.fileio import read_json
from circuitml.lm import SHIPPED_LMS, resolve_lm
from circuitml.untrusted import check_built, check_sizes, stored_shapes, typed_fields

__all__ = [
    "QATrainConfig",
    "ensemble_qa",
    "evaluate_qa",
    "load_qa_model",
    "split_by_context",
    "train_qa",
]

FORMAT = "circuitml-qa"


@dataclass
class QATrainConfig:
    """Training settings. ``eval_data=None`` holds out ``eval_fraction`` of the *contexts* of ``data``."""

    data: str = ""
    eval_data: str | None = None
    eval_fraction: float = 0.2
    tokenizer: str | None = (
        None  # local tokenizer dir; default: the checkpoint's, else one trained on the data
    )
    vocab_size: int = 8000
    max_length: int = 256
    stride: int = 96
    max_answer_length: int = 30
    batch_size: int = 16
    epochs: int = 8
    lr: float = 5e-4
    head_lr: float | None = None  # the span head's (qa_*) learning rate; None: lr
    weight_decay: float = 0.01
    warmup_fraction: float = 0.1
    # upcycled checkpoints: layer l of L learns at lr * decay^(L - l), embeddings at l = 0 (1.0: off)
    layer_lr_decay: float = 1.0
    freeze_bottom: int = (
        0  # upcycled checkpoints: freeze the embeddings and the first N layers (0: train all)
    )
    eda_copies: int = 0  # EDA-augmented copies of each training question (0 = no augmentation)
    eda_alpha: float = 0.1  # fraction of words each EDA operation changes
    # EDA's synonym replacement, synonyms from the pretrained model's word embeddings; None: when init_from is set
    eda_synonyms: bool | None = None
    # synthetic cloze questions (tasks.qa.cloze) made from the training paragraphs only (0 = none)
    synthetic_cloze: int = 0
    # fraction of them paired with a paragraph lacking their sentence; None: 0.3 on SQuAD v2.0, 0 on v1.1
    cloze_unanswerable: float | None = None
    # epochs on them before the real questions (a first stage); 0: mixed into every epoch
    cloze_epochs: int = 1
    seed: int = 0
    split_seed: int | None = None  # seed of the held-out contexts (None: ``seed``); fix it to compare seeds
    # SQuAD v2.0: contexts carved from the training split to tune the null threshold on (0: keep null_threshold)
    val_fraction: float = 0.1
    null_threshold: float | None = None  # answer "" when null - best span > this; None: tuned, else 0
    # Read + Verify's answer verifier (tasks.qa.verifier) decides answer vs "" instead of the raw null margin
    verifier: bool = False
    # where the tuned threshold (and the verifier) are fitted: 0 on the validation contexts (val_fraction); K >= 2
    # on out-of-fold predictions over all training contexts (K extra readers, each trained without one fold)
    oof_folds: int = 0
    # with oof_folds: the K fold readers answer as an ensemble (cross-fitting) instead of a final reader trained
    # on every training context; the decision is then fitted on the same readers' out-of-fold scores
    oof_ensemble: bool = False
    # readers averaged (tasks.qa.ensemble): K trained with seeds seed, seed + 1, ...; inference costs K passes
    ensemble: int = 1
    verifier_state: dict[str, Any] | None = None  # the fitted verifier (written by train_qa)
    threads: int | None = None
    device: str = "cpu"  # cpu, cuda[:N] or auto
    model: SwitchQAConfig = field(default_factory=SwitchQAConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def split_by_context(
    examples: list[SquadExample], fraction: float, seed: int
) -> tuple[list[SquadExample], list[SquadExample]]:
    """Hold out whole contexts, so no evaluation question shares a paragraph with a training question."""
    contexts = sorted({e.context for e in examples})
    rng = random.Random(seed)
    rng.shuffle(contexts)
    n_eval = max(1, round(fraction * len(contexts))) if len(contexts) > 1 else 0
    held = set(contexts[:n_eval])
    return [e for e in examples if e.context not in held], [e for e in examples if e.context in held]


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _trimmed(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the padding columns every row of a batch shares (windows are right-padded): same outputs, less work."""
    t = max(1, int(mask.sum(dim=1).max()))
    return ids[:, :t], mask[:, :t]


def _device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def _run(model, feats, idx) -> Any:
    """The model on windows ``idx``, trimmed, on its device; a BERT backbone also gets the segment ids, and the
    question mask and sentence prior when its span head uses them."""
    dev = _device(model)
    ids, mask = _trimmed(feats.input_ids[idx], feats.attention_mask[idx])
    t = ids.shape[1]
    extra = {}
    if isinstance(model, UpcycledHFQA):
        if feats.token_type_ids is not None:
            extra["token_type_ids"] = feats.token_type_ids[idx][:, :t].to(dev)
        if model.qa_bilinear is not None:
            extra["question_mask"] = question_mask(mask, feats.context_mask[idx][:, :t]).to(dev)
        if model.qa_prior is not None:
            extra["prior"] = feats.prior[idx][:, :t].to(dev) if feats.prior is not None else None
    return model(ids.to(dev), mask.to(dev), **extra)


@functools.lru_cache(maxsize=2)
def _sentence_encoder(path: str) -> SentenceEncoder:
    return SentenceEncoder.load(path)


def reader_features(model, tokenizer, examples, max_length: int, stride: int) -> QAFeatures:
    """Windows of ``examples``, with the sentence prior when the model uses it (from the frozen checkpoint the
    model was upcycled from, never from the model being trained)."""
    feats = make_features(examples, tokenizer, max_length, stride)
    if getattr(model, "qa_prior", None) is not None:
        init = _resolve_init(model.config).init_from
        feats.prior = sentence_prior(examples, feats, _sentence_encoder(str(init)))
    return feats


def _features(model, tokenizer, examples, cfg: QATrainConfig) -> QAFeatures:
    return reader_features(model, tokenizer, examples, cfg.max_length, cfg.stride)


def _window_logits(model, feats, idx) -> list[torch.Tensor]:
    """Start and end logits of windows ``idx`` (trimmed), then the independent span head's when the model has
    one; a :class:`ReaderEnsemble` gives its members' mean."""
    if isinstance(model, ReaderEnsemble):
        return ReaderEnsemble.mean([_window_logits(m, feats, idx) for m in model.members])
    out = _run(model, feats, idx)
    logits = [out.start_logits, out.end_logits]
    independent = getattr(model, "qa_independent", None)
    if independent is not None:
        logits += list(independent(out.hidden).unbind(-1))
    return logits


def _predict(model, feats, batch_size: int) -> tuple[torch.Tensor, torch.Tensor, tuple | None]:
    """Start and end logits of every window, padded to the full width, and the independent span head's
    ``(start, end)`` when the model has one (else None)."""
    model.eval()
    full = feats.input_ids.shape[1]
    cols: list[list[torch.Tensor]] = [[], [], [], []]
    with torch.no_grad():
        for lo in range(0, len(feats), batch_size):
            logits = _window_logits(model, feats, slice(lo, lo + batch_size))
            pad = (0, full - logits[0].shape[1])
            neg = torch.finfo(logits[0].dtype).min
            for col, x in zip(cols, logits, strict=False):
                col.append(torch.nn.functional.pad(x, pad, value=neg).cpu())
    start, end = torch.cat(cols[0]), torch.cat(cols[1])
    return start, end, (torch.cat(cols[2]), torch.cat(cols[3])) if cols[2] else None


def _length_grouped_batches(
    lengths: torch.Tensor, batch_size: int, gen: torch.Generator
) -> list[torch.Tensor]:
    """Shuffled batches of windows of similar length: a random order, sorted by length within pools of 16
    batches, then the batches shuffled. Trimmed batches then carry little padding (windows of a long context
    are full, a short context's one window is not), at the same randomness of batch contents per pool."""
    order = torch.randperm(len(lengths), generator=gen)
    pool = 16 * batch_size
    batches = []
    for lo in range(0, len(order), pool):
        chunk = order[lo : lo + pool]
        chunk = chunk[torch.argsort(lengths[chunk], descending=True, stable=True)]
        batches += list(chunk.split(batch_size))
    return [batches[k] for k in torch.randperm(len(batches), generator=gen).tolist()]


def _freeze_bottom(model, n: int) -> None:
    """Freeze the embeddings and the first ``n`` layers of an upcycled checkpoint (saves their backward pass)."""
    if not isinstance(model, UpcycledHFQA):
        raise ConfigError("qa: freeze_bottom: only an upcycled checkpoint (init_from) has pretrained layers")
    layers = model._layers()
    if not 0 <= n <= len(layers):
        raise ConfigError(f"qa: freeze_bottom: expected 0..{len(layers)}, got {n}")
    for module in [model.backbone.embeddings, *layers[:n]]:
        for p in module.parameters():
            p.requires_grad_(False)


def _independent_span_loss(model, out, feats: QAFeatures, idx, dev) -> torch.Tensor:
    """Read + Verify's independent span loss: span cross-entropy of the second head on the windows holding an
    answer or a plausible answer, [CLS] (no answer) masked out."""
    target_s = feats.plausible_start[idx].to(dev)
    target_e = feats.plausible_end[idx].to(dev)
    keep = target_s > 0
    if not bool(keep.any()):
        return out.start_logits.new_zeros(())
    start, end = model.qa_independent(out.hidden[keep]).unbind(-1)
    mask = feats.attention_mask[idx][keep][:, : start.shape[1]].to(dev).bool()
    mask[:, 0] = False
    neg = torch.finfo(start.dtype).min
    start, end = start.masked_fill(~mask, neg), end.masked_fill(~mask, neg)
    ce = torch.nn.functional.cross_entropy
    return (ce(start, target_s[keep]) + ce(end, target_e[keep])) / 2


def _param_groups(model, cfg: QATrainConfig) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on matrices only; the span head (``qa_*``) at ``head_lr`` when set. Adam moves a
    weight by about its learning rate per step, so a head that starts at zero or random needs a larger one than
    the pretrained body to move in a few hundred steps. With ``layer_lr_decay`` < 1 the backbone's parameters
    learn at ``lr`` scaled by their layer's factor (tasks.qa.layer_decay)."""
    head_lr = cfg.lr if cfg.head_lr is None else cfg.head_lr
    if head_lr <= 0:
        raise ConfigError(f"qa: head_lr: expected a positive learning rate, got {head_lr}")
    scales: dict[int, float] = {}
    if cfg.layer_lr_decay != 1.0:
        if not isinstance(model, UpcycledHFQA):
            raise ConfigError(
                "qa: layer_lr_decay: only an upcycled checkpoint (init_from) has pretrained layers to decay"
            )
        scales = layer_lr_scales(model, cfg.layer_lr_decay)
    groups: dict[tuple[bool, bool, float], list] = {}
    for n, p in model.named_parameters():
        if p.requires_grad:
            head = n.startswith("qa_")
            key = (head, p.ndim >= 2 and "norm" not in n.lower(), 1.0 if head else scales.get(id(p), 1.0))
            groups.setdefault(key, []).append(p)
    return [
        {
            "params": params,
            "lr": head_lr if head else cfg.lr * scale,
            "weight_decay": cfg.weight_decay if decay else 0.0,
        }
        for (head, decay, scale), params in sorted(groups.items())
    ]


def _resolve_init(model: SwitchQAConfig) -> SwitchQAConfig:
    """The model config with ``init_from`` as a local folder: a shipped language model's name
    (``all-minilm-l6-v2``, see :mod:`circuitml.lm`) resolves to its extracted folder."""
    if model.init_from and model.init_from.lower() in SHIPPED_LMS:
        return dataclasses.replace(model, init_from=str(resolve_lm(model.init_from)))
    return model


def build_reader(model_cfg: SwitchQAConfig) -> Any:
    """The QA model of ``model_cfg``, the one builder of ``qa train`` and ``shift text``: a shipped language
    model's name in ``init_from`` resolves to its folder, and the reader options (span head, sentence prior,
    independent span head) come with the config."""
    return build_qa_model(_resolve_init(model_cfg))


def _synonym_table(
    model, tokenizer, examples: list[SquadExample], wanted: bool | None
) -> SynonymTable | None:
    """EDA's synonyms for the words of ``examples``, from the pretrained model's input word embeddings
    (``wanted=None``: when there is a pretrained model; ``True`` without one is an error)."""
    if not isinstance(model, UpcycledHFQA):
        if wanted:
            raise ConfigError(
                "qa: eda_synonyms: synonyms come from a pretrained model's word embeddings; "
                "set init_from, or turn synonym replacement off"
            )
        return None
    if wanted is False:
        return None
    words = {w.strip(".,;:!?()[]\"'") for e in examples for w in (e.question + " " + e.context).split()}
    weights = model.backbone.get_input_embeddings().weight.detach()
    return SynonymTable.from_embeddings(tokenizer.get_vocab(), weights, sorted(words))


def predict_with_features(
    model, tokenizer, examples, cfg: QATrainConfig
) -> tuple[SpanPredictions, torch.Tensor]:
    """The reader's spans (null margin: its own) and the answer verifier's features of ``examples``."""
    feats = _features(model, tokenizer, examples, cfg)
    start, end, independent = _predict(model, feats, cfg.batch_size)
    best = best_spans(len(examples), feats, start, end, cfg.max_answer_length)
    spans = spans_of(examples, feats, best)
    return spans, verifier_features(feats, best, start, end, independent, cfg.max_answer_length)


def predict_examples(model, tokenizer, examples, cfg: QATrainConfig) -> SpanPredictions:
    """Spans and no-answer margins of ``examples``: the reader's null margin, or the fitted verifier's."""
    if cfg.verifier_state is not None:
        spans, x = predict_with_features(model, tokenizer, examples, cfg)
        return AnswerVerifier.from_dict(cfg.verifier_state).verify(spans, x)
    feats = _features(model, tokenizer, examples, cfg)
    start, end, _ = _predict(model, feats, cfg.batch_size)
    return predict_spans(examples, feats, start, end, cfg.max_answer_length)


def _golds(examples: list[SquadExample]) -> dict[str, list[str]]:
    return {e.id: [a.text for a in e.answers] for e in examples}


def evaluate_examples(
    model, tokenizer, examples, cfg: QATrainConfig, version: str, null_threshold: float | None = None
) -> dict[str, float]:
    """Official EM/F1 with the HasAns/NoAns split, at ``null_threshold`` (default: the config's, else 0)."""
    spans = predict_examples(model, tokenizer, examples, cfg)
    return _scores(spans, examples, cfg, version, null_threshold)


def _scores(
    spans: SpanPredictions, examples, cfg: QATrainConfig, version: str, null_threshold: float | None = None
) -> dict[str, float]:
    """Official EM/F1 of predicted ``spans`` at ``null_threshold`` (default: the config's, else 0)."""
    if null_threshold is None:
        null_threshold = cfg.null_threshold if cfg.null_threshold is not None else 0.0
    preds = spans.answers(null_threshold, allow_impossible=version == "v2.0")
    return squad_scores(preds, _golds(examples))


def _fit_reader(
    cfg: QATrainConfig,
    model_cfg: SwitchQAConfig,
    tokenizer,
    train_ex: list[SquadExample],
    dev: torch.device,
    on_step: Callable[[int, int, float], None] | None = None,
) -> tuple[Any, dict[str, Any]]:
    """Build a reader and train it on ``train_ex`` (EDA copies added here, after any split); returns it and
    its training statistics."""
    _seed_everything(cfg.seed)
    model = build_reader(model_cfg)

    # augment after the split, so no held-out context leaks into training
    fit_ex = train_ex
    if cfg.eda_copies:
        synonyms = _synonym_table(model, tokenizer, train_ex, cfg.eda_synonyms)
        fit_ex = augment_examples(train_ex, cfg.eda_copies, cfg.eda_alpha, cfg.seed, synonyms)
    elif cfg.eda_synonyms:
        raise ConfigError("qa: eda_synonyms: synonym replacement is an EDA operation; set eda_copies > 0")
    cloze = cloze_examples(train_ex, cfg.synthetic_cloze, cfg.seed, cfg.cloze_unanswerable or 0.0)
    if cfg.cloze_epochs < 0:
        raise ConfigError(f"qa: cloze_epochs: expected a number of epochs >= 0, got {cfg.cloze_epochs}")
    stages = (
        [(fit_ex + cloze, cfg.epochs)]
        if not cfg.cloze_epochs
        else [(cloze, cfg.cloze_epochs), (fit_ex, cfg.epochs)]
    )
    stages = [(_features(model, tokenizer, ex, cfg), epochs) for ex, epochs in stages if ex]
    if cfg.freeze_bottom:
        _freeze_bottom(model, cfg.freeze_bottom)
    model.to(dev)
    gen = torch.Generator().manual_seed(cfg.seed)
    step = 0
    for feats, epochs in stages:  # a first stage on synthetic questions gets its own warmup and decay
        losses, steps_per_epoch = _train_stage(model, feats, cfg, epochs, gen, dev, on_step)
        step += len(losses)
    stats = {
        "train_questions_augmented": len(fit_ex),
        "synthetic_questions": len(cloze),
        "loss_first_epoch": float(np.mean(losses[:steps_per_epoch])),
        "loss_last_epoch": float(np.mean(losses[-steps_per_epoch:])),
        "steps": step,
    }
    return model, stats


def _train_stage(
    model,
    feats: QAFeatures,
    cfg: QATrainConfig,
    epochs: int,
    gen: torch.Generator,
    dev: torch.device,
    on_step: Callable[[int, int, float], None] | None = None,
) -> tuple[list[float], int]:
    """``epochs`` over the windows of ``feats`` with AdamW, linear warmup then cosine decay; returns the span
    losses per step and the steps per epoch."""
    steps_per_epoch = math.ceil(len(feats) / cfg.batch_size)
    total = max(1, steps_per_epoch * epochs)
    warmup = max(1, int(cfg.warmup_fraction * total))
    opt = torch.optim.AdamW(_param_groups(model, cfg), lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt,
        lambda s: (
            (s + 1) / warmup
            if s < warmup
            else 0.5 * (1 + math.cos(math.pi * (s - warmup) / max(1, total - warmup)))
        ),
    )
    lengths = feats.attention_mask.sum(dim=1)
    losses: list[float] = []
    for _epoch in range(epochs):
        model.train()
        for idx in _length_grouped_batches(lengths, cfg.batch_size, gen):
            o = _run(model, feats, idx)
            ce = torch.nn.functional.cross_entropy
            loss = (
                ce(o.start_logits, feats.start_positions[idx].to(dev))
                + ce(o.end_logits, feats.end_positions[idx].to(dev))
            ) / 2
            total_loss = loss + o.aux_loss
            if getattr(model, "qa_independent", None) is not None:
                total_loss = total_loss + model.config.independent_span * _independent_span_loss(
                    model, o, feats, idx, dev
                )
            opt.zero_grad(set_to_none=True)
            total_loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            step_routers(model)  # router anneals count optimizer steps
            losses.append(loss.item())
            if on_step is not None:
                on_step(len(losses), total, losses[-1])
    return losses, steps_per_epoch


def _out_of_fold(
    cfg: QATrainConfig,
    model_cfg: SwitchQAConfig,
    tokenizer,
    train_ex: list[SquadExample],
    dev,
    seed: int,
    on_step: Callable[[int, int, float], None] | None = None,
) -> tuple[tuple[SpanPredictions, torch.Tensor, list[SquadExample]], list[tuple[Any, dict[str, Any]]]]:
    """K-fold over the training *contexts*: each fold's questions are read by a reader trained on the other
    folds. Returns every training question's spans and verifier features with the questions in that order, and
    the K fold readers with their training statistics."""
    contexts = sorted({e.context for e in train_ex})
    if cfg.oof_folds < 2 or cfg.oof_folds > len(contexts):
        raise ConfigError(
            f"qa: oof_folds: expected 0 or 2..{len(contexts)} (training contexts), got {cfg.oof_folds}"
        )
    random.Random(seed + 2).shuffle(contexts)
    fold = {c: k % cfg.oof_folds for k, c in enumerate(contexts)}
    ids, texts, margins, xs, order, readers = [], [], [], [], [], []
    for k in range(cfg.oof_folds):
        inside = [e for e in train_ex if fold[e.context] != k]
        held = [e for e in train_ex if fold[e.context] == k]
        # progress counts every fold's steps (folds differ a little in size: the total is the current one's)
        fold_step = (
            None if on_step is None else lambda s, t, loss, k=k: on_step(k * t + s, cfg.oof_folds * t, loss)
        )
        reader, stats = _fit_reader(cfg, model_cfg, tokenizer, inside, dev, fold_step)
        spans, x = predict_with_features(reader, tokenizer, held, cfg)
        ids += spans.ids
        texts += spans.texts
        margins.append(spans.null_margin)
        xs.append(x)
        order += held
        readers.append((reader, stats) if cfg.oof_ensemble else (None, stats))  # freed unless kept
    return (SpanPredictions(ids, texts, torch.cat(margins)), torch.cat(xs), order), readers


def reader_count(cfg: QATrainConfig) -> int:
    """How many readers a model trained with ``cfg`` holds: the fold readers of a cross-fitted model, else
    the ensemble's members (1: a single reader)."""
    return cfg.oof_folds if cfg.oof_ensemble else cfg.ensemble


def _split_seed(cfg: QATrainConfig) -> int:
    """The seed of the held-out and validation contexts: ``split_seed``, else the run's seed."""
    return cfg.seed if cfg.split_seed is None else cfg.split_seed


def _data_split(cfg: QATrainConfig) -> tuple[list[SquadExample], list[SquadExample], str]:
    """Training and held-out questions of ``cfg`` (the eval file, else held-out contexts) and the version."""
    examples, version = read_squad(cfg.data)
    if cfg.eval_data:
        return examples, read_squad(cfg.eval_data)[0], version
    return (*split_by_context(examples, cfg.eval_fraction, _split_seed(cfg)), version)


def _validation_split(
    cfg: QATrainConfig, train_ex: list[SquadExample], tuned: bool
) -> tuple[list[SquadExample], list[SquadExample]]:
    """The validation contexts the decision is tuned on, carved from the training ones (none with out-of-fold
    fitting, whose questions replace them)."""
    if not (tuned and cfg.val_fraction > 0 and not cfg.oof_folds):
        return train_ex, []
    if not 0 < cfg.val_fraction < 1:
        raise ConfigError(f"qa: val_fraction: expected a fraction in [0, 1), got {cfg.val_fraction}")
    return split_by_context(train_ex, cfg.val_fraction, _split_seed(cfg) + 1)


def train_qa(
    cfg: QATrainConfig, out: str | os.PathLike, on_step: Callable[[int, int, float], None] | None = None
) -> dict[str, Any]:
    """Train on ``cfg.data``, evaluate on the held-out split, save to ``out``; returns the metrics. The caller's
    thread count and deterministic-algorithms mode are restored on return (:func:`scoped_runtime`)."""
    with scoped_runtime(cfg.threads, cfg.device) as dev:
        return _train_qa(cfg, out, on_step, dev)


def _train_qa(
    cfg: QATrainConfig,
    out: str | os.PathLike,
    on_step: Callable[[int, int, float], None] | None,
    dev: torch.device,
) -> dict[str, Any]:
    _seed_everything(cfg.seed)
    t0 = time.time()
    cfg.verifier_state = None  # fitted below, on this run's held-out questions

    # data
    train_ex, eval_ex, version = _data_split(cfg)
    split_seed = _split_seed(cfg)
    tuned = version == "v2.0" and cfg.null_threshold is None
    if cfg.oof_folds and not tuned:
        raise ConfigError(
            "qa: oof_folds: out-of-fold fitting tunes the null threshold; SQuAD v2.0 data only, "
            "without a fixed null_threshold"
        )
    member_seeds(cfg.seed, cfg.ensemble)  # validates the count
    if cfg.oof_ensemble and not cfg.oof_folds:
        raise ConfigError(
            "qa: oof_ensemble: the fold readers answer as an ensemble; set oof_folds >= 2 (how many)"
        )
    if cfg.ensemble > 1 and cfg.oof_folds:
        raise ConfigError(
            "qa: ensemble: out-of-fold fitting trains single readers, which would not match the ensemble the "
            "decision is applied to; use val_fraction with an ensemble"
        )
    if cfg.verifier and not tuned:
        raise ConfigError(
            "qa: verifier: it decides answer vs no answer; SQuAD v2.0 data only, without a fixed "
            "null_threshold"
        )
    if cfg.cloze_unanswerable is None:
        cfg.cloze_unanswerable = 0.3 if version == "v2.0" else 0.0
    elif cfg.cloze_unanswerable > 0 and version != "v2.0":
        raise ConfigError(
            f"qa: cloze_unanswerable: {cfg.data} is SQuAD {version}, which has no unanswerable questions; "
            "set it to 0"
        )
    train_ex, val_ex = _validation_split(cfg, train_ex, tuned)
    if cfg.verifier and not val_ex and not cfg.oof_folds:
        raise ConfigError(
            "qa: verifier: it is fitted on held-out questions; set val_fraction > 0 or oof_folds >= 2"
        )
    if not train_ex:
        raise ConfigError(f"{cfg.data}: no training questions left after the split")
    model_cfg = _resolve_init(cfg.model)

    # tokenizer
    if cfg.tokenizer:
        tokenizer = load_tokenizer(cfg.tokenizer)
    elif model_cfg.init_from:
        tokenizer = load_tokenizer(model_cfg.init_from)
    else:
        texts = [e.context for e in train_ex] + [e.question for e in train_ex]
        tokenizer = train_tokenizer(texts, vocab_size=cfg.vocab_size)
    if not model_cfg.init_from:
        cfg.model.vocab_size = model_cfg.vocab_size = len(tokenizer)
        cfg.model.max_position = model_cfg.max_position = max(cfg.model.max_position, cfg.max_length)

    # the decision's held-out questions: out-of-fold readers' predictions, else the validation contexts later
    held: tuple[SpanPredictions, torch.Tensor, list[SquadExample]] | None = None
    if cfg.oof_folds:
        held, folds = _out_of_fold(cfg, model_cfg, tokenizer, train_ex, dev, split_seed, on_step)

    if cfg.oof_ensemble:  # cross-fitting: the readers that gave the out-of-fold scores answer the questions
        fitted = folds
        stats = dict(fitted[-1][1], steps=sum(s["steps"] for _, s in fitted))
        model = ReaderEnsemble([m for m, _ in fitted]).to(dev)
    else:
        fitted = [
            _fit_reader(dataclasses.replace(cfg, seed=s), model_cfg, tokenizer, train_ex, dev, on_step)
            for s in member_seeds(cfg.seed, cfg.ensemble)
        ]
        model, stats = (
            fitted[0] if cfg.ensemble == 1 else (ReaderEnsemble([m for m, _ in fitted]), fitted[0][1])
        )

    # the answer decision: a threshold on the null margin, or the verifier, fitted on held-out questions
    metrics: dict[str, Any] = {
        "version": version,
        "train_questions": len(train_ex),
        "train_questions_augmented": stats["train_questions_augmented"],
        "synthetic_questions": stats["synthetic_questions"],
        "val_questions": len(val_ex),
        "oof_questions": len(held[2]) if held else 0,
        "eval_questions": len(eval_ex),
    }
    metrics.update(_decide_and_score(model, tokenizer, cfg, version, held, val_ex, eval_ex))
    metrics["loss_first_epoch"] = stats["loss_first_epoch"]
    metrics["loss_last_epoch"] = stats["loss_last_epoch"]
    metrics["steps"] = stats["steps"]
    metrics["wall_seconds"] = time.time() - t0
    save_qa_model(model, tokenizer, cfg, out, metrics)
    return metrics


def _decide_and_score(
    model,
    tokenizer,
    cfg: QATrainConfig,
    version: str,
    held: tuple[SpanPredictions, torch.Tensor, list[SquadExample]] | None,
    val_ex: list[SquadExample],
    eval_ex: list[SquadExample],
    member_metrics: bool = True,
) -> dict[str, Any]:
    """Fit the answer decision (a threshold on the null margin, or the verifier) on the held-out questions
    (``held``, else ``model``'s predictions on ``val_ex``) into ``cfg``, then score ``eval_ex``; the metrics
    (with an ensemble's members alone too, unless ``member_metrics`` is off)."""
    metrics: dict[str, Any] = {}
    if held is None and val_ex:
        held = (*predict_with_features(model, tokenizer, val_ex, cfg), val_ex)
    plain_threshold = None
    if held is not None:
        spans, x, questions = held
        golds = _golds(questions)
        texts, margins = _texts_and_margins(spans)
        plain_threshold, metrics["val_f1"] = best_null_threshold(texts, margins, golds)
        metrics["val_reader"] = reader_diagnostics(texts, margins, golds)
        metrics["plain_null_threshold"] = cfg.null_threshold = plain_threshold
        if cfg.verifier:
            verifier = AnswerVerifier.fit(x, spans, golds)
            cfg.verifier_state = verifier.to_dict()
            # the saved decision compares the verifier's score with its own threshold
            metrics["verifier_threshold"] = cfg.null_threshold = verifier.threshold
            metrics["val_f1_plain_threshold"] = metrics["val_f1"]
            metrics["val_f1"] = verifier.fitted_f1
    # the threshold the saved model applies (the verifier's with one): the key older metrics files have
    metrics["null_threshold"] = cfg.null_threshold
    # each member alone, tuned as the ensemble is (a fold reader: at the out-of-fold threshold): the before/after
    if isinstance(model, ReaderEnsemble) and member_metrics:
        metrics["members"] = [
            _member_metrics(m, tokenizer, cfg, version, val_ex, eval_ex, plain_threshold)
            for m in model.members
        ]
    if eval_ex:
        if cfg.verifier:
            reader_spans, x = predict_with_features(model, tokenizer, eval_ex, cfg)
            spans = AnswerVerifier.from_dict(cfg.verifier_state).verify(reader_spans, x)
            metrics["eval_plain_threshold"] = _scores(reader_spans, eval_ex, cfg, version, plain_threshold)
        else:
            spans = predict_examples(model, tokenizer, eval_ex, cfg)  # once: both thresholds score the spans
        metrics["eval"] = _scores(spans, eval_ex, cfg, version)
        metrics["eval_reader"] = _reader_metrics(reader_spans if cfg.verifier else spans, eval_ex)
        if version == "v2.0" and cfg.null_threshold and not cfg.verifier:
            metrics["eval_threshold_0"] = _scores(spans, eval_ex, cfg, version, 0.0)
        metrics["eval_baseline_no_answer"] = squad_scores({e.id: "" for e in eval_ex}, _golds(eval_ex))
    return metrics


# settings that may differ between the readers an ensemble combines (the rest must be equal)
_PER_READER = ("seed", "null_threshold", "verifier_state", "ensemble", "threads", "device")


def ensemble_qa(
    model_dirs: list[str | os.PathLike],
    out: str | os.PathLike,
    device: str = "cpu",
    threads: int | None = None,
    member_metrics: bool = True,
) -> dict[str, Any]:
    """Combine readers trained by ``qa train`` (one setting, different seeds) into a :class:`ReaderEnsemble`:
    the decision is fitted again on the ensemble's logits over the same validation contexts the readers were
    tuned on, the held-out questions are scored, and the ensemble is saved to ``out``; returns the metrics
    (``member_metrics``: with each reader alone at its own tuned threshold, K more passes)."""
    with scoped_runtime(threads, device) as dev:
        return _ensemble_qa(model_dirs, out, dev, member_metrics)


def _ensemble_qa(
    model_dirs: list[str | os.PathLike], out: str | os.PathLike, dev: torch.device, member_metrics: bool
) -> dict[str, Any]:
    if len(model_dirs) < 2:
        raise ConfigError(f"qa ensemble: expected at least two model directories, got {len(model_dirs)}")
    loaded = [load_qa_model(d) for d in model_dirs]
    first = loaded[0][2]
    for d, (model, tok, cfg) in zip(model_dirs, loaded, strict=True):
        if isinstance(model, ReaderEnsemble):
            raise ConfigError(f"qa ensemble: {d}: expected a single reader, got an ensemble")
        differ = [
            f.name
            for f in dataclasses.fields(cfg)
            if f.name not in _PER_READER and getattr(cfg, f.name) != getattr(first, f.name)
        ]
        if differ:
            raise ConfigError(
                f"qa ensemble: {d}: expected the settings of {model_dirs[0]} but for the seed; differs in "
                f"{', '.join(differ)}"
            )
        if cfg.split_seed is None and cfg.seed != first.seed:
            raise ConfigError(
                f"qa ensemble: {d}: its held-out contexts follow its seed (no split_seed), so they differ from "
                f"{model_dirs[0]}'s; train the readers with one split_seed"
            )
        if tok.get_vocab() != loaded[0][1].get_vocab():
            raise ConfigError(
                f"qa ensemble: {d}: expected {model_dirs[0]}'s tokenizer (the readers read the same windows); "
                "train them with one --tokenizer or --init-from"
            )
        if cfg.oof_folds:
            raise ConfigError(
                f"qa ensemble: {d}: its decision was fitted out of fold; the ensemble's is fitted on the "
                "validation contexts (train the readers with val_fraction)"
            )
    t0 = time.time()
    cfg = dataclasses.replace(first, ensemble=len(loaded), verifier_state=None)
    train_ex, eval_ex, version = _data_split(cfg)
    _, val_ex = _validation_split(cfg, train_ex, version == "v2.0")
    if val_ex:  # tuned again, on the ensemble's predictions; else the readers' fixed threshold stands
        cfg.null_threshold = None
    model = ReaderEnsemble([m for m, _, _ in loaded]).to(dev)
    tokenizer = loaded[0][1]
    metrics: dict[str, Any] = {
        "version": version,
        "member_seeds": [c.seed for _, _, c in loaded],
        "val_questions": len(val_ex),
        "eval_questions": len(eval_ex),
    }
    metrics.update(_decide_and_score(model, tokenizer, cfg, version, None, val_ex, eval_ex, member_metrics))
    metrics["wall_seconds"] = time.time() - t0
    save_qa_model(model, tokenizer, cfg, out, metrics)
    return metrics


def _texts_and_margins(spans: SpanPredictions) -> tuple[dict[str, str], dict[str, float]]:
    """Per question id: the predicted answer text and its null margin."""
    texts = dict(zip(spans.ids, spans.texts, strict=True))
    return texts, dict(zip(spans.ids, spans.null_margin.tolist(), strict=True))


def _reader_metrics(spans: SpanPredictions, examples: list[SquadExample]) -> dict[str, Any]:
    return reader_diagnostics(*_texts_and_margins(spans), _golds(examples))


def _member_metrics(
    member,
    tokenizer,
    cfg: QATrainConfig,
    version: str,
    val_ex,
    eval_ex,
    threshold: float | None = None,
) -> dict[str, Any]:
    """One ensemble member on its own: its reader diagnostics, and its held-out scores at the null threshold
    tuned on its own validation predictions (the decision a single reader of that seed would use), else at
    ``threshold`` (a cross-fitted model's fold readers: the one fitted on their out-of-fold scores)."""
    single = dataclasses.replace(cfg, verifier_state=None)
    out: dict[str, Any] = {}
    if val_ex:
        spans = predict_examples(member, tokenizer, val_ex, single)
        threshold, out["val_f1"] = best_null_threshold(*_texts_and_margins(spans), _golds(val_ex))
        out["val_reader"] = _reader_metrics(spans, val_ex)
    if eval_ex:
        spans = predict_examples(member, tokenizer, eval_ex, single)
        out["eval"] = _scores(spans, eval_ex, single, version, threshold)
        out["eval_reader"] = _reader_metrics(spans, eval_ex)
    out["null_threshold"] = threshold
    return out


def save_qa_model(
    model, tokenizer, cfg: QATrainConfig, out: str | os.PathLike, metrics: dict[str, Any]
) -> None:
    """Write the model directory atomically (build in a temp dir beside it, then rename)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(tmp / "model.safetensors"), metadata={"format": FORMAT})
        tokenizer.save_pretrained(str(tmp / "tokenizer"))
        first = model.members[0] if isinstance(model, ReaderEnsemble) else model
        if isinstance(first, UpcycledHFQA):
            first.backbone.config.save_pretrained(str(tmp / "backbone"))
        config = {"format": FORMAT, "version": 1, "train": cfg.to_dict(), "metrics": metrics}
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def load_qa_model(path: str | os.PathLike):
    """Load a saved QA model directory: returns ``(model, tokenizer, train_config)``. Nothing in it is trusted:
    settings are type-checked and sizes checked against the stored tensors before the model is allocated
    (:mod:`circuitml.untrusted`)."""
    path = Path(path)
    cfg_file = path / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{cfg_file}: expected a QA model directory with config.json")
    raw = read_json(cfg_file, error=CheckpointError, what="QA model config")
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        got = raw.get("format") if isinstance(raw, dict) else type(raw).__name__
        raise CheckpointError(f"{cfg_file}: expected format {FORMAT!r}, got {got!r}")
    train = raw.get("train")
    if not isinstance(train, dict):
        raise CheckpointError(f"{cfg_file}: train: expected a mapping of the training settings")
    model_cfg = SwitchQAConfig(**typed_fields(SwitchQAConfig, train.get("model"), f"{cfg_file}: train.model"))
    cfg = QATrainConfig(
        **typed_fields(QATrainConfig, train, f"{cfg_file}: train", skip=("model",)), model=model_cfg
    )
    weights = path / "model.safetensors"
    shapes = stored_shapes(weights)
    n = reader_count(cfg)
    stored = {k.split(".", 2)[1] for k in shapes if k.startswith("members.")}
    readers_stored = len(stored) if stored else 1
    if n != readers_stored or (n > 1 and stored != {str(k) for k in range(n)}):
        raise CheckpointError(
            f"{cfg_file}: train: the settings name {n} reader(s), {weights} stores {readers_stored}"
        )
    upcycled = (path / "backbone").is_dir()
    check_sizes(dataclasses.asdict(model_cfg), shapes, f"{cfg_file}: train.model", widths=not upcycled)
    check_sizes({"ensemble": cfg.ensemble, "oof_folds": cfg.oof_folds}, shapes, f"{cfg_file}: train")
    backbone_config = _backbone_config(path / "backbone", shapes) if upcycled else None
    positions = getattr(backbone_config, "max_position_embeddings", None) or model_cfg.max_position
    _check_reading(cfg, cfg_file, positions)

    def build() -> Any:
        members = []
        for _ in range(n):
            member = (
                UpcycledHFQA(model_cfg, backbone_config=backbone_config)
                if backbone_config is not None
                else build_qa_model(model_cfg)
            )
            if cfg.freeze_bottom:
                _freeze_bottom(member, cfg.freeze_bottom)
            members.append(member)
        return members[0] if n == 1 else ReaderEnsemble(members)

    check_built(build, shapes, weights, f"{cfg_file}: train")
    model = build()
    try:
        state = load_file(str(weights))
    except Exception as exc:  # safetensors raises several types on truncated or corrupted files
        raise CheckpointError(f"{weights}: expected a valid safetensors file ({one_line(exc)})") from None
    model.load_state_dict(state, strict=True)  # names and shapes were checked against the header above
    model.eval()
    tokenizer = load_tokenizer(path / "tokenizer")
    rows = backbone_config.vocab_size if backbone_config is not None else model_cfg.vocab_size
    if len(tokenizer) > rows:  # an id past the embedding table would fail in the middle of reading
        raise CheckpointError(
            f"{path / 'tokenizer'}: expected at most {rows} tokens (the model's embeddings), got {len(tokenizer)}"
        )
    return model, tokenizer, cfg


def _check_reading(cfg: QATrainConfig, cfg_file: Path, positions: int) -> None:
    """The settings prediction reads: windows (at most ``positions`` tokens), stride, answer length, the
    decision."""
    if not 8 <= cfg.max_length <= positions:  # a window longer than the model's positions cannot be read
        raise CheckpointError(
            f"{cfg_file}: train.max_length: expected 8..{positions} tokens, got {cfg.max_length}"
        )
    if not 0 <= cfg.stride < cfg.max_length:
        raise CheckpointError(f"{cfg_file}: train.stride: expected 0..{cfg.max_length - 1}, got {cfg.stride}")
    if not 1 <= cfg.max_answer_length <= cfg.max_length:
        raise CheckpointError(
            f"{cfg_file}: train.max_answer_length: expected 1..{cfg.max_length}, got {cfg.max_answer_length}"
        )
    if cfg.freeze_bottom < 0 or cfg.batch_size < 1:
        raise CheckpointError(f"{cfg_file}: train: expected freeze_bottom >= 0 and batch_size >= 1")
    if cfg.verifier_state is not None:
        try:
            AnswerVerifier.from_dict(cfg.verifier_state)
        except (ConfigError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{cfg_file}: train.verifier_state: expected a fitted verifier ({one_line(exc)})"
            ) from None


def _backbone_config(folder: Path, shapes: dict[str, tuple[int, ...]]) -> Any:
    """The transformers config saved beside an upcycled reader, its sizes bounded before it is used."""
    from transformers import AutoConfig

    file = folder / "config.json"
    raw = read_json(file, error=CheckpointError, what="backbone config")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{file}: expected a mapping of the backbone's settings")
    check_sizes(raw, shapes, str(file), hf=True)
    try:
        return AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:  # transformers raises many types for a config it cannot use
        raise CheckpointError(f"{file}: expected a BERT/DistilBERT config ({one_line(exc)})") from None


def evaluate_qa(
    model_dir: str | os.PathLike,
    data: str | os.PathLike,
    device: str = "cpu",
    threads: int | None = None,
) -> dict[str, float]:
    """EM/F1 of a saved model on a SQuAD file, on ``device`` (cpu, cuda[:N] or auto)."""
    with scoped_runtime(threads, device) as dev:
        model, tokenizer, cfg = load_qa_model(model_dir)
        examples, version = read_squad(data)
        return evaluate_examples(model.to(dev), tokenizer, examples, cfg, version)
